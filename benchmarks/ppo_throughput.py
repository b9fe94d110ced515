"""PPO throughput of every registered structure against dense ``nn.Linear``, one torch thread.

For each architecture (``64-64`` tanh, ``256-256`` relu: the RL Zoo's tuned MuJoCo policy,
``log_std_init -2``, ``ortho_init False``) and structure it builds SB3's
``PPO("StructuredMlpPolicy", "Hopper-v5", policy_kwargs=dict(structure=s, net_arch=...))``
with PPO's defaults (n_steps 2048, batch 64, 10 epochs) and reports, as ratios to SB3's
``MlpPolicy`` (plain ``nn.Linear`` layers) timed in the same run:

* ``train``: environment steps per second of ``model.learn(2048)`` (one rollout of 2048 steps
  and its 320 minibatch updates), split into the rollout phase and the update phase;
* ``predict``: ``model.predict(obs, deterministic=True)`` calls per second on single
  observations (what a deployed policy and SB3's one-env rollouts pay per step).

Timed after a warm-up (a forward/backward on a minibatch, a few predictions: numba kernels
load, caches fill). The machine is shared and its load drifts, so measurements are paired:
each structure's ``learn`` runs right after the baseline's, predictions alternate call by call,
and ratios are medians over ``--rounds`` pairs. ``mlp-control`` (a second ``MlpPolicy``) shows
how far two equal-cost runs differ; ``dense`` (``nn.Linear`` math behind our policy class) what
the class changes apart from structure. A micro section
times the KAMA layer (fused CPU kernels and the pure-torch reference path) against
``nn.Linear``, and the first-call cost of the numba kernels (cached code vs a fresh compile).

    python benchmarks/ppo_throughput.py                            # all structures
    python benchmarks/ppo_throughput.py --structures kama,dense --rounds 1
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
# RLSTRUCT_CODE=<checkout> times another checkout's rlstruct (the "before" column) with this
# harness; results still go under this checkout.
CODE = Path(os.environ.get("RLSTRUCT_CODE", ROOT)).resolve()
sys.path.insert(0, str(CODE))

import rlstruct.policies  # noqa: E402,F401  (registers "StructuredMlpPolicy")
from rlstruct.kernels import dispatch  # noqa: E402
from rlstruct.layers import available_structures, make_layer  # noqa: E402

BASELINE = "nn.Linear"  # SB3's MlpPolicy
CONTROL = "mlp-control"  # a second MlpPolicy timed against the first: the noise floor


def arch_kwargs(hidden: List[int], activation: str) -> Dict[str, object]:
    """``policy_kwargs`` shared by the baseline and the structured policy. ReLU stands for the
    RL Zoo's tuned MuJoCo policy (``log_std_init -2``, ``ortho_init False``), tanh for SB3's
    default one."""
    kwargs: Dict[str, object] = dict(net_arch=dict(pi=list(hidden), vf=list(hidden)),
                                     activation_fn=nn.ReLU if activation == "relu" else nn.Tanh)
    if activation == "relu":
        kwargs.update(log_std_init=-2.0, ortho_init=False)
    return kwargs


def build_model(structure: str, hidden: List[int], seed: int, activation: str = "tanh"):
    from stable_baselines3 import PPO

    kwargs = arch_kwargs(hidden, activation)
    if structure in (BASELINE, CONTROL):
        return PPO("MlpPolicy", "Hopper-v5", policy_kwargs=kwargs, seed=seed, device="cpu")
    return PPO("StructuredMlpPolicy", "Hopper-v5", seed=seed, device="cpu",
               policy_kwargs=dict(structure=structure, **kwargs))


def time_predict_after_update(model, observations: np.ndarray, calls: int) -> Dict[str, float]:
    """``calls`` single predictions right after an update: first call, mean and median
    seconds, and how many times a structured layer rebuilt its cached ``W`` (identity of the
    cached tensor changing between calls)."""
    from rlstruct.layers import StructuredLinear

    layers = [m for m in model.policy.modules() if isinstance(m, StructuredLinear)]
    times, rebuilds = [], 0
    for i in range(calls):
        before = [id(m._cached_weight) for m in layers]
        start = time.perf_counter()
        model.predict(observations[i % len(observations)], deterministic=True)
        times.append(time.perf_counter() - start)
        rebuilds += sum(a != id(m._cached_weight) for a, m in zip(before, layers))
    return {"first": times[0], "mean": statistics.fmean(times),
            "median": statistics.median(times), "rebuilds": rebuilds}


def warm_up(model) -> None:
    """One minibatch forward/backward and a few predictions before any timing."""
    obs_dim = model.observation_space.shape[0]
    obs = torch.randn(64, obs_dim)
    actions = torch.randn(64, model.action_space.shape[0])
    values, log_prob, _ = model.policy.evaluate_actions(obs, actions)
    (values.sum() + log_prob.sum()).backward()
    model.policy.zero_grad()
    for row in obs[:8].numpy():
        model.predict(row, deterministic=True)


def time_training(model, steps: int) -> Dict[str, float]:
    """Seconds of ``model.learn(steps)`` in all, in ``collect_rollouts`` and in ``train``."""
    spent = {"rollout": 0.0, "update": 0.0}

    def timed(name: str, fn: Callable):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
        return wrapper

    model.collect_rollouts = timed("rollout", model.collect_rollouts)
    model.train = timed("update", model.train)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    spent["total"] = time.perf_counter() - start
    del model.collect_rollouts, model.train  # back to the class methods
    return spent


def time_predict_paired(models: List, observations: np.ndarray, calls: int) -> List[float]:
    """Median seconds per ``predict(obs, deterministic=True)`` on single observations, per
    model; calls alternate between the models so that both see the same machine load, and
    the median drops calls that the scheduler preempted."""
    spent: List[List[float]] = [[] for _ in models]
    for i in range(calls):
        row = observations[i % len(observations)]
        for index, model in enumerate(models):
            start = time.perf_counter()
            model.predict(row, deterministic=True)
            spent[index].append(time.perf_counter() - start)
    return [statistics.median(times) for times in spent]


def sample_observations(model, count: int = 256) -> np.ndarray:
    env = model.get_env()
    obs = env.reset()
    rows = []
    for _ in range(count):
        obs, *_ = env.step(np.array([model.action_space.sample()]))
        rows.append(obs[0].copy())
    return np.stack(rows).astype(np.float32)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.policy.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
def median_time(fn: Callable[[], None], min_time: float = 0.3) -> float:
    fn()
    times: List[float] = []
    while sum(times) < min_time or len(times) < 5:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def micro(widths: List[int], batch: int) -> List[Dict[str, object]]:
    """KAMA layer (fused and reference path) vs ``nn.Linear``: microseconds per call."""
    rows = []
    for width in widths:
        x = torch.randn(batch, width)
        linear = nn.Linear(width, width)
        kama = make_layer("kama", width, width)
        fused_module = dispatch.givens_cpu

        def layer_times(layer: nn.Module, build: Optional[Callable]) -> Dict[str, float]:
            def fwd():
                layer(x)

            def fwd_bwd():
                layer(x).sum().backward()

            out = {"fwd": median_time(fwd), "fwd+bwd": median_time(fwd_bwd)}
            if build is not None:
                out["build fwd+bwd"] = median_time(lambda: build().sum().backward())
                with torch.no_grad():
                    out["build"] = median_time(build)
            return out

        base = layer_times(linear, None)
        fused = layer_times(kama, kama.to_dense)
        dispatch.givens_cpu = None
        try:
            reference = layer_times(kama, kama.to_dense)
        finally:
            dispatch.givens_cpu = fused_module
        for name in ("fwd", "fwd+bwd", "build", "build fwd+bwd"):
            rows.append({
                "width": width, "batch": batch, "op": name,
                "linear_us": base[name] * 1e6 if name in base else None,
                "kama_fused_us": fused[name] * 1e6,
                "kama_reference_us": reference[name] * 1e6,
            })
    return rows


def product_sizes(sizes: List[tuple]) -> List[Dict[str, object]]:
    """The bare Givens product fwd+bwd, fused vs reference (is there a size to switch at?)."""
    from rlstruct.kernels.givens_cpu import givens_product_cpu
    from rlstruct.kernels.reference import givens_reference
    from rlstruct.layers.givens import butterfly_pairs

    rows = []
    for width, batch in sizes:
        pairs = butterfly_pairs(width)
        angles = torch.rand(pairs.shape[0], width // 2, requires_grad=True)
        x = torch.randn(batch, width, requires_grad=True)
        fused = median_time(lambda: givens_product_cpu(x, pairs, angles).sum().backward())
        ref = median_time(lambda: givens_reference(x, pairs, angles).sum().backward())
        rows.append({"width": width, "batch": batch, "fused_us": fused * 1e6,
                     "reference_us": ref * 1e6})
    return rows


FIRST_CALL = """
import time, torch
t0 = time.perf_counter()
from rlstruct.layers import make_layer
t1 = time.perf_counter()
layer = make_layer("kama", 64, 64)
layer(torch.randn(2, 64)).sum().backward()
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def first_call_seconds(cache_dir: Optional[str]) -> List[float]:
    """Import time and first KAMA fwd+bwd (float32) in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, capture_output=True,
                         text=True, check=True)
    return [float(v) for v in out.stdout.split()]


def summarize_after(label: str, structure: str, after) -> Dict[str, object]:
    """Medians over rounds of the predict-after-update figures, baseline and structure."""
    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in after[side])

    return {
        "hidden": label, "structure": structure,
        "base_first_us": med("base", "first") * 1e6, "first_us": med("mine", "first") * 1e6,
        "mean_ratio": med("base", "mean") / med("mine", "mean"),
        "median_ratio": med("base", "median") / med("mine", "median"),
        "rebuilds": sum(r["rebuilds"] for r in after["mine"]) / len(after["mine"]),
    }


def layer_paths(structures: List[str]) -> List[Dict[str, object]]:
    """One layer's training fwd+bwd (batch rows, sum loss), both paths and what ``forward``
    picks, against ``nn.Linear``: the measurements behind ``train_structured`` rules."""
    rows = []
    for size in ((11, 64), (64, 64), (11, 256), (256, 256)):
        for batch in (32, 64):
            x = torch.randn(batch, size[0])
            linear = nn.Linear(*size)
            base = median_time(lambda: linear(x).sum().backward())
            for structure in structures:
                if structure in ("dense", CONTROL):
                    continue
                times = {}
                for name, threshold in (("build", 1 << 30), ("structure", 0), ("picked", None)):
                    layer = make_layer(structure, *size, dense_threshold=threshold)
                    times[name] = median_time(lambda: layer(x).sum().backward())
                rows.append({"size": f"{size[0]}->{size[1]}", "batch": batch,
                             "structure": structure, "linear_us": base * 1e6,
                             **{f"{k}_us": v * 1e6 for k, v in times.items()}})
    return rows


# ---------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--structures", default="all",
                        help="comma-separated registered structures (default: all)")
    parser.add_argument("--hidden", default="64:tanh,256:relu",
                        help="comma-separated WIDTH:ACTIVATION (two hidden layers each)")
    parser.add_argument("--steps", type=int, default=2048, help="timed environment steps")
    parser.add_argument("--rounds", type=int, default=2,
                        help="paired repeats per structure (median kept)")
    parser.add_argument("--predict-calls", type=int, default=1000)
    parser.add_argument("--after-update-calls", type=int, default=500,
                        help="single predictions timed right after each learn call")
    parser.add_argument("--out", default="results/ppo_throughput", help="path without suffix")
    parser.add_argument("--skip-micro", action="store_true")
    parser.add_argument("--skip-first-call", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    known = available_structures() + [CONTROL]
    names = known if args.structures == "all" else args.structures.split(",")
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown structures {unknown}; choose from {known}")
    ordered = sorted(names, key=lambda name: name != "kama")  # the layer with targets first
    load_before = os.getloadavg()
    start_all = time.perf_counter()
    rows, after_rows = [], []
    for spec in args.hidden.split(","):
        width_text, _, activation = spec.partition(":")
        hidden, activation = int(width_text), activation or "tanh"
        label = f"{hidden}-{hidden} {activation}"
        baseline = build_model(BASELINE, [hidden, hidden], 0, activation)
        warm_up(baseline)
        observations = sample_observations(baseline)
        baseline_runs: Dict[str, List[float]] = {"train": [], "predict": []}
        for structure in ordered:
            torch.manual_seed(0)
            model = build_model(structure, [hidden, hidden], 0, activation)
            warm_up(model)
            ratios: Dict[str, List[float]] = {k: [] for k in ("train", "rollout", "update",
                                                              "predict")}
            speeds: Dict[str, List[float]] = {"train": [], "predict": []}
            after: Dict[str, List[Dict[str, float]]] = {"base": [], "mine": []}
            for _ in range(args.rounds):
                base = time_training(baseline, args.steps)
                after["base"].append(time_predict_after_update(
                    baseline, observations, args.after_update_calls))
                mine = time_training(model, args.steps)
                after["mine"].append(time_predict_after_update(
                    model, observations, args.after_update_calls))
                for phase, name in (("total", "train"), ("rollout", "rollout"),
                                    ("update", "update")):
                    ratios[name].append(base[phase] / mine[phase])
                base_p, mine_p = time_predict_paired([baseline, model], observations,
                                                     args.predict_calls)
                ratios["predict"].append(base_p / mine_p)
                speeds["train"].append(args.steps / mine["total"])
                speeds["predict"].append(1.0 / mine_p)
                baseline_runs["train"].append(args.steps / base["total"])
                baseline_runs["predict"].append(1.0 / base_p)
            row = {
                "hidden": label, "structure": structure,
                "params": count_parameters(model),
                "train_steps_per_s": round(statistics.median(speeds["train"]), 1),
                "train_ratio": round(statistics.median(ratios["train"]), 3),
                "rollout_phase_ratio": round(statistics.median(ratios["rollout"]), 3),
                "update_phase_ratio": round(statistics.median(ratios["update"]), 3),
                "predict_per_s": round(statistics.median(speeds["predict"]), 1),
                "predict_ratio": round(statistics.median(ratios["predict"]), 3),
            }
            rows.append(row)
            after_rows.append(summarize_after(label, structure, after))
            print(row, after_rows[-1], flush=True)
        rows.insert(len(rows) - len(ordered), {
            "hidden": label, "structure": BASELINE,
            "params": count_parameters(baseline),
            "train_steps_per_s": round(statistics.median(baseline_runs["train"]), 1),
            "train_ratio": 1.0, "rollout_phase_ratio": 1.0, "update_phase_ratio": 1.0,
            "predict_per_s": round(statistics.median(baseline_runs["predict"]), 1),
            "predict_ratio": 1.0,
        })
    ppo_seconds = time.perf_counter() - start_all
    load_after = os.getloadavg()

    path_rows = [] if args.skip_micro else layer_paths(ordered)
    micro_rows = [] if args.skip_micro else micro([64, 256], 64)
    product_rows = [] if args.skip_micro else product_sizes(
        [(64, 64), (256, 64), (256, 2048), (1024, 64), (1024, 2048)])
    first_cached = first_compile = None
    if not args.skip_first_call:
        first_cached = first_call_seconds(None)
        with tempfile.TemporaryDirectory() as fresh:
            first_compile = first_call_seconds(fresh)

    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    command = "python " + " ".join(shlex.quote(a) for a in [
        "benchmarks/ppo_throughput.py", *(sys.argv[1:] if argv is None else argv)])
    write_markdown(out.with_suffix(".md"), command, rows, micro_rows, product_rows,
                   first_cached, first_compile, load_before, load_after, ppo_seconds,
                   args.rounds, args.steps, after_rows, path_rows)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}")


def write_markdown(path: Path, command: str, rows, micro_rows, product_rows, first_cached,
                   first_compile, load_before, load_after, ppo_seconds, rounds: int,
                   steps: int, after_rows=(), path_rows=()) -> None:
    lines = [
        "# PPO throughput: structured policies vs dense (CPU, one torch thread)", "",
        f"Command: `{command}`", "",
        f"Hopper-v5, SB3 PPO defaults (n_steps 2048, batch 64, 10 epochs), one env; relu rows "
        "use the RL Zoo MuJoCo policy options (log_std_init -2, ortho_init False); timed "
        f"`model.learn({steps})` after a warm-up. Paired measurements: each structure's "
        "learn call runs right after one of SB3's `MlpPolicy` (plain `nn.Linear`, row "
        f"`{BASELINE}`), its predictions alternate call by call with the baseline's, and "
        f"each ratio is the median of {rounds} such pairs (> 1: faster than dense). "
        "`predict`: `model.predict(obs, deterministic=True)` on single observations "
        "(median call). "
        f"`{CONTROL}`: a second `MlpPolicy`, timed like a structure: its distance from 1.00 is "
        "the measurement noise. `dense`: `nn.Linear` math inside our policy class (fused Adam, "
        "the Gaussian head without a distribution object, the cached no-grad path): what the "
        "class changes apart from structure. "
        f"torch {torch.__version__}, {os.cpu_count()} cores shared with other jobs: load "
        f"average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"({ppo_seconds:.0f} s of PPO timing), so absolute numbers are noisy; ratios are "
        "the figures to read.", "",
        "| hidden | structure | params | train steps/s | train ratio | rollout phase "
        "ratio | update phase ratio | predict/s | predict ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['hidden']} | {r['structure']} | {r['params']} | {r['train_steps_per_s']:.0f}"
            f" | {r['train_ratio']:.2f} | {r['rollout_phase_ratio']:.2f} | "
            f"{r['update_phase_ratio']:.2f} | {r['predict_per_s']:.0f} | "
            f"{r['predict_ratio']:.2f} |")
    if after_rows:
        lines += [
            "", "## Predict right after an update", "",
            "Single `predict` calls timed one by one right after each `learn` call (the "
            "baseline's after its own learn). `rebuilds`: structured layers whose cached W "
            "was rebuilt during those calls (per round; 2 = each actor layer once, on the "
            "first call). Ratios > 1: faster than dense.", "",
            "| hidden | structure | first call us (dense) | first call us | mean ratio | "
            "median ratio | rebuilds |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in after_rows:
            lines.append(
                f"| {r['hidden']} | {r['structure']} | {r['base_first_us']:.0f} | "
                f"{r['first_us']:.0f} | {r['mean_ratio']:.2f} | {r['median_ratio']:.2f} | "
                f"{r['rebuilds']:.1f} |")
    if path_rows:
        lines += [
            "", "## Paths: one layer's training fwd+bwd, build vs structure (microseconds)", "",
            "`build`: W built then one matmul; `structure`: the transform applied to the "
            "batch; `picked`: what `forward` chooses by default (`train_structured`).", "",
            "| size | batch | structure | nn.Linear | build | structure | picked |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for r in path_rows:
            lines.append(
                f"| {r['size']} | {r['batch']} | {r['structure']} | {r['linear_us']:.0f} | "
                f"{r['build_us']:.0f} | {r['structure_us']:.0f} | {r['picked_us']:.0f} |")
    if micro_rows:
        lines += [
            "", "## Micro: KAMA layer vs nn.Linear (square, batch 64, microseconds)", "",
            "`fwd`/`fwd+bwd`: the layer with gradients on (builds W, then one matmul); "
            "`build`: `to_dense()` without gradients; `build fwd+bwd`: `to_dense()` and its "
            "backward. `reference`: the same layer with the fused CPU kernels switched off.",
            "",
            "| width | op | nn.Linear | KAMA fused | KAMA reference | fused / linear |"
            " reference / fused |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in micro_rows:
            linear, fused = r["linear_us"], r["kama_fused_us"]
            linear_text = "" if linear is None else f"{linear:.1f}"
            ratio_text = "" if linear is None else f"{fused / linear:.2f}"
            lines.append(
                f"| {r['width']} | {r['op']} | {linear_text} | {fused:.1f} | "
                f"{r['kama_reference_us']:.1f} | {ratio_text} | "
                f"{r['kama_reference_us'] / fused:.1f} |")
    if product_rows:
        lines += [
            "", "## Micro: bare Givens product fwd+bwd, fused vs reference (butterfly)", "",
            "| width | batch | fused us | reference us | reference / fused |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in product_rows:
            lines.append(f"| {r['width']} | {r['batch']} | {r['fused_us']:.0f} | "
                         f"{r['reference_us']:.0f} | {r['reference_us'] / r['fused_us']:.1f} |")
    if first_cached is None:
        path.write_text("\n".join(lines) + "\n")
        return
    lines += [
        "", "## First call (fresh process: import, then one KAMA 64x64 fwd+bwd)", "",
        f"- numba machine code cached (`cache=True`, `__pycache__`): import "
        f"{first_cached[0]:.2f} s, first call {first_cached[1]:.2f} s.",
        f"- empty cache (`NUMBA_CACHE_DIR` fresh, float32 kernels compile): import "
        f"{first_compile[0]:.2f} s, first call {first_compile[1]:.2f} s; paid once per "
        "machine and dtype.",
    ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
