"""The tag that marks a parameter as orthogonal for the projUNN optimizers.

It lives in ``rlstruct.optim`` (which reads it) and below every layer that sets it, so layers
may import it without ``rlstruct.optim`` ever importing ``rlstruct.layers``.
"""

from __future__ import annotations

import torch

#: attribute set to True on parameters that must stay orthogonal (False: never treat as such).
ORTHOGONAL_ATTR = "_rlstruct_orthogonal"


def mark_orthogonal(param: torch.nn.Parameter, orthogonal: bool = True) -> torch.nn.Parameter:
    """Tag ``param`` so projUNN optimizers treat it as orthogonal (or, with False, as plain)."""
    setattr(param, ORTHOGONAL_ATTR, bool(orthogonal))
    return param
