"""Time of one projUNN optimizer step, dense (``O(N^3)``) vs low-rank (``O(k N^2)``) update.

For each width ``N`` and rank ``k`` it times ``opt.step()`` on one ``N x N`` float32 orthogonal
parameter with a fixed random gradient, on the CPU with one torch thread, for ProjUNN-D and
ProjUNN-T with ``update="dense"`` and ``update="lowrank"``. The gradient's rank-``k`` factors come
from ``lowrank="randomized"`` (randomized subspace iteration, itself ``O(k N^2)``), so a step is
what a user pays; the factorization alone is timed too (``factor``), next to
``torch.svd_lowrank`` with the same sizes (``svd_lowrank``), which it replaces. Each time is the median of repeated
calls (after one warm-up call, which also does the first-step orthogonality check), at least 3
calls and ``--min-time`` seconds, at most 40 (so no call lands on the every-100th-step
re-projection). Ratios are low-rank / dense from the same run (< 1: low-rank is faster).

    python benchmarks/projunn_update.py                 # writes results/projunn_update.md
    python benchmarks/projunn_update.py --widths 64 --ranks 1 --out /tmp/x.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlstruct.optim import ProjUNND, ProjUNNT  # noqa: E402
from rlstruct.optim.projunn import low_rank_factors  # noqa: E402

MAX_CALLS = 40


def median_seconds(fn: Callable[[], object], min_time: float) -> float:
    """Median seconds per call of ``fn`` after one warm-up call."""
    fn()
    times: List[float] = []
    while (sum(times) < min_time or len(times) < 3) and len(times) < MAX_CALLS:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_step(opt_class: type, n: int, k: int, update: str, min_time: float) -> float:
    """Median seconds of one ``opt.step()`` on a fresh ``n x n`` orthogonal parameter."""
    g = torch.Generator().manual_seed(n + k)
    # Row-major like nn.Linear's weight (QR returns column-major; copying a row-major step result
    # into a column-major parameter would add a ~10 ms transposing copy at N = 1024).
    w = torch.nn.Parameter(torch.linalg.qr(torch.randn(n, n, generator=g))[0].contiguous())
    w.grad = torch.randn(n, n, generator=g)
    opt = opt_class([w], lr=1e-3, rank=k, lowrank="randomized", update=update)
    return median_seconds(opt.step, min_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,256,1024")
    parser.add_argument("--ranks", default="1,4,16")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds of timed calls per cell")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "projunn_update.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    widths = [int(v) for v in args.widths.split(",")]
    ranks = [int(v) for v in args.ranks.split(",")]

    load_before = os.getloadavg()[0]
    rows = []
    for n in widths:
        for k in ranks:
            grad = torch.randn(n, n)
            factor = median_seconds(lambda: low_rank_factors(grad, k, "randomized"), args.min_time)
            torch_factor = median_seconds(lambda: torch.svd_lowrank(grad, q=k + 4, niter=2), args.min_time)
            cells = [n, k, torch_factor, factor]
            for opt_class in (ProjUNND, ProjUNNT):
                dense = time_step(opt_class, n, k, "dense", args.min_time)
                lowrank = time_step(opt_class, n, k, "lowrank", args.min_time)
                cells += [dense, lowrank, lowrank / dense]
            rows.append(cells)
            print(" ".join(f"{c:.4g}" for c in cells), flush=True)

    command = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    lines = [
        "# projUNN: one optimizer step, dense vs low-rank update",
        "",
        f"Command: `{command}` (torch {torch.__version__}, CPU, 1 thread, float32).",
        "",
        f"{os.cpu_count()} CPU cores; 1-minute load average {load_before:.1f} before the run and "
        f"{os.getloadavg()[0]:.1f} after it (other processes share the cores, so expect noise).",
        "",
        "Median ms of one `opt.step()` on one `N x N` orthogonal parameter with a fixed gradient,",
        '`lowrank="randomized"` (rank-k factors by randomized subspace iteration, timed alone in',
        "`factor`; `svd_lowrank`: `torch.svd_lowrank(G, q=k+4, niter=2)`, the same algorithm).",
        "`ratio` = low-rank / dense, same run (< 1: low-rank faster). The every-100th-step dense",
        "re-projection of the low-rank path (`O(N^3)/100` amortized) is not in these times.",
        "",
        "| N | k | svd_lowrank ms | factor ms | D dense ms | D low-rank ms | D ratio | T dense ms "
        "| T low-rank ms | T ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, k, torch_factor, factor, dd, dl, dr, td, tl, tr in rows:
        lines.append(
            f"| {n} | {k} | {torch_factor * 1e3:.3g} | {factor * 1e3:.3g} | {dd * 1e3:.3g} | {dl * 1e3:.3g} | {dr:.3f} "
            f"| {td * 1e3:.3g} | {tl * 1e3:.3g} | {tr:.3f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
