"""Choose the implementation of a Givens product for the tensor at hand.

Each fused implementation registers one branch here; every branch must give the same result
as :func:`rlstruct.kernels.reference.givens_reference` (the tests compare them).
"""

from __future__ import annotations

import torch

from rlstruct.kernels.reference import givens_reference


def givens_product(x: torch.Tensor, pairs: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """``(batch, n) -> (batch, n)``: apply the rotation stages ``(pairs, angles)`` to rows of x."""
    return givens_reference(x, pairs, angles)
