"""Choose the implementation of a Givens product for the tensor at hand.

Each fused implementation registers one branch here; every branch must give the same result
as :func:`rlstruct.kernels.reference.givens_reference` (the tests compare them). Imports run
one way: this module imports the implementations, none of them imports it.
"""

from __future__ import annotations

from typing import Optional

import torch

from rlstruct.kernels import givens_cuda_op
from rlstruct.kernels.reference import dense_by_product, givens_reference

try:  # CPU: numba kernels; without numba every CPU product takes the reference path.
    from rlstruct.kernels import givens_cpu
except ImportError:
    givens_cpu = None


def givens_product(
    x: torch.Tensor, pairs: torch.Tensor, angles: torch.Tensor, scale: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``(batch, n) -> (batch, n)``: apply the rotation stages ``(pairs, angles)`` to rows of x,
    then multiply column ``j`` by ``scale[j]`` if ``scale`` ``(n,)`` is given (fused on CUDA)."""
    # CUDA: numba-cuda kernel (warns once and falls back when numba-cuda is missing).
    if givens_cuda_op.supports(x, pairs, angles) and givens_cuda_op.available():
        return givens_cuda_op.givens_cuda(x, pairs, angles, scale)
    # CPU: fused numba forward/backward, faster than the reference at every size measured
    # (benchmarks/ppo_throughput.py, micro section), so no size switch.
    if givens_cpu is not None and givens_cpu.supports(x, angles):
        y = givens_cpu.givens_product_cpu(x, pairs, angles)
    else:
        y = givens_reference(x, pairs, angles)
    return y if scale is None else y * scale


def givens_dense(
    pairs: torch.Tensor, angles: torch.Tensor, scale: torch.Tensor,
    in_features: int, out_features: int,
) -> torch.Tensor:
    """The KAMA weight ``W = diag(scale[:out]) (G_L ... G_1)[:out, :in]``, shape ``(out, in)``.

    ``pairs`` ``(L, n)``, ``angles`` ``(L, n/2)``, ``scale`` ``(n,)``, ``in, out <= n``;
    differentiable in ``angles`` and ``scale``. On CPU one fused call builds it (and one its
    backward); elsewhere it is the product applied to an identity.
    """
    if givens_cpu is not None and givens_cpu.supports(angles, scale):
        return givens_cpu.givens_dense_cpu(pairs, angles, scale, in_features, out_features)
    return dense_by_product(givens_product, pairs, angles, scale, in_features, out_features)

