"""What an ES worker runs: NumPy policies on single observations, and observation statistics.

Nothing here imports torch, so worker processes (local or Ray) start fast and stay small. A
policy reaches a worker as a :class:`NumpyActor`: the dense matrices of its layers, built once per
perturbation by the main process (a structured ``W`` is fixed during an episode, so its
``to_dense()`` is all a rollout needs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from rlstruct.errors import RLStructError

#: Observation normalization constants, the same as SB3's ``VecNormalize`` defaults so that a
#: saved ``VecNormalize`` reproduces the ES policy's inputs exactly.
OBS_CLIP = 10.0
OBS_EPS = 1e-8


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


#: activation name -> function of (x, parameter); the parameter is the module's slope/alpha.
ACTIVATIONS: Dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "identity": lambda x, _: x,
    "tanh": lambda x, _: np.tanh(x),
    "relu": lambda x, _: np.maximum(x, 0.0),
    "leaky_relu": lambda x, slope: np.where(x > 0, x, slope * x),
    "elu": _elu,
    "silu": lambda x, _: _silu(x),
}


@dataclass
class NumpyLayer:
    """``act(W @ x + b)``; ``weight`` is ``(out, in)``, ``bias`` ``(out,)``."""

    weight: np.ndarray
    bias: np.ndarray
    activation: str = "identity"
    activation_param: float = 0.0

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise RLStructError(
                f"ES rollouts do not support activation {self.activation!r}; use one of: "
                f"{', '.join(ACTIVATIONS)}"
            )


@dataclass
class NumpyActor:
    """A deterministic policy: layers, then argmax (discrete) or a clip to the action bounds.

    Shapes: ``act`` maps one observation ``(obs_dim,)`` to an ``int`` (discrete) or an
    ``(act_dim,)`` array (continuous).
    """

    layers: List[NumpyLayer]
    discrete: bool
    low: Optional[np.ndarray] = None
    high: Optional[np.ndarray] = None

    def output(self, obs: np.ndarray) -> np.ndarray:
        h = obs
        for layer in self.layers:
            h = ACTIVATIONS[layer.activation](layer.weight @ h + layer.bias, layer.activation_param)
        return h

    def act(self, obs: np.ndarray) -> Any:
        out = self.output(obs)
        if self.discrete:
            return int(np.argmax(out))
        # np.minimum/np.maximum: a few times cheaper than np.clip on vectors this small.
        return np.minimum(np.maximum(out, self.low), self.high)


# ------------------------------------------------------------------------------------------------
class RunningStats:
    """Count, mean and sum of squared deviations of observations (Welford / Chan et al.).

    ``merge`` combines statistics gathered separately (one per worker task) exactly as if all the
    samples had been seen by one accumulator; merging in a fixed order makes the result
    independent of how tasks were spread over workers.
    """

    def __init__(self, dim: int) -> None:
        self.count = 0.0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    @classmethod
    def from_batch(cls, batch: np.ndarray) -> "RunningStats":
        """Statistics of ``batch`` ``(n, dim)``."""
        stats = cls(batch.shape[1])
        if len(batch):
            stats.count = float(len(batch))
            stats.mean = batch.mean(axis=0)
            stats.m2 = ((batch - stats.mean) ** 2).sum(axis=0)
        return stats

    def merge(self, other: "RunningStats") -> None:
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.count = total

    @property
    def var(self) -> np.ndarray:
        """Population variance (``1`` before any sample, like SB3's ``RunningMeanStd``)."""
        return self.m2 / self.count if self.count > 0 else np.ones_like(self.mean)

    def normalizer(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(mean, 1 / sqrt(var + eps))`` for :func:`normalize`."""
        return self.mean.copy(), 1.0 / np.sqrt(self.var + OBS_EPS)

    def state_dict(self) -> Dict[str, Any]:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.count = float(state["count"])
        self.mean = np.asarray(state["mean"], dtype=np.float64)
        self.m2 = np.asarray(state["m2"], dtype=np.float64)


def normalize(obs: np.ndarray, mean: Optional[np.ndarray], scale: Optional[np.ndarray]) -> np.ndarray:
    """``clip((obs - mean) * scale, -10, 10)`` as ``VecNormalize`` does; identity without stats."""
    if mean is None:
        return obs
    out = (obs - mean) * scale
    np.maximum(out, -OBS_CLIP, out=out)
    return np.minimum(out, OBS_CLIP, out=out)


# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvSpec:
    """How a worker builds its own environment: ``gymnasium.make(id, **kwargs)``."""

    id: str
    kwargs: Tuple[Tuple[str, Any], ...] = ()
    max_episode_steps: Optional[int] = None

    def make(self):
        import gymnasium as gym

        extra = {"max_episode_steps": self.max_episode_steps} if self.max_episode_steps else {}
        return gym.make(self.id, **dict(self.kwargs), **extra)


@dataclass
class RolloutTask:
    """One antithetic pair (or any list of actors), each run for one episode from ``seed``.

    Every actor starts from the same reset seed (common random numbers: the two members of a
    pair differ only by their perturbation). ``reward_shift`` is subtracted from every reward
    (the alive bonus); ``obs_mean``/``obs_scale`` normalize observations (``None``: raw).
    """

    index: int
    seed: int
    actors: List[NumpyActor]
    obs_mean: Optional[np.ndarray] = None
    obs_scale: Optional[np.ndarray] = None
    reward_shift: float = 0.0
    collect_stats: bool = True


@dataclass
class RolloutResult:
    """What a worker returns for one :class:`RolloutTask` (``index`` says which)."""

    index: int
    returns: List[float]  # with the alive bonus subtracted: what the update sees
    raw_returns: List[float]  # the environment's own rewards
    steps: int
    stats: Optional[RunningStats] = None
    worker: str = field(default="", compare=False)


def run_episode(env, actor: NumpyActor, task: RolloutTask, seen: Optional[list]) -> Tuple[float, float, int]:
    """``(shifted return, raw return, steps)`` of one episode; raw observations go to ``seen``."""
    obs, _ = env.reset(seed=task.seed)
    total = raw = 0.0
    steps = 0
    done = False
    while not done:
        obs = np.asarray(obs, dtype=np.float64)
        if seen is not None:
            seen.append(obs)
        action = actor.act(normalize(obs, task.obs_mean, task.obs_scale))
        obs, reward, terminated, truncated, _ = env.step(action)
        raw += float(reward)
        total += float(reward) - task.reward_shift
        steps += 1
        done = terminated or truncated
    return total, raw, steps


def run_task(env, task: RolloutTask, worker: str = "") -> RolloutResult:
    """Run every actor of ``task`` for one episode in ``env`` (the worker's own environment)."""
    seen: Optional[list] = [] if task.collect_stats else None
    returns, raws, steps = [], [], 0
    for actor in task.actors:
        total, raw, n = run_episode(env, actor, task, seen)
        returns.append(total)
        raws.append(raw)
        steps += n
    stats = RunningStats.from_batch(np.stack(seen)) if seen else None
    return RolloutResult(task.index, returns, raws, steps, stats, worker)


def check_spaces(observation_space, action_space) -> None:
    """ES rollouts need a flat Box observation and a Discrete or Box action."""
    from gymnasium import spaces

    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise RLStructError(
            f"ES needs a flat Box observation space, got {observation_space}; use PPO/TRPO for "
            "image or dict observations"
        )
    if not isinstance(action_space, (spaces.Discrete, spaces.Box)):
        raise RLStructError(f"ES needs a Discrete or Box action space, got {action_space}")
