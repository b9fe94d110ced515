"""One PPO minibatch update, structured policies against ``MlpPolicy``: the update phase alone.

    python benchmarks/ppo_minibatch.py --rounds 15 --out results/ppo_minibatch.md

What ``model.learn`` repeats 320 times per 2048-step rollout (PPO defaults: batch 64, 10
epochs): ``policy.evaluate_actions`` on a minibatch of Hopper-v5 observations, the loss's
backward, SB3's ``clip_grad_norm_`` and the optimizer step. Timed without the environment, so
it isolates what the policy code costs and has far less noise than ``ppo_throughput.py``'s
``learn`` timings. Rows, all in one process, timed round by round in turn (interleaved), each
figure the median over ``--rounds`` rounds of ``--calls`` updates:

* ``MlpPolicy``: SB3's, as shipped (for-loop Adam): the baseline of every ratio;
* ``MlpPolicy, fused Adam``: SB3's with ``optimizer_kwargs=dict(eps=1e-5, fused=True)``, the
  optimizer our policies default to; with it, ``dense`` (our class, ``nn.Linear`` math) is the
  noise floor: it should match this row;
* each structure twice: ``batched`` (the extractor builds every ``W`` in one autograd node,
  ``rlstruct.layers.batched``, the default) and ``per layer`` (each layer its own node).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rlstruct.policies as policies  # noqa: E402

ARCHS = {"64-64 tanh": ([64, 64], "tanh", {}),
         "256-256 relu": ([256, 256], "relu", dict(log_std_init=-2.0, ortho_init=False))}


def _layer_by_layer(nets, features):
    return [net(features) for net in nets]


def make_rows(arch: str, structures: List[str]) -> Dict[str, torch.nn.Module]:
    from stable_baselines3 import PPO

    hidden, act, extra = ARCHS[arch]
    kwargs = dict(net_arch=dict(pi=hidden, vf=hidden),
                  activation_fn=torch.nn.Tanh if act == "tanh" else torch.nn.ReLU, **extra)
    env = "Hopper-v5"
    rows = {
        "MlpPolicy": PPO("MlpPolicy", env, policy_kwargs=kwargs, seed=0).policy,
        "MlpPolicy, fused Adam": PPO("MlpPolicy", env, seed=0, policy_kwargs=dict(
            kwargs, optimizer_kwargs=dict(eps=1e-5, fused=True))).policy,
    }
    for structure in structures:
        rows[f"{structure} batched"] = PPO("StructuredMlpPolicy", env, seed=0,
                                           policy_kwargs=dict(kwargs, structure=structure)).policy
        if structure != "dense":
            policy = PPO("StructuredMlpPolicy", env, seed=0, policy_kwargs=dict(kwargs, structure=structure)).policy
            policy.mlp_extractor._run = _layer_by_layer  # instance attribute: this policy only
            rows[f"{structure} per layer"] = policy
    return rows


def update_step(policy, obs: torch.Tensor, actions: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        values, log_prob, entropy = policy.evaluate_actions(obs, actions)
        loss = values.pow(2).mean() - log_prob.mean() - 0.01 * entropy.mean()
        policy.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
        policy.optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10, help="updates per row and round")
    parser.add_argument("--structures", default="kama,toeplitz,hd3,dense")
    parser.add_argument("--out", default="results/ppo_minibatch.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    obs, actions = torch.randn(64, 11), torch.randn(64, 3)
    lines = []
    for arch in ARCHS:
        rows = make_rows(arch, args.structures.split(","))
        steps = {name: update_step(policy, obs, actions) for name, policy in rows.items()}
        for step in steps.values():  # warm-up: kernels compile or load, caches fill
            for _ in range(20):
                step()
        times: Dict[str, List[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                for _ in range(args.calls):
                    step()
                times[name].append((time.perf_counter() - start) / args.calls * 1e6)
        base = statistics.median(times["MlpPolicy"])
        for name, values in times.items():
            median = statistics.median(values)
            low, high = min(values), max(values)
            lines.append(f"| {arch} | {name} | {median:.0f} | {low:.0f}-{high:.0f} | {base / median:.2f}x |")
            print(lines[-1], flush=True)
    load = " ".join(f"{x:.1f}" for x in __import__("os").getloadavg())
    text = [
        "# One PPO minibatch update: structured policies against `MlpPolicy`", "",
        f"Command: `python benchmarks/ppo_minibatch.py --rounds {args.rounds} --calls {args.calls} "
        f"--structures {args.structures} --out {args.out}`", "",
        f"{platform.machine()}, torch {torch.__version__}, one thread; load average after the run: {load}. "
        "Hopper-v5 observations, minibatch 64: `evaluate_actions`, backward, `clip_grad_norm_(0.5)`, "
        "optimizer step. Median over rounds (rows interleaved round by round), the fastest and slowest round "
        "beside it; ratio > 1: faster than SB3's `MlpPolicy` as shipped. `dense batched` against "
        "`MlpPolicy, fused Adam` is the noise floor (same math, same optimizer).", "",
        "| arch | row | us / update | range over rounds | vs MlpPolicy |", "|---|---|---:|---:|---:|",
        *lines, "",
    ]
    Path(args.out).write_text("\n".join(text))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
