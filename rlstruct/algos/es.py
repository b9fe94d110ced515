"""Evolution strategies for structured policies: ARS / OpenAI-ES / structured (orthogonal) ES.

The ES searches the *actor* of a :class:`~rlstruct.policies.StructuredActorCriticPolicy` (its
structured hidden layers and the action head; the critic and ``log_std`` are unused) as one flat
vector ``theta``; the policy is deterministic (the action is the mean / the argmax). Each
iteration:

1. draws ``directions`` exploration directions from ``(seed, iteration)`` (iid Gaussian,
   orthogonal blocks or random Hadamard rows, see :mod:`rlstruct.algos.estimators`);
2. runs ``theta + sigma eps_k`` and ``theta - sigma eps_k`` for one episode each, both from the
   reset seed of ``(seed, iteration, k)``, on the backend's workers (NumPy policies built from
   each structured layer's ``to_dense()``: no torch in the rollout loop);
3. merges the workers' observation statistics in direction order (parallel Welford);
4. estimates the gradient (centered ranks, ARS top-b with reward-std scaling, or plain) and takes
   an SGD or Adam step with weight decay.

Nothing depends on the number of workers or on the backend: the same seed gives the same
parameters. :func:`train_es` writes the same run folder as PPO (see :mod:`rlstruct.run`):
``model.zip`` is a PPO model holding the ES policy, so ``PPO.load`` and ``evaluate.py`` open it,
and ``vecnormalize.pkl`` holds the ES observation statistics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from rlstruct.algos.backends import BACKENDS, START_METHODS, Backend, make_backend
from rlstruct.algos.estimators import (
    OPTIMIZERS,
    SAMPLINGS,
    SHAPINGS,
    Optimizer,
    es_gradient,
)
from rlstruct.algos.rollout import (
    OBS_CLIP,
    OBS_EPS,
    ActorProgram,
    AffineWeight,
    EnvSpec,
    GivensWeight,
    IterationSpec,
    LayerProgram,
    NumpyActor,
    NumpyLayer,
    RolloutTask,
    RunningStats,
    SeededTask,
    Shared,
    Slot,
    check_spaces,
    run_task,
)
from rlstruct.algos.settings import settings_from_values
from rlstruct.config import RunConfig
from rlstruct.envs import evaluate_episodes, make_eval_env, make_vec_env, normalizes, sync_normalization
from rlstruct.errors import RLStructError
from rlstruct.layers import StructuredLinear
from rlstruct.layers.givens import KamaLinear
from rlstruct.run import MODEL_FILE, TB_DIR, VECNORM_FILE, Recorder, StartPoint, banner

# Domain tags keep the direction and episode seed streams apart.
_DIRECTION_STREAM = 0xD1
_EPISODE_STREAM = 0xE9

#: where perturbed policies are built: ``worker`` (each worker rebuilds them from theta and the
#: iteration's seed; only parameters go out), ``driver`` (the main process builds every actor with
#: ``to_dense()`` and ships it), ``auto`` (worker when every layer has a NumPy form).
PERTURBATIONS = ("auto", "worker", "driver")
#: ``joint``: directions orthogonal over the whole theta; ``tensors``: an independent draw per
#: parameter tensor, orthogonal within each tensor (e.g. within each KAMA layer's angles).
DIRECTION_BLOCKS = ("joint", "tensors")


@dataclass
class ESSettings:
    """The ``algo`` section of an ES config (``conf/algo/es.yaml`` documents each field)."""

    directions: int = 16
    sigma: float = 0.05
    learning_rate: float = 0.02
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    top_b: Optional[int] = None
    shaping: str = "centered_ranks"
    sampling: str = "orthogonal"
    iterations: Optional[int] = None
    alive_bonus: float = 0.0
    max_episode_steps: Optional[int] = None
    backend: str = "local"
    n_workers: Optional[int] = None
    ray_address: Optional[str] = None
    start_method: str = "spawn"
    perturbations: str = "auto"
    direction_blocks: str = "joint"

    @classmethod
    def from_config(cls, algo_cfg: Dict[str, Any]) -> "ESSettings":
        """Settings from the ``algo`` section of a run config (validated)."""
        values = {k: v for k, v in algo_cfg.items() if k != "name"}
        return settings_from_values(cls, values, "ES")

    def validate(self) -> None:
        def positive(name: str, value: Any, integer: bool = False) -> None:
            bad = value is None or (integer and (not isinstance(value, int) or isinstance(value, bool)))
            if bad or value <= 0:
                kind = "a positive integer" if integer else "positive"
                raise RLStructError(f"ES {name} must be {kind}, got {value!r}; fix algo.{name}")

        positive("directions", self.directions, integer=True)
        positive("sigma", self.sigma)
        positive("learning_rate", self.learning_rate)
        for name in ("iterations", "n_workers", "top_b", "max_episode_steps"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name), integer=True)
        if self.top_b is not None and self.top_b > self.directions:
            raise RLStructError(
                f"ES top_b ({self.top_b}) exceeds directions ({self.directions}); lower top_b or "
                "set it to null"
            )
        if isinstance(self.alive_bonus, bool) or not isinstance(self.alive_bonus, (int, float)):
            raise RLStructError(f"ES alive_bonus must be a number, got {self.alive_bonus!r}; fix algo.alive_bonus")
        if self.weight_decay < 0:
            raise RLStructError(f"ES weight_decay must be >= 0, got {self.weight_decay}")
        for name, value, choices in (
            ("backend", self.backend, BACKENDS),
            ("shaping", self.shaping, SHAPINGS),
            ("sampling", self.sampling, SAMPLINGS),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("start_method", self.start_method, START_METHODS),
            ("perturbations", self.perturbations, PERTURBATIONS),
            ("direction_blocks", self.direction_blocks, DIRECTION_BLOCKS),
        ):
            if value not in choices:
                raise RLStructError(
                    f"unknown ES {name} {value!r}; choose one of: {', '.join(choices)}"
                )


# ------------------------------------------------------------------------------------------------
def _activation_of(module: nn.Module) -> Tuple[str, float]:
    if isinstance(module, nn.Tanh):
        return "tanh", 0.0
    if isinstance(module, nn.ReLU):
        return "relu", 0.0
    if isinstance(module, nn.Identity):
        return "identity", 0.0
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu", float(module.negative_slope)
    if isinstance(module, nn.ELU):
        return "elu", float(module.alpha)
    if isinstance(module, nn.SiLU):
        return "silu", 0.0
    raise RLStructError(
        f"ES rollouts do not support the activation {type(module).__name__}; use tanh, relu, "
        "leaky_relu, elu, silu or identity"
    )


class PolicyActor:
    """The actor of an SB3 actor-critic policy as a flat vector and as a :class:`NumpyActor`.

    ``theta`` covers the trainable parameters of ``mlp_extractor.policy_net`` and ``action_net``
    in module order (frozen ones, e.g. random-mode KAMA angles, are left out).
    """

    def __init__(self, policy) -> None:
        from gymnasium import spaces
        from stable_baselines3.common.torch_layers import FlattenExtractor

        check_spaces(policy.observation_space, policy.action_space)
        if not isinstance(policy.pi_features_extractor, FlattenExtractor):
            raise RLStructError("ES needs the default flatten features extractor")
        self.network = nn.Sequential(*policy.mlp_extractor.policy_net, policy.action_net)
        self.params = [p for p in self.network.parameters() if p.requires_grad]
        self.dim = int(sum(p.numel() for p in self.params))
        space = policy.action_space
        self.discrete = isinstance(space, spaces.Discrete)
        self.low = None if self.discrete else space.low.astype(np.float64)
        self.high = None if self.discrete else space.high.astype(np.float64)

    def get_vector(self) -> np.ndarray:
        """``theta``, shape ``(dim,)``, float64."""
        return parameters_to_vector(self.params).detach().double().numpy().copy()

    def set_vector(self, theta: np.ndarray) -> None:
        with torch.no_grad():
            vector_to_parameters(torch.as_tensor(theta, dtype=self.params[0].dtype), self.params)

    @torch.no_grad()
    def numpy_actor(self, theta: np.ndarray) -> NumpyActor:
        """The policy at ``theta`` with each layer's ``W`` built once (``to_dense``)."""
        self.set_vector(theta)
        layers: List[NumpyLayer] = []
        for module in self.network:
            if isinstance(module, (StructuredLinear, nn.Linear)):
                weight = module.to_dense() if isinstance(module, StructuredLinear) else module.weight
                bias = module.bias if module.bias is not None else torch.zeros(weight.shape[0])
                layers.append(NumpyLayer(weight.double().numpy().copy(), bias.double().numpy().copy()))
            else:
                if not layers or layers[-1].activation != "identity":
                    raise RLStructError(f"ES cannot place module {module} of the actor network")
                layers[-1].activation, layers[-1].activation_param = _activation_of(module)
        return NumpyActor(layers, self.discrete, self.low, self.high)

    # --------------------------------------------------------------------------------------------
    # the NumPy program workers rebuild perturbations with
    def tensor_sizes(self) -> Tuple[int, ...]:
        """Sizes of the searched tensors in ``theta`` order (``direction_blocks=tensors``)."""
        return tuple(int(p.numel()) for p in self.params)

    def _slot(self, tensor: torch.Tensor, offsets: Dict[int, int]) -> Slot:
        shape = tuple(tensor.shape)
        if id(tensor) in offsets:
            return Slot(shape, offsets[id(tensor)])
        return Slot(shape, fixed=tensor.detach().double().numpy().copy())

    @torch.no_grad()
    def _affine_weight(self, module: StructuredLinear, searched: List[nn.Parameter],
                       offsets: Dict[int, int]) -> Optional[AffineWeight]:
        """``W = base + J p`` by probing ``to_dense`` with unit vectors, if ``W`` is affine in ``p``."""
        def dense_at(values: torch.Tensor) -> torch.Tensor:
            vector_to_parameters(values.to(searched[0].dtype), searched)
            return module.to_dense().detach().double()

        n = int(sum(p.numel() for p in searched))
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        wa, wb, wmid = dense_at(a), dense_at(b), dense_at((a + b) / 2)
        scale = float(max(wa.abs().max(), wb.abs().max(), 1e-30))
        if float(((wa + wb) / 2 - wmid).abs().max()) > 1e-5 * scale:
            return None  # not affine (e.g. rotations of learned angles, low-rank products)
        base = dense_at(torch.zeros(n))
        rows, cols, vals = [], [], []
        probe = torch.zeros(n)
        for j in range(n):  # one to_dense per parameter: milliseconds at these sizes, once per run
            probe[j] = 1.0
            col = (dense_at(probe) - base).reshape(-1).numpy()
            probe[j] = 0.0
            nz = np.flatnonzero(np.abs(col) > 1e-6 * scale)  # drop float noise of FFT-built W
            rows.append(nz)
            cols.append(np.full(nz.size, j))
            vals.append(col[nz])
        rows_, cols_, vals_ = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        shape = (module.out_features, module.in_features)
        base_np = base.numpy().copy() if bool(base.abs().max() > 0) else None
        slots = [self._slot(p, offsets) for p in searched]
        if np.unique(rows_).size == rows_.size:  # a gather: at most one parameter per entry
            index = np.full(shape[0] * shape[1], n, dtype=np.int64)  # n: the appended zero
            index[rows_] = cols_
            coef = None
            if not np.all(vals_ == 1.0):
                coef = np.zeros(shape[0] * shape[1])
                coef[rows_] = vals_
            return AffineWeight(shape, slots, index=index, coef=coef, base=base_np)
        return AffineWeight(shape, slots, rows=rows_, cols=cols_, vals=vals_, base=base_np)

    def _weight_program(self, module: nn.Module, offsets: Dict[int, int]):
        if isinstance(module, nn.Linear):
            return self._slot(module.weight, offsets)
        dense = module.to_dense()
        if isinstance(dense, nn.Parameter):  # the dense family stores W as it is
            return self._slot(dense, offsets)
        if isinstance(module, KamaLinear) and id(module.angles) in offsets:
            return GivensWeight((module.out_features, module.in_features), module.n,
                                module.pairs.numpy().astype(np.int64).copy(),
                                self._slot(module.angles, offsets), self._slot(module.scale, offsets))
        bias = module.bias
        searched = [p for p in module.parameters() if id(p) in offsets and p is not bias]
        if not searched:  # nothing searched in W: a constant
            return Slot(tuple(dense.shape), fixed=dense.detach().double().numpy().copy())
        saved = [p.detach().clone() for p in searched]
        try:
            return self._affine_weight(module, searched, offsets)
        finally:
            with torch.no_grad():
                for p, value in zip(searched, saved):
                    p.copy_(value)

    def program(self) -> Optional[ActorProgram]:
        """The actor as a NumPy function of ``theta``, or ``None`` if a layer has no NumPy form.

        Dense weights are slices of ``theta``; KAMA layers with learned angles are rebuilt from
        their angles and diagonal; any other layer whose ``W`` is affine in its searched
        parameters (Toeplitz, Hankel, circulant, random-mode KAMA, ...) is probed once into a
        gather or sparse map. The program is checked against ``to_dense()`` before it is used.
        """
        offsets: Dict[int, int] = {}
        start = 0
        for p in self.params:
            offsets[id(p)] = start
            start += p.numel()
        theta = self.get_vector()
        layers: List[LayerProgram] = []
        try:
            for module in self.network:
                if isinstance(module, (StructuredLinear, nn.Linear)):
                    weight = self._weight_program(module, offsets)
                    if weight is None:
                        return None
                    bias = None if module.bias is None else self._slot(module.bias, offsets)
                    layers.append(LayerProgram(weight, bias))
                else:
                    if not layers or layers[-1].activation != "identity":
                        raise RLStructError(f"ES cannot place module {module} of the actor network")
                    layers[-1].activation, layers[-1].activation_param = _activation_of(module)
        finally:
            self.set_vector(theta)
        program = ActorProgram(layers, self.discrete, self.low, self.high)
        rng = np.random.default_rng(0)
        for point in (theta, theta + 0.1 * rng.standard_normal(self.dim)):
            ours, theirs = program.build(point), self.numpy_actor(point)
            for mine, ref in zip(ours.layers, theirs.layers):
                tol = 1e-5 * max(1.0, float(np.abs(ref.weight).max()))
                if mine.weight.shape != ref.weight.shape or np.abs(mine.weight - ref.weight).max() > tol \
                        or np.abs(mine.bias - ref.bias).max() > tol:
                    self.set_vector(theta)
                    return None
        self.set_vector(theta)
        return program


def _stream_seed(*entropy: int) -> int:
    return int(np.random.SeedSequence([e & 0xFFFFFFFF for e in entropy]).generate_state(1)[0])


class EvolutionStrategy:
    """The ES loop state: ``theta``, optimizer, observation statistics, counters.

    ``step()`` runs one iteration on ``backend`` and returns its statistics. ``state_dict`` /
    ``load_state_dict`` capture everything a resumed run needs to continue exactly.
    """

    def __init__(
        self,
        settings: ESSettings,
        actor: PolicyActor,
        backend: Backend,
        seed: int,
        normalize_obs: bool,
        alive_bonus: float,
    ) -> None:
        self.settings = settings
        self.actor = actor
        self.backend = backend
        self.seed = int(seed)
        self.normalize_obs = normalize_obs
        self.alive_bonus = float(alive_bonus)
        self.theta = actor.get_vector()
        self.optimizer = Optimizer(settings.optimizer, actor.dim, settings.learning_rate)
        obs_dim = actor.network[0].in_features
        self.obs_stats = RunningStats(obs_dim)
        self.iteration = 0
        self.steps = 0
        self.episodes = 0
        self.program = None if settings.perturbations == "driver" else actor.program()
        if self.program is None and settings.perturbations == "worker":
            raise RLStructError(
                "ES perturbations=worker: a layer of this actor has no NumPy form for the workers "
                "to rebuild it from theta; use algo.perturbations=auto or driver"
            )
        self._blocks = actor.tensor_sizes() if settings.direction_blocks == "tensors" else None
        # Totals over this process's iterations (not restored on resume: they time this run).
        self.serial_s = 0.0
        self.parallel_s = 0.0
        self.send_s = 0.0
        self.timed_iterations = 0

    @property
    def seeded(self) -> bool:
        """Whether workers rebuild the perturbations (else the driver ships built actors)."""
        return self.program is not None

    def normalizer(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        return self.obs_stats.normalizer() if self.normalize_obs else (None, None)

    def iteration_spec(self, iteration: int) -> IterationSpec:
        """Everything a worker needs for ``iteration`` (the directions follow from it)."""
        s = self.settings
        mean, scale = self.normalizer()
        return IterationSpec(
            iteration=iteration,
            theta=self.theta,
            sigma=s.sigma,
            sampling=s.sampling,
            n_directions=s.directions,
            direction_seed=_stream_seed(_DIRECTION_STREAM, self.seed, iteration),
            obs_mean=mean,
            obs_scale=scale,
            reward_shift=self.alive_bonus,
            collect_stats=self.normalize_obs,
            blocks=self._blocks,
        )

    def directions(self, iteration: int) -> np.ndarray:
        """The exploration directions of ``iteration``: ``(directions, dim)``."""
        return self.iteration_spec(iteration).directions()

    def step(self) -> Dict[str, float]:
        s = self.settings
        tick = time.perf_counter()
        spec = self.iteration_spec(self.iteration)
        eps = spec.directions()  # the workers draw the same rows from the same seed
        seeds = [_stream_seed(_EPISODE_STREAM, self.seed, self.iteration, k) for k in range(len(eps))]
        if self.seeded:
            # Per iteration: one spec message per worker (theta, normalizer, seed), then tasks
            # that only name a direction; the program went out once (its key never changes).
            shared = [Shared("program", id(self.program), self.program), Shared("iteration", self.iteration, spec)]
            tasks: List[Any] = [SeededTask(k, seeds[k], self.iteration) for k in range(len(eps))]
        else:
            shared = []
            tasks = [
                RolloutTask(
                    index=k,
                    seed=seeds[k],
                    actors=[self.actor.numpy_actor(self.theta + sign * s.sigma * eps[k]) for sign in (1.0, -1.0)],
                    obs_mean=spec.obs_mean,
                    obs_scale=spec.obs_scale,
                    reward_shift=self.alive_bonus,
                    collect_stats=self.normalize_obs,
                )
                for k in range(len(eps))
            ]
        sent = time.perf_counter()
        results = self.backend.map(tasks, shared)
        back = time.perf_counter()
        for result in results:  # fixed order: independent of which worker ran what
            if result.stats is not None:
                self.obs_stats.merge(result.stats)
        pos = np.array([r.returns[0] for r in results])
        neg = np.array([r.returns[1] for r in results])
        raw = np.array([x for r in results for x in r.raw_returns])
        grad = es_gradient(pos, neg, eps, s.sigma, s.shaping, s.top_b)
        delta = self.optimizer.step(grad - s.weight_decay * self.theta)
        self.theta = self.theta + delta
        self.actor.set_vector(self.theta)
        steps = int(sum(r.steps for r in results))
        self.iteration += 1
        self.steps += steps
        self.episodes += len(raw)
        done = time.perf_counter()
        # serial: the driver alone (sampling, packing, merge, gradient, update); parallel: the
        # backend's map, i.e. rollouts plus the per-message costs the driver pays while they run.
        serial, parallel = (sent - tick) + (done - back), back - sent
        self.serial_s += serial
        self.parallel_s += parallel
        self.send_s += self.backend.last_send_s
        self.timed_iterations += 1
        return {
            "serial_s": serial,
            "parallel_s": parallel,
            "send_s": self.backend.last_send_s,
            "messages": self.backend.last_messages,
            "mean_return": float(raw.mean()),
            "max_return": float(raw.max()),
            "mean_train_return": float(np.concatenate([pos, neg]).mean()),
            "grad_norm": float(np.linalg.norm(grad)),
            "step_norm": float(np.linalg.norm(delta)),
            "theta_norm": float(np.linalg.norm(self.theta)),
            "iteration_steps": steps,
        }

    def timing(self) -> Dict[str, Any]:
        """Serial/parallel totals and means over the iterations this process ran."""
        n = max(self.timed_iterations, 1)
        total = self.serial_s + self.parallel_s
        return {
            "timed_iterations": self.timed_iterations,
            "serial_s": self.serial_s,
            "parallel_s": self.parallel_s,
            "send_s": self.send_s,
            "serial_s_mean": self.serial_s / n,
            "parallel_s_mean": self.parallel_s / n,
            "serial_share": self.serial_s / total if total > 0 else 0.0,
            "perturbations": "worker" if self.seeded else "driver",
        }

    def evaluate(self, env, episodes: int, seed: int) -> List[float]:
        """Raw returns of the current deterministic policy, ``episodes`` episodes in ``env``."""
        actor = self.actor.numpy_actor(self.theta)
        mean, scale = self.normalizer()
        return [
            run_task(env, RolloutTask(i, seed + i, [actor], mean, scale, 0.0, False)).raw_returns[0]
            for i in range(episodes)
        ]

    def state_dict(self) -> Dict[str, Any]:
        return {
            "iteration": self.iteration,
            "steps": self.steps,
            "episodes": self.episodes,
            "theta": self.theta.tolist(),
            "optimizer": self.optimizer.state_dict(),
            "obs_stats": self.obs_stats.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.steps = int(state["steps"])
        self.episodes = int(state["episodes"])
        self.theta = np.asarray(state["theta"], dtype=np.float64)
        if self.theta.shape != (self.actor.dim,):
            raise RLStructError(
                f"ES checkpoint has {self.theta.size} actor parameters, the policy {self.actor.dim}; "
                "resume with the config the run was started with"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.obs_stats.load_state_dict(state["obs_stats"])
        self.actor.set_vector(self.theta)


# ------------------------------------------------------------------------------------------------
# the run: model file, evaluations and checkpoints through the recorder (rlstruct.run)
def env_spec_from_config(env_cfg: Dict[str, Any], settings: ESSettings) -> EnvSpec:
    kwargs = tuple(sorted((env_cfg.get("kwargs") or {}).items()))
    return EnvSpec(env_cfg["id"], kwargs, settings.max_episode_steps)


def _normalizer_file(venv, env_cfg: Dict[str, Any]):
    """A ``VecNormalize`` to carry the ES observation statistics (``None`` if the env has none)."""
    from stable_baselines3.common.vec_env import VecNormalize

    if not normalizes(env_cfg):
        return None
    return VecNormalize(
        venv,
        training=False,
        norm_obs=bool(env_cfg.get("normalize_obs")),
        norm_reward=False,
        clip_obs=OBS_CLIP,
        epsilon=OBS_EPS,
    )


def _make_model(config: RunConfig, venv, start: Optional[StartPoint]):
    """The PPO model that carries the ES policy: fresh, or the start point's."""
    from rlstruct.io import load_sb3_model
    from rlstruct.policies import algo_class, policy_kwargs_from_config

    cls = algo_class("es")
    if start is not None:
        return load_sb3_model(cls, start.model, env=venv, device="cpu")
    return cls(
        "StructuredMlpPolicy",
        venv,
        policy_kwargs=policy_kwargs_from_config(config.policy),
        seed=config.seed,
        device="cpu",
        verbose=0,
    )


def _record_iteration(logger, es: EvolutionStrategy, info: Dict[str, float], seconds: float) -> None:
    for key in ("mean_return", "max_return", "mean_train_return", "grad_norm", "step_norm", "theta_norm"):
        logger.record(f"es/{key}", info[key])
    for key in ("serial_s", "parallel_s", "send_s"):
        logger.record(f"es/{key}", info[key])
    logger.record("es/episodes", es.episodes)
    logger.record("es/iteration", es.iteration)
    logger.record("time/steps_per_s", info["iteration_steps"] / max(seconds, 1e-9))


def train_es(config: RunConfig, recorder: Recorder) -> Dict[str, Any]:
    """Train (resume, or extend) an ES run; returns its ``metrics.json`` (see the module doc)."""
    from stable_baselines3.common.logger import configure

    from rlstruct.io import save_pickle_atomic, save_sb3_model

    settings = ESSettings.from_config(config.algo)
    env_cfg = config.env
    start = recorder.start_point
    venv = make_vec_env(env_cfg, 1, config.seed)
    model = _make_model(config, venv, start)
    actor = PolicyActor(model.policy)
    vecnorm = _normalizer_file(venv, env_cfg)
    logger = configure(str(recorder.run_dir / TB_DIR), ["tensorboard"])
    eval_env = env_spec_from_config(env_cfg, settings).make()
    backend = make_backend(
        settings.backend,
        env_spec_from_config(env_cfg, settings),
        settings.n_workers,
        settings.ray_address,
        settings.start_method,
    )
    with backend:
        es = EvolutionStrategy(settings, actor, backend, config.seed, bool(env_cfg.get("normalize_obs")), settings.alive_bonus)
        if start is not None:
            es.load_state_dict(model.es_state)

        def sync() -> None:
            """The ES state into the model and its observation statistics into ``vecnorm``."""
            model.es_state = es.state_dict()  # saved in model.zip's data (SB3 keeps attributes)
            model.num_timesteps = es.steps
            if vecnorm is not None:
                vecnorm.obs_rms.mean = es.obs_stats.mean.copy()
                vecnorm.obs_rms.var = es.obs_stats.var.copy()
                vecnorm.obs_rms.count = es.obs_stats.count

        def save(folder: Path) -> None:
            sync()
            save_sb3_model(model, folder / MODEL_FILE)
            if vecnorm is not None:
                save_pickle_atomic(vecnorm, folder / VECNORM_FILE)

        counts = model.policy.parameter_counts()
        detail = (f"; searching {actor.dim} actor parameters with {settings.directions} directions on "
                  f"{backend.n_workers} {settings.backend} workers")
        recorder.begin(counts, es.steps, banner(config, counts, detail), save=save)
        while es.steps < config.total_timesteps and (settings.iterations is None or es.iteration < settings.iterations):
            tick = time.perf_counter()
            info = es.step()
            _record_iteration(logger, es, info, time.perf_counter() - tick)
            if recorder.evaluation_due(es.steps):
                rewards = es.evaluate(eval_env, config.eval.episodes, config.eval_seed)
                recorder.record_evaluation(es.steps, rewards, logger)
            logger.dump(step=es.steps)
            if recorder.checkpoint_due(es.steps):
                recorder.checkpoint(es.steps, save)
        n_workers = backend.n_workers

    # The final evaluation goes through the saved-model path (SB3 predict + VecNormalize), as for
    # PPO; an ES policy is its mean action, so the evaluation is deterministic.
    sync()
    final_env = make_eval_env(env_cfg, config.eval_seed)
    sync_normalization(vecnorm, final_env)
    rewards = evaluate_episodes(model, final_env, config.eval.final_episodes, deterministic=True,
                                seed=config.eval_seed)
    extra = dict(es=dict(iterations=es.iteration, episodes=es.episodes, searched_parameters=actor.dim,
                         backend=settings.backend, n_workers=n_workers, **es.timing()))
    metrics = recorder.finish(es.steps, save, rewards, extra, detail=f" ({es.iteration} ES iterations)")
    for env in (venv, final_env, eval_env):
        env.close()
    logger.close()
    return metrics
