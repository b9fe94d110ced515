"""PNG-kernel estimators: accuracy, time and memory of iid, orthogonal, KAMA and spinner features.

For every input dimension d, number of features m and angle between two unit vectors x, y, draws
``--trials`` independent projections of each kind and reports the mean squared error of
``K_hat(x, y)`` against the closed-form kernel (with its standard error and the bias), for the
relu, sign, softmax and gaussian features of :mod:`rlstruct.random_features`. Separately times
drawing one projection and applying it to a batch, and counts the numbers each one stores.

Run (one thread, ~5 minutes)::

    .venv/bin/python benchmarks/png_kernels.py

Writes results/png_kernels.md, results/png_kernels.csv and results/png_kernels.png.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlstruct.random_features import (  # noqa: E402
    FEATURES,
    PROJECTIONS,
    draw_projection,
    estimate_kernel,
    exact_kernel,
    unit_pair,
)

ANGLES = {"pi/6": math.pi / 6, "pi/2": math.pi / 2, "5pi/6": 5 * math.pi / 6}
CHUNK_NUMBERS = 2**24  # draws per chunk are capped so a chunk's matrices stay near 128 MB


def accuracy_rows(dims, ratios, trials, seed):
    rows = []
    for d in dims:
        pairs = [unit_pair(d, a) for a in ANGLES.values()]
        x = torch.cat([p[0] for p in pairs])
        y = torch.cat([p[1] for p in pairs])
        for ratio in ratios:
            m = ratio * d
            for kind in PROJECTIONS:
                generator = torch.Generator().manual_seed(seed)
                chunk = max(1, min(trials, CHUNK_NUMBERS // (m * d)))
                errors = {f: [] for f in FEATURES}
                start = time.perf_counter()
                for done in range(0, trials, chunk):
                    proj = draw_projection(kind, d, m, min(chunk, trials - done), generator)
                    for f in FEATURES:
                        errors[f].append(estimate_kernel(proj, x, y, f) - exact_kernel(x, y, f))
                elapsed = time.perf_counter() - start
                for f in FEATURES:
                    err = torch.cat(errors[f])  # (trials, n_angles)
                    sq = err**2
                    for i, name in enumerate(ANGLES):
                        rows.append(dict(
                            d=d, m=m, angle=name, feature=f, projection=kind,
                            exact=exact_kernel(x[i:i + 1], y[i:i + 1], f).item(),
                            mse=sq[:, i].mean().item(),
                            mse_se=(sq[:, i].std() / math.sqrt(trials)).item(),
                            bias=err[:, i].mean().item(),
                            bias_se=(err[:, i].std() / math.sqrt(trials)).item(),
                        ))
                print(f"d={d} m={m} {kind}: {elapsed:.1f}s", file=sys.stderr, flush=True)
    return rows


def _median_time(fn, reps):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cost_rows(dims, ratios, batch, reps):
    rows = []
    for d in dims:
        x = torch.randn(batch, d, dtype=torch.float32)
        for ratio in ratios:
            m = ratio * d
            for kind in PROJECTIONS:
                def draw():
                    return draw_projection(kind, d, m, dtype=torch.float32)

                proj = draw()
                rows.append(dict(
                    d=d, m=m, projection=kind,
                    draw_us=1e6 * _median_time(draw, reps),
                    apply_us=1e6 * _median_time(lambda: proj(x), reps),
                    stored=proj.stored_numbers(),
                ))
    return rows


def write_outputs(acc, cost, out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "png_kernels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(acc[0]))
        writer.writeheader()
        writer.writerows(acc)
    with open(out / "png_kernels_cost.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(cost[0]))
        writer.writeheader()
        writer.writerows(cost)

    key = {(r["d"], r["m"], r["angle"], r["feature"], r["projection"]): r for r in acc}
    lines = [
        "# PNG-kernel estimators: iid vs orthogonal vs KAMA vs spinner",
        "",
        f"Command: `{command}` (CPU, torch.set_num_threads(1), float64 for accuracy, float32 for cost).",
        "",
        "x, y: unit vectors at the given angle, spread over all coordinates. MSE of K_hat(x, y)",
        "against the closed-form kernel over independent draws; `ratio` is MSE / MSE(iid) (below 1:",
        "more accurate than iid); `±` is one standard error of the MSE. `bias` is the mean error;",
        "`*` marks a bias beyond 4 standard errors. softmax errors are heavy-tailed (exp of a",
        "Gaussian), so its MSE at small angles is noisy: read its standard errors.",
        "",
        "## Accuracy",
        "",
        "| d | m | angle | feature | exact K | " + " | ".join(
            f"{p} MSE (ratio)" for p in PROJECTIONS) + " | " + " | ".join(
            f"{p} bias" for p in PROJECTIONS) + " |",
        "|" + "---|" * (5 + 2 * len(PROJECTIONS)),
    ]
    for (d, m, angle, f, p), r in key.items():
        if p != PROJECTIONS[0]:
            continue
        base = r["mse"]
        cells, biases = [], []
        for q in PROJECTIONS:
            s = key[(d, m, angle, f, q)]
            cells.append(f"{s['mse']:.3g} ± {s['mse_se']:.1g} ({s['mse'] / base:.2f})")
            flag = "*" if abs(s["bias"]) > 4 * s["bias_se"] else ""
            biases.append(f"{s['bias']:+.2g}{flag}")
        lines.append(f"| {d} | {m} | {angle} | {f} | {r['exact']:.3f} | " + " | ".join(cells)
                     + " | " + " | ".join(biases) + " |")
    lines += [
        "",
        "## Cost (one projection, float32, batch of inputs)",
        "",
        "Median wall time to draw one projection and to apply it to the batch; `stored` counts",
        "the numbers a projection keeps (matrix entries; KAMA pair indices + angles; spinner",
        "signs). Ratios are against iid in the same run. KAMA applies its stages with pure-torch",
        "gathers (one per stage), so at these sizes it is op-bound, not FLOP-bound.",
        "",
        "| d | m | projection | draw us (x iid) | apply us (x iid) | stored (x iid) |",
        "|---|---|---|---|---|---|",
    ]
    base = {(r["d"], r["m"]): r for r in cost if r["projection"] == "iid"}
    for r in cost:
        b = base[(r["d"], r["m"])]
        lines.append(
            f"| {r['d']} | {r['m']} | {r['projection']} | "
            f"{r['draw_us']:.0f} ({r['draw_us'] / b['draw_us']:.2f}) | "
            f"{r['apply_us']:.0f} ({r['apply_us'] / b['apply_us']:.2f}) | "
            f"{r['stored']} ({r['stored'] / b['stored']:.3f}) |")
    (out / "png_kernels.md").write_text("\n".join(lines) + "\n")
    plot(acc, out / "png_kernels.png")


def plot(acc, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["d"] for r in acc})
    fig, axes = plt.subplots(len(dims), len(FEATURES), figsize=(4 * len(FEATURES), 3.2 * len(dims)),
                             squeeze=False)
    for i, d in enumerate(dims):
        for j, f in enumerate(FEATURES):
            ax = axes[i][j]
            for p in PROJECTIONS:
                pts = sorted((r["m"], r["mse"], r["mse_se"]) for r in acc
                             if r["d"] == d and r["feature"] == f and r["projection"] == p
                             and r["angle"] == "pi/2")
                ax.errorbar([q[0] for q in pts], [q[1] for q in pts], yerr=[q[2] for q in pts],
                            marker="o", label=p, capsize=2)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{f}, d={d}, angle pi/2", fontsize=9)
            ax.set_xlabel("m (features)")
            if j == 0:
                ax.set_ylabel("MSE")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--ratios", type=int, nargs="+", default=[1, 2, 4], help="m / d")
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256, help="inputs per apply in the cost table")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    command = "python benchmarks/png_kernels.py " + " ".join(sys.argv[1:] if argv is None else argv)
    acc = accuracy_rows(args.dims, args.ratios, args.trials, args.seed)
    cost = cost_rows(args.dims, args.ratios, args.batch, args.reps)
    write_outputs(acc, cost, args.out, command.strip())


if __name__ == "__main__":
    main()
