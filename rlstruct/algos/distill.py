"""Distillation: fit a structured policy (the student) to a saved policy (the teacher).

The teacher is any saved SB3 actor-critic policy (a PPO/TRPO/ES run folder of ours, or a bare
``model.zip`` with its ``vecnormalize.pkl`` beside it). :func:`train_distill`:

1. rolls the teacher out for ``teacher_steps`` environment steps through the teacher's own
   ``VecNormalize`` statistics (frozen), keeping the normalized observations it saw;
2. labels every state with the teacher's deterministic action parameters (the Gaussian mean for
   ``Box`` actions, the logits for ``Discrete`` ones) and its value;
3. fits the student (a :class:`~rlstruct.policies.StructuredActorCriticPolicy` from the
   ``policy`` config) by Adam: mean squared error to the mean (``Box``) or KL(teacher || student)
   (``Discrete``), plus ``value_coef`` times the squared error to the teacher's values;
4. optionally runs ``dagger_rounds`` rounds of DAgger: the student acts (deterministically) for
   ``dagger_steps`` steps, the teacher labels those states, the student is refit on everything;
5. optionally fine-tunes the student with PPO for ``finetune_steps`` steps, continuing the
   teacher's normalization statistics, and (``finetune_keep_best``) keeps the best-evaluated of
   the distilled policy and the policies of the periodic evaluations (the last iterate, when it is
   not that one, is saved in ``last/``, a run folder of its own).

The student starts with the teacher's ``log_std`` (so fine-tuning explores as the teacher did)
and keeps it fixed during the fit. The run folder is the one :mod:`rlstruct.run` documents;
``model.zip`` is a PPO model holding the student, ``vecnormalize.pkl`` the teacher's statistics
(or those of the policy kept after fine-tuning), and ``steps`` counts every environment step
spent (teacher and DAgger rollouts + fine-tuning), so a distilled run compares with a
from-scratch run of the same budget. ``total_timesteps`` in the saved config is that budget; the fit's curves are in
``tb/`` under ``distill/`` (x axis: epochs), evaluations under ``eval/`` (x axis: steps).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from rlstruct.algos.callbacks import recorder_callback
from rlstruct.algos.settings import settings_from_values
from rlstruct.config import RunConfig
from rlstruct.envs import attach_vecnormalize, evaluate_episodes, make_eval_env, make_vec_env, sync_normalization
from rlstruct.errors import RLStructError
from rlstruct.run import CONFIG_FILE, MODEL_FILE, TB_DIR, VECNORM_FILE, Recorder, RunFolder, banner


@dataclass
class DistillSettings:
    """The ``algo`` section of a distillation config (``conf/algo/distill.yaml`` documents each field)."""

    teacher: Optional[str] = None
    teacher_steps: int = 20_000
    teacher_deterministic: bool = False
    dagger_rounds: int = 0
    dagger_steps: int = 5_000
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    value_coef: float = 0.5
    holdout: float = 0.1
    finetune_steps: int = 0
    finetune_kwargs: Dict[str, Any] = field(default_factory=dict)
    finetune_keep_best: bool = True

    @classmethod
    def from_config(cls, algo_cfg: Dict[str, Any]) -> "DistillSettings":
        values = {k: v for k, v in algo_cfg.items() if k != "name"}
        return settings_from_values(cls, values, "distillation")

    def validate(self) -> None:
        if not self.teacher:
            raise RLStructError(
                "algo=distill needs a teacher; pass algo.teacher=<run folder or model.zip of a trained policy>"
            )
        for name, minimum in (
            ("teacher_steps", 1),
            ("dagger_rounds", 0),
            ("dagger_steps", 1),
            ("epochs", 1),
            ("batch_size", 1),
            ("finetune_steps", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise RLStructError(
                    f"distillation {name} must be an integer >= {minimum}, got {value!r}; fix algo.{name}"
                )
        for name in ("learning_rate", "value_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                name == "learning_rate" and value == 0
            ):
                raise RLStructError(f"distillation {name} must be a positive number, got {value!r}; fix algo.{name}")
        if not isinstance(self.finetune_keep_best, bool):
            raise RLStructError(
                f"distillation finetune_keep_best must be true or false, got {self.finetune_keep_best!r}; "
                "fix algo.finetune_keep_best"
            )
        if not 0 < self.holdout < 1:
            raise RLStructError(f"distillation holdout must be in (0, 1), got {self.holdout!r}; fix algo.holdout")
        if int(self.teacher_steps * self.holdout) < 1 or int(self.teacher_steps * (1 - self.holdout)) < 1:
            raise RLStructError(
                f"teacher_steps={self.teacher_steps} leaves no states on one side of holdout={self.holdout}; "
                "raise algo.teacher_steps"
            )

    @property
    def rollout_steps(self) -> int:
        """Environment steps of the teacher and DAgger rollouts."""
        return self.teacher_steps + self.dagger_rounds * self.dagger_steps

    @property
    def budget(self) -> int:
        """Environment steps of the whole run (before PPO rounds fine-tuning up to ``n_steps``)."""
        return self.rollout_steps + self.finetune_steps


# ------------------------------------------------------------------------------------------------
# the teacher
@dataclass
class Teacher:
    """A loaded teacher: its policy, its ``VecNormalize`` (detached, or ``None``) and their files."""

    policy: Any
    normalizer: Optional[Any]
    normalizer_path: Optional[Path]
    model_path: Path
    metrics: Optional[Dict[str, Any]]


def _load_policy(model_path: Path):
    """The actor-critic policy saved in an SB3 zip, whatever algorithm saved it (PPO, TRPO, ES)."""
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.save_util import load_from_zip_file

    from rlstruct.io import is_state_dict_mismatch

    import rlstruct.policies  # noqa: F401  (the pickled policy class may be ours)

    try:
        data, params, _ = load_from_zip_file(model_path, device="cpu")
        policy_class = data["policy_class"]
    except Exception as exc:  # a damaged zip fails in many ways (zipfile, pickle, json, torch)
        raise RLStructError(
            f"teacher model {model_path} is unreadable ({type(exc).__name__}); pass an intact model.zip"
        ) from exc
    if not (isinstance(policy_class, type) and issubclass(policy_class, ActorCriticPolicy)):
        raise RLStructError(
            f"teacher {model_path} holds a {getattr(policy_class, '__name__', policy_class)}, not an "
            "actor-critic policy; pass a PPO, TRPO or ES model"
        )
    kwargs = dict(data.get("policy_kwargs") or {})
    if "use_sde" in data:
        kwargs["use_sde"] = data["use_sde"]
    policy = policy_class(data["observation_space"], data["action_space"], lambda _: 0.0, **kwargs)
    try:
        policy.load_state_dict(params["policy"])
    except (RuntimeError, KeyError) as exc:
        if isinstance(exc, RuntimeError) and not is_state_dict_mismatch(exc):
            raise
        first = str(exc).strip().splitlines()[0][:200]
        raise RLStructError(f"teacher model {model_path} does not fit its own policy ({first}); re-save it") from exc
    policy.set_training_mode(False)
    return policy


def load_teacher(path: str) -> Teacher:
    """Load the teacher at ``path``: a run folder, or a ``model.zip`` (statistics beside it)."""
    from rlstruct.io import load_pickle

    source = Path(path)
    if not source.exists():
        raise RLStructError(
            f"teacher {source} does not exist; pass algo.teacher=<a run folder train.py printed, or its model.zip>"
        )
    metrics = None
    if source.is_dir():
        folder = RunFolder(source)
        model_path = folder.saved_model().model
        metrics = folder.read_metrics()
        if (source / CONFIG_FILE).is_file():
            env_cfg = folder.read_config()["env"]
            if env_cfg.get("normalize_obs") and not (model_path.parent / VECNORM_FILE).is_file():
                raise RLStructError(
                    f"teacher {source} was trained with normalized observations but "
                    f"{model_path.parent / VECNORM_FILE} is missing; copy it from a checkpoint folder"
                )
    else:
        model_path = source
    vecnorm_path = model_path.parent / VECNORM_FILE
    normalizer = load_pickle(vecnorm_path, "teacher normalization") if vecnorm_path.is_file() else None
    return Teacher(_load_policy(model_path), normalizer, vecnorm_path if normalizer else None, model_path, metrics)


def _describe(space) -> str:
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return f"Discrete({space.n})"
    if isinstance(space, spaces.Box):
        return f"Box{tuple(space.shape)}"
    return type(space).__name__


def _same_space(a, b) -> bool:
    from gymnasium import spaces

    if type(a) is not type(b):
        return False
    if isinstance(a, spaces.Discrete):
        return a.n == b.n and a.start == b.start
    if isinstance(a, spaces.Box):
        return a.shape == b.shape and np.array_equal(a.low, b.low) and np.array_equal(a.high, b.high)
    return a == b


def check_teacher_spaces(teacher: Teacher, venv, env_id: str) -> None:
    """Refuse a teacher trained on an environment with other observations or actions."""
    from gymnasium import spaces

    policy = teacher.policy
    same_obs = _same_space(policy.observation_space, venv.observation_space)
    if not (same_obs and _same_space(policy.action_space, venv.action_space)):
        raise RLStructError(
            f"teacher {teacher.model_path} acts on {_describe(policy.observation_space)} -> "
            f"{_describe(policy.action_space)} but {env_id} has {_describe(venv.observation_space)} -> "
            f"{_describe(venv.action_space)}; pass a teacher trained on {env_id} (or set env= to the teacher's)"
        )
    if not isinstance(policy.action_space, (spaces.Box, spaces.Discrete)):
        raise RLStructError(
            f"distillation supports Box and Discrete actions, not {_describe(policy.action_space)}; use another env"
        )


# ------------------------------------------------------------------------------------------------
# data and the fit
def action_parameters(policy, obs: torch.Tensor) -> torch.Tensor:
    """The deterministic action parameters ``(batch, a)``: Gaussian means, or logits (``Discrete``)."""
    distribution = policy.get_distribution(obs).distribution
    return distribution.logits if isinstance(distribution, torch.distributions.Categorical) else distribution.mean


@torch.no_grad()
def label(teacher_policy, obs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Teacher targets for states ``(n, obs_dim)``: action parameters ``(n, a)``, values ``(n,)``."""
    return action_parameters(teacher_policy, obs), teacher_policy.predict_values(obs).squeeze(-1)


def action_loss(student: torch.Tensor, teacher: torch.Tensor, discrete: bool) -> torch.Tensor:
    """KL(teacher || student) per state for logits, mean squared error per coordinate for means."""
    if discrete:
        return F.kl_div(
            F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True, reduction="batchmean"
        )
    return F.mse_loss(student, teacher)


@torch.no_grad()
def _r2(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """1 - SSE / SST: 1 for a perfect fit, 0 for predicting the target's mean."""
    sse = float(((prediction - target) ** 2).sum())
    sst = float(((target - target.mean(0)) ** 2).sum())
    return 1.0 - sse / max(sst, 1e-12)


@torch.no_grad()
def agreement(
    student_policy, obs: torch.Tensor, teacher_actions: torch.Tensor, teacher_values: torch.Tensor, action_space
) -> Dict[str, float]:
    """How well the student matches the teacher on states ``obs`` ``(n, obs_dim)``.

    ``Discrete``: ``action_agreement``, the fraction of equal argmax actions. ``Box``: ``action_r2``
    and ``action_mse`` on the deterministic actions clipped to the bounds (what the environment
    receives). Both: ``value_r2`` of the critic against the teacher's values.
    """
    from gymnasium import spaces

    student_policy.set_training_mode(False)
    student = action_parameters(student_policy, obs)
    scores = {"value_r2": _r2(student_policy.predict_values(obs).squeeze(-1), teacher_values)}
    if isinstance(action_space, spaces.Discrete):
        scores["action_agreement"] = float((student.argmax(-1) == teacher_actions.argmax(-1)).double().mean())
        return scores
    low = torch.as_tensor(action_space.low, dtype=student.dtype)
    high = torch.as_tensor(action_space.high, dtype=student.dtype)
    s, t = torch.clamp(student, low, high), torch.clamp(teacher_actions, low, high)
    scores.update(action_r2=_r2(s, t), action_mse=float(((s - t) ** 2).mean()))
    return scores


def collect_states(venv, act: Callable[[np.ndarray], np.ndarray], steps: int) -> torch.Tensor:
    """The observations ``(steps, obs_dim)`` seen while ``act`` drives ``venv`` (one env) for ``steps`` steps."""
    obs = venv.reset()
    states = []
    for _ in range(steps):
        states.append(obs[0])
        obs, _, _, _ = venv.step(act(obs))
    return torch.as_tensor(np.asarray(states), dtype=torch.float32)


class Fitter:
    """Adam on the student's parameters (``log_std`` excluded) against teacher targets."""

    def __init__(self, policy, settings: DistillSettings, discrete: bool, seed: int, logger) -> None:
        self.policy = policy
        self.settings = settings
        self.discrete = discrete
        self.logger = logger
        self.params = [p for name, p in policy.named_parameters() if p.requires_grad and name != "log_std"]
        self.optimizer = torch.optim.Adam(self.params, lr=settings.learning_rate)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.epoch = 0

    def fit(self, obs: torch.Tensor, actions: torch.Tensor, values: torch.Tensor) -> Dict[str, float]:
        """``epochs`` passes over ``(obs, actions, values)``; returns the last epoch's mean losses."""
        s = self.settings
        self.policy.set_training_mode(True)
        for _ in range(s.epochs):
            totals = torch.zeros(2, dtype=torch.float64)
            for idx in torch.randperm(len(obs), generator=self.generator).split(s.batch_size):
                batch = obs[idx]
                a_loss = action_loss(action_parameters(self.policy, batch), actions[idx], self.discrete)
                v_loss = F.mse_loss(self.policy.predict_values(batch).squeeze(-1), values[idx])
                self.optimizer.zero_grad(set_to_none=True)
                (a_loss + s.value_coef * v_loss).backward()
                self.optimizer.step()
                totals += torch.tensor([a_loss.item(), v_loss.item()], dtype=torch.float64) * len(idx)
            mean = (totals / len(obs)).tolist()
            self.epoch += 1
            self.logger.record("distill/action_loss", mean[0])
            self.logger.record("distill/value_loss", mean[1])
            self.logger.record("distill/states", len(obs))
            self.logger.dump(step=self.epoch)
        self.policy.set_training_mode(False)
        return {"action_loss": mean[0], "value_loss": mean[1]}


@dataclass
class FitReport:
    """What :func:`distill` did: data sizes, epochs, last losses, held-out agreement before/after each fit."""

    fit_states: int
    holdout_states: int
    epochs: int
    losses: Dict[str, float]
    before: Dict[str, float]
    after: List[Dict[str, float]]


def distill(model, teacher: Teacher, venv, settings: DistillSettings, seed: int, logger) -> FitReport:
    """Steps 1-4 of the module doc: fit ``model.policy`` to ``teacher`` on states from ``venv``.

    ``venv`` (one environment) must already apply the teacher's normalization.
    """
    from gymnasium import spaces

    student = model.policy
    space = venv.action_space
    states = collect_states(
        venv,
        lambda obs: teacher.policy.predict(obs, deterministic=settings.teacher_deterministic)[0],
        settings.teacher_steps,
    )
    order = torch.randperm(len(states), generator=torch.Generator().manual_seed(seed))
    n_holdout = int(len(states) * settings.holdout)
    held_obs, fit_obs = states[order[:n_holdout]], states[order[n_holdout:]]
    held_actions, held_values = label(teacher.policy, held_obs)
    fit_actions, fit_values = label(teacher.policy, fit_obs)
    before = agreement(student, held_obs, held_actions, held_values, space)
    with torch.no_grad():  # the value head starts at the teacher's mean value: no steps spent on the offset
        student.value_net.bias.fill_(float(fit_values.mean()))
    fitter = Fitter(student, settings, isinstance(space, spaces.Discrete), seed, logger)
    losses = fitter.fit(fit_obs, fit_actions, fit_values)
    after = [agreement(student, held_obs, held_actions, held_values, space)]

    for _ in range(settings.dagger_rounds):  # the student's own states, labelled by the teacher
        new_obs = collect_states(venv, lambda obs: model.predict(obs, deterministic=True)[0], settings.dagger_steps)
        new_actions, new_values = label(teacher.policy, new_obs)
        fit_obs = torch.cat([fit_obs, new_obs])
        fit_actions = torch.cat([fit_actions, new_actions])
        fit_values = torch.cat([fit_values, new_values])
        losses = fitter.fit(fit_obs, fit_actions, fit_values)
        after.append(agreement(student, held_obs, held_actions, held_values, space))
    for key, value in after[-1].items():
        logger.record(f"distill/holdout_{key}", value)
    logger.dump(step=fitter.epoch)
    return FitReport(len(fit_obs), n_holdout, fitter.epoch, losses, before, after)


# ------------------------------------------------------------------------------------------------
# fine-tuning: keep the best-evaluated policy
@dataclass
class BestPolicy:
    """The best-evaluated policy so far: its evaluation, step, parameters and normalization statistics.

    PPO fine-tuning moves the deterministic policy's reward up and down by whole modes on tasks
    like Hopper (results/distill_hopper.md), so its last iterate can be worse than the distilled
    policy it started from; this remembers the best one seen to restore it at the end.
    """

    reward: float
    step: int
    state: Dict[str, torch.Tensor]
    obs_rms: Any = None
    ret_rms: Any = None

    @classmethod
    def snapshot(cls, reward: float, step: int, policy, venv) -> "BestPolicy":
        """A copy of ``policy``'s parameters and ``venv``'s statistics (if it normalizes), scored ``reward``."""
        from stable_baselines3.common.vec_env import VecNormalize

        state = {k: v.detach().clone() for k, v in policy.state_dict().items()}
        if isinstance(venv, VecNormalize):  # the policy acts on inputs normalized by these statistics
            return cls(float(reward), int(step), state, venv.obs_rms.copy(), venv.ret_rms.copy())
        return cls(float(reward), int(step), state)

    def offer(self, reward: float, step: int, policy, venv) -> bool:
        """Take ``policy`` (at ``step``, evaluated at ``reward``) if it beats the best so far; says whether."""
        if reward <= self.reward:
            return False
        best = BestPolicy.snapshot(reward, step, policy, venv)
        self.reward, self.step, self.state, self.obs_rms, self.ret_rms = (
            best.reward, best.step, best.state, best.obs_rms, best.ret_rms
        )
        return True

    def restore(self, policy, venv) -> None:
        """Put the best parameters back into ``policy`` and its statistics into ``venv``."""
        policy.load_state_dict(self.state)
        if self.obs_rms is not None:
            venv.obs_rms, venv.ret_rms = self.obs_rms.copy(), self.ret_rms.copy()


def _keep_best_callback(folder: RunFolder, best: BestPolicy):
    """A callback offering ``best`` each policy the run's periodic evaluation has just scored.

    It must come after the recorder's callback in a ``CallbackList``: that one appends a row to
    ``evaluations.csv`` at each evaluation, and the newest row scores the current policy (read
    back rather than evaluating the policy a second time).
    """
    from stable_baselines3.common.callbacks import BaseCallback

    class KeepBest(BaseCallback):
        def _on_training_start(self) -> None:
            self._rows = folder.evaluations()

        def _on_step(self) -> bool:
            return True

        def _on_rollout_start(self) -> None:
            rows = folder.evaluations()
            if len(rows) > len(self._rows):
                best.offer(float(rows[-1]["mean_reward"]), int(rows[-1]["step"]), self.model.policy, self.training_env)
            self._rows = rows

        def _on_training_end(self) -> None:  # after the recorder's evaluation of the last update
            self._on_rollout_start()

    return KeepBest()


def _save_last_iterate(run_dir: Path, model, venv) -> Path:
    """The last fine-tuning iterate as a run folder ``run_dir/last`` (``evaluate.py`` reads it)."""
    import shutil

    from stable_baselines3.common.vec_env import VecNormalize

    from rlstruct.io import save_pickle_atomic, save_sb3_model

    last = run_dir / "last"
    last.mkdir(exist_ok=True)
    save_sb3_model(model, last / MODEL_FILE)
    if isinstance(venv, VecNormalize):
        save_pickle_atomic(venv, last / VECNORM_FILE)
    shutil.copyfile(run_dir / CONFIG_FILE, last / CONFIG_FILE)
    return last


# ------------------------------------------------------------------------------------------------
# the run (through the recorder, rlstruct.run)
def _run_config(config: RunConfig, settings: DistillSettings, teacher: Teacher) -> RunConfig:
    """The config the run really uses: the teacher's normalization, the step budget as total_timesteps."""
    values = copy.deepcopy(config.to_dict())
    norm = teacher.normalizer
    values["env"]["normalize_obs"] = bool(norm is not None and norm.norm_obs)
    values["env"]["normalize_reward"] = bool(norm is not None and norm.norm_reward)
    for key in ("normalize_obs", "normalize_reward"):
        if bool(config.env.get(key, False)) != values["env"][key]:
            print(f"[rlstruct] distill: env.{key}={values['env'][key]} (the teacher's normalization)", flush=True)
    values["total_timesteps"] = settings.budget
    return RunConfig.from_dict(values)


def _make_student(config: RunConfig, settings: DistillSettings, venv, teacher: Teacher):
    """A PPO model holding the student; ``log_std`` copied from the teacher when shapes match."""
    from rlstruct.policies import algo_class, optimizer_policy_kwargs, policy_kwargs_from_config

    model = algo_class("distill")(
        "StructuredMlpPolicy",
        venv,
        policy_kwargs={**policy_kwargs_from_config(config.policy),
                       **optimizer_policy_kwargs(config.optimizer, config.optimizer_kwargs)},
        seed=config.seed,
        device="cpu",
        verbose=0,
        **dict(settings.finetune_kwargs or {}),
    )
    teacher_log_std = getattr(teacher.policy, "log_std", None)
    student_log_std = getattr(model.policy, "log_std", None)
    if isinstance(teacher_log_std, torch.nn.Parameter) and isinstance(student_log_std, torch.nn.Parameter):
        if teacher_log_std.shape == student_log_std.shape:
            with torch.no_grad():
                student_log_std.copy_(teacher_log_std)
    return model


def _save_files(model, venv):
    from stable_baselines3.common.vec_env import VecNormalize

    from rlstruct.io import save_pickle_atomic, save_sb3_model

    def save(folder: Path) -> None:
        save_sb3_model(model, folder / MODEL_FILE)
        if isinstance(venv, VecNormalize):
            save_pickle_atomic(venv, folder / VECNORM_FILE)

    return save


def train_distill(config: RunConfig, recorder: Recorder) -> Dict[str, Any]:
    """Distill the teacher of ``config.algo`` into the ``config.policy`` student.

    Returns ``metrics.json`` (a PPO run's keys, plus ``distill``: teacher, data, losses and
    held-out agreement before and after the fit). See the module doc for the procedure.
    """
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.vec_env import VecNormalize

    settings = DistillSettings.from_config(config.algo)
    if settings.finetune_steps and settings.finetune_keep_best and not config.eval.freq:
        raise RLStructError(
            "algo.finetune_keep_best picks among the periodic evaluations, but eval.freq is 0; "
            "set eval.freq > 0 or algo.finetune_keep_best=false"
        )
    teacher = load_teacher(settings.teacher)
    venv = make_vec_env(config.env, 1, config.seed)
    check_teacher_spaces(teacher, venv, config.env["id"])
    config = _run_config(config, settings, teacher)
    recorder.replace_config(config)
    if teacher.normalizer_path is not None:  # the teacher's statistics, frozen during the fit
        venv = attach_vecnormalize(venv, teacher.normalizer_path, training=False)

    model = _make_student(config, settings, venv, teacher)
    logger = configure(str(recorder.run_dir / TB_DIR), ["tensorboard"])
    model.set_logger(logger)
    counts = model.policy.parameter_counts()
    # the periodic evaluations start with the fine-tuning, after the teacher and DAgger rollouts
    recorder.begin(counts, settings.rollout_steps, banner(config, counts, f"; teacher {teacher.model_path}, budget {settings.budget} steps"))
    eval_env = make_eval_env(config.env, config.eval_seed)

    fit = distill(model, teacher, venv, settings, config.seed, logger)
    model.num_timesteps = settings.rollout_steps
    sync_normalization(venv, eval_env)
    deterministic = config.eval.deterministic
    rewards = evaluate_episodes(model, eval_env, config.eval.episodes, deterministic, seed=config.eval_seed)
    distilled_eval = dict(mean=float(np.mean(rewards)), std=float(np.std(rewards)), episodes=len(rewards))
    recorder.record_evaluation(model.num_timesteps, rewards, logger)
    logger.dump(step=model.num_timesteps)
    print(
        f"[rlstruct] distilled on {fit.fit_states} states: held-out {fit.after[-1]} (before {fit.before}); "
        f"reward {distilled_eval['mean']:.1f} +- {distilled_eval['std']:.1f} (std over episodes)",
        flush=True,
    )

    # 5: PPO fine-tuning, continuing the teacher's statistics (no checkpoints: no resume).
    finetune = None
    if settings.finetune_steps > 0:
        if isinstance(venv, VecNormalize):
            venv.training = True
            venv.norm_reward = bool(config.env.get("normalize_reward"))
        callbacks = [recorder_callback(recorder, eval_env, save=None)]
        if settings.finetune_keep_best:  # the distilled policy is the first candidate
            best = BestPolicy.snapshot(distilled_eval["mean"], model.num_timesteps, model.policy, venv)
            callbacks.append(_keep_best_callback(recorder.folder, best))
        model.learn(
            total_timesteps=settings.finetune_steps,
            callback=CallbackList(callbacks),
            reset_num_timesteps=False,
            progress_bar=config.progress_bar,
        )
        finetune = dict(keep_best=settings.finetune_keep_best, last_step=int(model.num_timesteps), last_dir=None)
        if settings.finetune_keep_best:
            finetune.update(kept_step=best.step, kept_eval_mean=best.reward)
            if best.step != model.num_timesteps:
                finetune["last_dir"] = str(_save_last_iterate(recorder.run_dir, model, venv))
                best.restore(model.policy, venv)

    sync_normalization(venv, eval_env)
    rewards = evaluate_episodes(model, eval_env, config.eval.final_episodes, deterministic, seed=config.eval_seed)
    steps = int(model.num_timesteps)
    teacher_eval = (teacher.metrics or {}).get("final_eval")
    extra = dict(
        distill=dict(
            teacher=str(teacher.model_path),
            teacher_params=(teacher.metrics or {}).get("params"),
            teacher_final_eval_mean=teacher_eval.get("mean") if teacher_eval else None,
            teacher_steps=settings.teacher_steps,
            dagger_steps=settings.dagger_rounds * settings.dagger_steps,
            finetune_steps=steps - settings.rollout_steps,
            fit_states=fit.fit_states,
            holdout_states=fit.holdout_states,
            epochs=fit.epochs,
            final_losses=fit.losses,
            holdout_before=fit.before,
            holdout_after=fit.after,
            distilled_eval=distilled_eval,
            finetune=finetune,
        ),
    )
    metrics = recorder.finish(steps, _save_files(model, venv), rewards, extra)
    venv.close()
    eval_env.close()
    logger.close()
    return metrics
