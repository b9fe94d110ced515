"""Roll out a saved policy (run folder or compact policy folder) and optionally record a video."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from rlstruct.envs import evaluate_episodes
from rlstruct.errors import RLStructError


def _base_env(venv):
    while not hasattr(venv, "envs"):
        venv = venv.venv
    return venv.envs[0]


def _follow_agent(env) -> None:
    """Make a MuJoCo env's camera track the agent's root body.

    Gymnasium's v5 MuJoCo envs name a ``trackbodyid`` in their default camera but leave the
    camera free, so it stays where the episode started and loses a running agent.
    """
    renderer = getattr(env.unwrapped, "mujoco_renderer", None)
    if renderer is None:
        return
    import mujoco

    viewer = renderer._get_viewer("rgb_array")  # created on first use; no public accessor
    body = int(getattr(viewer.cam, "trackbodyid", -1))
    viewer.cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING
    viewer.cam.trackbodyid = body if body > 0 else 1  # body 0 is the world
    renderer.camera_id = None  # else every render() call resets the camera to the free one


def _render(env) -> Optional[np.ndarray]:
    try:
        return env.render()
    except Exception as exc:  # renderers fail in many library-specific ways; all mean the same
        raise RLStructError(
            f"cannot render the environment ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
            "for MuJoCo set MUJOCO_GL=egl or osmesa, for classic control pip install 'gymnasium[classic-control]'"
        ) from exc


class _FrameWriter:
    """Frames to a file as they come: .mp4 streams through ffmpeg, .gif keeps 1-byte palette frames.

    GIF delays are whole centiseconds and players stretch delays under 20 ms, so a GIF keeps
    every ``stride``-th frame (at most 25 per second: Hopper's 125 fps becomes every 5th frame
    shown for 40 ms), which plays at the env's own speed; an .mp4 keeps every frame at its fps.
    """

    def __init__(self, path: str, fps: float):
        self.path = path
        self.suffix = Path(path).suffix.lower()
        self.stride = max(1, math.ceil(fps / 25)) if self.suffix == ".gif" else 1
        self.fps = fps / self.stride
        self.frames = []
        self.count = 0
        if self.suffix != ".gif":
            try:
                import imageio.v2 as imageio

                self.writer = imageio.get_writer(path, fps=fps, macro_block_size=1)
            except (ValueError, RuntimeError, ImportError, OSError) as exc:
                raise RLStructError(
                    f"cannot write video {path} ({exc}); use a .gif file or pip install imageio-ffmpeg for .mp4"
                ) from exc

    def add(self, frame: np.ndarray) -> None:
        self.count += 1
        if self.suffix == ".gif":
            from PIL import Image

            # a palette image is a third of the RGB frame: a 1000-step episode stays ~230 MB at 480x480
            self.frames.append(Image.fromarray(frame).quantize(colors=256, method=Image.Quantize.FASTOCTREE))
        else:
            self.writer.append_data(frame)

    def close(self) -> None:
        try:
            if self.suffix == ".gif":
                if self.frames:
                    # GIF frame delays are in milliseconds
                    self.frames[0].save(self.path, save_all=True, append_images=self.frames[1:],
                                        duration=round(1000 / self.fps, -1), loop=0)
            else:
                self.writer.close()
        except (ValueError, RuntimeError, OSError) as exc:
            raise RLStructError(f"cannot write video {self.path} ({exc}); check the folder and the suffix") from exc


def record_video(model: Any, venv: Any, path: str, deterministic: bool = True, max_steps: int = 1000) -> int:
    """Write one episode of a ``render_mode="rgb_array"`` env to ``path`` at the env's frame rate.

    Returns the number of frames written.
    """
    if not Path(path).parent.is_dir():
        raise RLStructError(f"cannot write video {path}: folder {Path(path).parent} does not exist; create it first")
    env = _base_env(venv)
    fps = float(env.metadata.get("render_fps") or 30)
    obs = venv.reset()
    _follow_agent(env)
    writer = _FrameWriter(path, fps)
    for step in range(max_steps):
        if step % writer.stride == 0:  # render only the frames the file keeps
            frame = _render(env)
            if frame is not None:
                writer.add(frame)
        action, _ = model.predict(obs, deterministic=deterministic)
        obs, _, dones, _ = venv.step(action)
        if dones[0]:
            break
    if not writer.count:
        raise RLStructError("the environment rendered no frames; it may not support rgb_array rendering")
    writer.close()
    return writer.count


def evaluate_saved(
    path: str,
    episodes: int = 10,
    seed: int = 0,
    deterministic: bool = True,
    video: Optional[str] = None,
) -> Dict[str, Any]:
    """Evaluate the policy saved at ``path``; returns mean, std, rewards, counts and metadata."""
    folder = Path(path)
    if not folder.exists():
        raise RLStructError(f"{folder} does not exist; pass a run folder or a policies/NAME folder")
    model, venv, env_id, structure = _load_saved(folder, seed)
    rewards = evaluate_episodes(model, venv, episodes, deterministic)
    venv.close()
    if video:
        model, rvenv, _, _ = _load_saved(folder, seed, render_mode="rgb_array")
        record_video(model, rvenv, video, deterministic)
        rvenv.close()
    return dict(
        env_id=env_id,
        structure=structure,
        mean=float(np.mean(rewards)),
        std=float(np.std(rewards)),
        episodes=len(rewards),
        rewards=rewards,
        params=(model.policy if hasattr(model, "policy") else model).parameter_counts(),
    )


PLANAR_ROOT_JOINTS = ("rootx", "rootz", "rooty")


def trace_episodes(path: str, episodes: int = 10, seed: int = 0, deterministic: bool = True) -> List[Dict[str, Any]]:
    """Per-episode gait figures of a planar MuJoCo task (HalfCheetah, Hopper, Walker2d).

    For each of ``episodes`` episodes (the same episode set as :func:`evaluate_saved` with the same
    ``seed``): its reward, its length, the distance its root travelled (``rootx``) and its root
    pitch (``rooty``, radians: 0 level, +-pi on its back), final and largest in magnitude. Tells
    a policy whose gait is slow apart from one that gets stuck in some episodes and not others:
    both lower the mean reward, only the second makes it bimodal.
    """
    folder = Path(path)
    if not folder.exists():
        raise RLStructError(f"{folder} does not exist; pass a run folder or a policies/NAME folder")
    model, venv, env_id, _ = _load_saved(folder, seed)
    sim = _base_env(venv).unwrapped
    names = tuple(sim.model.joint(i).name for i in range(min(3, sim.model.njnt))) if hasattr(sim, "model") else ()
    if names != PLANAR_ROOT_JOINTS:
        venv.close()
        raise RLStructError(
            f"--trace needs a planar MuJoCo task whose first joints are {', '.join(PLANAR_ROOT_JOINTS)} "
            f"(HalfCheetah, Hopper, Walker2d); {env_id} has {names or 'no MuJoCo joints'}"
        )
    rows: List[Dict[str, Any]] = []
    obs = venv.reset()
    start_x, pitches = float(sim.data.qpos[0]), []
    while len(rows) < episodes:
        action, _ = model.predict(obs, deterministic=deterministic)
        x, pitch = float(sim.data.qpos[0]), float(sim.data.qpos[2])  # before the step: a done step resets
        obs, _, dones, infos = venv.step(action)
        pitches.append(pitch)
        if dones[0]:
            episode = infos[0]["episode"]  # Monitor's record: the raw undiscounted reward
            rows.append(dict(reward=float(episode["r"]), length=int(episode["l"]), distance=x - start_x,
                             final_pitch=pitch, max_abs_pitch=float(np.max(np.abs(pitches)))))
            start_x, pitches = float(sim.data.qpos[0]), []
    venv.close()
    return rows


def rescore_run(path: str, episodes: int, seed: int, command: Optional[str] = None) -> Dict[str, Any]:
    """Replace a finished run's final evaluation by ``episodes`` deterministic episodes from ``seed``.

    For putting runs scored under different protocols on one episode set (a run's own final
    evaluation plays the episodes of its ``eval.seed``: the same as
    ``evaluate.py RUN --episodes N --seed eval.seed``). The replaced evaluation is kept in
    ``metrics.json`` under ``final_eval_history``.
    """
    from rlstruct.run import RunFolder

    folder = RunFolder(path)
    metrics = folder.read_metrics()
    if not metrics or metrics.get("status") != "finished":
        raise RLStructError(f"{path} holds no finished run to rescore; let it finish (resume=true) first")
    result = evaluate_saved(path, episodes=episodes, seed=seed, deterministic=True)
    rewards = result["rewards"]
    history = list(metrics.get("final_eval_history") or [])
    history.append(metrics.get("final_eval"))
    metrics["final_eval_history"] = history
    metrics["final_eval"] = dict(
        mean=float(np.mean(rewards)), std=float(np.std(rewards)), std_kind="population (ddof=0) over episodes",
        episodes=len(rewards), deterministic=True, eval_seed=int(seed), rewards=rewards, rescored_by=command,
    )
    folder.write_metrics(metrics)
    return metrics["final_eval"]


def _load_saved(folder: Path, seed: int, render_mode: Optional[str] = None) -> Tuple[Any, Any, str, str]:
    """``(model or policy, eval env, env id, structure)`` of a compact policy or a run folder."""
    from rlstruct import compact
    from rlstruct.run import CONFIG_FILE, load_run

    if compact.is_compact_policy(folder):
        policy, venv, meta = compact.load_compact_policy(folder, seed=seed, render_mode=render_mode)
        return policy, venv, meta["env_id"], meta["structure"]
    if (folder / compact.TENSORS_FILE).is_file() and not (folder / CONFIG_FILE).is_file():
        raise RLStructError(
            f"{folder} holds {compact.TENSORS_FILE} but no {compact.META_FILE}; restore meta.json from "
            "where the policy came from, or re-export it with python -m rlstruct.compact"
        )
    model, venv, cfg = load_run(folder, seed=seed, render_mode=render_mode)
    return model, venv, cfg["env"]["id"], cfg["policy"]["structure"]
