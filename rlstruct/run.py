"""The run folder and the recorder every trainer uses to open, evaluate, checkpoint and finish a run.

Only this module knows the layout of a run folder::

    <run_dir>/
      config.yaml          the resolved config the run was started with
      metrics.json         status, parameter counts, final evaluation (per-episode rewards), timing
      evaluations.csv      periodic evaluations: step, mean, std, episodes, wall time, rewards
      model.zip            final SB3 model (loads with PPO.load / TRPO.load)
      vecnormalize.pkl     observation/reward normalization statistics (if normalized)
      state.pkl            envs mid-episode and RNG states at the final step (exact extension)
      checkpoints/         while unfinished: step_<N>/{model.zip, vecnormalize.pkl, state.pkl}, latest.json
      tb/                  tensorboard event files (not kept in results/)
      .lock                held by the process writing the run

A trainer hands the recorder callables that write its files into a folder; the recorder decides
where (a staged checkpoint folder, or the run folder at the end), when, and in which order, so
that a kill at any point leaves a run that resumes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np

from rlstruct.config import RunConfig
from rlstruct.errors import RLStructError
from rlstruct.io import atomic_write_json, atomic_write_text, make_output_dir

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
EVAL_FILE = "evaluations.csv"
MODEL_FILE = "model.zip"
VECNORM_FILE = "vecnormalize.pkl"
STATE_FILE = "state.pkl"
CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"
TB_DIR = "tb"
LOCK_FILE = ".lock"

#: writes a trainer's files (model, statistics, state) into the given folder.
SaveFiles = Callable[[Path], None]


@dataclass(frozen=True)
class StartPoint:
    """Where a run continues from: a checkpoint folder, or a finished run's own folder."""

    folder: Path
    steps: int
    elapsed_s: float
    finished: bool = False

    @property
    def model(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def vecnormalize(self) -> Path:
        return self.folder / VECNORM_FILE

    @property
    def state(self) -> Path:
        return self.folder / STATE_FILE


class RunAlreadyFinished(Exception):
    """``resume=true`` on a run that already reached its ``total_timesteps``: nothing to do."""

    def __init__(self, metrics: Dict[str, Any]):
        super().__init__("run already finished")
        self.metrics = metrics


def _yaml_dump(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunFolder:
    """The files of one run folder: reading, atomic writing, checkpoints and the writer's lock."""

    def __init__(self, path: os.PathLike):
        self.path = Path(path)

    # -- config and metrics ---------------------------------------------------------------------
    def read_config(self) -> Dict[str, Any]:
        import yaml

        path = self.path / CONFIG_FILE
        if not path.is_file():
            raise RLStructError(
                f"{self.path} is not a run folder ({CONFIG_FILE} missing); pass the folder that "
                "train.py printed, or a policies/NAME folder"
            )
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise RLStructError(f"{path} is not valid YAML ({exc}); restore it from the run's metrics.json 'config'") from exc
        if not isinstance(config, dict):
            raise RLStructError(f"{path} holds no config mapping; restore it from the run's metrics.json 'config'")
        return config

    def write_config(self, config: Dict[str, Any]) -> None:
        atomic_write_text(self.path / CONFIG_FILE, _yaml_dump(config))

    def read_metrics(self) -> Optional[Dict[str, Any]]:
        path = self.path / METRICS_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise RLStructError(f"{path} is corrupt ({exc}); delete it and resume the run from its checkpoint") from exc

    def write_metrics(self, metrics: Dict[str, Any]) -> None:
        atomic_write_json(self.path / METRICS_FILE, metrics)

    # -- evaluations ----------------------------------------------------------------------------
    def append_evaluation(self, step: int, rewards: List[float], wall_s: float) -> None:
        """One row (step, mean, population std, episodes, wall time, per-episode rewards)."""
        path = self.path / EVAL_FILE
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "mean_reward", "std_reward", "episodes", "wall_s", "rewards"])
            writer.writerow([
                step, float(np.mean(rewards)), float(np.std(rewards)), len(rewards), round(wall_s, 2),
                " ".join(f"{r:.3f}" for r in rewards),
            ])

    def evaluations(self) -> List[Dict[str, str]]:
        path = self.path / EVAL_FILE
        if not path.is_file():
            return []
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))

    def truncate_evaluations(self, after_step: int) -> None:
        """Drop rows past ``after_step``: a resumed run re-evaluates what its checkpoint lost."""
        rows = self.evaluations()
        kept = [r for r in rows if int(r["step"]) <= after_step]
        if len(kept) == len(rows):
            return
        import io

        buffer = io.StringIO()
        fields = list(rows[0].keys())
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.path / EVAL_FILE, buffer.getvalue())

    # -- start points ---------------------------------------------------------------------------
    def latest_checkpoint(self) -> Optional[StartPoint]:
        pointer = self.path / CHECKPOINT_DIR / LATEST_FILE
        if not pointer.is_file():
            return None
        try:
            info = json.loads(pointer.read_text())
            folder = self.path / CHECKPOINT_DIR / info["folder"]
            point = StartPoint(folder, int(info["steps"]), float(info["elapsed_s"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise RLStructError(
                f"checkpoint pointer {pointer} is corrupt ({exc}); delete it to restart the run "
                "from scratch, or point it at an intact checkpoints/step_* folder"
            ) from exc
        if not point.model.is_file():
            raise RLStructError(
                f"checkpoint {folder} named by {pointer} has no {MODEL_FILE}; point latest.json at an "
                "intact checkpoints/step_* folder, or delete checkpoints/ to restart"
            )
        return point

    def final(self) -> Optional[StartPoint]:
        """A finished run's final model as a start point (same file names as a checkpoint)."""
        metrics = self.read_metrics()
        if not (self.path / MODEL_FILE).is_file() or not metrics or metrics.get("status") != "finished":
            return None
        return StartPoint(self.path, int(metrics["steps"]), float(metrics.get("wall_time_s") or 0.0), finished=True)

    def saved_model(self) -> StartPoint:
        """The newest saved policy to roll out: the final one, else the latest checkpoint."""
        if (self.path / MODEL_FILE).is_file():
            metrics = self.read_metrics() or {}
            return StartPoint(self.path, int(metrics.get("steps") or 0), 0.0, finished=True)
        point = self.latest_checkpoint()
        if point is None:
            raise RLStructError(f"{self.path} has no {MODEL_FILE} and no checkpoint yet; wait for the run or resume it")
        return point

    # -- checkpoints ----------------------------------------------------------------------------
    def write_checkpoint(self, steps: int, elapsed_s: float, save: SaveFiles, keep: int) -> StartPoint:
        """Let ``save`` fill a staging folder, rename it into place, then flip ``latest.json``."""
        root = self.path / CHECKPOINT_DIR
        name = f"step_{int(steps):012d}"
        staging = root / f".{name}.partial"
        try:
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
            save(staging)
            atomic_write_json(staging / "state.json", {"steps": int(steps), "elapsed_s": elapsed_s})
            final = root / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            atomic_write_json(root / LATEST_FILE, {"folder": name, "steps": int(steps), "elapsed_s": elapsed_s})
        except OSError as exc:
            raise RLStructError(
                f"cannot write a checkpoint into {root} ({exc.strerror or exc}); free disk space or fix the "
                "folder's permissions, then resume with resume=true"
            ) from exc
        old = sorted(p for p in root.glob("step_*") if p.is_dir() and p.name != name)
        for folder in old[: max(0, len(old) - max(keep - 1, 0))]:
            shutil.rmtree(folder, ignore_errors=True)
        return StartPoint(final, int(steps), elapsed_s)

    def drop_checkpoints(self) -> None:
        """A finished run keeps its final files only: checkpoints exist while it is unfinished."""
        shutil.rmtree(self.path / CHECKPOINT_DIR, ignore_errors=True)

    # -- the writer's lock ----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive ``flock`` on ``.lock`` while writing; a second writer is refused.

        The kernel drops an ``flock`` when its process exits, even on ``kill -9``: a stale lock
        never blocks a resume.
        """
        import fcntl

        with open(self.path / LOCK_FILE, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                handle.seek(0)
                owner = handle.read().strip() or "another process"
                raise RLStructError(
                    f"{self.path} is being written by {owner}; wait for it to finish, or choose "
                    "another seed or out_dir"
                ) from exc
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            yield


class Recorder:
    """Opens, evaluates, checkpoints and finishes one run; every trainer uses one.

    Usage by a trainer (the runner opens it)::

        start = recorder.start_point           # None: fresh; else load from start.folder
        recorder.begin(counts, banner)         # metrics.json says "running"
        ... if recorder.evaluation_due(steps): recorder.record_evaluation(steps, rewards)
        ... if recorder.checkpoint_due(steps): recorder.checkpoint(steps, save_files)
        return recorder.finish(steps, save_files, rewards, extra)
    """

    def __init__(self, config: RunConfig, run_dir: os.PathLike, command: Optional[str] = None):
        self.config = config
        self.folder = RunFolder(make_output_dir(run_dir, "run"))
        self.command = command
        self.start_point: Optional[StartPoint] = None
        self.metrics: Dict[str, Any] = {}
        self._clock_start = time.perf_counter()
        self._elapsed_before = 0.0
        self._start_steps = 0
        self._next_eval: Optional[int] = None
        self._next_checkpoint: Optional[int] = None

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    # -- opening --------------------------------------------------------------------------------
    def open(self, resumable: bool = True) -> Optional[StartPoint]:
        """Decide where the run starts; called with the folder locked.

        * no run in the folder: a fresh run, whose config is written now;
        * an unfinished run: continues from its latest checkpoint (needs ``resume=true``);
        * a finished run with ``resume=true``: extends from its final files when
          ``total_timesteps`` is larger than its steps, else :class:`RunAlreadyFinished`;
        * anything else (no ``resume=true``, other env/algo/policy settings, a trainer that
          cannot resume): refused in one line.
        """
        folder = self.folder
        point = folder.final() or folder.latest_checkpoint()
        metrics = folder.read_metrics()
        if point is None and not (folder.path / MODEL_FILE).exists() and (metrics or {}).get("status") == "running":
            # killed before its first checkpoint: nothing was saved, so starting over loses nothing;
            # its evaluation rows go too (the new start writes them again)
            print(f"[rlstruct] {folder.path} was stopped before its first checkpoint; starting it over", flush=True)
            folder.truncate_evaluations(after_step=-1)
            metrics = None
        if point is None and ((folder.path / MODEL_FILE).exists() or metrics is not None):
            raise RLStructError(
                f"{folder.path} holds a run with neither finished metrics nor a checkpoint; delete the "
                "folder to start over, or choose another seed or out_dir"
            )
        if point is None:
            folder.write_config(self.config.to_dict())
            self.start_point = None
            return None
        what = f"a finished run ({point.steps} steps)" if point.finished else f"a run (checkpoint at {point.steps} steps)"
        if not resumable:
            raise RLStructError(
                f"{folder.path} already holds {what} and algo={self.config.algo_name} does not resume; "
                "choose another seed or out_dir (or delete the folder to start over)"
            )
        if not self.config.resume:
            raise RLStructError(
                f"{folder.path} already holds {what}; pass resume=true to continue or extend it, or "
                "choose another seed or out_dir"
            )
        saved = RunConfig.from_dict(folder.read_config()).identity()
        current = self.config.identity()
        for key in current:
            if saved[key] != current[key]:
                raise RLStructError(
                    f"cannot resume {folder.path}: its saved '{key}' settings differ from this run's "
                    f"(saved {saved[key]!r}); resume with the same settings or use a new out_dir"
                )
        if point.finished and point.steps >= self.config.total_timesteps:
            raise RunAlreadyFinished(folder.read_metrics() or {})
        self.start_point = point
        return point

    def replace_config(self, config: RunConfig) -> None:
        """A fresh run whose trainer settled settings of its own (distillation) saves those instead."""
        if self.start_point is not None:
            raise RuntimeError("replace_config is for fresh runs only")
        self.config = config
        self.folder.write_config(config.to_dict())

    # -- the run --------------------------------------------------------------------------------
    def begin(self, counts: Dict[str, int], steps: int, banner: str, save: Optional[SaveFiles] = None,
              extra: Optional[Dict[str, Any]] = None) -> None:
        """Mark the run running and print its banner; ``steps`` is where training starts.

        Extending a finished run first turns its final files into a checkpoint (``save`` writes
        them), so a kill before the next checkpoint still finds a point to resume from.
        """
        point = self.start_point
        self._elapsed_before = point.elapsed_s if point else 0.0
        self._start_steps = int(steps)
        if point is not None and point.finished and save is not None:
            self.folder.write_checkpoint(steps, self._elapsed_before, save, self.config.checkpoint.keep)
        if point is not None:
            self.folder.truncate_evaluations(steps)
        self.metrics = self._base_metrics(counts)
        self.metrics.update(extra or {})
        self.metrics["status"] = "running"
        self.folder.write_metrics(self.metrics)
        eval_freq, ckpt_freq = self.config.eval.freq, self.config.checkpoint.freq
        self._next_eval = (steps // eval_freq + 1) * eval_freq if eval_freq else None
        self._next_checkpoint = (steps // ckpt_freq + 1) * ckpt_freq if ckpt_freq else None
        self._clock_start = time.perf_counter()
        resumed = f" resuming at {point.steps} steps" if point else ""
        print(f"[rlstruct] {banner} -> {self.run_dir}{resumed}", flush=True)

    def elapsed(self) -> float:
        """Wall seconds of the run over all its sessions."""
        return self._elapsed_before + time.perf_counter() - self._clock_start

    def evaluation_due(self, steps: int) -> bool:
        if self._next_eval is None or steps < self._next_eval:
            return False
        self._next_eval = (steps // self.config.eval.freq + 1) * self.config.eval.freq
        return True

    def checkpoint_due(self, steps: int) -> bool:
        if self._next_checkpoint is None or steps < self._next_checkpoint:
            return False
        self._next_checkpoint = (steps // self.config.checkpoint.freq + 1) * self.config.checkpoint.freq
        return True

    def record_evaluation(self, steps: int, rewards: List[float], logger: Any = None) -> None:
        """A periodic evaluation: a row of ``evaluations.csv`` and, with a logger, tensorboard."""
        if logger is not None:
            logger.record("eval/mean_reward", float(np.mean(rewards)))
            logger.record("eval/std_reward", float(np.std(rewards)))
        self.folder.append_evaluation(steps, rewards, self.elapsed())

    def checkpoint(self, steps: int, save: SaveFiles) -> StartPoint:
        return self.folder.write_checkpoint(steps, self.elapsed(), save, self.config.checkpoint.keep)

    def finish(self, steps: int, save: SaveFiles, rewards: List[float], extra: Optional[Dict[str, Any]] = None,
               detail: str = "") -> Dict[str, Any]:
        """Write the final files, then ``metrics.json`` (status finished), then drop the checkpoints.

        In that order a kill leaves either a resumable unfinished run or a finished one.
        """
        elapsed = self.elapsed()
        session_s = time.perf_counter() - self._clock_start
        save(self.run_dir)
        session_steps = int(steps) - self._start_steps
        self.metrics.update(
            status="finished",
            steps=int(steps),
            wall_time_s=round(elapsed, 2),
            steps_per_s=round(session_steps / session_s, 1) if session_s > 0 and session_steps > 0 else None,
            final_eval=dict(
                mean=float(np.mean(rewards)),
                std=float(np.std(rewards)),
                std_kind="population (ddof=0) over episodes",
                episodes=len(rewards),
                deterministic=bool(self.config.eval.deterministic),
                eval_seed=self.config.eval_seed,
                rewards=[float(r) for r in rewards],
            ),
        )
        self.metrics.update(extra or {})
        self.folder.write_metrics(self.metrics)
        self.folder.drop_checkpoints()
        final = self.metrics["final_eval"]
        print(
            f"[rlstruct] done: {steps} steps{detail} in {elapsed:.0f} s; final reward {final['mean']:.1f} "
            f"+- {final['std']:.1f} (std over {final['episodes']} episodes)",
            flush=True,
        )
        return self.metrics

    def _base_metrics(self, counts: Dict[str, int]) -> Dict[str, Any]:
        import torch

        import rlstruct

        cfg = self.config
        return dict(
            env=cfg.env.get("name"),
            env_id=cfg.env.get("id"),
            algo=cfg.algo_name,
            recipe=cfg.recipe.get("name", "default"),
            structure=cfg.policy["structure"],
            critic_structure=cfg.policy.get("critic_structure") or cfg.policy["structure"],
            hidden=list(cfg.policy.get("hidden") or []),
            params=counts,
            compression=round(counts["dense_total"] / counts["total"], 3),
            seed=cfg.seed,
            total_timesteps=cfg.total_timesteps,
            git_commit=git_commit(),
            command=self.command,
            rlstruct_version=rlstruct.__version__,
            torch_version=torch.__version__,
            config=cfg.to_dict(),
        )


def banner(config: RunConfig, counts: Dict[str, int], detail: str = "") -> str:
    """The one-line start message every trainer prints."""
    return (
        f"{config.env.get('id')} {config.algo_name} structure={config.policy['structure']} "
        f"params={counts['total']} (dense {counts['dense_total']}, "
        f"{counts['dense_total'] / counts['total']:.1f}x fewer){detail}"
    )


def load_run(run_dir: os.PathLike, render_mode: Optional[str] = None, seed: int = 0):
    """``(model, eval_env, config)`` of a run folder for rollout, from its saved files only.

    The final model when the run finished, else its latest checkpoint; the env is built from the
    saved config with frozen normalization statistics and raw rewards.
    """
    from rlstruct.envs import attach_vecnormalize, check_same_spaces, make_vec_env, normalizes
    from rlstruct.io import load_sb3_model
    from rlstruct.policies import algo_class

    folder = RunFolder(run_dir)
    if not folder.path.exists():
        raise RLStructError(f"run folder {folder.path} does not exist; pass the folder train.py printed")
    config = folder.read_config()
    for key in ("env", "algo", "policy"):
        if not isinstance(config.get(key), dict):
            raise RLStructError(f"{folder.path / CONFIG_FILE} has no '{key}' section; restore it from metrics.json 'config'")
    point = folder.saved_model()
    venv = make_vec_env(config["env"], 1, seed, render_mode=render_mode)
    if normalizes(config["env"]):
        if not point.vecnormalize.is_file():
            raise RLStructError(
                f"{folder.path} was trained with normalization but {point.vecnormalize} is missing; "
                "copy it from a checkpoint folder"
            )
        venv = attach_vecnormalize(venv, point.vecnormalize, training=False)
    model = load_sb3_model(algo_class(config["algo"]["name"]), point.model, device="cpu")
    check_same_spaces((model.observation_space, model.action_space), venv, str(point.model), config["env"]["id"])
    return model, venv, config
