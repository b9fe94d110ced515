"""Fused CPU build of a rectangular Toeplitz weight and its backward (numba).

``W[i, j] = t[i - j + in - 1]`` (``W`` ``(out, in)``, ``t`` ``(in + out - 1,)``). The
pure-torch reference is the gather ``t[index]`` (:func:`toeplitz_dense_reference`); its
backward is an accumulating ``index_put_`` over all ``out * in`` entries, which at width 256
costs more than the matmul it feeds. Here row ``i`` of ``W`` is the reversed slice
``t[i : i + in]``, so the build is ``out`` contiguous copies and its backward (``grad_t`` =
``grad_W`` summed along each diagonal) ``out`` contiguous accumulations: one compiled call each.

Double backward (``create_graph=True``) takes the differentiable reference formula for that
call: the backward is linear in ``grad_W``, so ``index_add`` of it is exact and differentiable.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def toeplitz_index(in_features: int, out_features: int, device=None) -> torch.Tensor:
    """``(out, in)`` long tensor ``i - j + in - 1``: the reference's gather index."""
    rows = torch.arange(out_features, device=device).unsqueeze(1)
    cols = torch.arange(in_features, device=device).unsqueeze(0)
    return rows - cols + in_features - 1


def toeplitz_dense_reference(t: torch.Tensor, in_features: int, out_features: int) -> torch.Tensor:
    """Pure-torch ``W (out, in)`` from ``t (in + out - 1,)``, differentiable."""
    return t[toeplitz_index(in_features, out_features, t.device)]


@numba.njit(cache=True)
def _build(t: np.ndarray, weight: np.ndarray) -> None:
    """``weight[i, j] = t[i - j + in - 1]`` for ``weight`` ``(out, in)``."""
    out_features, in_features = weight.shape
    for i in range(out_features):
        base = i + in_features - 1
        row = weight[i]
        for j in range(in_features):
            row[j] = t[base - j]


@numba.njit(cache=True)
def _diagonal_sums(grad_weight: np.ndarray, grad_t: np.ndarray) -> None:
    """``grad_t[k] = sum of grad_weight[i, j] over i - j + in - 1 == k`` (overwrites)."""
    out_features, in_features = grad_weight.shape
    grad_t[:] = 0
    for i in range(out_features):
        base = i + in_features - 1
        row = grad_weight[i]
        for j in range(in_features):
            grad_t[base - j] += row[j]


def supports(t: torch.Tensor) -> bool:
    """CPU float32/float64: the kernels' domain; anything else takes the reference."""
    return t.device.type == "cpu" and t.dtype in SUPPORTED_DTYPES


def dense_build(t: torch.Tensor, in_features: int, out_features: int) -> torch.Tensor:
    """The fused build without autograd: ``W (out, in)`` from ``t`` (CPU float32/64, 1-D)."""
    weight = torch.empty((out_features, in_features), dtype=t.dtype)
    _build(np.ascontiguousarray(t.detach().numpy()), weight.numpy())
    return weight


def dense_build_backward(grad_weight: torch.Tensor) -> torch.Tensor:
    """``grad_t`` of :func:`dense_build` from ``grad_weight (out, in)``: diagonal sums."""
    out_features, in_features = grad_weight.shape
    grad_t = torch.empty(in_features + out_features - 1, dtype=grad_weight.dtype)
    _diagonal_sums(np.ascontiguousarray(grad_weight.detach().numpy()), grad_t.numpy())
    return grad_t


class _ToeplitzDense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, in_features: int, out_features: int) -> torch.Tensor:
        ctx.sizes = (in_features, out_features)
        return dense_build(t, in_features, out_features)

    @staticmethod
    def backward(ctx, grad_weight: torch.Tensor):
        in_features, out_features = ctx.sizes
        if torch.is_grad_enabled():  # create_graph: differentiable formula
            index = toeplitz_index(in_features, out_features, grad_weight.device)
            grad_t = grad_weight.new_zeros(in_features + out_features - 1)
            return grad_t.index_add(0, index.reshape(-1), grad_weight.reshape(-1)), None, None
        return dense_build_backward(grad_weight), None, None


def toeplitz_dense(t: torch.Tensor, in_features: int, out_features: int) -> torch.Tensor:
    """``W (out, in)`` from ``t (in + out - 1,)``: fused on CPU float32/64, else the reference.

    Same values and gradients as :func:`toeplitz_dense_reference`.
    """
    if supports(t) and t.dim() == 1 and t.shape[0] == in_features + out_features - 1:
        return _ToeplitzDense.apply(t.contiguous(), in_features, out_features)
    return toeplitz_dense_reference(t, in_features, out_features)
