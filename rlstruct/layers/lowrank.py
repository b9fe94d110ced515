"""Low-rank layers: ``W = U V^T``."""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import nn

from rlstruct.layers.common import ZooLinear, check_positive
from rlstruct.layers.registry import register


@register("lowrank")
class LowRankLinear(ZooLinear):
    """``W = U V^T``, ``U`` ``(out, r)``, ``V`` ``(in, r)``; ``r`` may exceed ``min(in, out)``.

    Parameters (learned): ``r * (in + out)`` (+ ``out`` bias). Cost: ``O(r (in + out))`` per
    sample on the structured path (two thin matmuls), ``O(in * out * r)`` to build ``W``.

    Args:
        rank: ``r``.
        mode, seed: see :mod:`rlstruct.layers.common`.

    Initialization: ``U ~ N(0, 1/r)``, ``V ~ N(0, 1/(3 in))``, so ``W`` has nn.Linear's entry
    variance ``1 / (3 in)``.
    """

    default_dense_threshold = 128

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rank: int = 4,
        mode: str = "learned",
        seed: Optional[int] = None,
        dense_threshold: Optional[int] = None,
    ) -> None:
        check_positive("lowrank", "rank", rank)
        self.rank = rank
        super().__init__(in_features, out_features, bias, mode, seed, dense_threshold)

    _repr_fields = (*ZooLinear._repr_fields, "rank")

    def _draw(self, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        r = self.rank
        return {
            "u": torch.randn(self.out_features, r, generator=generator) / math.sqrt(r),
            "v": torch.randn(self.in_features, r, generator=generator)
            / math.sqrt(3 * self.in_features),
        }

    def _init_like_orthogonal_learned(self, gain: float) -> None:
        # U, V with orthonormal columns make W a partial isometry of norm `gain`.
        with torch.no_grad():
            nn.init.orthogonal_(self.u, gain=gain)
            nn.init.orthogonal_(self.v)

    def _dense(self) -> torch.Tensor:
        return self.u @ self.v.t()

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.v.to(x.dtype)) @ self.u.to(x.dtype).t()
