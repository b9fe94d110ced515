"""Roll out a saved policy (run folder or compact policy folder) and optionally record a video."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from rlstruct.errors import RLStructError


def _unwrap_envs(venv):
    while not hasattr(venv, "envs"):
        venv = venv.venv
    return venv


def _render(venv) -> Optional[np.ndarray]:
    try:
        return _unwrap_envs(venv).envs[0].render()
    except Exception as exc:  # renderers fail in many library-specific ways; all mean the same
        raise RLStructError(
            f"cannot render the environment ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
            "for MuJoCo set MUJOCO_GL=egl or osmesa, for classic control pip install 'gymnasium[classic-control]'"
        ) from None


def record_video(model: Any, venv: Any, path: str, deterministic: bool = True, max_steps: int = 1000) -> None:
    """Write one episode's frames (``render_mode="rgb_array"`` env) to ``path``."""
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise RLStructError("recording a video needs imageio: pip install 'rlstruct[video]'") from None
    if not Path(path).parent.is_dir():
        raise RLStructError(f"cannot write video {path}: folder {Path(path).parent} does not exist; create it first")
    frames: List[np.ndarray] = []
    obs = venv.reset()
    for _ in range(max_steps):
        frame = _render(venv)
        if frame is not None:
            frames.append(frame)
        action, _ = model.predict(obs, deterministic=deterministic)
        obs, _, dones, _ = venv.step(action)
        if dones[0]:
            break
    if not frames:
        raise RLStructError("the environment rendered no frames; it may not support rgb_array rendering")
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".gif":
            imageio.mimsave(path, frames, duration=1 / 30)
        else:
            imageio.mimsave(path, frames, fps=30)
    except (ValueError, RuntimeError, ImportError, OSError) as exc:
        raise RLStructError(
            f"cannot write video {path} ({exc}); use a .gif file or pip install imageio-ffmpeg for .mp4"
        ) from None


def evaluate_saved(
    path: str,
    episodes: int = 10,
    seed: int = 0,
    deterministic: bool = True,
    video: Optional[str] = None,
) -> Dict[str, Any]:
    """Evaluate the policy saved at ``path``; returns mean, std, rewards, counts and metadata."""
    from rlstruct.runner import evaluate_model

    folder = Path(path)
    if not folder.exists():
        raise RLStructError(f"{folder} does not exist; pass a run folder or a policies/NAME folder")
    model, venv, env_id, structure = _load_saved(folder, seed)
    rewards = evaluate_model(model, venv, episodes, deterministic)
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


def _load_saved(folder: Path, seed: int, render_mode: Optional[str] = None) -> Tuple[Any, Any, str, str]:
    """``(model or policy, eval env, env id, structure)`` of a compact policy or a run folder."""
    from rlstruct import compact
    from rlstruct.runner import load_run

    if compact.is_compact_policy(folder):
        policy, venv, meta = compact.load_compact_policy(folder, seed=seed, render_mode=render_mode)
        return policy, venv, meta["env_id"], meta["structure"]
    model, venv, cfg = load_run(folder, seed=seed, render_mode=render_mode)
    return model, venv, cfg["env"]["id"], cfg["policy"]["structure"]
