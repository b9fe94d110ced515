"""ES worker scaling: environment steps/s of whole ES iterations against the number of workers.

One ES setting (HalfCheetah-v5, a Toeplitz [24, 24] actor of 285 searched parameters, 16
orthogonal antithetic directions = 32 episodes of 1,000 steps per iteration, observation
normalization on), run on each backend with each worker count. After one warm-up iteration
(workers start and import there) it times ``--iterations`` iterations. Speed-up is against one
local worker in the same run; ``ideal`` is ``min(workers, cores)``. Every row also checks that the
parameters after the timed iterations equal the 1-worker run's (results must not depend on the
number of workers).

    python benchmarks/es_scaling.py --workers 1 2 --backends local ray --out results/es_scaling.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlstruct.algos.backends import make_backend  # noqa: E402
from rlstruct.algos.es import ESSettings, EvolutionStrategy, PolicyActor, env_spec_from_config  # noqa: E402
from rlstruct.envs import make_vec_env  # noqa: E402
from rlstruct.policies import algo_class  # noqa: E402

ENV = {"name": "halfcheetah", "id": "HalfCheetah-v5"}
STRUCTURE, HIDDEN, DIRECTIONS = "toeplitz", [24, 24], 16


def new_actor() -> PolicyActor:
    """The same initial actor for every row (seed 0)."""
    model = algo_class("ppo")(
        "StructuredMlpPolicy", make_vec_env(ENV, 1, 0), seed=0, device="cpu",
        policy_kwargs=dict(structure=STRUCTURE, net_arch=HIDDEN, layer_kwargs={}),
    )
    return PolicyActor(model.policy)


def run_row(backend: str, workers: int, iterations: int) -> Tuple[float, float, np.ndarray]:
    """``(steps/s, wall seconds of the timed iterations, final parameters)`` for one row."""
    actor = new_actor()
    settings = ESSettings(directions=DIRECTIONS)
    with make_backend(backend, env_spec_from_config(ENV, settings), workers) as pool:
        es = EvolutionStrategy(settings, actor, pool, 0, True, 0.0)
        es.step()  # warm-up: workers start and import here
        before, start = es.steps, time.perf_counter()
        for _ in range(iterations):
            es.step()
        wall = time.perf_counter() - start
    return (es.steps - before) / wall, wall, actor.get_vector().copy()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", default=["local"], choices=["local", "ray"])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    base_speed, base_params = None, None
    rows: List[Dict[str, str]] = []
    for backend in args.backends:
        for workers in args.workers:
            speed, wall, params = run_row(backend, workers, args.iterations)
            if base_speed is None:  # the first row (1 local worker by default) is the baseline
                base_speed, base_params = speed, params
            rows.append(dict(
                backend=backend, workers=str(workers), steps_per_s=f"{speed:,.0f}", wall=f"{wall:.1f}",
                speedup=f"{speed / base_speed:.2f}x", ideal=f"{min(workers, cores)}x",
                same=str(bool(np.array_equal(params, base_params))),
            ))
            print(rows[-1], flush=True)
    lines = ["| backend | workers | env steps/s | timed wall (s) | speed-up | ideal | same parameters |",
             "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['backend']} | {r['workers']} | {r['steps_per_s']} | {r['wall']} | {r['speedup']} | "
              f"{r['ideal']} | {r['same']} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        command = shlex.join(["python", "benchmarks/es_scaling.py", *(argv if argv is not None else sys.argv[1:])])
        text = (
            "# ES worker scaling\n\n"
            f"Command: `{command}`\n\n"
            f"{ENV['id']}, {STRUCTURE} {HIDDEN} actor, {DIRECTIONS} orthogonal directions "
            f"({2 * DIRECTIONS} episodes per iteration), {args.iterations} timed iterations after one "
            f"warm-up. {platform.machine()}, {cores} cores, torch {torch.__version__}, one torch "
            f"thread per process; 1-minute load average {load_before:.1f} before and "
            f"{os.getloadavg()[0]:.1f} after.\n\n" + table + "\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
