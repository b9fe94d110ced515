"""Linear convolutions by FFT, and the Toeplitz (and Hankel) products built on them.

One home for "multiply by a Toeplitz matrix with an FFT": the ``toeplitz`` layer, the
``toeplitz_spinner``'s ``T`` and the ``hankel`` layer (a Toeplitz product of the reversed
input) all call :func:`toeplitz_product`; the ``f``-circulant layers in :mod:`.ldr` fold
:func:`linear_convolution` themselves.
"""

from __future__ import annotations

import torch

from rlstruct.layers.common import next_pow2


def linear_convolution(x: torch.Tensor, v: torch.Tensor, length: int) -> torch.Tensor:
    """Linear convolution of the last axes by FFT (entries ``0 .. size - 1``, ``size >= length``).

    ``x`` ``(..., a)`` and ``v`` ``(..., b)`` broadcast; ``length >= a + b - 1``. The FFT size is
    rounded up to a power of two (odd sizes like ``2n + m - 2`` are several times slower).
    """
    size = next_pow2(max(length, 1))
    return torch.fft.irfft(torch.fft.rfft(x, n=size) * torch.fft.rfft(v, n=size), n=size)


def toeplitz_product(x: torch.Tensor, t: torch.Tensor, rows: int) -> torch.Tensor:
    """``y = x T^T`` for the ``(rows, n)`` Toeplitz matrix ``T[i, j] = t[i - j + n - 1]``.

    ``x`` ``(batch, n)``, ``t`` ``(n + rows - 1,)`` (its first ``n`` entries, reversed, are the
    first row of ``T``; its last ``rows`` the first column); returns ``(batch, rows)``.
    ``y[:, i] = sum_j t[i - j + n - 1] x[:, j]`` is the full linear convolution of ``x`` with
    ``t`` read from position ``n - 1``. ``t`` is used in its own dtype (callers cast it).
    """
    n = x.shape[-1]
    full = linear_convolution(x, t, 2 * n + rows - 2)
    return full[..., n - 1 : n - 1 + rows]
