"""Small helpers shared by the command-line entry points (no training logic here)."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Dict, Iterator, Sequence

from rlstruct.errors import RLStructError


def register_resolvers() -> None:
    """OmegaConf resolvers used by ``conf/config.yaml`` (``${join:...}`` in run names)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("join"):
        OmegaConf.register_new_resolver(
            "join", lambda items: "-".join(str(i) for i in items) if items else "none"
        )
    if not OmegaConf.has_resolver("tag"):
        # "-<value>" for a set option, "" for null or the default: run names only grow when an
        # option is used (${tag:${optimizer}}, ${tag:${recipe.name},sb3})
        OmegaConf.register_new_resolver(
            "tag", lambda value, default=None: f"-{value}" if value and value != default else ""
        )


@contextlib.contextmanager
def report_errors() -> Iterator[None]:
    """Turn an :class:`RLStructError` into ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except RLStructError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def command_line_wins(cfg: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Drop from ``env.hyperparams.<algo>`` every setting the command line gave ``algo`` itself.

    The runner overlays an env's own settings (``env.hyperparams.ppo``, ``...es``) on the
    algorithm's defaults, because the env knows better than a generic default. A value typed on
    the command line (``algo.kwargs.learning_rate=1e-4`` for PPO/TRPO, ``algo.sigma=0.1`` for ES)
    is the user's explicit choice, so it must not be overwritten by the env's. ``cfg`` is a plain
    (resolved) container and is changed in place; the saved config then shows what was used.
    """
    env_settings = (cfg["env"].get("hyperparams") or {}).get(cfg["algo"]["name"])
    if not env_settings:
        return cfg
    for override in overrides:
        path = override.split("=", 1)[0].lstrip("+~").split(".")
        if path[0] != "algo":
            continue
        if path[1:2] == ["kwargs"]:
            path = path[1:]
        if len(path) >= 2:
            env_settings.pop(path[1], None)
    return cfg
