"""Environments of a run: training and evaluation envs, normalization, episodes, saved env state.

Everything here takes the ``env`` section of a run config (``id``, ``kwargs``, ``normalize_obs``,
``normalize_reward``) and knows nothing of run folders or trainers.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from rlstruct.errors import RLStructError


def check_env_id(env_id: str) -> None:
    """Raise a one-line error for an id gymnasium does not know, with close names as a hint."""
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


def normalizes(env_cfg: Dict[str, Any]) -> bool:
    return bool(env_cfg.get("normalize_obs") or env_cfg.get("normalize_reward"))


def wrap_normalize(venv, env_cfg: Dict[str, Any], gamma: float):
    """Wrap in a training ``VecNormalize`` when the env config asks for normalization."""
    from stable_baselines3.common.vec_env import VecNormalize

    if not normalizes(env_cfg):
        return venv
    return VecNormalize(
        venv,
        training=True,
        norm_obs=bool(env_cfg.get("normalize_obs")),
        norm_reward=bool(env_cfg.get("normalize_reward")),
        gamma=gamma,
    )


def make_eval_env(env_cfg: Dict[str, Any], seed: int, render_mode: Optional[str] = None):
    """One env for evaluation: frozen observation normalization (synced from training), raw rewards."""
    from stable_baselines3.common.vec_env import VecNormalize

    venv = make_vec_env(env_cfg, 1, seed, render_mode=render_mode)
    if normalizes(env_cfg):
        venv = VecNormalize(venv, training=False, norm_obs=bool(env_cfg.get("normalize_obs")), norm_reward=False)
    return venv


def sync_normalization(train_env, eval_env) -> None:
    """Give the evaluation env the training env's current observation statistics."""
    from stable_baselines3.common.vec_env import VecNormalize

    if isinstance(train_env, VecNormalize) and isinstance(eval_env, VecNormalize):
        eval_env.obs_rms = train_env.obs_rms.copy()


def attach_vecnormalize(venv, path: Path, training: bool = True):
    """Saved ``VecNormalize`` statistics around ``venv`` (no file: ``venv`` unchanged)."""
    from rlstruct.io import load_pickle

    if not Path(path).is_file():
        return venv
    normalizer = load_pickle(path, "normalization statistics")
    normalizer.set_venv(venv)
    if not training:
        normalizer.training = False
        normalizer.norm_reward = False
    return normalizer


def check_same_spaces(model_spaces, venv, what: str, env_id: str) -> None:
    """A saved policy must meet the spaces of the env it runs on (else SB3 fails deep inside)."""
    observation_space, action_space = model_spaces
    for name, saved, current in (
        ("observation", observation_space, venv.observation_space),
        ("action", action_space, venv.action_space),
    ):
        if type(saved) is not type(current) or getattr(saved, "shape", None) != getattr(current, "shape", None) or getattr(saved, "n", None) != getattr(current, "n", None):
            raise RLStructError(
                f"{what} was trained on another {name} space ({saved}) than {env_id} has ({current}); "
                "evaluate it on the env it was trained on"
            )


def evaluate_episodes(policy, venv, episodes: int, deterministic: bool = True,
                      seed: Optional[int] = None) -> List[float]:
    """Undiscounted returns of ``episodes`` full episodes (raw rewards, from Monitor).

    ``policy`` is anything with SB3's ``predict`` (a model or a policy). With ``seed``, the
    episodes start from that seed's reset: every evaluation of every run then plays the same
    episode set, whatever evaluations came before on the same env.
    """
    from stable_baselines3.common.evaluation import evaluate_policy

    if episodes < 1:
        raise RLStructError(f"episodes must be >= 1, got {episodes}")
    if seed is not None:
        venv.seed(seed)  # applied by the reset evaluate_policy starts with
    rewards, _ = evaluate_policy(
        policy, venv, n_eval_episodes=episodes, deterministic=deterministic, return_episode_rewards=True
    )
    return [float(r) for r in rewards]


# ------------------------------------------------------------------------------------------------
# the state of a training env, so that a resumed run continues mid-episode, bit for bit
#: wrapper attributes that are structure, not state (spaces, specs, writers).
_NOT_STATE = {"env", "_action_space", "_observation_space", "_metadata", "_cached_spec", "results_writer",
              "spec", "metadata", "render_mode"}


def _layers(env):
    while True:
        yield env
        if not hasattr(env, "env"):
            return
        env = env.env


def _env_state(env) -> Optional[List[Dict[str, Any]]]:
    """Every layer's state of one gymnasium env (wrappers' counters, MuJoCo physics, RNG), or None."""
    import gymnasium as gym

    states = []
    for layer in _layers(env):
        if isinstance(layer, gym.Wrapper):
            states.append({k: copy.deepcopy(v) for k, v in vars(layer).items() if k not in _NOT_STATE})
        elif hasattr(layer, "model") and hasattr(layer, "data") and type(layer.data).__module__.startswith("mujoco"):
            import mujoco

            spec = mujoco.mjtState.mjSTATE_INTEGRATION  # qpos, qvel, act, warm start, controls, time
            physics = np.empty(mujoco.mj_stateSize(layer.model, spec))
            mujoco.mj_getState(layer.model, layer.data, physics, spec)
            states.append({"mujoco": physics, "_np_random": copy.deepcopy(layer.np_random)})
        else:
            try:  # simple Python envs (classic control): their attributes are their state
                states.append({"attributes": copy.deepcopy({k: v for k, v in vars(layer).items() if k not in _NOT_STATE})})
            except Exception:  # an env holding handles that cannot be copied: no exact resume
                return None
    return states


def _set_env_state(env, states: List[Dict[str, Any]]) -> None:
    layers = list(_layers(env))
    if len(layers) != len(states):
        raise RLStructError("the saved env state has another wrapper stack than this env; resume with the same env config")
    for layer, state in zip(layers, states):
        if "mujoco" in state:
            import mujoco

            mujoco.mj_setState(layer.model, layer.data, state["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(layer.model, layer.data)
            layer._np_random = copy.deepcopy(state["_np_random"])
        elif "attributes" in state:
            vars(layer).update(copy.deepcopy(state["attributes"]))
        else:
            vars(layer).update(copy.deepcopy(state))


def capture_training_state(venv) -> Dict[str, Any]:
    """Envs mid-episode, reward-normalization returns and the global RNGs (torch, numpy, random).

    Restored by :func:`restore_training_state` after a model is loaded, a resumed on-policy run
    steps the same envs with the same random numbers as an uninterrupted one.
    """
    import torch
    from stable_baselines3.common.vec_env import VecNormalize

    base = venv.venv if isinstance(venv, VecNormalize) else venv
    envs = [_env_state(env) for env in getattr(base, "envs", [])]
    state: Dict[str, Any] = dict(
        envs=None if any(e is None for e in envs) or not envs else envs,
        torch_rng=torch.get_rng_state(),
        numpy_rng=np.random.get_state(),
        python_rng=random.getstate(),
    )
    if isinstance(venv, VecNormalize):
        state["vecnormalize"] = dict(returns=venv.returns.copy(), old_obs=copy.deepcopy(venv.old_obs),
                                     old_reward=copy.deepcopy(venv.old_reward))
    return state


def restore_training_state(venv, state: Dict[str, Any]) -> bool:
    """Put a captured state back; returns whether the envs themselves were restored."""
    import torch
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    if isinstance(venv, VecNormalize) and "vecnormalize" in state:
        for key, value in state["vecnormalize"].items():
            setattr(venv, key, copy.deepcopy(value))
    base = venv.venv if isinstance(venv, VecNormalize) else venv
    envs = state.get("envs")
    if envs is None or len(envs) != len(getattr(base, "envs", [])):
        return False
    for env, env_state in zip(base.envs, envs):
        _set_env_state(env, env_state)
    return True
