"""Pre-typed launch path of the CUDA Givens kernels: the host work done once, not per call.

A plain numba-cuda launch (``kernel[grid, block, stream, smem](*args)``) types every argument,
looks the overload up, wraps each tensor's ``__cuda_array_interface__`` (syncing on its stream
by default) and builds a stream object: ~0.3 ms per forward on an H200
(``results/givens_cuda.md``). Here:

* each kernel is compiled once for its one signature (``dispatcher.compile(sig)``, the
  signatures of :data:`~rlstruct.kernels.givens_cuda.KERNEL_SIGNATURES`) and launched through
  the compiled kernel's ``launch``: no typing, no overload lookup;
* launch geometry is cached per shape (:func:`cached_launch_config`);
* numba views of long-lived tensors (pairs, angles, scale: same memory every call) are cached
  by ``(pointer, shape, dtype)``; per-call tensors are wrapped with ``sync=False`` (the
  kernel runs on torch's current stream, which already orders it after their producers),
  which is also what makes the launch legal inside CUDA-graph capture;
* the numba wrapper of torch's current stream is cached per stream handle.

In numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) there is nothing to pre-compile: the
same functions launch through the simulated dispatcher, so tests check the path's plumbing
(geometry, argument order, buffers) against the plain launchers and the reference.

No GPU figures exist for this path yet (``docs/cuda_kernel.md``);
``benchmarks/gpu_checks.sh`` measures it when a GPU is at hand.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Dict, Tuple

from numba import config as numba_config
from numba import cuda

from rlstruct.kernels import givens_cuda as gc
from rlstruct.kernels.givens_cuda_shapes import LaunchConfig, launch_config

#: numba views of long-lived tensors kept at most (each pins its tensor's memory).
VIEW_CACHE_SIZE = 64
SIMULATED = bool(numba_config.ENABLE_CUDASIM)

_compiled: Dict[str, object] = {}
_views: "OrderedDict[tuple, object]" = OrderedDict()
_streams: Dict[int, object] = {}


@functools.lru_cache(maxsize=512)
def cached_launch_config(n: int, batch: int, backward: bool = False) -> LaunchConfig:
    """:func:`launch_config` with the default geometry, memoized per shape."""
    return launch_config(n, batch, backward=backward)


def compiled(kernel: str):
    """The kernel (``"forward"``/``"backward"``) compiled once for its fixed signature; in the
    simulator, the dispatcher itself."""
    if kernel not in _compiled:
        func, signature = gc.KERNEL_SIGNATURES[kernel]
        _compiled[kernel] = func if SIMULATED else func.compile(signature)
    return _compiled[kernel]


def _run(kernel: str, config_grid: int, block: Tuple[int, int], stream, shared: int, args) -> None:
    k = compiled(kernel)
    if SIMULATED:
        k[config_grid, block, stream, shared](*args)
    else:
        k.launch(args, config_grid, block, stream, shared)


def persistent_view(t):
    """A cached numba view of a long-lived contiguous CUDA tensor (parameters, layouts)."""
    if SIMULATED:  # NumPy arrays in the simulator
        return t
    key = (t.data_ptr(), tuple(t.shape), str(t.dtype), t.device.index)
    view = _views.get(key)
    if view is None:
        view = cuda.as_cuda_array(t.detach(), sync=False)
        _views[key] = view
        if len(_views) > VIEW_CACHE_SIZE:
            _views.popitem(last=False)
    else:
        _views.move_to_end(key)
    return view


def view(t):
    """A numba view of a per-call tensor, without the interface's stream sync."""
    return t if SIMULATED else cuda.as_cuda_array(t.detach(), sync=False)


def current_stream():
    """numba's wrapper of torch's current CUDA stream (``0`` in the simulator), cached."""
    if SIMULATED:
        return 0
    import torch

    handle = torch.cuda.current_stream().cuda_stream
    stream = _streams.get(handle)
    if stream is None:
        stream = _streams[handle] = cuda.external_stream(handle)
    return stream


def launch_forward(x, pairs, angles, scale, y, stream) -> None:
    """Pre-typed :func:`rlstruct.kernels.givens_cuda.launch_forward` (default geometry).

    ``x``, ``y`` ``(batch, n)`` float32 views, ``pairs`` ``(L, n)`` int64, ``angles``
    ``(L, n/2)``, ``scale`` ``(n,)`` or ``(0,)``.
    """
    batch, n = x.shape
    if batch == 0:
        return
    config = cached_launch_config(n, batch)
    _run("forward", config.tiles, config.block, stream, config.shared_bytes,
         (x, pairs, angles, scale, y, config.rows))


def launch_backward(src, grad, pairs, angles, scale, recompute: bool, grad_x, angle_partials,
                    scale_partials, config: LaunchConfig, blocks: int, stream) -> None:
    """Pre-typed :func:`rlstruct.kernels.givens_cuda.launch_backward`."""
    _run("backward", blocks, config.block, stream, config.shared_bytes,
         (src, grad, pairs, angles, scale, int(recompute), config.rows, grad_x, angle_partials,
          scale_partials))


class CapturedForward:
    """A CUDA graph of ``fn(x)`` for one input shape: replaying skips every host launch cost.

    Captured on a side stream (torch's default stream cannot be captured) after a few warm-up
    calls (numba compiles and caches happen outside the capture). Needs the pre-typed launch
    (``RLSTRUCT_CUDA_LAUNCH=pretyped``): the plain launch syncs on the interface's stream,
    which capture forbids. ``__call__`` copies ``x (batch, ...)`` into the static input and
    returns the static output (overwritten by the next call: clone it to keep it). Parameters
    are read in place at replay, so optimizer steps are seen; a different shape needs a new
    capture.
    """

    def __init__(self, fn, example, warmup: int = 3) -> None:
        import torch

        self.static_in = example.detach().clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(warmup):
                fn(self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_out = fn(self.static_in)

    def __call__(self, x):
        self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out
