"""The unstructured baseline: an ordinary dense weight matrix."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from rlstruct.layers.base import StructuredLinear
from rlstruct.layers.registry import register


@register("dense")
class DenseLinear(StructuredLinear):
    """``nn.Linear`` in the :class:`StructuredLinear` interface.

    Parameters: ``in * out`` (+ ``out`` bias). Cost: ``O(in * out)`` per sample.
    Initialized like ``nn.Linear``; inside a policy, SB3's orthogonal initialization is applied
    to it exactly as to the default ``MlpPolicy``, so the dense baseline matches SB3's.
    """

    def _init_structure(self) -> None:
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.reset_parameters()

    def reset_structure(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def init_like_orthogonal(self, gain: float) -> None:
        super().init_like_orthogonal(gain)
        nn.init.orthogonal_(self.weight, gain=gain)

    def to_dense(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The weight is stored as is: skip the base class's build/cache logic.
        self.check_input(x)
        return nn.functional.linear(x, self.weight, self.bias)
