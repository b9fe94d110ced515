"""PPO (Stable-Baselines3) and TRPO (sb3-contrib) with structured policies: the algorithm only.

The run folder, evaluations, checkpoints and resumption belong to the :class:`~rlstruct.run.Recorder`;
this module builds the model, hands the recorder what to save, and calls ``learn``.

Checkpoints are written when a rollout starts, which SB3 does right after the update on the
previous rollout: the policy, optimizer, normalization statistics, envs mid-episode and random
number generators then hold every step and every update so far, and a resumed run continues
bit for bit (:func:`rlstruct.envs.capture_training_state`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict

from rlstruct.algos.callbacks import recorder_callback
from rlstruct.config import RunConfig
from rlstruct.envs import (
    attach_vecnormalize,
    capture_training_state,
    evaluate_episodes,
    make_eval_env,
    make_vec_env,
    restore_training_state,
    sync_normalization,
    wrap_normalize,
)
from rlstruct.errors import RLStructError
from rlstruct.io import load_pickle, load_sb3_model, save_pickle_atomic, save_sb3_model
from rlstruct.run import MODEL_FILE, STATE_FILE, TB_DIR, VECNORM_FILE, Recorder, banner


def check_algo_kwargs(cls: type, kwargs: Dict[str, Any], algo: str) -> None:
    """Raise :class:`RLStructError` for settings the algorithm class does not take (config typos)."""
    accepted = {
        name for name in inspect.signature(cls.__init__).parameters
        if not name.startswith("_") and name not in ("self", "policy", "env")
    }
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise RLStructError(
            f"{cls.__name__} has no settings {unknown}; fix algo.kwargs (accepted: {', '.join(sorted(accepted))})"
        )


def save_files(model, venv):
    """The recorder's ``save``: model, normalization statistics and training state into a folder."""
    from stable_baselines3.common.vec_env import VecNormalize

    def save(folder: Path) -> None:
        save_sb3_model(model, folder / MODEL_FILE)
        if isinstance(venv, VecNormalize):
            save_pickle_atomic(venv, folder / VECNORM_FILE)
        save_pickle_atomic(capture_training_state(venv), folder / STATE_FILE)

    return save


def _load(cls: type, config: RunConfig, recorder: Recorder):
    """Model and training env from the recorder's start point (a checkpoint or a finished run)."""
    point = recorder.start_point
    venv = attach_vecnormalize(make_vec_env(config.env, config.n_envs, config.seed), point.vecnormalize)
    state = load_pickle(point.state, "training state") if point.state.is_file() else None
    # keep the saved last observation only when the envs can be put back where it was taken
    model = load_sb3_model(cls, point.model, env=venv, device=config.device, force_reset=state is None)
    if state is not None and not restore_training_state(venv, state):
        model._last_obs = None  # envs could not be restored: start them from a reset
    return model, venv


def train_sb3(config: RunConfig, recorder: Recorder) -> Dict[str, Any]:
    """Train (or resume, or extend) a PPO/TRPO run; returns its ``metrics.json``."""
    from stable_baselines3.common.logger import configure

    from rlstruct.policies import algo_class, optimizer_policy_kwargs, policy_kwargs_from_config

    cls = algo_class(config.algo_name)
    kwargs = config.algo_kwargs
    check_algo_kwargs(cls, kwargs, config.algo_name)
    eval_env = make_eval_env(config.env, config.eval_seed)
    if recorder.start_point is not None:
        model, venv = _load(cls, config, recorder)
    else:
        venv = wrap_normalize(make_vec_env(config.env, config.n_envs, config.seed), config.env,
                              float(kwargs.get("gamma", 0.99)))
        model = cls(
            "StructuredMlpPolicy",
            venv,
            policy_kwargs={**policy_kwargs_from_config(config.policy),
                           **optimizer_policy_kwargs(config.optimizer, config.optimizer_kwargs)},
            seed=config.seed,
            device=config.device,
            verbose=0,
            **kwargs,
        )
    model.set_logger(configure(str(recorder.run_dir / TB_DIR), ["tensorboard"]))
    save = save_files(model, venv)
    counts = model.policy.parameter_counts()
    recorder.begin(counts, int(model.num_timesteps), banner(config, counts), save=save)

    remaining = config.total_timesteps - int(model.num_timesteps)
    if remaining > 0:
        model.learn(
            total_timesteps=remaining,
            callback=recorder_callback(recorder, eval_env, save),
            reset_num_timesteps=False,
            progress_bar=config.progress_bar,
        )
    sync_normalization(venv, eval_env)
    # evaluate before saving: the saved training state must be the one the next session continues
    rewards = evaluate_episodes(model, eval_env, config.eval.final_episodes, config.eval.deterministic,
                                seed=config.eval_seed)
    metrics = recorder.finish(int(model.num_timesteps), save, rewards)
    venv.close()
    eval_env.close()
    return metrics
