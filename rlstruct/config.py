"""The typed run config: every setting of a run, its default, and its validation, in one place.

``conf/`` (Hydra) composes the ``env``, ``algo``, ``policy`` and ``recipe`` sections onto these
defaults; Hydra's own order is the only precedence there is::

    RunConfig defaults < conf/algo/<algo> < conf/env_algo/<env>_<algo> (what an env needs of an
    algorithm, e.g. ES's alive bonus) < conf/tuned/<recipe>_<env>_<algo> (a tuned recipe) < the
    command line

so a value typed on the command line always wins. Python users build the same config with
:meth:`RunConfig.from_dict`. Nothing here imports Hydra: the CLI registers :class:`RunConfig` as
its schema, so a typo in a top-level key or a value of the wrong type fails at composition time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from rlstruct.errors import RLStructError

#: algorithms trained by SB3 / sb3-contrib classes, and those whose trainers are ours.
SB3_ALGOS = ("ppo", "trpo")
OWN_ALGOS = ("es", "distill")
#: keys of the command-line config that name where a run goes, not how it trains.
CLI_KEYS = ("out_dir", "run_name")


@dataclass
class EvalSettings:
    """Periodic and final evaluation (deterministic episodes on a separate env)."""

    freq: int = 10000          # environment steps between periodic evaluations (0: final only)
    episodes: int = 5          # episodes per periodic evaluation
    final_episodes: int = 10   # episodes of the final evaluation written to metrics.json
    deterministic: bool = True
    seed: Optional[int] = None  # seed of the evaluation episodes (None: seed + 10000)


@dataclass
class CheckpointSettings:
    """Atomic checkpoints an unfinished run resumes from (dropped when the run finishes)."""

    freq: int = 10000  # environment steps between checkpoints (0: none)
    keep: int = 2      # how many checkpoints to keep


@dataclass
class RunConfig:
    """Everything a trainer needs to run (and resume) one run.

    ``env``, ``algo`` and ``policy`` stay free-form mappings: their keys belong to the env config
    (``id``, ``normalize_obs``, ...), the algorithm (``kwargs`` for SB3 classes, ES or distillation
    settings, each validated by its trainer) and the policy (``structure``, ``hidden``, ...).
    """

    env: Dict[str, Any] = field(default_factory=dict)
    algo: Dict[str, Any] = field(default_factory=dict)
    policy: Dict[str, Any] = field(default_factory=dict)
    recipe: Dict[str, Any] = field(default_factory=lambda: {"name": "default", "applied": None})
    seed: int = 0
    total_timesteps: int = 30000
    n_envs: int = 1
    device: str = "cpu"          # cpu or cuda
    torch_threads: int = 1       # one thread per run: run several seeds side by side instead
    resume: bool = False         # continue the run folder's run (or extend a finished one)
    progress_bar: bool = True
    optimizer: Optional[str] = None  # None: the algorithm's Adam; or projunn_d, projunn_t, adam, sgd
    optimizer_kwargs: Dict[str, Any] = field(default_factory=dict)
    eval: EvalSettings = field(default_factory=EvalSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "RunConfig":
        """A validated config from a plain mapping (a resolved Hydra config or a saved config.yaml)."""
        values = {k: v for k, v in values.items() if k not in CLI_KEYS}
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise RLStructError(
                f"unknown run settings {unknown}; valid ones: "
                f"{', '.join(f.name for f in dataclasses.fields(cls))}"
            )
        for section in ("env", "algo", "policy"):
            if not isinstance(values.get(section), dict):
                raise RLStructError(f"the run config has no {section} section; pick one, e.g. {section}=<name>")
        nested = {"eval": EvalSettings, "checkpoint": CheckpointSettings}
        kwargs = dict(values)
        for name, kind in nested.items():
            given = dict(values.get(name) or {})
            bad = sorted(set(given) - {f.name for f in dataclasses.fields(kind)})
            if bad:
                raise RLStructError(f"unknown {name} settings {bad}; valid ones: {', '.join(f.name for f in dataclasses.fields(kind))}")
            kwargs[name] = kind(**given)
        config = cls(**kwargs)
        config.validate()
        return config

    def to_dict(self) -> Dict[str, Any]:
        """The plain mapping saved as the run's ``config.yaml``."""
        return dataclasses.asdict(self)

    @property
    def algo_name(self) -> str:
        return str(self.algo.get("name"))

    @property
    def algo_kwargs(self) -> Dict[str, Any]:
        """Constructor settings of an SB3 / sb3-contrib algorithm (``algo.kwargs``)."""
        return dict(self.algo.get("kwargs") or {})

    @property
    def eval_seed(self) -> int:
        """Seed of the evaluation env: ``eval.seed`` (one episode set for every run), else seed + 10000."""
        return int(self.eval.seed) if self.eval.seed is not None else self.seed + 10_000

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """One-line :class:`RLStructError` for values that cannot work (counts, names, recipes)."""
        if self.algo_name not in SB3_ALGOS + OWN_ALGOS:
            raise RLStructError(
                f"unknown algo {self.algo_name!r}; choose one of: {', '.join(SB3_ALGOS + OWN_ALGOS)}"
            )
        _integer("seed", self.seed, minimum=0)
        _integer("torch_threads", self.torch_threads)
        _integer("eval.final_episodes", self.eval.final_episodes)
        _integer("eval.freq", self.eval.freq, minimum=0)
        _integer("checkpoint.freq", self.checkpoint.freq, minimum=0)
        _integer("checkpoint.keep", self.checkpoint.keep)
        if self.eval.freq:
            _integer("eval.episodes", self.eval.episodes)
        if self.eval.seed is not None:
            _integer("eval.seed", self.eval.seed, minimum=0)
        if self.algo_name != "distill":  # distillation sets its own budget (docs/distill.md)
            _integer("total_timesteps", self.total_timesteps)
        if self.algo_name in SB3_ALGOS:
            _integer("n_envs", self.n_envs)
        if self.algo_name == "es" and self.optimizer:
            # ES never computes gradients, so a gradient optimizer would be silently ignored
            raise RLStructError(
                f"optimizer={self.optimizer} does not apply to algo=es, which steps with "
                "algo.optimizer (sgd or adam); remove optimizer= or train with algo=ppo or algo=trpo"
            )
        if not (self.device == "cpu" or str(self.device).startswith("cuda")):
            raise RLStructError(f"device must be cpu or cuda[:N], got {self.device!r}; fix device")
        recipe = self.recipe.get("name", "default")
        if recipe != "default" and self.recipe.get("applied") is None:
            env, algo = self.env.get("name"), self.algo_name
            raise RLStructError(
                f"recipe={recipe} has no settings for env={env} algo={algo} "
                f"(conf/tuned/{recipe}_{env}_{algo}.yaml does not exist); use recipe=default or "
                "another env/algo"
            )
        # total_timesteps=1e6 on the command line arrives as a float: trainers use integers
        self.total_timesteps = int(self.total_timesteps)

    def identity(self) -> Dict[str, Any]:
        """What a checkpoint is bound to: env, normalization, algorithm settings and policy.

        Budgets, evaluation, logging and worker settings may change between a run and its
        resumption (e.g. a larger ``total_timesteps`` extends it); these may not.
        """
        from rlstruct.policies import policy_kwargs_from_config

        algo = {k: v for k, v in self.algo.items() if k not in _ALGO_NOT_IDENTITY}
        return dict(
            env=dict(
                id=self.env.get("id"), kwargs=self.env.get("kwargs") or {},
                normalize_obs=bool(self.env.get("normalize_obs")),
                normalize_reward=bool(self.env.get("normalize_reward")),
            ),
            algo=algo,
            policy=policy_kwargs_from_config(self.policy),
        )


#: algo settings that do not change what a run computes (ES results do not depend on workers).
_ALGO_NOT_IDENTITY = ("iterations", "backend", "n_workers", "ray_address", "start_method")


def _integer(name: str, value: Any, minimum: int = 1) -> None:
    # integral floats pass (total_timesteps=1e6 on the command line)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or not float(value).is_integer():
        bound = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise RLStructError(f"{name} must be {bound}, got {value!r}; fix {name}")
