"""Pure-torch reference of a product of Givens rotation stages.

Stage representation (shared by every implementation): ``pairs`` of shape ``(L, n)`` lists,
for stage ``l``, the coordinates ``p_0, q_0, p_1, q_1, ...`` (a perfect matching of ``0..n-1``);
``angles[l, k]`` rotates ``(pairs[l, 2k], pairs[l, 2k + 1])``::

    x_p <- cos(theta) x_p - sin(theta) x_q
    x_q <- sin(theta) x_p + cos(theta) x_q      (both from the old x_p, x_q)

Stages apply in order ``l = 0, 1, ..., L - 1``. Treating each pair as a complex number
``x_p + i x_q``, a rotation is a multiplication by ``exp(i theta)``: one complex multiply per
stage, and one gather per stage to bring the pairs next to each other.
"""

from __future__ import annotations

import torch


def givens_reference(x: torch.Tensor, pairs: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the rows of ``x`` by every stage in order.

    Shapes: ``x`` ``(batch, n)``, ``pairs`` ``(L, n)`` (long), ``angles`` ``(L, n/2)``;
    returns ``(batch, n)`` in the original coordinate order. Differentiable in ``x`` and
    ``angles``.
    """
    batch, n = x.shape
    rotations = torch.polar(torch.ones_like(angles), angles)  # (L, n/2) complex
    # Stay in the pair order of the current stage; the gather for stage l+1 composes the
    # inverse of stage l's order with stage l+1's order, so each stage costs one gather.
    order = torch.arange(n, device=x.device)
    inverse = torch.empty_like(order)
    positions = torch.arange(n, device=x.device)
    for stage in range(pairs.shape[0]):
        perm = pairs[stage]
        inverse[order] = positions
        x = x.index_select(1, inverse[perm])
        z = torch.view_as_complex(x.reshape(batch, n // 2, 2).contiguous()) * rotations[stage]
        x = torch.view_as_real(z).reshape(batch, n)
        order = perm
    inverse[order] = positions
    return x.index_select(1, inverse)
