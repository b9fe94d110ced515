"""Small helpers shared by the command-line entry points (no training logic here)."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from rlstruct.errors import RLStructError


def register_resolvers() -> None:
    """OmegaConf resolvers used by ``conf/config.yaml`` (``${join:...}`` in run names)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("join"):
        OmegaConf.register_new_resolver(
            "join", lambda items: "-".join(str(i) for i in items) if items else "none"
        )
    if not OmegaConf.has_resolver("tag"):
        # "-<value>" for a set option, "" for null: run names only grow when an option is used
        OmegaConf.register_new_resolver("tag", lambda value: f"-{value}" if value else "")


@contextlib.contextmanager
def report_errors() -> Iterator[None]:
    """Turn an :class:`RLStructError` into ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except RLStructError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
