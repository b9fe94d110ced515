"""SNNK layers (scalable neural network kernels, Sehanobish et al., ICLR 2024), linear kernel.

An SNNK replaces ``x -> f(W x)`` by a dot product of separate feature maps of the input and of
the weights, ``f(w_i . x) ~ phi(x) . psi(w_i)``, and *bundling* learns ``Psi = psi(W)``
directly. We implement the instance that is an honest linear map (the identity activation, the
dot-product kernel), so the :class:`StructuredLinear` contract ``y = x W^T + b`` holds::

    phi(x) = G x / sqrt(m)          G: (m, in) fixed random features (never learned)
    y      = Psi phi(x) + b         Psi: (out, m) learned
    W      = Psi G / sqrt(m)

With ``E[G^T G] = m I`` (orthogonal random features: orthogonal blocks, rows rescaled to
Gaussian norms), ``psi(w) = G w / sqrt(m)`` makes ``phi(x) . psi(w)`` an unbiased estimate of
``w . x``; the layer starts at ``Psi = psi(W0)`` for an nn.Linear-initialized ``W0``, i.e. at a
random-feature estimate of a dense layer. Nonlinear-kernel SNNKs (``f`` = ReLU, exp, ...) are
not linear in ``x`` and are not offered here.

Parameters (learned): ``out * m`` (+ ``out`` bias). Cost: ``O(m (in + out))`` per sample.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from rlstruct.layers.common import ZooLinear, check_positive, uniform_bound
from rlstruct.layers.haar import orthogonal_gaussian_rows
from rlstruct.layers.registry import register


@register("snnk")
class SNNKLinear(ZooLinear):
    """``W = Psi G / sqrt(m)``: learned ``psi`` ``(out, m)``, random features ``features``
    ``(m, in)`` (a buffer in both modes).

    Args:
        n_features: ``m``, the number of random features.
        mode, seed: see :mod:`rlstruct.layers.common` (random mode also freezes ``psi``).
    """

    default_dense_threshold = 128

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        n_features: int = 16,
        mode: str = "learned",
        seed: Optional[int] = None,
        dense_threshold: Optional[int] = None,
    ) -> None:
        check_positive("snnk", "n_features", n_features)
        self.n_features = n_features
        super().__init__(in_features, out_features, bias, mode, seed, dense_threshold)

    _repr_fields = (*ZooLinear._repr_fields, "n_features")

    def _configure(self) -> None:
        generator = torch.Generator().manual_seed(self._draw_seed + 1)
        # Orthogonal random features (Haar blocks, Gaussian row norms): E[G^T G] = m I.
        features = orthogonal_gaussian_rows(self.n_features, self.in_features, generator)[0]
        self.register_buffer("features", features.float())

    def _draw(self, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        bound = uniform_bound(self.in_features)
        w0 = (torch.rand(self.out_features, self.in_features, generator=generator) * 2 - 1) * bound
        return {"psi": w0 @ self.features.t() / math.sqrt(self.n_features)}

    def _dense(self) -> torch.Tensor:
        return self.psi @ self.features.to(self.psi.dtype) / math.sqrt(self.n_features)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        phi = x @ (self.features.to(x.dtype).t() / math.sqrt(self.n_features))
        return phi @ self.psi.to(x.dtype).t()
