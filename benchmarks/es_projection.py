"""ES scale-out: measured serial and parallel parts, per-message costs, projected efficiency.

What it measures (short: a few iterations per case, seconds each):

1. **Per case** (Humanoid Toeplitz [64, 64], HalfCheetah and Hopper Toeplitz [24, 24]), one local
   worker, a few ES iterations after a warm-up: the driver's serial seconds per iteration
   (sampling, packing, stats merge, gradient, update) and the parallel seconds (the backend's map),
   hence the cost of one environment step inside a worker.
2. **Driver serial part against the number of directions** (16 to 256): ES iterations on a
   backend that answers instantly with synthetic returns and statistics, so ``serial_s`` is the
   driver's work alone.
3. **Per-message costs**: round trips of a tiny task (``PingTask``) and of a new iteration spec
   (``theta``-sized) on the local backend and on Ray (``ray.init(num_cpus=2)``).

Projection for ``N`` workers and ``n = max(directions, N)`` directions (one task or more per
worker), every task a pair of full-length episodes (``2 * 1000 * t_step`` seconds)::

    T(N) = serial(n) + ceil(n / N) * tau + directions(n) + c_task * n + c_spec * N
    efficiency(N) = T(1) / (N * T(N))

``directions(n)`` is each worker regenerating the iteration's directions (the driver's sampling
time, paid in parallel); ``c_task``/``c_spec`` are the driver's measured per-message costs, paid
one after another. The model knows nothing of shared cores, memory bandwidth, hyper-threads or
stragglers (episodes of different lengths): it is an upper bound, checked against the measured
1-2 workers here and the 16-core figures of ``results/es_scaling.md``.

    nice -n 10 python benchmarks/es_projection.py --iterations 2 --out results/es_projection.md
"""

from __future__ import annotations

import os

# One BLAS thread in the driver too: on cores shared with workers (and here with a running study)
# a multi-threaded QR only oversubscribes them. Must be set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlstruct.algos.backends import Backend, make_backend  # noqa: E402
from rlstruct.algos.es import ESSettings, EvolutionStrategy, PolicyActor, env_spec_from_config  # noqa: E402
from rlstruct.algos.rollout import PingTask, RolloutResult, RunningStats, Shared  # noqa: E402
from rlstruct.envs import make_vec_env  # noqa: E402
from rlstruct.policies import algo_class  # noqa: E402

#: (label, env id, hidden, directions, sampling): the settings of docs/es.md and a Humanoid-sized
#: policy (348 observations, 17 actions).
CASES = [
    ("Humanoid toeplitz [64, 64]", "Humanoid-v5", [64, 64], 16),
    ("HalfCheetah toeplitz [24, 24]", "HalfCheetah-v5", [24, 24], 16),
    ("Hopper toeplitz [24, 24]", "Hopper-v5", [24, 24], 8),
]
WORKERS = (16, 64, 256)
EPISODE = 1000  # steps of a full-length episode (the time limit of these tasks)


def new_actor(env_id: str, hidden: List[int]) -> PolicyActor:
    model = algo_class("ppo")(
        "StructuredMlpPolicy", make_vec_env({"name": env_id, "id": env_id}, 1, 0), seed=0, device="cpu",
        policy_kwargs=dict(structure="toeplitz", net_arch=hidden, layer_kwargs={}),
    )
    return PolicyActor(model.policy)


class InstantBackend(Backend):
    """Answers every task at once with synthetic returns and observation statistics."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__(None, 1)  # type: ignore[arg-type]
        self.obs_dim = obs_dim
        self.rng = np.random.default_rng(0)

    def map(self, tasks: Sequence[Any], shared: Sequence[Shared] = ()) -> List[RolloutResult]:
        out = []
        for task in tasks:
            returns = list(self.rng.normal(size=2))
            stats = RunningStats.from_batch(self.rng.normal(size=(4, self.obs_dim)))
            out.append(RolloutResult(task.index, returns, returns, 2 * EPISODE, stats))
        return out

    def close(self) -> None:
        pass


def measure_case(env_id: str, hidden: List[int], directions: int, iterations: int, workers: int) -> Dict[str, float]:
    """Serial/parallel seconds per iteration of real ES iterations on ``workers`` local workers."""
    actor = new_actor(env_id, hidden)
    settings = ESSettings(directions=directions)
    with make_backend("local", env_spec_from_config({"id": env_id}, settings), workers) as pool:
        es = EvolutionStrategy(settings, actor, pool, 0, True, 0.0)
        es.step()  # warm-up: workers start, import and receive the program here
        es.serial_s = es.parallel_s = 0.0
        es.timed_iterations = 0
        before = es.steps
        for _ in range(iterations):
            es.step()
        steps = es.steps - before
    n = es.timed_iterations
    return dict(dim=actor.dim, serial=es.serial_s / n, parallel=es.parallel_s / n,
                steps=steps / n, t_step=es.parallel_s / steps)


def serial_against_directions(env_id: str, hidden: List[int], counts: Sequence[int], repeats: int = 3) -> Dict[int, Dict[str, float]]:
    """Driver seconds per iteration (and of sampling alone) for each direction count."""
    actor = new_actor(env_id, hidden)
    obs_dim = actor.network[0].in_features
    out = {}
    for n in counts:
        es = EvolutionStrategy(ESSettings(directions=n), actor, InstantBackend(obs_dim), 0, True, 0.0)
        es.step()
        serial, sampling = [], []
        for _ in range(repeats):
            serial.append(es.step()["serial_s"])
            tick = time.perf_counter()
            es.directions(es.iteration)
            sampling.append(time.perf_counter() - tick)
        out[n] = dict(serial=float(np.median(serial)), sampling=float(np.median(sampling)))
    return out


def message_costs(backend_name: str, dim: int, rounds: int = 200) -> Dict[str, float]:
    """Seconds per tiny-task round trip and per new ``theta``-sized spec, on 2 workers."""
    spec = env_spec_from_config({"id": "CartPole-v1"}, ESSettings())
    with make_backend(backend_name, spec, 2) as pool:
        pool.map([PingTask(i) for i in range(8)])  # warm-up
        tick = time.perf_counter()
        for i in range(rounds):  # one task at a time: the latency of a round trip
            pool.map([PingTask(0)])
        rtt = (time.perf_counter() - tick) / rounds
        send = 0.0
        tick = time.perf_counter()
        for i in range(rounds // 10):
            pool.map([PingTask(j) for j in range(10)])
            send += pool.last_send_s
        task = (time.perf_counter() - tick) / rounds
        send /= rounds  # what the driver itself spends per task message (pickle + write/submit)
        theta = np.zeros(dim)
        tick = time.perf_counter()
        for i in range(rounds // 10):  # a new spec each map: both workers receive it once
            pool.map([PingTask(0), PingTask(1)], [Shared("iteration", i, theta + i)])
        per_map = (time.perf_counter() - tick) / (rounds // 10)
        spec_cost = max(per_map - 2 * task, 0.0) / 2
    return dict(task=task, rtt=rtt, send=send, spec=spec_cost)


def project(serial: Dict[int, Dict[str, float]], directions: int, tau: float, costs: Dict[str, float],
            workers: int, spec_per_worker: bool) -> Dict[str, float]:
    n = max(directions, workers)
    s = serial[n]["serial"] if n in serial else serial[max(serial)]["serial"] * n / max(serial)
    d = serial[n]["sampling"] if n in serial else serial[max(serial)]["sampling"] * n / max(serial)

    def messages(k: int) -> float:
        # the driver sends n task messages one after another; a spec goes down each local pipe,
        # while Ray puts it once and each actor fetches it in parallel; plus one round trip of
        # latency per round of tasks
        spec = costs["spec"] * (k if spec_per_worker else 1)
        return costs["send"] * n + spec + math.ceil(n / k) * costs["rtt"]

    def wall(k: int) -> float:
        return s + math.ceil(n / k) * tau + d + messages(k)

    eff = wall(1) / (workers * wall(workers))
    return dict(n=n, wall=wall(workers), efficiency=eff, serial_share=s / wall(workers),
                message_share=messages(workers) / wall(workers))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    counts = sorted({16, 64, 256, *(c[3] for c in CASES)})
    costs = {"local": message_costs("local", 1771)}
    if not args.no_ray:
        costs["ray"] = message_costs("ray", 1771)
    print("message costs", costs, flush=True)
    measured, serial = {}, {}
    for label, env_id, hidden, directions in CASES:
        measured[label] = {w: measure_case(env_id, hidden, directions, args.iterations, w) for w in (1, 2)}
        serial[label] = serial_against_directions(env_id, hidden, counts)
        print(label, measured[label], serial[label], flush=True)

    lines = []
    command = shlex.join(["python", "benchmarks/es_projection.py", *(argv if argv is not None else sys.argv[1:])])
    lines += ["# ES scale-out: measured serial/parallel parts and projected efficiency", "",
              f"Command: `nice -n 10 {command}`", "",
              f"{platform.machine()}, {os.cpu_count()} cores shared with a running study (1-minute load "
              f"average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after), torch {torch.__version__}, "
              f"one thread per process, {args.iterations} timed iterations after a warm-up, perturbations "
              "rebuilt on the workers from theta and the iteration seed.", ""]
    lines += ["## Measured: ES iterations (local backend)", "",
              "| case | searched params | directions | workers | env steps / iteration | serial s / it | "
              "parallel s / it | serial share | us per env step in a worker |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, _, _, directions in CASES:
        for w, m in measured[label].items():
            share = m["serial"] / (m["serial"] + m["parallel"])
            lines.append(f"| {label} | {m['dim']} | {directions} | {w} | {m['steps']:,.0f} | {m['serial']:.4f} | "
                         f"{m['parallel']:.3f} | {share:.2%} | {1e6 * m['t_step'] * w:.0f} |")
    lines += ["", "## Measured: driver serial seconds per iteration against directions (instant backend)", "",
              "| case | " + " | ".join(f"n={n}" for n in counts) + " | of which sampling at n=256 |",
              "|---|" + "---:|" * (len(counts) + 1)]
    for label, _, _, _ in CASES:
        cells = " | ".join(f"{1e3 * serial[label][n]['serial']:.2f} ms" for n in counts)
        lines.append(f"| {label} | {cells} | {1e3 * serial[label][256]['sampling']:.2f} ms |")
    lines += ["", "## Measured: per-message costs (2 workers)", "",
              "| backend | round trip, one tiny task | per task, 10 in flight | driver send per task | "
              "new iteration spec (1,771 floats) per worker |", "|---|---:|---:|---:|---:|"]
    for name, c in costs.items():
        lines.append(f"| {name} | {1e6 * c['rtt']:.0f} us | {1e6 * c['task']:.0f} us | {1e6 * c['send']:.0f} us | "
                     f"{1e6 * c['spec']:.0f} us |")
    lines += ["", "## Projection: full-length episodes, n = max(directions, N) directions", "",
              "tau = 2 x 1000 x (us per env step, 1 worker); efficiency = T(1) / (N T(N)).", "",
              "| case | backend | tau (s) | " + " | ".join(f"N={w}: n, efficiency (serial, messages)" for w in WORKERS) + " |",
              "|---|---|---:|" + "---:|" * len(WORKERS)]
    for label, _, _, directions in CASES:
        tau = 2 * EPISODE * measured[label][1]["t_step"]
        for name, c in costs.items():
            cells = []
            for w in WORKERS:
                p = project(serial[label], directions, tau, c, w, spec_per_worker=name == "local")
                cells.append(f"{p['n']}, **{p['efficiency']:.2f}** ({p['serial_share']:.1%}, {p['message_share']:.1%})")
            lines.append(f"| {label} | {name} | {tau:.2f} | " + " | ".join(cells) + " |")
    # the check against what was measured: 2 local workers here, 16 workers in es_scaling.md
    lines += ["", "## Check against measurements", "",
              "| case | workers | model speed-up | measured speed-up |", "|---|---:|---:|---:|"]
    for label, _, _, directions in CASES:
        m1, m2 = measured[label][1], measured[label][2]
        tau, s = m1["parallel"] / directions, m1["serial"]
        model = (s + directions * tau) / (s + math.ceil(directions / 2) * tau + costs["local"]["send"] * directions)
        lines.append(f"| {label} (this machine) | 2 | {model:.2f}x | "
                     f"{(m1['serial'] + m1['parallel']) / (m2['serial'] + m2['parallel']):.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
