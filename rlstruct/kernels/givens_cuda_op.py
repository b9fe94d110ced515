"""``torch.ops.rlstruct.givens_cuda``: the numba-cuda Givens kernels as a torch custom op.

The op is opaque to ``torch.compile`` (shapes come from the fake implementations) and
differentiable through a second op, ``rlstruct::givens_cuda_backward``. Kernels run on torch's
current CUDA stream, on torch's memory (``__cuda_array_interface__``), so they order correctly
with the surrounding torch work and need no copies.

This module imports without numba: :func:`available` says whether the kernels can run, and
warns once when a CUDA tensor has to fall back to the pure-torch reference.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

from rlstruct.errors import RLStructError

_STATE: dict[str, object] = {}  # "available": bool, "max_blocks": {device index: int}

#: ``RLSTRUCT_CUDA_LAUNCH=pretyped`` launches through :mod:`rlstruct.kernels.givens_cuda_launch`
#: (compiled once, cached views/geometry/stream, no interface sync; needed for CUDA-graph
#: capture). Opt-in until a GPU run has measured and tested it (docs/cuda_kernel.md).
PRETYPED = os.environ.get("RLSTRUCT_CUDA_LAUNCH", "") == "pretyped"


def available() -> bool:
    """True when numba-cuda imports and sees a GPU; warns once (then stays quiet) if not."""
    if "available" not in _STATE:
        reason = None
        try:
            from numba import cuda

            if not cuda.is_available():
                reason = "numba-cuda is installed but sees no usable CUDA driver/GPU"
        except ImportError:
            reason = "numba-cuda is not installed"
        if reason is not None:
            warnings.warn(
                f"rlstruct: {reason}, so Givens products on CUDA use the slower pure-torch "
                "reference; `pip install rlstruct[cuda]` enables the fused kernel",
                RuntimeWarning,
                stacklevel=3,
            )
        _STATE["available"] = reason is None
    return bool(_STATE["available"])


def supports(x: torch.Tensor, pairs: torch.Tensor, angles: torch.Tensor) -> bool:
    """Whether the fused kernel handles these tensors (CUDA float32, even width 2..4096)."""
    from rlstruct.kernels.givens_cuda_shapes import MAX_WIDTH

    n = x.shape[-1]
    return (
        x.is_cuda
        and x.dim() == 2
        and x.dtype == torch.float32
        and angles.dtype == torch.float32
        and 2 <= n <= MAX_WIDTH
        and n % 2 == 0
    )


def _stream():
    from numba import cuda

    return cuda.external_stream(torch.cuda.current_stream().cuda_stream)


def _arr(t: torch.Tensor):
    from numba import cuda

    # detach: torch refuses __cuda_array_interface__ on tensors that require grad, and the op's
    # own autograd formula (not numba) owns the gradient.
    return cuda.as_cuda_array(t.detach().contiguous())


def _max_blocks(device: torch.device) -> int:
    # Enough resident blocks to fill every SM a few times over; the backward loops over tiles.
    cache = _STATE.setdefault("max_blocks", {})
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in cache:
        cache[index] = 8 * torch.cuda.get_device_properties(index).multi_processor_count
    return cache[index]


def _check(x: torch.Tensor, pairs: torch.Tensor, angles: torch.Tensor, scale: Optional[torch.Tensor]) -> None:
    from rlstruct.kernels.givens_cuda_shapes import check_inputs

    check_inputs(tuple(x.shape), tuple(pairs.shape), tuple(angles.shape),
                 None if scale is None else scale.numel())
    if x.dtype != torch.float32 or angles.dtype != torch.float32:
        raise RLStructError(
            f"givens_cuda: the kernel is float32 only, got x {x.dtype} and angles {angles.dtype}; "
            "cast to float32 or use the reference path"
        )


@torch.library.custom_op("rlstruct::givens_cuda", mutates_args=(), device_types="cuda")
def givens_cuda(
    x: torch.Tensor, pairs: torch.Tensor, angles: torch.Tensor, scale: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``(batch, n) -> (batch, n)``: ``scale * G_{L-1} ... G_0 x`` for every row, one launch.

    ``pairs`` ``(L, n)`` long, ``angles`` ``(L, n/2)``, ``scale`` ``(n,)`` or ``None``.
    """
    _check(x, pairs, angles, scale)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    scale_arg = x.new_empty(0) if scale is None else scale.to(torch.float32)
    if PRETYPED:
        from rlstruct.kernels import givens_cuda_launch as fast

        keep = fast.persistent_view
        fast.launch_forward(fast.view(x.contiguous()), keep(pairs.long().contiguous()),
                            keep(angles.contiguous()), keep(scale_arg.contiguous()),
                            fast.view(y), fast.current_stream())
        return y
    from rlstruct.kernels.givens_cuda import launch_forward

    launch_forward(_arr(x), _arr(pairs.long()), _arr(angles), _arr(scale_arg), _arr(y), stream=_stream())
    return y


@givens_cuda.register_fake
def _givens_cuda_fake(x, pairs, angles, scale=None):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("rlstruct::givens_cuda_backward", mutates_args=(), device_types="cuda")
def givens_cuda_backward(
    src: torch.Tensor,
    grad: torch.Tensor,
    pairs: torch.Tensor,
    angles: torch.Tensor,
    scale: Optional[torch.Tensor],
    recompute: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(grad_x (batch, n), grad_angles (L, n/2), grad_scale (n,) or (0,))``.

    ``src`` is the unscaled output ``G x`` (``recompute=False``) or the input ``x``
    (``recompute=True``, needed when ``scale`` was fused into the output).
    """
    from rlstruct.kernels.givens_cuda import backward_blocks, launch_backward, launch_config

    batch, n = src.shape
    n_stages = pairs.shape[0]
    config = launch_config(n, max(batch, 1), backward=True)
    blocks = backward_blocks(n, n_stages, config, _max_blocks(src.device))
    grad_x = torch.empty_like(src, memory_format=torch.contiguous_format)
    angle_partials = src.new_zeros(blocks * config.row_threads, n_stages, n // 2)
    if scale is None:
        scale_arg, scale_partials = src.new_empty(0), src.new_zeros(0, 0)
    else:
        scale_arg, scale_partials = scale.to(torch.float32), src.new_zeros(blocks, n)
    if batch and PRETYPED:
        from rlstruct.kernels import givens_cuda_launch as fast

        keep, v = fast.persistent_view, fast.view
        fast.launch_backward(
            v(src.contiguous()), v(grad.contiguous()), keep(pairs.long().contiguous()),
            keep(angles.contiguous()), keep(scale_arg.contiguous()), recompute, v(grad_x),
            v(angle_partials), v(scale_partials), config, blocks, fast.current_stream(),
        )
    elif batch:
        launch_backward(
            _arr(src), _arr(grad), _arr(pairs.long()), _arr(angles), _arr(scale_arg), recompute,
            _arr(grad_x), _arr(angle_partials), _arr(scale_partials), config, blocks, stream=_stream(),
        )
    return grad_x, angle_partials.sum(0), scale_partials.sum(0)


@givens_cuda_backward.register_fake
def _givens_cuda_backward_fake(src, grad, pairs, angles, scale, recompute):
    n = src.shape[1]
    grad_scale = src.new_empty(0 if scale is None else n)
    return torch.empty_like(src), angles.new_empty(angles.shape), grad_scale


def _setup_context(ctx, inputs, output) -> None:
    x, pairs, angles, scale = inputs
    ctx.recompute = scale is not None
    # Without a scale the output is G x itself: the backward rebuilds every stage's input from
    # it. With a fused scale it restarts from x (a division by a zero scale would be lossy).
    ctx.save_for_backward(x if ctx.recompute else output, pairs, angles, scale)


def _backward(ctx, grad: torch.Tensor):
    src, pairs, angles, scale = ctx.saved_tensors
    grad_x, grad_angles, grad_scale = givens_cuda_backward(
        src, grad.contiguous(), pairs, angles, scale, ctx.recompute
    )
    return grad_x, None, grad_angles, (grad_scale.to(scale.dtype) if scale is not None else None)


givens_cuda.register_autograd(_backward, setup_context=_setup_context)
