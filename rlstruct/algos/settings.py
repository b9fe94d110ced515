"""Typed settings of our own trainers, built from the ``algo`` section of a config."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Type, TypeVar

from rlstruct.errors import RLStructError

T = TypeVar("T")


def settings_from_values(cls: Type[T], values: Dict[str, Any], what: str) -> T:
    """``cls(**values)`` for a settings dataclass, then its ``validate()``.

    Unknown keys (config typos) fail with the list of valid ones.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RLStructError(f"unknown {what} settings {unknown}; valid ones: {', '.join(sorted(known))}")
    settings = cls(**values)
    settings.validate()
    return settings
