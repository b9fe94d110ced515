"""Fused CPU Givens products: numba kernels behind ``torch.autograd.Function``.

At reinforcement-learning widths (64 to 256) a Givens product costs what its dispatched ops
cost, not its FLOPs: the pure-torch reference spends a few ops per stage, and so does its
backward. Here every stage runs inside one compiled call, forward and backward.

Two entry points, both with the stage representation of :mod:`rlstruct.kernels.reference`:

* :func:`givens_product_cpu` ``(x, pairs, angles)``: the same map as ``givens_reference``.
* :func:`givens_dense_cpu` ``(pairs, angles, scale, in_features, out_features)``: the KAMA
  weight ``W = diag(scale[:out]) (G_L ... G_1)[:out, :in]`` of shape ``(out, in)``, i.e. the
  rotated identity, sliced and scaled (reference: ``reference.dense_by_product``), built
  without materializing the identity.

Kernels work on an ``(n, batch)`` buffer, so the innermost loop runs over the batch with unit
stride (SIMD). The backward keeps no per-stage activations: walking the stages backwards, it
recovers each stage's input from its output with the inverse rotation (exact up to rounding,
rotations being orthogonal) while it rotates the gradient back. For a stage output
``(y_p, y_q)`` and its gradient ``(g_p, g_q)``, ``d loss / d theta = sum_b g_q y_p - g_p y_q``.

Numerics: no fast-math approximations; only the batch reductions of the gradients are allowed
to reassociate (``fastmath={"reassoc"}``), which changes their summation order the way a
vectorized ``torch.sum`` does, so they vectorize (the backward is one pass per pair).

Compilation: ``cache=True`` stores the machine code in ``__pycache__``, so it is paid once per
machine and dtype: about 6 s for the float32 kernels of a KAMA layer on a 2-core machine
(``results/ppo_throughput.md``); later processes load them in well under a second.

Kernels index without bounds checks, so the wrappers validate shapes and pair indices first
(a bad layout raises :class:`~rlstruct.errors.RLStructError` instead of reading stray memory).

Double backward (``create_graph=True``, e.g. TRPO's Hessian-vector products) is served by
differentiating the pure-torch reference for that backward call: correct, at reference speed.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numba
import numpy as np
import torch

from rlstruct.errors import RLStructError
from rlstruct.kernels.reference import dense_by_product, givens_reference

#: dtypes the kernels are compiled for; others take the reference path.
SUPPORTED_DTYPES = (torch.float32, torch.float64)
#: bytes of working buffer per kernel call: the batch is processed in column chunks this size
#: so that all stages run on data in the L2 cache (large batches would otherwise stream
#: through memory once per stage).
CHUNK_BYTES = 128 * 1024


# ---------------------------------------------------------------------------------------------
# numba kernels: buffers are (n, batch), C-contiguous.
@numba.njit(cache=True)
def _rotate(buf: np.ndarray, pairs: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> None:
    """Apply stages ``0 .. L-1`` to the columns of ``buf`` (n, batch), in place."""
    n_stages, n = pairs.shape
    batch = buf.shape[1]
    for stage in range(n_stages):
        for k in range(n // 2):
            row_p = buf[pairs[stage, 2 * k]]
            row_q = buf[pairs[stage, 2 * k + 1]]
            c = cos[stage, k]
            s = sin[stage, k]
            for b in range(batch):
                xp = row_p[b]
                xq = row_q[b]
                row_p[b] = c * xp - s * xq
                row_q[b] = s * xp + c * xq


@numba.njit(cache=True, fastmath={"reassoc"})
def _dot(a: np.ndarray, b: np.ndarray):
    """``sum_i a_i b_i``, reassociated so that it vectorizes."""
    acc = a.dtype.type(0)
    for i in range(a.shape[0]):
        acc += a[i] * b[i]
    return acc


# Reassociation here only reorders the angle-gradient sum (each rotation update is two
# products and one add: nothing to reassociate, and no FMA contraction without "contract"),
# and lets that sum share one vectorized pass with the updates.
@numba.njit(cache=True, fastmath={"reassoc"})
def _unrotate(
    buf: np.ndarray, grad: np.ndarray, pairs: np.ndarray, cos: np.ndarray, sin: np.ndarray,
    grad_angles: np.ndarray,
) -> None:
    """Backward through stages ``L-1 .. 0``, in place.

    On entry ``buf`` holds the product's output and ``grad`` the loss gradient with respect to
    it (both ``(n, batch)``); on exit ``buf`` holds the input, ``grad`` the gradient with
    respect to the input, and the angle gradients are *added* to ``grad_angles`` ``(L, n/2)``
    (callers that split the batch into chunks sum over the chunks).
    """
    n_stages, n = pairs.shape
    batch = buf.shape[1]
    for stage in range(n_stages - 1, -1, -1):
        for k in range(n // 2):
            p = pairs[stage, 2 * k]
            q = pairs[stage, 2 * k + 1]
            row_p, row_q, grad_p, grad_q = buf[p], buf[q], grad[p], grad[q]
            c = cos[stage, k]
            s = sin[stage, k]
            acc = buf.dtype.type(0)
            # The transpose of a rotation is its inverse: one formula for inputs and gradients.
            for b in range(batch):
                yp = row_p[b]
                yq = row_q[b]
                gp = grad_p[b]
                gq = grad_q[b]
                acc += gq * yp - gp * yq
                row_p[b] = c * yp + s * yq
                row_q[b] = c * yq - s * yp
                grad_p[b] = c * gp + s * gq
                grad_q[b] = c * gq - s * gp
            grad_angles[stage, k] += acc


@numba.njit(cache=True)
def _pairs_in_range(pairs: np.ndarray) -> bool:
    """Whether every index of ``pairs (L, n)`` lies in ``[0, n)``."""
    n = pairs.shape[1]
    for index in pairs.ravel():
        if index < 0 or index >= n:
            return False
    return True


@numba.njit(cache=True)
def _chunk(n: int, itemsize: int) -> int:
    """Columns per chunk, so that the (n, chunk) buffers of a call stay in the L2 cache."""
    return max(16, CHUNK_BYTES // (n * itemsize))


@numba.njit(cache=True)
def _transposed_copy(rows: np.ndarray) -> np.ndarray:
    """A fresh C-contiguous ``(n, batch)`` copy of ``rows (batch, n)``: kernels work in place,
    and ``np.ascontiguousarray`` would return a view (of the caller's input) when batch is 1."""
    buf = np.empty((rows.shape[1], rows.shape[0]), dtype=rows.dtype)
    buf[:] = rows.T
    return buf


@numba.njit(cache=True)
def _product_forward(
    x: np.ndarray, pairs: np.ndarray, cos: np.ndarray, sin: np.ndarray, out: np.ndarray
) -> None:
    """``out (batch, n)`` = ``x (batch, n)`` rotated, through (n, chunk) buffers."""
    batch, n = x.shape
    step = _chunk(n, x.itemsize)
    for start in range(0, batch, step):
        stop = min(start + step, batch)
        buf = _transposed_copy(x[start:stop])
        _rotate(buf, pairs, cos, sin)
        out[start:stop] = buf.T


@numba.njit(cache=True)
def _product_backward(
    out: np.ndarray, grad_out: np.ndarray, pairs: np.ndarray, cos: np.ndarray, sin: np.ndarray,
    grad_x: np.ndarray, grad_angles: np.ndarray,
) -> None:
    """Gradients ``grad_x (batch, n)`` and ``grad_angles (L, n/2)`` from the output alone."""
    batch, n = out.shape
    step = _chunk(2 * n, out.itemsize)
    grad_angles[:] = 0
    for start in range(0, batch, step):
        stop = min(start + step, batch)
        buf = _transposed_copy(out[start:stop])
        grad = _transposed_copy(grad_out[start:stop])
        _unrotate(buf, grad, pairs, cos, sin, grad_angles)
        grad_x[start:stop] = grad.T


@numba.njit(cache=True)
def _dense_forward(
    pairs: np.ndarray, cos: np.ndarray, sin: np.ndarray, scale: np.ndarray,
    rotated: np.ndarray, weight: np.ndarray,
) -> None:
    """``rotated (n, in)`` = ``(G_L ... G_1)[:, :in]``; ``weight (out, in)`` its scaled top."""
    n, width = rotated.shape
    step = _chunk(n, rotated.itemsize)
    for start in range(0, width, step):
        stop = min(start + step, width)
        buf = np.zeros((n, stop - start), dtype=rotated.dtype)
        for j in range(start, stop):
            buf[j, j - start] = 1
        _rotate(buf, pairs, cos, sin)
        rotated[:, start:stop] = buf
    for i in range(weight.shape[0]):
        for j in range(width):
            weight[i, j] = scale[i] * rotated[i, j]


@numba.njit(cache=True)
def _dense_backward(
    rotated: np.ndarray, grad_weight: np.ndarray, pairs: np.ndarray, cos: np.ndarray,
    sin: np.ndarray, scale: np.ndarray, grad_angles: np.ndarray, grad_scale: np.ndarray,
) -> None:
    """Gradients of the build from the saved ``rotated (n, in)`` and ``grad_weight (out, in)``."""
    n, width = rotated.shape
    out_features = grad_weight.shape[0]
    grad_scale[:] = 0
    for i in range(out_features):
        grad_scale[i] = _dot(grad_weight[i], rotated[i])
    grad_angles[:] = 0
    step = _chunk(2 * n, rotated.itemsize)
    for start in range(0, width, step):
        stop = min(start + step, width)
        buf = rotated[:, start:stop].copy()  # the saved output stays intact for a 2nd backward
        grad = np.zeros((n, stop - start), dtype=rotated.dtype)
        for i in range(out_features):
            for j in range(start, stop):
                grad[i, j - start] = scale[i] * grad_weight[i, j]
        _unrotate(buf, grad, pairs, cos, sin, grad_angles)


# ---------------------------------------------------------------------------------------------
# Wrappers. At RL widths a call costs about as much in tensor <-> NumPy conversions (~1 us
# each) as in arithmetic, so they convert each tensor once, keep what the backward needs as
# NumPy arrays on ``ctx``, and take cos/sin from NumPy's vectorized ufuncs (scalar libm calls
# inside the kernel cost more than the rotations at width 64).
def _np(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous NumPy view of a CPU tensor (a copy only if it is not contiguous)."""
    return np.ascontiguousarray(t.detach().numpy())


def _checked_pairs(pairs: torch.Tensor, angles: torch.Tensor, width: int) -> np.ndarray:
    """``pairs`` as NumPy after the checks the unchecked kernels rely on."""
    n_stages, n = pairs.shape if pairs.dim() == 2 else (-1, -1)
    if pairs.dtype != torch.int64 or n != width or n % 2 or angles.shape != (n_stages, n // 2):
        raise RLStructError(
            f"givens: pairs {tuple(pairs.shape)} ({pairs.dtype}) and angles "
            f"{tuple(angles.shape)} do not fit width {width}; pass int64 pairs (L, n) and "
            "angles (L, n/2) with n even"
        )
    pairs_np = _np(pairs)
    if not _pairs_in_range(pairs_np):
        raise RLStructError(f"givens: pairs hold indices outside [0, {n}); fix the layout")
    return pairs_np


def supports(*tensors: torch.Tensor) -> bool:
    """Whether the fused kernels handle these tensors (CPU, float32/float64, one dtype)."""
    dtype = tensors[0].dtype
    if dtype not in SUPPORTED_DTYPES:
        return False
    for t in tensors:  # a loop of attribute reads: this runs on every training forward
        if not t.is_cpu or t.dtype != dtype:
            return False
    return True


class _GivensProduct(torch.autograd.Function):
    """Fused ``givens_reference``: saves only the output and recovers stage inputs from it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pairs: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise RLStructError(f"givens: x must be (batch, n), got shape {tuple(x.shape)}")
        pairs_np = _checked_pairs(pairs, angles, x.shape[1])
        angles_np = _np(angles)
        cos, sin = np.cos(angles_np), np.sin(angles_np)
        out = torch.empty(x.shape, dtype=x.dtype)
        _product_forward(_np(x), pairs_np, cos, sin, out.numpy())
        # `out` goes through save_for_backward: its version counter catches in-place edits.
        ctx.save_for_backward(x, pairs, angles, out)
        ctx.arrays = (pairs_np, cos, sin)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, pairs, angles, out = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _reference_vjp(
                lambda x_, a_: givens_reference(x_, pairs, a_), (x, angles), grad_out,
                ctx.needs_input_grad[0], ctx.needs_input_grad[2], middle=1,
            )
        pairs_np, cos, sin = ctx.arrays
        grad_x = np.empty(out.shape, dtype=cos.dtype)
        grad_angles = np.empty_like(cos)
        _product_backward(_np(out), _np(grad_out), pairs_np, cos, sin, grad_x, grad_angles)
        return (
            torch.from_numpy(grad_x) if ctx.needs_input_grad[0] else None,
            None,
            torch.from_numpy(grad_angles) if ctx.needs_input_grad[2] else None,
        )


def dense_build(
    pairs: torch.Tensor, angles: torch.Tensor, scale: torch.Tensor,
    in_features: int, out_features: int,
) -> Tuple[torch.Tensor, tuple]:
    """The fused build without autograd: ``W (out, in)`` and the state
    :func:`dense_build_backward` needs (NumPy arrays, private copies: an optimizer step
    before the backward does not change them)."""
    return dense_build_checked(checked_dense_pairs(pairs, angles, scale, in_features,
                                                   out_features),
                               angles, scale, in_features, out_features)


def checked_dense_pairs(pairs: torch.Tensor, angles: torch.Tensor, scale: torch.Tensor,
                        in_features: int, out_features: int) -> np.ndarray:
    """``pairs`` as NumPy (a view) after every check :func:`dense_build_checked` relies on.
    Callers may keep it while ``pairs`` and the shapes of ``angles``/``scale`` are unchanged
    (KAMA layers key it on the buffer's version and data pointer)."""
    n = scale.shape[0]
    pairs_np = _checked_pairs(pairs, angles, n)
    if scale.shape != (n,) or not (1 <= in_features <= n and 1 <= out_features <= n):
        raise RLStructError(
            f"givens: scale {tuple(scale.shape)}, in {in_features}, out {out_features} "
            f"do not fit width {n}; pass scale (n,) and 1 <= in, out <= n"
        )
    return pairs_np


def dense_build_checked(
    pairs_np: np.ndarray, angles: torch.Tensor, scale: torch.Tensor,
    in_features: int, out_features: int,
) -> Tuple[torch.Tensor, tuple]:
    """:func:`dense_build` with ``pairs_np`` from :func:`checked_dense_pairs` (no checks)."""
    angles_np = _np(angles)
    cos, sin = np.cos(angles_np), np.sin(angles_np)
    scale_np = scale.detach().numpy().copy()  # copy: C-contiguous and private
    rotated = np.empty((pairs_np.shape[1], in_features), dtype=cos.dtype)
    weight = np.empty((out_features, in_features), dtype=cos.dtype)
    _dense_forward(pairs_np, cos, sin, scale_np, rotated, weight)
    return torch.from_numpy(weight), (pairs_np, cos, sin, scale_np, rotated)


def dense_build_backward(state: tuple, grad_weight: torch.Tensor
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(grad_angles, grad_scale)`` of :func:`dense_build` from ``grad_weight (out, in)``."""
    pairs_np, cos, sin, scale_np, rotated = state
    grad_angles = np.empty_like(cos)
    grad_scale = np.empty_like(scale_np)
    _dense_backward(rotated, _np(grad_weight), pairs_np, cos, sin, scale_np, grad_angles,
                    grad_scale)
    return torch.from_numpy(grad_angles), torch.from_numpy(grad_scale)


class _GivensDense(torch.autograd.Function):
    """Fused KAMA weight build: one call forward, one call backward."""

    @staticmethod
    def forward(
        ctx, pairs: torch.Tensor, angles: torch.Tensor, scale: torch.Tensor,
        in_features: int, out_features: int,
    ) -> torch.Tensor:
        weight, ctx.state = dense_build(pairs, angles, scale, in_features, out_features)
        ctx.save_for_backward(pairs, angles, scale)  # for the double-backward path only
        ctx.sizes = (in_features, out_features)
        return weight

    @staticmethod
    def backward(ctx, grad_weight: torch.Tensor):
        if torch.is_grad_enabled():
            pairs, angles, scale = ctx.saved_tensors
            grads = _reference_vjp(
                lambda a_, s_: dense_by_product(givens_reference, pairs, a_, s_, *ctx.sizes),
                (angles, scale), grad_weight,
                ctx.needs_input_grad[1], ctx.needs_input_grad[2], middle=None,
            )
            return (None, *grads, None, None)
        grad_angles, grad_scale = dense_build_backward(ctx.state, grad_weight)
        return (
            None,
            grad_angles if ctx.needs_input_grad[1] else None,
            grad_scale if ctx.needs_input_grad[2] else None,
            None,
            None,
        )


def _reference_vjp(fn, inputs: Tuple[torch.Tensor, torch.Tensor], grad_out: torch.Tensor,
                   need_first: bool, need_second: bool, middle: Optional[int]):
    """Vector-Jacobian product through the differentiable reference, for ``create_graph``.

    ``inputs`` are the saved inputs, still attached to the caller's graph, so the returned
    gradients are differentiable functions of them. ``middle`` inserts a ``None`` gradient at
    that position (the ``pairs`` argument of the product).
    """
    wanted = [t for t, need in zip(inputs, (need_first, need_second)) if need]
    with torch.enable_grad():
        # Detached leaves would cut the graph; the saved tensors themselves keep it.
        out = fn(*inputs)
        found = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True))
    grads = [next(found) if need else None for need in (need_first, need_second)]
    if middle is not None:
        grads.insert(middle, None)
    return tuple(grads)


def givens_product_cpu(
    x: torch.Tensor, pairs: torch.Tensor, angles: torch.Tensor
) -> torch.Tensor:
    """Fused ``givens_reference`` for CPU float32/float64 tensors; same shapes and gradients."""
    return _GivensProduct.apply(x, pairs, angles)


def givens_dense_cpu(
    pairs: torch.Tensor, angles: torch.Tensor, scale: torch.Tensor,
    in_features: int, out_features: int,
) -> torch.Tensor:
    """Fused KAMA weight ``W (out_features, in_features)``, differentiable in
    ``angles (L, n/2)`` and ``scale (n,)``; ``pairs`` ``(L, n)``, ``in, out <= n``."""
    return _GivensDense.apply(pairs, angles, scale, in_features, out_features)
