"""Fused CPU HD3 spinner product ``x -> (x D1 H D2 H D3 H)[:, :out]`` (numba), with backward.

``H`` is the normalized ``N x N`` Walsh-Hadamard matrix, ``D1`` ``diag(d1)`` acts on the first
``in`` columns (the input is zero-padded to ``N``), ``D2``, ``D3`` on all ``N``. The pure-torch
reference (:func:`hd3_reference`) is three :func:`~rlstruct.layers.hadamard.hadamard_transform`
calls and three diagonal products: a dozen dispatched ops forward and as many backward, which
at PPO minibatch sizes (32 to 64 rows) is what the layer costs. Here each direction is one
compiled call running ``log2 N`` butterfly passes per transform.

Kernels work on ``(N, batch)`` buffers so the innermost loop runs over the batch with unit
stride (SIMD), as the Givens kernels do. The forward keeps the two inner transform outputs
``b1 = H a0``, ``b2 = H a1`` (``(N, batch)`` each) for the diagonal gradients; with
``a0 = pad(x d1)``, ``a1 = b1 d2``, ``a2 = b2 d3`` and ``y = (H a2)[:, :out]``::

    ga2 = H pad(gy);  gd3 = sum_b ga2 b2;  ga1 = H (ga2 d3);  gd2 = sum_b ga1 b1
    ga0 = H (ga1 d2); gd1 = sum_b ga0[:, :in] x;  gx = ga0[:, :in] d1

(``H`` symmetric). The butterfly order sums differently from the reference's Kronecker
matmuls, so results agree to rounding (``log2 N`` roundings per transform), not bit for bit.

Double backward (``create_graph=True``) differentiates the reference for that call.
"""

from __future__ import annotations

import math
from typing import Tuple

import numba
import numpy as np
import torch

from rlstruct.layers.hadamard import hadamard_transform

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def hd3_reference(x: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor,
                  n: int, out_features: int) -> torch.Tensor:
    """Pure torch: ``x (batch, in) -> (batch, out)``; ``d1 (in,)``, ``d2, d3 (n,)``."""
    y = hadamard_transform(nn_pad(x * d1, n))
    y = hadamard_transform(y * d2)
    return hadamard_transform(y * d3)[:, :out_features]


def nn_pad(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad ``(batch, k)`` to ``(batch, n)``."""
    return x if x.shape[1] == n else torch.nn.functional.pad(x, (0, n - x.shape[1]))


@numba.njit(cache=True)
def _fwht(buf: np.ndarray, norm: float) -> None:
    """Normalized Walsh-Hadamard transform along axis 0 of ``buf (N, batch)``, in place."""
    n, batch = buf.shape
    h = 1
    while h < n:
        for start in range(0, n, 2 * h):
            for k in range(start, start + h):
                row_a = buf[k]
                row_b = buf[k + h]
                for b in range(batch):
                    a = row_a[b]
                    c = row_b[b]
                    row_a[b] = a + c
                    row_b[b] = a - c
        h *= 2
    for k in range(n):
        row = buf[k]
        for b in range(batch):
            row[b] *= norm


@numba.njit(cache=True)
def _scale_rows(buf: np.ndarray, d: np.ndarray) -> None:
    for k in range(buf.shape[0]):
        row = buf[k]
        dk = d[k]
        for b in range(buf.shape[1]):
            row[b] *= dk


@numba.njit(cache=True, fastmath={"reassoc"})
def _row_dots(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[k] = sum_b a[k, b] b[k, b]`` (reassociated so it vectorizes, like torch.sum)."""
    for k in range(a.shape[0]):
        acc = a.dtype.type(0)
        ra = a[k]
        rb = b[k]
        for j in range(a.shape[1]):
            acc += ra[j] * rb[j]
        out[k] = acc


@numba.njit(cache=True)
def _forward(x, d1, d2, d3, norm, y, b1, b2) -> None:
    """``y (batch, out)``; ``b1, b2 (N, batch)`` receive the inner transform outputs."""
    batch, in_features = x.shape
    buf = np.zeros(b1.shape, dtype=x.dtype)
    for j in range(in_features):
        row = buf[j]
        dj = d1[j]
        for b in range(batch):
            row[b] = x[b, j] * dj
    _fwht(buf, norm)
    b1[:] = buf
    _scale_rows(buf, d2)
    _fwht(buf, norm)
    b2[:] = buf
    _scale_rows(buf, d3)
    _fwht(buf, norm)
    for b in range(batch):
        for i in range(y.shape[1]):
            y[b, i] = buf[i, b]


@numba.njit(cache=True)
def _backward(x, d1, d2, d3, norm, b1, b2, gy, gx, gd1, gd2, gd3) -> None:
    batch, in_features = x.shape
    g = np.zeros(b1.shape, dtype=x.dtype)
    for b in range(batch):
        for i in range(gy.shape[1]):
            g[i, b] = gy[b, i]
    _fwht(g, norm)
    _row_dots(g, b2, gd3)
    _scale_rows(g, d3)
    _fwht(g, norm)
    _row_dots(g, b1, gd2)
    _scale_rows(g, d2)
    _fwht(g, norm)
    xt = np.empty((in_features, batch), dtype=x.dtype)
    for j in range(in_features):
        for b in range(batch):
            xt[j, b] = x[b, j]
    _row_dots(g[:in_features], xt, gd1)
    for b in range(batch):
        for j in range(in_features):
            gx[b, j] = g[j, b] * d1[j]


def supports(x: torch.Tensor, *diagonals: torch.Tensor) -> bool:
    """CPU, float32/float64, one dtype, 2-D input: the kernels' domain."""
    dtype = x.dtype
    if x.dim() != 2 or dtype not in SUPPORTED_DTYPES or not x.is_cpu:
        return False
    for d in diagonals:  # attribute reads only: this runs on every training forward
        if not d.is_cpu or d.dtype != dtype:
            return False
    return True


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy())


def product_forward(x: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor,
                    n: int, out_features: int) -> Tuple[torch.Tensor, tuple]:
    """The fused product without autograd: ``y (batch, out)`` and the state
    :func:`product_backward` needs (private copies of the diagonals and of ``x``)."""
    return product_forward_np(_np(x), d1, d2, d3, n, out_features, private=False)


def product_forward_np(x_np: np.ndarray, d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor,
                       n: int, out_features: int, private: bool
                       ) -> Tuple[torch.Tensor, tuple]:
    """:func:`product_forward` on a C-contiguous NumPy ``x``; ``private``: the caller never
    modifies ``x_np`` (e.g. a cached identity), so the state keeps it without a copy."""
    # .copy(): C-contiguous private copies that survive an optimizer step
    arrays = (d1.detach().numpy().copy(), d2.detach().numpy().copy(),
              d3.detach().numpy().copy())
    norm = 1.0 / math.sqrt(n)
    b1 = np.empty((n, x_np.shape[0]), dtype=x_np.dtype)
    b2 = np.empty_like(b1)
    y = np.empty((x_np.shape[0], out_features), dtype=x_np.dtype)
    _forward(x_np, *arrays, norm, y, b1, b2)
    return torch.from_numpy(y), (x_np if private else x_np.copy(), *arrays, norm, b1, b2)


def product_backward(state: tuple, gy: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """``(gx, gd1, gd2, gd3)`` of :func:`product_forward` from ``gy (batch, out)``."""
    x_np, d1, d2, d3, norm, b1, b2 = state
    gx = np.empty_like(x_np)
    gd1, gd2, gd3 = np.empty_like(d1), np.empty_like(d2), np.empty_like(d3)
    _backward(x_np, d1, d2, d3, norm, b1, b2, _np(gy), gx, gd1, gd2, gd3)
    return tuple(torch.from_numpy(a) for a in (gx, gd1, gd2, gd3))


class _HD3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, d1, d2, d3, n: int, out_features: int):
        y, ctx.state = product_forward(x, d1, d2, d3, n, out_features)
        ctx.save_for_backward(x, d1, d2, d3)
        ctx.sizes = (n, out_features)
        return y

    @staticmethod
    def backward(ctx, gy):
        if torch.is_grad_enabled():
            inputs = ctx.saved_tensors
            need = ctx.needs_input_grad[:4]
            with torch.enable_grad():
                out = hd3_reference(*inputs, *ctx.sizes)
                wanted = [t for t, k in zip(inputs, need) if k]
                found = iter(torch.autograd.grad(out, wanted, gy, create_graph=True))
            return (*[next(found) if k else None for k in need], None, None)
        grads = product_backward(ctx.state, gy)
        return (*[g if k else None for g, k in zip(grads, ctx.needs_input_grad[:4])], None, None)


def hd3_product(x: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor,
                n: int, out_features: int) -> torch.Tensor:
    """``(batch, in) -> (batch, out)``: fused on CPU float32/64, else :func:`hd3_reference`.

    ``d1`` ``(in,)``, ``d2, d3`` ``(n,)``, ``n`` a power of two ``>= in, out``; the same values
    (to rounding) and gradients as the reference.
    """
    if supports(x, d1, d2, d3):
        return _HD3.apply(x, d1, d2, d3, n, out_features)
    return hd3_reference(x, d1, d2, d3, n, out_features)
