"""Build an environment, an algorithm and a structured policy from a config, and run it.

This module is the only one that knows the layout of a run folder::

    <run_dir>/
      config.yaml          the resolved config the run was started with
      metrics.json         status, parameter counts, final evaluation, timing, git commit
      evaluations.csv      periodic evaluations: step, mean, std, wall time
      model.zip            final SB3 model (loads with PPO.load / TRPO.load)
      vecnormalize.pkl     observation/reward normalization statistics (if normalized)
      checkpoints/         step_<N>/{model.zip, vecnormalize.pkl, state.json}, latest.json
      tb/                  tensorboard event files

The config is a plain mapping (Hydra's ``DictConfig`` converted with ``OmegaConf.to_container``)
so nothing here imports Hydra.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from rlstruct.errors import RLStructError
from rlstruct.io import (
    atomic_write_json,
    atomic_write_text,
    load_pickle,
    load_sb3_model,
    save_pickle_atomic,
    save_sb3_model,
)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
EVAL_FILE = "evaluations.csv"
MODEL_FILE = "model.zip"
VECNORM_FILE = "vecnormalize.pkl"
CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"
TB_DIR = "tb"


# --------------------------------------------------------------------------------------------
# algorithms
#: algorithms whose trainers are ours; they save their policy inside a PPO model file.
OWN_TRAINERS = ("es", "distill")


def algo_class(name: str) -> type:
    """The SB3 class that trains (``ppo``, ``trpo``) or saves (``es``, ``distill``) an algo's model."""
    from stable_baselines3 import PPO

    import rlstruct.policies  # noqa: F401  (registers "StructuredMlpPolicy")

    if name == "ppo" or name in OWN_TRAINERS:
        return PPO
    if name == "trpo":
        from sb3_contrib import TRPO

        return TRPO
    raise RLStructError(f"unknown algo {name!r}; choose one of: ppo, trpo, {', '.join(OWN_TRAINERS)}")


# --------------------------------------------------------------------------------------------
# environments
def check_env_id(env_id: str) -> None:
    import gymnasium as gym

    if env_id not in gym.registry:
        close = [k for k in gym.registry if k.split("-")[0].lower() == env_id.split("-")[0].lower()]
        hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
        raise RLStructError(
            f"unknown gymnasium environment {env_id!r}{hint}; pick a conf/env/*.yaml or a "
            "registered gymnasium id"
        )


def make_vec_env(env_cfg: Dict[str, Any], n_envs: int, seed: int, render_mode: Optional[str] = None):
    """A monitored ``DummyVecEnv`` of ``n_envs`` copies of the config's environment."""
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env

    check_env_id(env_cfg["id"])
    env_kwargs = dict(env_cfg.get("kwargs") or {})
    if render_mode is not None:
        env_kwargs["render_mode"] = render_mode
    return sb3_make_vec_env(env_cfg["id"], n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)


def wrap_normalize(venv, env_cfg: Dict[str, Any], gamma: float, training: bool = True):
    """Wrap in ``VecNormalize`` when the env config asks for observation/reward normalization."""
    from stable_baselines3.common.vec_env import VecNormalize

    norm_obs = bool(env_cfg.get("normalize_obs", False))
    norm_reward = bool(env_cfg.get("normalize_reward", False))
    if not (norm_obs or norm_reward):
        return venv
    return VecNormalize(
        venv,
        training=training,
        norm_obs=norm_obs,
        norm_reward=norm_reward and training,
        gamma=gamma,
    )


# --------------------------------------------------------------------------------------------
# policies
def policy_kwargs_from_config(policy_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``policy_kwargs`` for ``StructuredActorCriticPolicy`` from a ``conf/policy`` entry."""
    hidden = list(policy_cfg.get("hidden") or [])
    critic_hidden = policy_cfg.get("critic_hidden")
    kwargs: Dict[str, Any] = dict(
        structure=policy_cfg["structure"],
        critic_structure=policy_cfg.get("critic_structure"),
        net_arch=dict(pi=hidden, vf=list(critic_hidden) if critic_hidden is not None else hidden),
        activation_fn=policy_cfg.get("activation", "tanh"),
        critic_activation_fn=policy_cfg.get("critic_activation"),
        layer_kwargs=dict(policy_cfg.get("layer_kwargs") or {}),
        critic_layer_kwargs=(
            dict(policy_cfg["critic_layer_kwargs"])
            if policy_cfg.get("critic_layer_kwargs") is not None else None
        ),
    )
    if policy_cfg.get("log_std_init") is not None:
        kwargs["log_std_init"] = float(policy_cfg["log_std_init"])
    if policy_cfg.get("ortho_init") is not None:
        kwargs["ortho_init"] = bool(policy_cfg["ortho_init"])
    return kwargs


def optimizer_policy_kwargs(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``optimizer_class``/``optimizer_kwargs`` for the policy from ``optimizer`` in the config."""
    name = cfg.get("optimizer")
    if not name:
        return {}
    from rlstruct.optim import check_optimizer_kwargs, get_optimizer

    kwargs = dict(cfg.get("optimizer_kwargs") or {})
    check_optimizer_kwargs(name, kwargs)
    return dict(optimizer_class=get_optimizer(name), optimizer_kwargs=kwargs)


def algo_kwargs(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The algorithm's constructor kwargs: ``algo.kwargs`` overlaid by the env's own settings."""
    algo = cfg["algo"]["name"]
    kwargs = dict(cfg["algo"].get("kwargs") or {})
    kwargs.update((cfg["env"].get("hyperparams") or {}).get(algo) or {})
    return kwargs


# --------------------------------------------------------------------------------------------
# run metadata
def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _yaml_dump(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def read_config(run_dir: Path) -> Dict[str, Any]:
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RLStructError(
            f"{run_dir} is not a run folder ({CONFIG_FILE} missing); pass the folder that "
            "train.py printed"
        )
    try:
        with open(path) as handle:
            return yaml.safe_load(handle)
    except Exception as exc:
        raise RLStructError(f"{path} is unreadable ({exc}); restore it from .hydra/config.yaml") from None


# --------------------------------------------------------------------------------------------
# checkpoints
@dataclass
class Checkpoint:
    folder: Path
    steps: int
    elapsed_s: float


def latest_checkpoint(run_dir: Path) -> Optional[Checkpoint]:
    pointer = Path(run_dir) / CHECKPOINT_DIR / LATEST_FILE
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text())
        folder = Path(run_dir) / CHECKPOINT_DIR / info["folder"]
        return Checkpoint(folder, int(info["steps"]), float(info["elapsed_s"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise RLStructError(
            f"checkpoint pointer {pointer} is corrupt ({exc}); delete it to restart the run "
            "from scratch, or point it at an intact checkpoints/step_* folder"
        ) from None


def write_checkpoint(run_dir: Path, model, venv, elapsed_s: float, keep: int) -> Checkpoint:
    """Save model + normalization stats into a fresh folder, then flip ``latest.json`` to it."""
    from stable_baselines3.common.vec_env import VecNormalize

    root = Path(run_dir) / CHECKPOINT_DIR
    steps = int(model.num_timesteps)
    name = f"step_{steps:012d}"
    staging = root / f".{name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    save_sb3_model(model, staging / MODEL_FILE)
    if isinstance(venv, VecNormalize):
        save_pickle_atomic(venv, staging / VECNORM_FILE)
    atomic_write_json(staging / "state.json", {"steps": steps, "elapsed_s": elapsed_s})
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    atomic_write_json(root / LATEST_FILE, {"folder": name, "steps": steps, "elapsed_s": elapsed_s})
    old = sorted(p for p in root.glob("step_*") if p.is_dir() and p.name != name)
    for folder in old[: max(0, len(old) - max(keep - 1, 0))]:
        shutil.rmtree(folder, ignore_errors=True)
    return Checkpoint(final, steps, elapsed_s)


def attach_vecnormalize(venv, path: Path):
    """Load saved ``VecNormalize`` statistics around ``venv`` (no file: ``venv`` unchanged)."""
    if not Path(path).is_file():
        return venv
    normalizer = load_pickle(path, "normalization statistics")
    normalizer.set_venv(venv)
    return normalizer


# --------------------------------------------------------------------------------------------
# evaluation
def evaluate_model(model, venv, episodes: int, deterministic: bool = True) -> List[float]:
    """Undiscounted returns of ``episodes`` full episodes (raw rewards, from Monitor)."""
    from stable_baselines3.common.evaluation import evaluate_policy

    if episodes < 1:
        raise RLStructError(f"episodes must be >= 1, got {episodes}")
    rewards, _ = evaluate_policy(
        model, venv, n_eval_episodes=episodes, deterministic=deterministic, return_episode_rewards=True
    )
    return [float(r) for r in rewards]


def make_eval_env(cfg: Dict[str, Any], seed: int, render_mode: Optional[str] = None):
    from stable_baselines3.common.vec_env import VecNormalize

    venv = make_vec_env(cfg["env"], 1, seed, render_mode=render_mode)
    env_cfg = cfg["env"]
    if env_cfg.get("normalize_obs") or env_cfg.get("normalize_reward"):
        venv = VecNormalize(venv, training=False, norm_obs=bool(env_cfg.get("normalize_obs")), norm_reward=False)
    return venv


def sync_normalization(train_env, eval_env) -> None:
    from stable_baselines3.common.vec_env import VecNormalize

    if isinstance(train_env, VecNormalize) and isinstance(eval_env, VecNormalize):
        eval_env.obs_rms = train_env.obs_rms.copy()


# --------------------------------------------------------------------------------------------
# training
def append_evaluation(run_dir: Path, step: int, rewards: List[float], wall_s: float) -> None:
    """Add one row (step, mean, population std, episodes, wall time, per-episode rewards) to ``evaluations.csv``."""
    path = Path(run_dir) / EVAL_FILE
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["step", "mean_reward", "std_reward", "episodes", "wall_s", "rewards"])
        writer.writerow([
            step, float(np.mean(rewards)), float(np.std(rewards)), len(rewards), round(wall_s, 2),
            " ".join(f"{r:.3f}" for r in rewards),
        ])


def _make_callback(run_dir: Path, cfg: Dict[str, Any], eval_env, clock: Dict[str, float]):
    from stable_baselines3.common.callbacks import BaseCallback

    eval_cfg = cfg.get("eval") or {}
    ckpt_cfg = cfg.get("checkpoint") or {}
    eval_freq = int(eval_cfg.get("freq", 0) or 0)
    ckpt_freq = int(ckpt_cfg.get("freq", 0) or 0)
    keep = int(ckpt_cfg.get("keep", 2))
    episodes = int(eval_cfg.get("episodes", 5))
    deterministic = bool(eval_cfg.get("deterministic", True))

    class RunCallback(BaseCallback):
        """Periodic evaluation (tensorboard + evaluations.csv) and atomic checkpoints."""

        def _on_training_start(self) -> None:
            self._next_eval = (self.num_timesteps // eval_freq + 1) * eval_freq if eval_freq else None
            self._next_ckpt = (self.num_timesteps // ckpt_freq + 1) * ckpt_freq if ckpt_freq else None

        def _on_step(self) -> bool:
            return True

        def _on_rollout_start(self) -> None:
            # SB3 starts a rollout right after the update on the previous one: the policy,
            # optimizer and normalization then hold every step and every update so far, so a
            # checkpoint written here resumes without losing the update (the last update of a
            # run is saved as the final model).
            if self._next_eval is not None and self.num_timesteps >= self._next_eval:
                self._next_eval += eval_freq
                sync_normalization(self.training_env, eval_env)
                rewards = evaluate_model(self.model, eval_env, episodes, deterministic)
                self.logger.record("eval/mean_reward", float(np.mean(rewards)))
                self.logger.record("eval/std_reward", float(np.std(rewards)))
                append_evaluation(run_dir, self.num_timesteps, rewards, clock_elapsed(clock))
            if self._next_ckpt is not None and self.num_timesteps >= self._next_ckpt:
                self._next_ckpt += ckpt_freq
                write_checkpoint(run_dir, self.model, self.training_env, clock_elapsed(clock), keep)

    return RunCallback()


def clock_elapsed(clock: Dict[str, float]) -> float:
    return clock["before"] + time.perf_counter() - clock["start"]


def run_identity(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """What a checkpoint is bound to: env, normalization, algorithm settings and policy.

    Budgets, evaluation and logging settings may change between a run and its resumption
    (e.g. extending ``total_timesteps``); these may not.
    """
    env = cfg["env"]
    return dict(
        env=dict(id=env["id"], kwargs=env.get("kwargs") or {},
                 normalize_obs=bool(env.get("normalize_obs")), normalize_reward=bool(env.get("normalize_reward"))),
        algo=dict(name=cfg["algo"]["name"], kwargs=algo_kwargs(cfg)),
        policy=cfg["policy"],
    )


def _check_resume_config(run_dir: Path, cfg: Dict[str, Any]) -> None:
    saved, current = run_identity(read_config(run_dir)), run_identity(cfg)
    for key in current:
        if saved[key] != current[key]:
            raise RLStructError(
                f"cannot resume {run_dir}: its saved '{key}' config differs from this one "
                f"(saved {saved[key]!r}); resume with the same settings or use a new out_dir"
            )


class RunAlreadyFinished(Exception):
    """``resume=true`` on a run that already reached its ``total_timesteps``: nothing to do."""

    def __init__(self, metrics: Dict[str, Any]):
        super().__init__("run already finished")
        self.metrics = metrics


def read_metrics(run_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise RLStructError(f"{path} is corrupt ({exc}); delete it to restart the run") from exc


def finished_start(run_dir: Path) -> Optional[Checkpoint]:
    """A finished run's final model as a start point (its files use the checkpoint names)."""
    metrics = read_metrics(run_dir)
    if not (run_dir / MODEL_FILE).is_file() or not metrics or metrics.get("status") != "finished":
        return None
    return Checkpoint(Path(run_dir), int(metrics["steps"]), float(metrics.get("wall_time_s") or 0.0))


def open_run_dir(run_dir: Path, cfg: Dict[str, Any]) -> Optional[Checkpoint]:
    """The point to continue from (``None``: a fresh run, whose config is written now).

    * no run in ``run_dir``: a fresh run;
    * an unfinished run: continues from its latest checkpoint (needs ``resume=true``);
    * a finished run with ``resume=true``: extends from its final model when ``total_timesteps``
      is larger than its steps, else raises :class:`RunAlreadyFinished` (nothing to do);
    * a finished run without ``resume=true``, or a run whose env, algorithm or policy settings
      differ from ``cfg``: refused.
    """
    finished = finished_start(run_dir)
    checkpoint = finished or latest_checkpoint(run_dir)
    if checkpoint is None and (run_dir / MODEL_FILE).exists():
        raise RLStructError(
            f"{run_dir} holds a model.zip but no finished metrics.json or checkpoint; delete the "
            "folder to start over, or choose another seed or out_dir"
        )
    if checkpoint is None:
        atomic_write_text(run_dir / CONFIG_FILE, _yaml_dump(cfg))
        return None
    what = f"a finished run ({checkpoint.steps} steps)" if finished else f"a run (checkpoint at {checkpoint.steps} steps)"
    if not cfg.get("resume", False):
        raise RLStructError(
            f"{run_dir} already holds {what}; pass resume=true to continue or extend it, or choose "
            "another seed or out_dir"
        )
    _check_resume_config(run_dir, cfg)
    if finished and checkpoint.steps >= int(cfg["total_timesteps"]):
        raise RunAlreadyFinished(read_metrics(run_dir))
    return checkpoint


def lock_run_dir(run_dir: Path):
    """Hold an exclusive lock on ``run_dir`` until the returned handle is closed (or the process dies).

    A second writer into the same folder is refused in one line. The lock is an ``flock`` on
    ``.lock``: the kernel drops it when its process exits, even on ``kill -9``, so a stale lock
    never blocks a resume.
    """
    import fcntl

    handle = open(Path(run_dir) / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise RLStructError(
            f"{run_dir} is being written by {owner}; wait for it to finish, or choose another "
            "seed or out_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def drop_checkpoints(run_dir: Path) -> None:
    """A finished run keeps its final model only: checkpoints exist while a run is unfinished."""
    shutil.rmtree(Path(run_dir) / CHECKPOINT_DIR, ignore_errors=True)


def check_run_settings(cfg: Dict[str, Any]) -> None:
    """Fail before training, in one line, on counts that cannot work (``n_envs=0``, ...)."""
    algo = cfg["algo"]["name"]
    evaluation = cfg.get("eval") or {}
    checks = [("eval.final_episodes", evaluation.get("final_episodes", 1))]
    if evaluation.get("freq"):
        checks.append(("eval.episodes", evaluation.get("episodes", 1)))
    if algo != "distill":  # distillation sets its own budget (docs/distill.md)
        checks.append(("total_timesteps", cfg.get("total_timesteps", 1)))
    if algo not in OWN_TRAINERS:
        checks.append(("n_envs", cfg.get("n_envs", 1)))
    if algo == "es" and cfg.get("optimizer"):
        # ES never computes gradients, so a gradient optimizer would be silently ignored
        raise RLStructError(
            f"optimizer={cfg['optimizer']} does not apply to algo=es, which steps with "
            "algo.optimizer (sgd or adam); remove optimizer= or train with algo=ppo or algo=trpo"
        )
    for key, value in checks:
        # integral floats pass (total_timesteps=1e6 on the command line); the trainers int() them
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or not float(value).is_integer():
            raise RLStructError(f"{key} must be a positive integer, got {value!r}; fix {key}")


def check_algo_kwargs(cls: type, kwargs: Dict[str, Any], algo: str) -> None:
    """Raise :class:`RLStructError` for settings the algorithm class does not take (config typos)."""
    accepted = {
        name for name in inspect.signature(cls.__init__).parameters
        if not name.startswith("_") and name not in ("self", "policy", "env")
    }
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise RLStructError(
            f"{cls.__name__} has no settings {unknown}; fix algo.kwargs or env.hyperparams.{algo} "
            f"(accepted: {', '.join(sorted(accepted))})"
        )


def train(cfg: Dict[str, Any], run_dir: os.PathLike, command: Optional[str] = None) -> Dict[str, Any]:
    """Train (or resume) the run described by ``cfg`` in ``run_dir``; returns ``metrics.json``.

    ``command`` (the command line that started the run) is recorded in ``metrics.json``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(cfg.get("torch_threads", 1)))
    check_run_settings(cfg)
    check_recipe(cfg)
    with lock_run_dir(run_dir):
        try:
            return _train_locked(cfg, run_dir, command)
        except RunAlreadyFinished as done:
            print(f"[rlstruct] {run_dir} already finished at {done.metrics['steps']} steps; nothing to do", flush=True)
            return done.metrics


def check_recipe(cfg: Dict[str, Any]) -> None:
    """A named recipe (``recipe=zoo``) must have settings for this env and algorithm."""
    recipe = cfg.get("recipe") or {}
    if recipe.get("name", "sb3") != "sb3" and recipe.get("applied") is None:
        raise RLStructError(
            f"recipe={recipe['name']} has no settings for env={cfg['env']['name']} "
            f"algo={cfg['algo']['name']} (conf/tuned/{recipe['name']}_{cfg['env']['name']}_"
            f"{cfg['algo']['name']}.yaml is missing); use recipe=sb3 or another env/algo"
        )


def _train_locked(cfg: Dict[str, Any], run_dir: Path, command: Optional[str]) -> Dict[str, Any]:
    algo_name = cfg["algo"]["name"]
    if algo_name == "es":
        from rlstruct.algos.es import train_es  # ES has its own loop, same run layout

        return train_es(cfg, run_dir, command=command)
    if algo_name == "distill":
        from rlstruct.algos.distill import train_distill  # fits a student to a saved teacher

        return train_distill(cfg, run_dir, command=command)
    cls = algo_class(algo_name)
    checkpoint = open_run_dir(run_dir, cfg)

    seed = int(cfg["seed"])
    total = int(cfg["total_timesteps"])
    n_envs = int(cfg.get("n_envs", 1))
    kwargs = algo_kwargs(cfg)
    check_algo_kwargs(cls, kwargs, algo_name)
    gamma = float(kwargs.get("gamma", 0.99))
    venv = make_vec_env(cfg["env"], n_envs, seed)
    eval_env = make_eval_env(cfg, eval_seed(cfg))

    if checkpoint is not None:
        venv = attach_vecnormalize(venv, checkpoint.folder / VECNORM_FILE)
        model = load_sb3_model(cls, checkpoint.folder / MODEL_FILE, env=venv, device=cfg.get("device", "cpu"))
        before = checkpoint.elapsed_s
        if checkpoint.folder == run_dir:
            # extending a finished run: its final model becomes a checkpoint before metrics.json
            # says "running", so a kill from here on still finds a point to resume from
            write_checkpoint(run_dir, model, venv, before, int((cfg.get("checkpoint") or {}).get("keep", 2)))
    else:
        venv = wrap_normalize(venv, cfg["env"], gamma)
        model = cls(
            "StructuredMlpPolicy",
            venv,
            policy_kwargs={**policy_kwargs_from_config(cfg["policy"]), **optimizer_policy_kwargs(cfg)},
            seed=seed,
            device=cfg.get("device", "cpu"),
            verbose=0,
            **kwargs,
        )
        before = 0.0
    from stable_baselines3.common.logger import configure

    model.set_logger(configure(str(run_dir / TB_DIR), ["tensorboard"]))
    counts = model.policy.parameter_counts()
    metrics = _base_metrics(cfg, counts, command)
    metrics["status"] = "running"
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    print(
        f"[rlstruct] {cfg['env']['id']} {algo_name} structure={cfg['policy']['structure']} "
        f"params={counts['total']} (dense {counts['dense_total']}, "
        f"{counts['dense_total'] / counts['total']:.1f}x fewer) -> {run_dir}"
        + (f" resuming at {checkpoint.steps} steps" if checkpoint else ""),
        flush=True,
    )

    clock = {"start": time.perf_counter(), "before": before}
    start_steps = int(model.num_timesteps)
    remaining = max(total - start_steps, 0)
    callback = _make_callback(run_dir, cfg, eval_env, clock)
    if remaining > 0:
        model.learn(
            total_timesteps=remaining,
            callback=callback,
            reset_num_timesteps=False,
            progress_bar=bool(cfg.get("progress_bar", True)),
        )
    elapsed = clock_elapsed(clock)
    session_s = time.perf_counter() - clock["start"]

    save_sb3_model(model, run_dir / MODEL_FILE)
    from stable_baselines3.common.vec_env import VecNormalize

    if isinstance(venv, VecNormalize):
        save_pickle_atomic(venv, run_dir / VECNORM_FILE)
    eval_cfg = cfg.get("eval") or {}
    sync_normalization(venv, eval_env)
    rewards = evaluate_model(
        model, eval_env, int(eval_cfg.get("final_episodes", 10)), bool(eval_cfg.get("deterministic", True))
    )
    steps = int(model.num_timesteps)
    metrics.update(finished_fields(rewards, steps, elapsed, steps - start_steps, session_s,
                                   bool(eval_cfg.get("deterministic", True))))
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    drop_checkpoints(run_dir)
    venv.close()
    eval_env.close()
    print_done(metrics)
    return metrics


def eval_seed(cfg: Dict[str, Any]) -> int:
    """Seed of the evaluation env: ``eval.seed`` (one episode set for every run), else seed + 10000."""
    value = (cfg.get("eval") or {}).get("seed")
    return int(value) if value is not None else int(cfg["seed"]) + 10_000


def finished_fields(
    rewards: List[float], steps: int, elapsed_s: float, session_steps: int, session_s: float,
    deterministic: bool,
) -> Dict[str, Any]:
    """The ``metrics.json`` fields of a finished run (every trainer writes the same ones).

    ``elapsed_s`` counts all sessions of a resumed run; steps per second are this session's.
    """
    return dict(
        status="finished",
        steps=int(steps),
        wall_time_s=round(elapsed_s, 2),
        steps_per_s=round(session_steps / session_s, 1) if session_s > 0 else None,
        final_eval=dict(
            mean=float(np.mean(rewards)),
            std=float(np.std(rewards)),
            episodes=len(rewards),
            deterministic=deterministic,
            rewards=[float(r) for r in rewards],
        ),
    )


def print_done(metrics: Dict[str, Any], detail: str = "") -> None:
    """The console summary of a finished run."""
    final = metrics["final_eval"]
    print(
        f"[rlstruct] done: {metrics['steps']} steps{detail} in {metrics['wall_time_s']:.0f} s; final reward "
        f"{final['mean']:.1f} +- {final['std']:.1f} over {final['episodes']} episodes",
        flush=True,
    )


def _base_metrics(cfg: Dict[str, Any], counts: Dict[str, int], command: Optional[str] = None) -> Dict[str, Any]:
    import rlstruct

    policy = cfg["policy"]
    return dict(
        env=cfg["env"]["name"],
        env_id=cfg["env"]["id"],
        algo=cfg["algo"]["name"],
        structure=policy["structure"],
        critic_structure=policy.get("critic_structure") or policy["structure"],
        hidden=list(policy.get("hidden") or []),
        params=counts,
        compression=round(counts["dense_total"] / counts["total"], 3),
        seed=int(cfg["seed"]),
        total_timesteps=int(cfg["total_timesteps"]),
        git_commit=git_commit(),
        command=command,
        rlstruct_version=rlstruct.__version__,
        torch_version=torch.__version__,
        config=cfg,
    )


# --------------------------------------------------------------------------------------------
# loading a finished run for rollout
def load_run(run_dir: os.PathLike, render_mode: Optional[str] = None, seed: int = 0) -> Tuple[Any, Any, Dict[str, Any]]:
    """``(model, eval_env, config)`` for a run folder, using only its saved files."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RLStructError(f"run folder {run_dir} does not exist; pass the folder train.py printed")
    cfg = read_config(run_dir)
    model_path = run_dir / MODEL_FILE
    vecnorm_path = run_dir / VECNORM_FILE
    if not model_path.exists():
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise RLStructError(
                f"{run_dir} has no {MODEL_FILE} and no checkpoint yet; wait for the run or resume it"
            )
        model_path = checkpoint.folder / MODEL_FILE
        vecnorm_path = checkpoint.folder / VECNORM_FILE
    cls = algo_class(cfg["algo"]["name"])
    venv = make_vec_env(cfg["env"], 1, seed, render_mode=render_mode)
    if cfg["env"].get("normalize_obs") or cfg["env"].get("normalize_reward"):
        if not vecnorm_path.is_file():
            raise RLStructError(
                f"{run_dir} was trained with normalization but {vecnorm_path.name} is missing; "
                "copy it from a checkpoint folder"
            )
        venv = attach_vecnormalize(venv, vecnorm_path)
        venv.training = False
        venv.norm_reward = False
    model = load_sb3_model(cls, model_path, device="cpu")
    return model, venv, cfg
