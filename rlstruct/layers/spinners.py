"""Structured spinners ``M3 M2 M1``: Hadamard-diagonal products and their relatives.

Inputs are zero-padded to ``N``, a power of two, and outputs sliced; ``H`` is the normalized
``N x N`` Walsh-Hadamard matrix (orthogonal), applied by :func:`hadamard_transform` (a few
small matmuls, ``O(N sqrt N)``-ish). Diagonals acting on the padded input only need their first
``in`` entries, and output-side diagonals their first ``out``, so only those are parameters.

* ``hd3``: ``W = H D3 H D2 H D1`` (``N = pow2(max(in, out))``); ``D1, D2, D3`` start as random
  signs, so ``W`` starts orthogonal (a slice of one). Parameters ``in + 2N``.
* ``fastfood``: ``W = S H G P H B`` (Le et al. 2013), ``N = pow2(max(in, out))``: ``B`` signs,
  ``P`` a fixed random permutation (a buffer in both modes), ``G`` Gaussian, ``S`` rescales
  each row to the norm of a Gaussian row with ``N(0, 1/N)`` entries (``chi_N / ||g||``).
  Parameters ``in + N + out``.
* ``toeplitz_spinner``: ``W = T D2 H D1`` with ``T`` an ``out x N`` Toeplitz matrix
  (``N = pow2(in)``) whose diagonals start ``N(0, 1/N)``. Parameters ``in + N + (out + N - 1)``.

``to_dense`` runs the transform on the identity: one code path for both, ``O(in N sqrt N)``.
"""

from __future__ import annotations

import functools
import math
from typing import Dict, Optional

import torch

from rlstruct.layers.common import ZooLinear, next_pow2, pad_columns, rademacher
from rlstruct.layers.hadamard import hadamard_transform
from rlstruct.layers.convolution import toeplitz_product
from rlstruct.layers.registry import register

_UNSET = object()
_hd3_module = _UNSET


def _hd3_kernels():
    """:mod:`rlstruct.kernels.hd3_cpu` (numba: one fused call per direction), or ``None``
    without numba (the pure-torch transform below). Imported on first use: that module
    imports :mod:`rlstruct.layers.hadamard`, so importing it here at load time would find it
    half-initialized whenever it is the first of the two to be imported."""
    global _hd3_module
    if _hd3_module is _UNSET:
        try:
            from rlstruct.kernels import hd3_cpu as module
        except ImportError:
            module = None
        _hd3_module = module
    return _hd3_module


@functools.lru_cache(maxsize=32)
def _numpy_eye(n: int, dtype: torch.dtype):
    """An ``(n, n)`` NumPy identity in ``dtype``'s NumPy type, shared: never written (kept
    writeable so that the kernels keep their compiled signatures)."""
    return torch.eye(n, dtype=dtype).numpy()


class SpinnerLinear(ZooLinear):
    """Constructor and dense build shared by the spinners; subclasses pick ``N`` and the draw."""

    default_dense_threshold = 64

    _repr_fields = (*ZooLinear._repr_fields, "n")

    def _configure(self) -> None:
        self.n = self._working_size()

    def _working_size(self) -> int:
        return next_pow2(max(self.in_features, self.out_features))


@register("hd3")
class HD3Linear(SpinnerLinear):
    """``W = (H D3 H D2 H D1)[:out, :in]``; tensors ``d1`` ``(in,)``, ``d2``, ``d3`` ``(N,)``."""

    def _draw(self, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        return {
            "d1": rademacher((self.in_features,), generator),
            "d2": rademacher((self.n,), generator),
            "d3": rademacher((self.n,), generator),
        }

    def _init_like_orthogonal_learned(self, gain: float) -> None:
        # Signs make W orthogonal; scaling the last diagonal gives it norm `gain`.
        self.reset_structure()
        with torch.no_grad():
            self.d3.mul_(gain)

    def train_structured(self, rows: int) -> bool:
        # The build transforms `in` identity rows, the product `rows` inputs: below that many
        # rows the product (fwd+bwd) is cheaper (Paths table). At equal counts the two cost the
        # same transforms and the build joins a network's one batched build node
        # (rlstruct.layers.batched), which saves more than its matmuls cost.
        return rows < self.in_features

    # fused training path (learned mode, no output scale): W^T is the product applied to the
    # identity, built by the kernel, and the matmul joins it in one autograd node
    _fused_transposed = True

    def _fused_inputs(self, x: torch.Tensor):
        kernels = _hd3_kernels()
        if kernels is None or self.scale is not None:
            return None
        d1, d2, d3 = self.d1, self.d2, self.d3
        if not kernels.supports(x, d1, d2, d3):
            return None
        return d1, d2, d3

    def _fused_build(self, inputs):
        # W^T is the product of the identity: one read-only NumPy identity per (size, dtype).
        eye = _numpy_eye(self.in_features, inputs[0].dtype)
        return _hd3_kernels().product_forward_np(eye, *inputs, self.n, self.out_features,
                                                 private=True)

    def _fused_build_backward(self, state, grad):
        return _hd3_kernels().product_backward(state, grad)[1:]

    def _fused_reference(self, inputs):
        eye = torch.eye(self.in_features, dtype=inputs[0].dtype, device=inputs[0].device)
        return _hd3_kernels().hd3_reference(eye, *inputs, self.n, self.out_features).t()

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        kernels = _hd3_kernels()
        if kernels is not None:  # fused numba (CPU), else its pure-torch reference
            return kernels.hd3_product(x, self.d1.to(dt), self.d2.to(dt), self.d3.to(dt), self.n,
                               self.out_features)
        y = hadamard_transform(pad_columns(x * self.d1.to(dt), self.n))
        y = hadamard_transform(y * self.d2.to(dt))
        return hadamard_transform(y * self.d3.to(dt))[:, : self.out_features]


@register("fastfood")
class FastfoodLinear(SpinnerLinear):
    """``W = (S H G P H B)[:out, :in]``; ``b`` ``(in,)``, ``g`` ``(N,)``, ``s`` ``(out,)``,
    ``perm`` ``(N,)`` (buffer)."""

    def _draw(self, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        n = self.n
        g = torch.randn(n, generator=generator)
        chi = torch.randn(self.out_features, n, generator=generator).norm(dim=1)
        return {
            "b": rademacher((self.in_features,), generator),
            "g": g,
            "s": chi / g.norm(),
        }

    def _setup(self) -> None:
        # The permutation is structure in both modes (not a learnable quantity).
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self._draw_seed + 1))
        self.register_buffer("perm", perm)
        super()._setup()

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        y = hadamard_transform(pad_columns(x * self.b.to(dt), self.n))
        y = hadamard_transform(y.index_select(1, self.perm) * self.g.to(dt))
        return y[:, : self.out_features] * self.s.to(dt)


@register("toeplitz_spinner")
class ToeplitzSpinnerLinear(SpinnerLinear):
    """``W = T D2 H D1[:, :in]`` with ``T[i, j] = t[i - j + N - 1]`` (``out x N``);
    ``d1`` ``(in,)``, ``d2`` ``(N,)``, ``t`` ``(out + N - 1,)``."""

    def _working_size(self) -> int:
        return next_pow2(self.in_features)

    def _draw(self, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        n = self.n
        return {
            "d1": rademacher((self.in_features,), generator),
            "d2": rademacher((n,), generator),
            "t": torch.randn(self.out_features + n - 1, generator=generator) / math.sqrt(n),
        }

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        y = hadamard_transform(pad_columns(x * self.d1.to(dt), self.n)) * self.d2.to(dt)
        return toeplitz_product(y, self.t.to(dt), self.out_features)  # T y
