"""Toeplitz layers: a matrix constant along each diagonal."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from rlstruct.layers.base import StructuredLinear

try:  # numba: fused build and backward; without it the gather below is the build.
    from rlstruct.kernels import toeplitz_cpu
    from rlstruct.kernels.toeplitz_cpu import toeplitz_dense
except ImportError:
    toeplitz_cpu = toeplitz_dense = None
from rlstruct.layers.convolution import toeplitz_product
from rlstruct.layers.registry import register


@register("toeplitz")
class ToeplitzLinear(StructuredLinear):
    """Rectangular Toeplitz weight: ``W[i, j] = t[i - j + in_features - 1]``.

    Parameters: ``in + out - 1`` (+ ``out`` bias). Dense path: one gather builds ``W``
    (fused on CPU: :mod:`rlstruct.kernels.toeplitz_cpu`).
    Structured path: a linear convolution by FFT, ``O((in + out) log(in + out))`` per sample.

    Shapes: ``t`` is ``(in_features + out_features - 1,)``; its last ``out_features`` entries
    fill the first column and its first ``in_features`` entries (reversed) the first row.
    """

    default_dense_threshold = 256

    def _init_structure(self) -> None:
        in_features, out_features = self.in_features, self.out_features
        self.diagonals = nn.Parameter(torch.empty(in_features + out_features - 1))
        rows = torch.arange(out_features).unsqueeze(1)
        cols = torch.arange(in_features).unsqueeze(0)
        self.register_buffer("index", rows - cols + in_features - 1, persistent=False)
        self.reset_parameters()

    def reset_structure(self) -> None:
        # Same variance as nn.Linear's default (uniform with bound 1/sqrt(fan_in)).
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.diagonals.uniform_(-bound, bound)

    def to_dense(self) -> torch.Tensor:
        # The gather is the reference; the fused build gives the same W with a backward that
        # sums diagonals in one pass instead of an accumulating index_put_.
        if toeplitz_dense is not None:
            return toeplitz_dense(self.diagonals, self.in_features, self.out_features)
        return self.diagonals[self.index]

    def apply_structured(self, x: torch.Tensor) -> torch.Tensor:
        return toeplitz_product(x, self.diagonals, self.out_features)

    # fused training path: the build kernel and the matmul as one autograd node
    def _fused_inputs(self, x: torch.Tensor):
        t = self.diagonals
        if toeplitz_cpu is None or not toeplitz_cpu.supports(t) or x.dtype != t.dtype \
                or x.device != t.device:
            return None
        return (t,)

    def _fused_build(self, inputs):
        return toeplitz_cpu.dense_build(inputs[0], self.in_features, self.out_features), None

    def _fused_build_backward(self, state, grad):
        return (toeplitz_cpu.dense_build_backward(grad),)

    def _fused_reference(self, inputs):
        return inputs[0][self.index]
