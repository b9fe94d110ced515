"""Pure-torch reference of a product of Givens rotation stages.

Stage representation (shared by every implementation): ``pairs`` of shape ``(L, n)`` lists,
for stage ``l``, the coordinates ``p_0, q_0, p_1, q_1, ...`` (a perfect matching of ``0..n-1``);
``angles[l, k]`` rotates ``(pairs[l, 2k], pairs[l, 2k + 1])``::

    x_p <- cos(theta) x_p - sin(theta) x_q
    x_q <- sin(theta) x_p + cos(theta) x_q      (both from the old x_p, x_q)

Stages apply in order ``l = 0, 1, ..., L - 1``. Treating each pair as a complex number
``x_p + i x_q``, a rotation is a multiplication by ``exp(i theta)``: one complex multiply per
stage, and one gather per stage to bring the pairs next to each other.

This is the package's one Givens-stage reference: the fused kernels are tested against it and
fall back to it, the KAMA weight build has its reference form in :func:`dense_by_product`, and
the Kac-walk random features (:mod:`rlstruct.random_features`) call it with a separate set of
stages per leading index.
"""

from __future__ import annotations

from typing import Callable

import torch


def givens_reference(x: torch.Tensor, pairs: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the rows of ``x`` by every stage in order.

    Shapes: ``x`` ``(batch, n)``, ``pairs`` ``(L, n)`` (long), ``angles`` ``(L, n/2)``;
    returns ``(batch, n)`` in the original coordinate order. Differentiable in ``x`` and
    ``angles``.

    Independent products: with leading axes, ``x`` ``(*lead, batch, n)``, ``pairs``
    ``(*lead, L, n)`` and ``angles`` ``(*lead, L, n/2)`` rotate ``x[i]`` by the stages
    ``(pairs[i], angles[i])``.
    """
    n = x.shape[-1]
    # (*lead, 1, n/2) per stage: broadcast over the batch rows; one unbind for all stages
    # (indexing stage by stage would give the backward a full-size zero gradient per stage).
    rotations = torch.polar(torch.ones_like(angles), angles).unsqueeze(-2).unbind(-3)
    # Stay in the pair order of the current stage; the gather for stage l+1 composes the
    # inverse of stage l's order with stage l+1's order, so each stage costs one gather.
    positions = torch.arange(n, device=x.device).expand(pairs.shape[:-2] + (n,))
    order = positions
    inverse = torch.empty_like(positions)
    for stage in range(pairs.shape[-2]):
        perm = pairs[..., stage, :]
        inverse.scatter_(-1, order, positions)
        x = _take_columns(x, inverse.gather(-1, perm))
        z = torch.view_as_complex(x.reshape(*x.shape[:-1], n // 2, 2).contiguous())
        x = torch.view_as_real(z * rotations[stage]).reshape(x.shape)
        order = perm
    inverse.scatter_(-1, order, positions)
    return _take_columns(x, inverse)


def _take_columns(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[..., index]`` along the last axis; ``index`` ``(n,)`` or ``(*lead, n)`` per row block."""
    if index.dim() == 1:
        return x.index_select(-1, index)
    return x.gather(-1, index.unsqueeze(-2).expand(x.shape))


def dense_by_product(
    product: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    pairs: torch.Tensor, angles: torch.Tensor, scale: torch.Tensor,
    in_features: int, out_features: int,
) -> torch.Tensor:
    """The KAMA weight ``W = diag(scale[:out]) (G_L ... G_1)[:out, :in]`` computed as
    ``product(x, pairs, angles)`` of an identity, sliced and scaled; with
    ``product=givens_reference`` it is the build's pure-torch reference."""
    eye = torch.eye(in_features, pairs.shape[1], dtype=scale.dtype, device=scale.device)
    return (product(eye, pairs, angles)[:, :out_features] * scale[:out_features]).t()
