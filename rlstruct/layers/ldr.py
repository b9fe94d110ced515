"""Low-displacement-rank layers: circulant, skew-circulant, Hankel and Toeplitz-like.

All of them are built from ``f``-circulant matrices ``Z_f(v)`` (``n x n``, first column ``v``)::

    Z_f(v)[i, j] = v[i - j]            if i >= j
                 = f * v[i - j + n]     otherwise

``f = 1`` is the circulant matrix (the Krylov matrix of the cyclic shift ``Z_1``), ``f = -1`` the
skew-circulant one (Krylov matrix of ``Z_{-1}``). ``x -> Z_f(v) x`` is a linear convolution of
length ``2n - 1`` folded back with weight ``f`` (``y = full[:n] + f * full[n:]``), done by FFT in
``O(n log n)``. Rectangular layers use the top-left ``out x in`` block of an ``n = max(in, out)``
matrix (zero-padded input, sliced output).

``ldr`` is the Toeplitz-like class of displacement rank ``r``::

    W = sum_{k=1..r} Z_1(g_k) Z_{-1}(h_k)

Its Sylvester displacement ``Z_1 W - W Z_{-1}`` has rank ``<= r`` (each term contributes
``Z_1(g_k) (Z_1 - Z_{-1}) Z_{-1}(h_k)`` and ``Z_1 - Z_{-1}`` has rank one), and every matrix of
that displacement rank is such a sum (Pan; Sindhwani et al. 2015), so every Toeplitz matrix
is reached with ``r = 2``. Parameters ``2 r n``.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from rlstruct.layers.common import (
    ZooLinear,
    check_positive,
    next_pow2,
    pad_columns,
    uniform_bound,
)
from rlstruct.layers.convolution import linear_convolution, toeplitz_product
from rlstruct.layers.registry import register


def f_circulant_block(v: torch.Tensor, f: float, rows: int, cols: int) -> torch.Tensor:
    """Top-left ``(rows, cols)`` block of ``Z_f(v)``; ``v`` ``(..., n)`` -> ``(..., rows, cols)``.

    Row ``i`` of ``Z_f(v)`` reads ``ext[n - 1 - i + j]`` from ``ext = [rev(v), f * rev(v)]``,
    so the block is a strided window of ``ext`` (one ``unfold``, no index tensor).
    """
    n = v.shape[-1]
    rev = v.flip(-1)
    ext = torch.cat([rev, rev * f], dim=-1)
    return ext.unfold(-1, cols, 1)[..., n - rows : n, :].flip(-2)


def fold(full: torch.Tensor, n: int, f: float) -> torch.Tensor:
    """Wrap a convolution of length ``2n - 1`` into ``Z_f(v) x``: ``full[:n] + f full[n:2n]``."""
    return full[..., :n] + f * full[..., n : 2 * n]


class FCirculantLinear(ZooLinear):
    """``W = Z_f(c)[:out, :in]`` with ``n = max(in, out)``; a subclass fixes ``f``.

    Parameters (learned): ``n`` (+ ``out`` bias). Cost: ``O(n log n)`` per sample by FFT.
    Initialization: ``c`` uniform in ``+-1/sqrt(in)`` (nn.Linear's entry distribution).
    """

    default_dense_threshold = 128
    wrap: float = 1.0

    _repr_fields = (*ZooLinear._repr_fields, "n")

    def _configure(self) -> None:
        self.n = max(self.in_features, self.out_features)

    def _draw(self, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        bound = uniform_bound(self.in_features)
        return {"c": (torch.rand(self.n, generator=generator) * 2 - 1) * bound}

    def _dense(self) -> torch.Tensor:
        return f_circulant_block(self.c, self.wrap, self.out_features, self.in_features)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        n, c = self.n, self.c.to(x.dtype)
        x = pad_columns(x, n)
        if self.wrap == 1.0:  # circulant: a cyclic convolution, half the FFT size
            y = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(c, n=n), n=n)
        else:
            y = fold(linear_convolution(x, c, 2 * n), n, self.wrap)
        return y[:, : self.out_features]


@register("circulant")
class CirculantLinear(FCirculantLinear):
    """Circulant weight ``W[i, j] = c[(i - j) mod n]``, sliced to ``out x in``."""

    wrap = 1.0


@register("skew_circulant")
class SkewCirculantLinear(FCirculantLinear):
    """Skew-circulant weight: circulant with the entries above the diagonal negated."""

    wrap = -1.0


@register("hankel")
class HankelLinear(ZooLinear):
    """Hankel weight ``W[i, j] = h[i + j]`` (constant along anti-diagonals).

    Parameters (learned): ``in + out - 1`` (+ ``out`` bias). Cost: ``O((in + out) log(in + out))``
    per sample: ``y`` is the convolution of ``h`` with the reversed input.
    Initialization: ``h`` uniform in ``+-1/sqrt(in)``.
    """

    default_dense_threshold = 512


    def _draw(self, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        length = self.in_features + self.out_features - 1
        bound = uniform_bound(self.in_features)
        return {"h": (torch.rand(length, generator=generator) * 2 - 1) * bound}

    def _dense(self) -> torch.Tensor:
        return self.h.unfold(0, self.in_features, 1)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        # y[i] = sum_j h[i + j] x[j] = sum_j h[i - j + in - 1] rev(x)[j]: a Toeplitz product.
        return toeplitz_product(x.flip(1), self.h.to(x.dtype), self.out_features)


@register("ldr")
class ToeplitzLikeLinear(ZooLinear):
    """Toeplitz-like weight of displacement rank ``r``: ``sum_k Z_1(g_k) Z_{-1}(h_k)``, sliced.

    Parameters (learned): ``2 r n`` with ``n = max(in, out)`` (+ ``out`` bias). Cost:
    ``O(r n log n)`` per sample (FFTs, the ``r`` terms summed in frequency space); building
    ``W`` is one ``(out, r n) @ (r n, in)`` matmul.

    Args:
        rank: displacement rank ``r`` (``r = 2`` contains every Toeplitz matrix).
        mode, seed: see :mod:`rlstruct.layers.common`.

    Initialization: ``g, h ~ N(0, s^2)`` with ``s = (3 r n in)^(-1/4)``, so ``W`` has
    nn.Linear's entry variance ``1 / (3 in)``.
    """

    default_dense_threshold = 128

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rank: int = 2,
        mode: str = "learned",
        seed: Optional[int] = None,
        dense_threshold: Optional[int] = None,
    ) -> None:
        check_positive("ldr", "rank", rank)
        self.rank = rank
        super().__init__(in_features, out_features, bias, mode, seed, dense_threshold)

    _repr_fields = (*ZooLinear._repr_fields, "n", "rank")

    def _configure(self) -> None:
        self.n = max(self.in_features, self.out_features)

    def _draw(self, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        r, n = self.rank, self.n
        std = (3 * r * n * self.in_features) ** -0.25
        return {
            "g": torch.randn(r, n, generator=generator) * std,
            "h": torch.randn(r, n, generator=generator) * std,
        }

    def _dense(self) -> torch.Tensor:
        r, n = self.rank, self.n
        left = f_circulant_block(self.g, 1.0, self.out_features, n)  # (r, out, n)
        right = f_circulant_block(self.h, -1.0, n, self.in_features)  # (r, n, in)
        return left.transpose(0, 1).reshape(self.out_features, r * n) @ right.reshape(
            r * n, self.in_features
        )

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        n, size = self.n, next_pow2(2 * self.n)
        xf = torch.fft.rfft(pad_columns(x, n), n=size).unsqueeze(1)  # (b, 1, size / 2 + 1)
        skew = fold(torch.fft.irfft(xf * torch.fft.rfft(self.h.to(x.dtype), n=size), n=size),
                    n, -1.0)  # (b, r, n): Z_{-1}(h_k) x
        mixed = (torch.fft.rfft(skew, n=size) * torch.fft.rfft(self.g.to(x.dtype), n=size)).sum(1)
        return fold(torch.fft.irfft(mixed, n=size), n, 1.0)[:, : self.out_features]
