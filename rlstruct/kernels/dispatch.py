"""Choose the implementation of a Givens product for the tensor at hand.

Each fused implementation registers one branch here; every branch must give the same result
as :func:`rlstruct.kernels.reference.givens_reference` (the tests compare them).
"""

from __future__ import annotations

from typing import Optional

import torch

from rlstruct.kernels import givens_cuda_op
from rlstruct.kernels.reference import givens_reference


def givens_product(
    x: torch.Tensor, pairs: torch.Tensor, angles: torch.Tensor, scale: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``(batch, n) -> (batch, n)``: apply the rotation stages ``(pairs, angles)`` to rows of x,
    then multiply column ``j`` by ``scale[j]`` if ``scale`` ``(n,)`` is given (fused on CUDA)."""
    # CUDA: numba-cuda kernel (warns once and falls back when numba-cuda is missing).
    if givens_cuda_op.supports(x, pairs, angles) and givens_cuda_op.available():
        return givens_cuda_op.givens_cuda(x, pairs, angles, scale)
    y = givens_reference(x, pairs, angles)
    return y if scale is None else y * scale
