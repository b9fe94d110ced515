"""The compact policy format of ``policies/``: only what a rollout needs.

A compact policy is a folder with two files:

* ``policy.safetensors``: the actor's tensors (structured parameters, the layout buffers such as
  KAMA's ``pairs``, the action head, ``log_std``) and, when the run normalized observations,
  ``obs_rms.mean`` / ``obs_rms.var``. No pickle: safe to load from anywhere.
* ``meta.json``: format version, env and policy configs (enough to rebuild the network), the
  parameter counts, the recorded reward and the command that trained it.

It is typically 10-50x smaller than a training checkpoint (no critic, optimizer state or rollout
settings). Export a finished run with::

    python -m rlstruct.compact runs/<run folder> policies/hopper-kama
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from rlstruct.errors import RLStructError
from rlstruct.io import atomic_write_bytes, atomic_write_json, make_output_dir

FORMAT = "rlstruct-compact-policy"
FORMAT_VERSION = 1
TENSORS_FILE = "policy.safetensors"
META_FILE = "meta.json"
ACTOR_PREFIXES = ("mlp_extractor.policy_net.", "action_net.", "log_std")
#: the metadata keys a rollout needs (the rest is provenance).
REQUIRED_META = ("env_id", "env", "policy", "structure")


def is_compact_policy(folder: Path) -> bool:
    """Whether ``folder`` holds both files of a compact policy (its contents are not checked)."""
    return (Path(folder) / META_FILE).is_file() and (Path(folder) / TENSORS_FILE).is_file()


def _actor_state(policy) -> Dict[str, torch.Tensor]:
    return {
        k: v.detach().cpu().contiguous()
        for k, v in policy.state_dict().items()
        if k.startswith(ACTOR_PREFIXES)
    }


def export_run(run_dir: Path, out_dir: Path, command: Optional[str] = None) -> Dict[str, Any]:
    """Write the compact form of a finished run folder to ``out_dir``; returns its metadata."""
    from safetensors.torch import save

    from rlstruct.run import RunFolder, load_run

    run_dir = Path(run_dir)
    model, venv, cfg = load_run(run_dir)
    tensors = _actor_state(model.policy)
    from stable_baselines3.common.vec_env import VecNormalize

    if isinstance(venv, VecNormalize) and venv.norm_obs:
        tensors["obs_rms.mean"] = torch.as_tensor(venv.obs_rms.mean, dtype=torch.float64)
        tensors["obs_rms.var"] = torch.as_tensor(venv.obs_rms.var, dtype=torch.float64)
        norm = dict(clip_obs=float(venv.clip_obs), epsilon=float(venv.epsilon))
    else:
        norm = None
    venv.close()
    metrics = RunFolder(run_dir).read_metrics() or {}
    meta = dict(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        env_id=cfg["env"]["id"],
        env=cfg["env"],
        policy=cfg["policy"],
        algo=cfg["algo"]["name"],
        recipe=(cfg.get("recipe") or {}).get("name", "default"),
        structure=cfg["policy"]["structure"],
        params=model.policy.parameter_counts(),
        normalization=norm,
        reward=metrics.get("final_eval"),
        steps=metrics.get("steps"),
        seed=cfg.get("seed"),
        git_commit=metrics.get("git_commit"),
        command=command or metrics.get("command"),
        source_run=str(run_dir),
    )
    out_dir = make_output_dir(out_dir, "compact policy")
    atomic_write_bytes(out_dir / TENSORS_FILE, save(tensors))
    atomic_write_json(out_dir / META_FILE, meta)
    return meta


def _read_meta(folder: Path) -> Dict[str, Any]:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise RLStructError(f"{folder / META_FILE} is corrupt ({exc}); re-export the policy") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise RLStructError(
            f"{folder} is not an rlstruct compact policy (format {found!r}); export one with "
            "python -m rlstruct.compact RUN_DIR OUT_DIR"
        )
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise RLStructError(
            f"{folder} uses compact format v{meta['format_version']}; upgrade rlstruct to load it"
        )
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise RLStructError(f"{folder / META_FILE} lacks {missing}; re-export the policy")
    return meta


def load_compact_policy(
    folder: Path, seed: int = 0, render_mode: Optional[str] = None
) -> Tuple[Any, Any, Dict[str, Any]]:
    """``(policy, eval_env, meta)``; the policy has SB3's ``predict`` and ``parameter_counts``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from stable_baselines3.common.vec_env import VecNormalize

    from rlstruct.envs import make_vec_env
    from rlstruct.policies import StructuredActorCriticPolicy, policy_kwargs_from_config

    folder = Path(folder)
    meta = _read_meta(folder)
    try:
        tensors = load_file(str(folder / TENSORS_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RLStructError(
            f"{folder / TENSORS_FILE} is corrupt or truncated ({exc}); re-export the policy"
        ) from exc
    venv = make_vec_env(meta["env"], 1, seed, render_mode=render_mode)
    policy = StructuredActorCriticPolicy(
        venv.observation_space,
        venv.action_space,
        lambda _: 0.0,
        **policy_kwargs_from_config(meta["policy"]),
    )
    expected = _actor_state(policy)
    stored = {k: v for k, v in tensors.items() if not k.startswith("obs_rms.")}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    shapes = [k for k in expected if k in stored and expected[k].shape != stored[k].shape]
    if missing or unexpected or shapes:
        raise RLStructError(
            f"{folder} does not match its own metadata (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, shape mismatch {shapes[:3]}); the files were mixed up: re-export"
        )
    policy.load_state_dict(stored, strict=False)
    policy.set_training_mode(False)
    if meta.get("normalization"):
        norm = meta["normalization"]
        if "obs_rms.mean" not in tensors or "obs_rms.var" not in tensors:
            raise RLStructError(
                f"{folder} says it normalizes observations but {TENSORS_FILE} has no obs_rms "
                "tensors; the files were mixed up: re-export"
            )
        venv = VecNormalize(
            venv, training=False, norm_obs=True, norm_reward=False,
            clip_obs=norm["clip_obs"], epsilon=norm["epsilon"],
        )
        venv.obs_rms.mean = tensors["obs_rms.mean"].numpy().astype(np.float64)
        venv.obs_rms.var = tensors["obs_rms.var"].numpy().astype(np.float64)
    return policy, venv, meta


def best_runs(sweep_dir: Path) -> Dict[Tuple[str, str], Path]:
    """The finished run with the best final reward for each (env, structure) under ``sweep_dir``.

    Only PPO/TRPO/ES/distill runs of one structure for actor and critic are considered; the
    name of the compact policy is then ``<env>-<structure>``.
    """
    best: Dict[Tuple[str, str], Tuple[float, Path]] = {}
    for path in sorted(Path(sweep_dir).rglob("metrics.json")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if metrics.get("status") != "finished" or "final_eval" not in metrics:
            continue
        key = (metrics["env"], metrics["structure"])
        reward = float(metrics["final_eval"]["mean"])
        if key not in best or reward > best[key][0]:
            best[key] = (reward, path.parent)
    return {key: folder for key, (_, folder) in best.items()}


def _print_written(out_dir: Path, meta: Dict[str, Any]) -> None:
    size = sum(p.stat().st_size for p in Path(out_dir).iterdir())
    reward = meta.get("reward") or {}
    print(
        f"wrote {out_dir} ({size / 1024:.1f} KiB, {meta['params']['actor']} actor parameters, "
        f"recorded reward {reward.get('mean', float('nan')):.1f} +- {reward.get('std', float('nan')):.1f})"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``python -m rlstruct.compact RUN_DIR OUT_DIR`` or ``--best SWEEP_DIR OUT_DIR``."""
    from rlstruct.cli import report_errors

    parser = argparse.ArgumentParser(description="Export finished runs as compact policies.")
    parser.add_argument("run_dir", help="a run folder, or with --best a folder of runs")
    parser.add_argument("out_dir", help="the compact policy folder, or with --best its parent")
    parser.add_argument("--command", help="the training command to record in meta.json")
    parser.add_argument("--best", action="store_true",
                        help="export the best finished run per (env, structure) as OUT_DIR/<env>-<structure>")
    args = parser.parse_args(argv)
    with report_errors():
        if not args.best:
            _print_written(Path(args.out_dir), export_run(Path(args.run_dir), Path(args.out_dir), args.command))
            return 0
        chosen = best_runs(Path(args.run_dir))
        if not chosen:
            raise RLStructError(f"no finished runs under {args.run_dir}; train some first")
        for (env, structure), folder in sorted(chosen.items()):
            out = Path(args.out_dir) / f"{env}-{structure}"
            _print_written(out, export_run(folder, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
