"""Kaleidoscope layers: products ``B B*`` of butterfly matrices with general 2x2 twiddles.

A butterfly *stage* of stride ``s`` on ``N`` (a power of two) coordinates mixes every pair
``(i, i + s)`` (bit ``s`` of ``i`` clear) by its own 2x2 matrix (the *twiddle*)::

    [y_i, y_{i+s}] = T_k [x_i, x_{i+s}]        T_k arbitrary 2x2 (4 parameters)

``B*`` applies the strides ``1, 2, ..., N/2`` and ``B`` the strides ``N/2, ..., 1``; a
K-matrix block is ``B B*`` (``B*`` first on the input) and a layer chains ``n_blocks`` of them,
``W = (B_k B*_k ... B_1 B*_1)[:out, :in]`` on ``N = pow2(max(in, out, 2))``. Dao et al. (ICLR
2020) show such products capture every structured matrix with near-optimal parameters.

Parameters (learned): ``n_blocks * 2 log2(N) * (N / 2) * 4 = 4 n_blocks N log2 N``
(+ ``out`` bias). Cost: ``O(n_blocks N log N)`` per sample (two ops per stage).
Initialization: every twiddle a random rotation, so ``W`` starts orthogonal (a slice of one).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch

from rlstruct.layers.common import (
    ZooLinear,
    check_positive,
    next_pow2,
    pad_columns,
)
from rlstruct.layers.registry import register


def kaleidoscope_strides(n: int, n_blocks: int) -> List[int]:
    """Stride of every stage, in the order applied: ``(1, ..., N/2, N/2, ..., 1)`` per block."""
    up = [1 << s for s in range(int(math.log2(n)))]
    return (up + up[::-1]) * n_blocks


def butterfly_stage(
    x: torch.Tensor, twiddle: Sequence[torch.Tensor], stride: int
) -> torch.Tensor:
    """One stage: ``x`` ``(batch, N)`` -> ``(batch, N)``.

    ``twiddle`` holds the four coefficient planes ``(t00, t01, t10, t11)``, each ``(N / 2,)``:
    entry ``(i, j)`` of the 2x2 matrix of every pair. Pair ``k`` joins ``p`` and ``p + stride``
    with ``p = (k // stride) * 2 * stride + k % stride``.
    """
    batch, n = x.shape
    groups = n // (2 * stride)
    pairs = x.view(batch, groups, 2, stride)
    first, second = pairs[:, :, 0], pairs[:, :, 1]
    # Contiguous coefficient planes make every op a plain broadcast over the batch
    # (measured 2-3x faster than one 5-d broadcast product and a sum).
    a, b, c, d = (plane.view(groups, stride) for plane in twiddle)
    top = torch.addcmul(a * first, b, second)
    bottom = torch.addcmul(c * first, d, second)
    return torch.stack([top, bottom], 2).reshape(batch, n)


@register("kaleidoscope")
class KaleidoscopeLinear(ZooLinear):
    """``n_blocks`` products ``B B*`` of butterfly matrices, padded/sliced to ``in -> out``.

    Args:
        n_blocks: number of ``B B*`` blocks.
        mode, seed: see :mod:`rlstruct.layers.common`.

    Shapes: ``twiddles`` ``(n_blocks * 2 log2 N, 2, 2, N / 2)``: stage, 2x2 entry, pair.
    """

    default_dense_threshold = 64

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        n_blocks: int = 1,
        mode: str = "learned",
        seed: Optional[int] = None,
        dense_threshold: Optional[int] = None,
    ) -> None:
        check_positive("kaleidoscope", "n_blocks", n_blocks)
        self.n_blocks = n_blocks
        super().__init__(in_features, out_features, bias, mode, seed, dense_threshold)

    _repr_fields = (*ZooLinear._repr_fields, "n", "n_blocks")

    def _configure(self) -> None:
        self.n = next_pow2(max(self.in_features, self.out_features, 2))
        self.strides = kaleidoscope_strides(self.n, self.n_blocks)

    def _draw(self, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        theta = torch.rand(len(self.strides), self.n // 2, generator=generator) * (2 * math.pi)
        c, s = torch.cos(theta), torch.sin(theta)
        rotations = torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)
        return {"twiddles": rotations}  # (L, 2, 2, N / 2)

    def _init_like_orthogonal_learned(self, gain: float) -> None:
        # Rotation twiddles make W orthogonal; scaling the last stage gives it norm `gain`.
        self.reset_structure()
        with torch.no_grad():
            self.twiddles[-1].mul_(gain)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        y = pad_columns(x, self.n)
        # One unbind for all planes: indexing stage by stage would make the backward pass
        # allocate a full-size zero gradient per index.
        planes = self.twiddles.to(x.dtype).reshape(-1, self.n // 2).unbind(0)
        for stage, stride in enumerate(self.strides):
            y = butterfly_stage(y, planes[4 * stage : 4 * stage + 4], stride)
        return y[:, : self.out_features]
