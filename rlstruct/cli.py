"""Small helpers shared by the command-line entry points (no training logic here)."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from rlstruct.config import RunConfig
from rlstruct.errors import RLStructError


@dataclass
class TrainConfig(RunConfig):
    """The run settings plus where ``train.py`` puts the run folder (``out_dir``/``run_name``).

    The counts users type most are left untyped here so that a bad value (``seed=abc``) reaches
    :meth:`RunConfig.validate` and its one-line error instead of Hydra's multi-line one.
    """

    seed: Any = RunConfig.seed
    total_timesteps: Any = RunConfig.total_timesteps
    n_envs: Any = RunConfig.n_envs
    torch_threads: Any = RunConfig.torch_threads
    out_dir: str = "runs"
    run_name: str = (
        "${env.name}-${algo.name}-${policy.name}-h${join:${policy.hidden}}${tag:${optimizer}}"
        "${tag:${recipe.name},default}-s${seed}"
    )


def register_schema() -> None:
    """Resolvers and the ``run_schema`` node ``conf/config.yaml`` starts from (typed settings)."""
    from hydra.core.config_store import ConfigStore

    register_resolvers()
    ConfigStore.instance().store(name="run_schema", node=TrainConfig)


def register_resolvers() -> None:
    """OmegaConf resolvers used by ``conf/config.yaml`` (``${join:...}`` in run names)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("join"):
        OmegaConf.register_new_resolver(
            "join", lambda items: "-".join(str(i) for i in items) if items else "none"
        )
    if not OmegaConf.has_resolver("writable_dir"):
        OmegaConf.register_new_resolver("writable_dir", writable_dir)
    if not OmegaConf.has_resolver("tag"):
        # "-<value>" for a set option, "" for null or the default: run names only grow when an
        # option is used (${tag:${optimizer}}, ${tag:${recipe.name},default})
        OmegaConf.register_new_resolver(
            "tag", lambda value, default=None: f"-{value}" if value and value != default else ""
        )


def writable_dir(path: str) -> str:
    """``path`` itself, once it is known that the folder can be created there (else one line, exit 2).

    Hydra creates the run folder before ``train.py`` runs, and fails with a stack trace; this
    resolver in ``hydra.run.dir`` checks first, without creating anything.
    """
    import os
    from pathlib import Path

    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is a file" if not existing.is_dir() else "is not writable"
        print(f"error: cannot create the run folder {path}: {existing} {why}; pass a writable out_dir",
              file=sys.stderr, flush=True)
        sys.exit(2)
    return path


@contextlib.contextmanager
def report_errors() -> Iterator[None]:
    """Turn an :class:`RLStructError` into ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except RLStructError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
