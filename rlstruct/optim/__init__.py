"""Optimizers by name, for Hydra configs and SB3's ``optimizer_class``.

``get_optimizer("projunn_d")`` returns the class; :data:`OPTIMIZERS` lists every name. The
projUNN optimizers (:mod:`rlstruct.optim.projunn`) keep parameters tagged
``param._rlstruct_orthogonal = True`` (or untagged square 2-D ones) on the orthogonal group.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict

import torch

from rlstruct.errors import RLStructError
from rlstruct.optim.projunn import ProjUNND, ProjUNNT
from rlstruct.optim.tags import ORTHOGONAL_ATTR, mark_orthogonal

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "projunn_d": ProjUNND,
    "projunn_t": ProjUNNT,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}


def get_optimizer(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class registered as ``name`` (case-insensitive)."""
    try:
        return OPTIMIZERS[name.lower()]
    except (KeyError, AttributeError):
        raise RLStructError(
            f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}"
        ) from None


def check_optimizer_kwargs(name: str, kwargs: Dict[str, Any]) -> None:
    """Raise :class:`RLStructError` for options (``optimizer_kwargs``) that ``name`` does not take."""
    parameters = inspect.signature(get_optimizer(name).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return  # takes anything: the optimizer itself must check
    accepted = [p for p in parameters if p not in ("self", "params")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise RLStructError(
            f"optimizer {name!r} has no options {unknown}; fix optimizer_kwargs (accepted: {', '.join(accepted)})"
        )


__all__ = [
    "ORTHOGONAL_ATTR", "OPTIMIZERS", "ProjUNND", "ProjUNNT", "check_optimizer_kwargs", "get_optimizer",
    "mark_orthogonal",
]
