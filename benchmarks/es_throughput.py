"""ES rollout throughput: environment steps/s of the ways to run a policy, against the raw env.

For each environment and policy, one process, one torch thread, a fixed number of steps:

* ``raw env``: ``env.step`` with a fixed action (the ceiling);
* ``numpy actor``: what ES workers run (each layer's ``to_dense()`` once, NumPy matvecs per step);
* ``torch actor``: the actor as a torch module on single observations under ``no_grad``;
* ``sb3 predict``: ``model.predict`` per step (what an SB3 evaluation loop does).

Then whole ES iterations (``EvolutionStrategy.step``) on the local backend with 1 and 2 workers.
Ratios are against the raw env measured in the same run.

    python benchmarks/es_throughput.py --steps 20000 --out results/es_throughput.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlstruct.algos.backends import LocalBackend  # noqa: E402
from rlstruct.algos.es import ESSettings, EvolutionStrategy, PolicyActor, env_spec_from_config  # noqa: E402
from rlstruct.envs import make_vec_env  # noqa: E402
from rlstruct.policies import algo_class  # noqa: E402

CASES = [
    ("Swimmer-v5", "toeplitz", [16, 16]),
    ("HalfCheetah-v5", "toeplitz", [32, 32]),
    ("Hopper-v5", "kama", [64, 64]),
    ("Hopper-v5", "dense", [64, 64]),
]


def steps_per_s(env, act: Callable[[np.ndarray], object], steps: int) -> float:
    obs, _ = env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(act(obs))
        if terminated or truncated:
            obs, _ = env.reset()
    return steps / (time.perf_counter() - start)


def measure_case(env_id: str, structure: str, hidden: List[int], steps: int) -> Dict[str, float]:
    env_cfg = {"name": env_id, "id": env_id}
    model = algo_class("ppo")(
        "StructuredMlpPolicy", make_vec_env(env_cfg, 1, 0), seed=0, device="cpu",
        policy_kwargs=dict(structure=structure, net_arch=hidden, layer_kwargs={}),
    )
    actor = PolicyActor(model.policy)
    numpy_actor = actor.numpy_actor(actor.get_vector())
    env = env_spec_from_config(env_cfg, ESSettings()).make()
    zero = env.action_space.sample() * 0

    @torch.no_grad()
    def torch_act(obs):
        out = actor.network(torch.as_tensor(obs, dtype=torch.float32)).numpy()
        return np.clip(out, numpy_actor.low, numpy_actor.high)

    row = {
        "params": actor.dim,
        "raw env": steps_per_s(env, lambda obs: zero, steps),
        "numpy actor": steps_per_s(env, lambda obs: numpy_actor.act(obs), steps),
        "torch actor": steps_per_s(env, torch_act, steps),
        "sb3 predict": steps_per_s(env, lambda obs: model.predict(obs, deterministic=True)[0], steps // 4),
    }
    for workers in (1, 2):
        with LocalBackend(env_spec_from_config(env_cfg, ESSettings()), workers) as backend:
            es = EvolutionStrategy(ESSettings(directions=8), actor, backend, 0, True, 0.0)
            es.step()  # workers start (and import) on the first iteration
            before, start = es.steps, time.perf_counter()
            while es.steps - before < 2 * steps:
                es.step()
            row[f"ES iteration, {workers} worker(s)"] = (es.steps - before) / (time.perf_counter() - start)
    env.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    rows = []
    for env_id, structure, hidden in CASES:
        row = measure_case(env_id, structure, hidden, args.steps)
        rows.append((env_id, structure, hidden, row))
        print(env_id, structure, hidden, {k: round(v) for k, v in row.items()}, flush=True)
    keys = [k for k in rows[0][3] if k != "params"]
    lines = [
        "| env | actor | searched params | " + " | ".join(keys) + " |",
        "|---|---|---:|" + "---:|" * len(keys),
    ]
    for env_id, structure, hidden, row in rows:
        raw = row["raw env"]
        cells = [f"{row[k]:,.0f}" + ("" if k == "raw env" else f" ({row[k] / raw:.2f}x)") for k in keys]
        lines.append(f"| {env_id} | {structure} {hidden} | {row['params']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        header = (
            f"Environment steps/s (ratio to the raw env of the same row). {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}, one torch thread; ES iterations: 8 directions, orthogonal, "
            "observation normalization on. The machine is shared: 1-minute load average "
            f"{load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end "
            f"({os.cpu_count()} cores), so absolute numbers are noisy; compare within a row.\n\n"
            f"Command: `python benchmarks/es_throughput.py --steps {args.steps} --out {args.out}`\n\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# ES rollout throughput\n\n" + header + table + "\n")


if __name__ == "__main__":
    main()
