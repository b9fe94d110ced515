"""What an ES worker runs: NumPy policies on single observations, and observation statistics.

Nothing here imports torch, so worker processes (local or Ray) start fast and stay small. A
rollout needs each layer's dense ``W`` (fixed during an episode). It reaches a worker in one of
two ways:

* **seeded** (the default whenever every layer has a NumPy form): the worker holds an
  :class:`ActorProgram` (sent once per run: how to turn the flat ``theta`` into each layer's
  ``W`` in NumPy) and, once per iteration, an :class:`IterationSpec` (``theta``, ``sigma``, the
  direction seed, the normalizer). A :class:`SeededTask` then only names a direction ``k`` and an
  episode seed; the worker regenerates the iteration's directions from the seed itself and builds
  ``theta +- sigma eps_k``. Only parameters go out, only returns and statistics come back.
* **driver-built**: a :class:`RolloutTask` carries the :class:`NumpyActor` s themselves (built by
  the main process with the layers' ``to_dense()``), for families with no NumPy form here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from rlstruct.algos.estimators import sample_block_directions, sample_directions
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


# ------------------------------------------------------------------------------------------------
# Seeded rollouts: the worker rebuilds each perturbed policy from theta and the iteration's seed.
def _as_float32(x: np.ndarray) -> np.ndarray:
    # The torch actor holds float32 parameters: rounding theta the same way makes a worker-built
    # W equal (bit for bit, for gathers) to what ``to_dense()`` gives on the loaded parameters.
    return x.astype(np.float32).astype(np.float64)


@dataclass
class Slot:
    """A block of ``theta`` (``offset``, ``shape``) or, for a frozen tensor, the fixed array."""

    shape: Tuple[int, ...]
    offset: int = -1
    fixed: Optional[np.ndarray] = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.fixed is None else 0

    def get(self, theta: np.ndarray) -> np.ndarray:
        if self.fixed is not None:
            return self.fixed
        return _as_float32(theta[self.offset : self.offset + int(np.prod(self.shape))]).reshape(self.shape)


@dataclass
class AffineWeight:
    """``W = base + J p``: a layer whose ``W`` is affine in its searched parameters ``p``.

    ``p`` is the concatenation of ``slots`` (float32-rounded). Toeplitz, Hankel, circulant and
    dense layers are *gathers* (each entry of ``W`` is ``coef * p_j`` for one ``j`` or zero):
    ``index`` ``(out * in,)`` then points into ``p`` extended by one zero (``-1`` = zero) and
    ``coef`` is ``None`` when every coefficient is 1. Any other affine layer is a sparse ``J``
    (``rows``, ``cols``, ``vals``), applied with ``np.bincount``.
    """

    shape: Tuple[int, int]
    slots: List[Slot]
    index: Optional[np.ndarray] = None
    coef: Optional[np.ndarray] = None
    rows: Optional[np.ndarray] = None
    cols: Optional[np.ndarray] = None
    vals: Optional[np.ndarray] = None
    base: Optional[np.ndarray] = None

    def build(self, theta: np.ndarray) -> np.ndarray:
        p = np.concatenate([slot.get(theta).ravel() for slot in self.slots] + [np.zeros(1)])
        if self.index is not None:
            flat = p[self.index]
            if self.coef is not None:
                flat = flat * self.coef
        else:
            flat = np.bincount(self.rows, weights=self.vals * p[self.cols], minlength=self.shape[0] * self.shape[1])
        w = flat.reshape(self.shape)
        return w if self.base is None else w + self.base


@dataclass
class GivensWeight:
    """KAMA: ``W = diag(scale[:out]) (G_L ... G_1)[:out, :in]`` on a working size ``n``.

    Stage ``l`` rotates coordinates ``(pairs[l, 2k], pairs[l, 2k+1])`` by ``angles[l, k]``
    (``x_p <- c x_p - s x_q``, ``x_q <- s x_p + c x_q``), as ``rlstruct.layers.givens`` does.
    Built by rotating the rows of the padded identity: ``O(L n in)`` per build, in float64.
    """

    shape: Tuple[int, int]
    n: int
    pairs: np.ndarray  # (L, n) int
    angles: Slot  # (L, n / 2)
    scale: Slot  # (n,)

    def build(self, theta: np.ndarray) -> np.ndarray:
        out, inp = self.shape
        angles, scale = self.angles.get(theta), self.scale.get(theta)
        m = np.zeros((self.n, inp))
        m[np.arange(inp), np.arange(inp)] = 1.0
        cos, sin = np.cos(angles)[:, :, None], np.sin(angles)[:, :, None]
        for stage in range(self.pairs.shape[0]):
            p, q = self.pairs[stage, 0::2], self.pairs[stage, 1::2]
            mp, mq = m[p], m[q]
            m[p] = cos[stage] * mp - sin[stage] * mq
            m[q] = sin[stage] * mp + cos[stage] * mq
        return scale[:out, None] * m[:out]


WeightProgram = Union[Slot, AffineWeight, GivensWeight]


@dataclass
class LayerProgram:
    """One layer of an :class:`ActorProgram`: how ``W`` and ``b`` come from ``theta``."""

    weight: WeightProgram
    bias: Optional[Slot]
    activation: str = "identity"
    activation_param: float = 0.0

    def build(self, theta: np.ndarray) -> NumpyLayer:
        w = self.weight.get(theta) if isinstance(self.weight, Slot) else self.weight.build(theta)
        b = self.bias.get(theta) if self.bias is not None else np.zeros(w.shape[0])
        return NumpyLayer(np.ascontiguousarray(w, dtype=np.float64), b, self.activation, self.activation_param)


@dataclass
class ActorProgram:
    """The actor as a function of ``theta`` in NumPy: sent to each worker once per run."""

    layers: List[LayerProgram]
    discrete: bool
    low: Optional[np.ndarray] = None
    high: Optional[np.ndarray] = None

    def build(self, theta: np.ndarray) -> NumpyActor:
        return NumpyActor([layer.build(theta) for layer in self.layers], self.discrete, self.low, self.high)


@dataclass
class IterationSpec:
    """What every worker needs once per iteration (one message each, not one per task)."""

    iteration: int
    theta: np.ndarray
    sigma: float
    sampling: str
    n_directions: int
    direction_seed: int
    obs_mean: Optional[np.ndarray] = None
    obs_scale: Optional[np.ndarray] = None
    reward_shift: float = 0.0
    collect_stats: bool = True
    blocks: Optional[Tuple[int, ...]] = None  # None: one joint draw over theta

    def directions(self) -> np.ndarray:
        """The iteration's ``(n_directions, dim)`` directions; the driver calls this too."""
        rng = np.random.default_rng(self.direction_seed)
        if self.blocks is not None:
            return sample_block_directions(self.sampling, self.n_directions, self.blocks, rng)
        return sample_directions(self.sampling, self.n_directions, self.theta.size, rng)


@dataclass(frozen=True)
class SeededTask:
    """Direction ``index`` of ``iteration``: run ``theta +- sigma eps_index`` from reset ``seed``."""

    index: int
    seed: int
    iteration: int


@dataclass(frozen=True)
class PingTask:
    """Answered at once with an empty result: measures a backend's per-message cost."""

    index: int
    payload: Optional[np.ndarray] = None


@dataclass
class Shared:
    """A value every worker must hold before its next task; sent again only when ``key`` changes."""

    name: str
    key: Any
    value: Any


class WorkerCache:
    """A worker's copy of the shared values (the program, the iteration) and derived data."""

    def __init__(self) -> None:
        self.keys: Dict[str, Any] = {}
        self.values: Dict[str, Any] = {}
        self._eps_iteration: Optional[int] = None
        self._eps: Optional[np.ndarray] = None

    def holds(self, name: str, key: Any) -> bool:
        return name in self.keys and self.keys[name] == key

    def update(self, part: Shared) -> None:
        self.keys[part.name] = part.key
        self.values[part.name] = part.value

    def directions(self, spec: IterationSpec) -> np.ndarray:
        # Regenerated once per iteration and worker (orthogonal blocks need the whole block's QR,
        # so one row cannot be drawn alone), then reused for each of its tasks.
        if self._eps_iteration != spec.iteration:
            self._eps, self._eps_iteration = spec.directions(), spec.iteration
        return self._eps  # type: ignore[return-value]


AnyTask = Union[RolloutTask, SeededTask, PingTask]


def execute(env, task: AnyTask, cache: WorkerCache, worker: str = "") -> RolloutResult:
    """Run any task in a worker: driver-built actors as they come, seeded ones rebuilt here."""
    if isinstance(task, PingTask):
        return RolloutResult(task.index, [], [], 0, None, worker)
    if isinstance(task, RolloutTask):
        return run_task(env, task, worker)
    spec: IterationSpec = cache.values.get("iteration")
    program: ActorProgram = cache.values.get("program")
    if spec is None or program is None or spec.iteration != task.iteration:
        raise RLStructError(f"worker {worker} got a seeded task of iteration {task.iteration} without its spec")
    eps = cache.directions(spec)[task.index]
    actors = [program.build(spec.theta + sign * spec.sigma * eps) for sign in (1.0, -1.0)]
    return run_task(env, RolloutTask(task.index, task.seed, actors, spec.obs_mean, spec.obs_scale,
                                     spec.reward_shift, spec.collect_stats), worker)
