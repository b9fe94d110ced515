"""SB3 ``predict`` per call: structured policies against ``MlpPolicy`` (interleaved, repeated).

    python benchmarks/predict_latency.py --rounds 7 --calls 500 --out results/predict_latency.md

Hopper-v5, one torch thread, single observations, ``deterministic=True``. Each round times
``calls`` predictions of every model in turn; the figure is the median over rounds. The
``dense`` structure (same math as ``MlpPolicy``) is the control: its ratio shows what the
policy class itself changes (our deterministic ``_predict`` skips SB3's distribution object).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rlstruct.policies  # noqa: E402,F401  (registers "StructuredMlpPolicy")
from rlstruct.envs import make_vec_env  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--structures", default="dense,kama,toeplitz,hd3")
    parser.add_argument("--out", default="results/predict_latency.md")
    args = parser.parse_args()
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    env = make_vec_env({"id": "Hopper-v5"}, 1, 0)
    rows = []
    for hidden, act, extra in (([64, 64], "tanh", {}), ([256, 256], "relu", dict(log_std_init=-2.0, ortho_init=False))):
        arch = dict(net_arch=dict(pi=hidden, vf=hidden), activation_fn=torch.nn.Tanh if act == "tanh" else torch.nn.ReLU, **extra)
        models = {"MlpPolicy": PPO("MlpPolicy", env, policy_kwargs=arch, seed=0, device="cpu")}
        for structure in args.structures.split(","):
            kwargs = dict(arch, structure=structure, activation_fn=act)
            models[structure] = PPO("StructuredMlpPolicy", env, policy_kwargs=kwargs, seed=0, device="cpu")
        obs = env.reset()
        times = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                start = time.perf_counter()
                for _ in range(args.calls):
                    model.predict(obs, deterministic=True)
                times[name].append((time.perf_counter() - start) / args.calls * 1e6)
        base = float(np.median(times["MlpPolicy"]))
        for name, values in times.items():
            rows.append((f"{'-'.join(map(str, hidden))} {act}", name, float(np.median(values)), base / float(np.median(values))))
    load = " ".join(f"{x:.1f}" for x in __import__("os").getloadavg())
    lines = [
        "# SB3 `predict` per call: structured policies against `MlpPolicy`", "",
        f"Command: `python benchmarks/predict_latency.py --rounds {args.rounds} --calls {args.calls} --out {args.out}`", "",
        f"{platform.machine()}, torch {torch.__version__}, one thread; load average after the run: {load} "
        "(2 cores; training runs may share them: absolute times are noisy, ratios are the figures to read). "
        "Hopper-v5, single observations, deterministic; median of the rounds; ratio > 1: faster than `MlpPolicy`. "
        "`dense` is the control: same math as `MlpPolicy`, our policy class.", "",
        "| arch | policy | us / call | vs MlpPolicy |", "|---|---|---:|---:|",
    ]
    lines += [f"| {arch} | {name} | {us:.1f} | {ratio:.2f}x |" for arch, name, us, ratio in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
