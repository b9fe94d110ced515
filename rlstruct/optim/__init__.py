"""Optimizers by name, for Hydra configs and SB3's ``optimizer_class``.

``get_optimizer("projunn_d")`` returns the class; :data:`OPTIMIZERS` lists every name. The
projUNN optimizers (:mod:`rlstruct.optim.projunn`) keep parameters tagged
``param._rlstruct_orthogonal = True`` (or untagged square 2-D ones) on the orthogonal group.
"""

from __future__ import annotations

import torch

from rlstruct.errors import RLStructError
from rlstruct.optim.projunn import ORTHOGONAL_ATTR, ProjUNND, ProjUNNT, mark_orthogonal

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


__all__ = ["ORTHOGONAL_ATTR", "OPTIMIZERS", "ProjUNND", "ProjUNNT", "get_optimizer", "mark_orthogonal"]
