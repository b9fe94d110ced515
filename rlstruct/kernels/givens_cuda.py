"""Fused CUDA kernels (numba-cuda) for a product of Givens rotation stages.

Stage representation as in :mod:`rlstruct.kernels.reference`: ``pairs`` ``(L, n)``,
``angles`` ``(L, n/2)``. Both kernels tile rows of the batch in shared memory:

* a block owns a tile of ``rows`` consecutive rows (``rows * n`` floats of shared memory);
  threads are a 2-D grid, ``threadIdx.x`` over pairs and ``threadIdx.y`` over rows, so each
  thread computes ``cos``/``sin`` of an angle once and applies it to several rows;
* a stage rewrites disjoint pairs, so threads never race inside a stage; one
  ``syncthreads`` separates stages;
* rows past the end of the batch are loaded as zeros and never stored, so every thread
  reaches every ``syncthreads``.

Forward: ``y = scale * (G_{L-1} ... G_0 x)`` (``scale`` optional, ``(n,)``): one launch for
the whole batch, one read of ``x`` and one write of ``y``.

Backward: walks the stages from last to first, rebuilding each stage's input from its output
with the inverse rotation (no per-stage activations are stored). For a pair with outputs
``(a', b')`` and output gradients ``(ga', gb')``::

    inputs         (a, b)   = ( c a' + s b',  -s a' + c b')
    input grads    (ga, gb) = ( c ga' + s gb', -s ga' + c gb')
    d loss/d theta          = ga' (-s a - c b) + gb' (c a - s b) = gb' a' - ga' b'

Each block loops over tiles (grid-stride) and adds its angle gradients into its own slice of
a partial-sum buffer ``(blocks * blockDim.y, L, n/2)``, one slot per (block, row-thread), so
no atomics are needed and the result is deterministic for a fixed launch; the caller sums the
slices. With a fused ``scale`` the output is not the rotated vector, so the backward can start
from ``x`` instead (``recompute=1``): it replays the stages forward in shared memory first.

Importing this module needs ``numba.cuda`` (real or its simulator, ``NUMBA_ENABLE_CUDASIM=1``
set before the first import) but no GPU: kernels compile on first launch.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from numba import cuda, float32, types
from numba.core.errors import NumbaPerformanceWarning

from rlstruct.errors import RLStructError
from rlstruct.kernels.givens_cuda_shapes import (
    DEFAULT_THREADS,
    MAX_TILE_ROWS,
    LaunchConfig,
    backward_blocks,
    check_inputs,
    launch_config,
)

# Small grids are expected (an RL rollout is often one row); numba would warn on every launch.
warnings.filterwarnings(
    "ignore", message=r"Grid size \d+ will likely result in GPU under-utilization",
    category=NumbaPerformanceWarning,
)

# ----------------------------------------------------------------------------------------------
# Device code. Each kernel is self-contained (no device-function calls): numba compiles a
# called device function for the *current* GPU, so with helpers the kernels could not be
# compiled to PTX ahead of time on a machine without one.


@cuda.jit
def givens_forward_kernel(x, pairs, angles, scale, y, rows):
    """``y[b] = scale * G_{L-1} ... G_0 x[b]``; ``scale`` of length 0 means no scale.

    Shared memory: ``rows * n`` floats (the tile). Block ``(pair threads, row threads)``.
    """
    tile = cuda.shared.array(0, dtype=float32)
    batch = x.shape[0]
    n = x.shape[1]
    tid = cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    nthreads = cuda.blockDim.x * cuda.blockDim.y
    row0 = cuda.blockIdx.x * rows
    # Coalesced load: consecutive threads read consecutive floats; rows past the batch are 0.
    i = tid
    while i < rows * n:
        r = i // n
        tile[i] = x[row0 + r, i - r * n] if row0 + r < batch else float32(0.0)
        i += nthreads
    for stage in range(pairs.shape[0]):
        cuda.syncthreads()
        k = cuda.threadIdx.x
        while k < n // 2:
            p = pairs[stage, 2 * k]
            q = pairs[stage, 2 * k + 1]
            c = math.cos(angles[stage, k])
            s = math.sin(angles[stage, k])
            r = cuda.threadIdx.y
            while r < rows:
                a = tile[r * n + p]
                b = tile[r * n + q]
                tile[r * n + p] = c * a - s * b
                tile[r * n + q] = s * a + c * b
                r += cuda.blockDim.y
            k += cuda.blockDim.x
    cuda.syncthreads()
    has_scale = scale.shape[0] == n
    i = tid
    while i < rows * n:
        r = i // n
        if row0 + r < batch:
            j = i - r * n
            y[row0 + r, j] = tile[i] * scale[j] if has_scale else tile[i]
        i += nthreads


@cuda.jit
def givens_backward_kernel(
    src, grad, pairs, angles, scale, recompute, rows, grad_x, angle_partials, scale_partials
):
    """Gradients of ``y = scale * G x`` w.r.t. ``x``, the angles and ``scale``.

    ``src`` is the rotated output ``G x`` (``recompute == 0``) or the input ``x``
    (``recompute == 1``: the stages are replayed first). ``angle_partials``
    ``(gridDim.x * blockDim.y, L, n/2)`` and ``scale_partials`` ``(gridDim.x, n)`` (or
    ``(0, 0)`` without scale) must be zeroed; the caller sums them over axis 0.
    Shared memory: ``2 * rows * n`` floats (values, then gradients).
    """
    smem = cuda.shared.array(0, dtype=float32)
    batch = src.shape[0]
    n = src.shape[1]
    n_stages = pairs.shape[0]
    tid = cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    nthreads = cuda.blockDim.x * cuda.blockDim.y
    g0 = rows * n  # the gradient tile follows the value tile
    slot = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    has_scale = scale.shape[0] == n
    replay = n_stages if recompute else 0
    tile = cuda.blockIdx.x
    while tile * rows < batch:
        row0 = tile * rows
        cuda.syncthreads()  # the previous tile's gradients are stored before reloading
        i = tid
        while i < rows * n:
            r = i // n
            inside = row0 + r < batch
            smem[i] = src[row0 + r, i - r * n] if inside else float32(0.0)
            smem[g0 + i] = grad[row0 + r, i - r * n] if inside else float32(0.0)
            i += nthreads
        # Steps 0..replay-1 rotate the values forward (x -> G x); then the stages run
        # backward, each rotating values and gradients by -theta and collecting d/d theta.
        for step in range(replay + n_stages):
            forward = step < replay
            stage = step if forward else n_stages - 1 - (step - replay)
            if step == replay and has_scale:
                # The values are G x now: grad_scale = sum_rows g * Gx, then g <- g * scale.
                cuda.syncthreads()
                j = tid
                while j < n:  # column j belongs to one thread of this block on every tile
                    acc = float32(0.0)
                    for r in range(rows):
                        acc += smem[g0 + r * n + j] * smem[r * n + j]
                        smem[g0 + r * n + j] *= scale[j]
                    scale_partials[cuda.blockIdx.x, j] += acc
                    j += nthreads
            cuda.syncthreads()
            k = cuda.threadIdx.x
            while k < n // 2:
                p = pairs[stage, 2 * k]
                q = pairs[stage, 2 * k + 1]
                theta = angles[stage, k] if forward else -angles[stage, k]
                c = math.cos(theta)
                s = math.sin(theta)
                acc = float32(0.0)
                r = cuda.threadIdx.y
                while r < rows:
                    a = smem[r * n + p]
                    b = smem[r * n + q]
                    smem[r * n + p] = c * a - s * b
                    smem[r * n + q] = s * a + c * b
                    if not forward:
                        ga = smem[g0 + r * n + p]
                        gb = smem[g0 + r * n + q]
                        acc += gb * a - ga * b
                        smem[g0 + r * n + p] = c * ga - s * gb
                        smem[g0 + r * n + q] = s * ga + c * gb
                    r += cuda.blockDim.y
                if not forward:
                    angle_partials[slot, stage, k] += acc
                k += cuda.blockDim.x
        cuda.syncthreads()
        i = tid
        while i < rows * n:
            r = i // n
            if row0 + r < batch:
                grad_x[row0 + r, i - r * n] = smem[g0 + i]
            i += nthreads
        tile += cuda.gridDim.x


# ----------------------------------------------------------------------------------------------
# Launchers. They take device arrays (or NumPy arrays, which numba copies, e.g. in the
# simulator) and a numba stream; allocation is the caller's so torch can own the memory.


def launch_forward(x, pairs, angles, scale, y, *, threads: int = DEFAULT_THREADS,
                   max_rows: int = MAX_TILE_ROWS, stream=0) -> None:
    """Run the forward kernel: ``x`` ``(batch, n)`` -> ``y``; ``scale`` ``(n,)`` or ``(0,)``."""
    batch, n = x.shape
    if batch == 0:
        return
    config = launch_config(n, batch, threads=threads, max_rows=max_rows)
    givens_forward_kernel[config.tiles, config.block, stream, config.shared_bytes](
        x, pairs, angles, scale, y, config.rows
    )


def launch_backward(src, grad, pairs, angles, scale, recompute: bool, grad_x, angle_partials,
                    scale_partials, config: LaunchConfig, blocks: int, stream=0) -> None:
    """Run the backward kernel with the geometry the caller sized the partials for."""
    givens_backward_kernel[blocks, config.block, stream, config.shared_bytes](
        src, grad, pairs, angles, scale, int(recompute), config.rows, grad_x, angle_partials,
        scale_partials,
    )


def forward_numpy(x: np.ndarray, pairs: np.ndarray, angles: np.ndarray, scale: Optional[np.ndarray] = None,
                  *, threads: int = DEFAULT_THREADS, max_rows: int = MAX_TILE_ROWS) -> np.ndarray:
    """Host helper: ``(batch, n) -> (batch, n)`` through the forward kernel (GPU or simulator)."""
    check_inputs(x.shape, pairs.shape, angles.shape, None if scale is None else len(scale))
    y = np.empty_like(x, dtype=np.float32)
    scale_arr = np.zeros(0, np.float32) if scale is None else np.ascontiguousarray(scale, np.float32)
    launch_forward(np.ascontiguousarray(x, np.float32), np.ascontiguousarray(pairs, np.int64),
                   np.ascontiguousarray(angles, np.float32), scale_arr, y, threads=threads,
                   max_rows=max_rows)
    return y


def backward_numpy(src: np.ndarray, grad: np.ndarray, pairs: np.ndarray, angles: np.ndarray,
                   scale: Optional[np.ndarray] = None, *, recompute: bool = False,
                   threads: int = DEFAULT_THREADS, max_rows: int = MAX_TILE_ROWS,
                   max_blocks: int = 1024) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Host helper: ``(grad_x (batch, n), grad_angles (L, n/2), grad_scale (n,) or None)``.

    ``src`` is the rotated output ``G x`` (``recompute=False``) or ``x`` (``recompute=True``).
    """
    check_inputs(src.shape, pairs.shape, angles.shape, None if scale is None else len(scale))
    batch, n = src.shape
    n_stages = pairs.shape[0]
    config = launch_config(n, batch, backward=True, threads=threads, max_rows=max_rows)
    blocks = backward_blocks(n, n_stages, config, max_blocks)
    grad_x = np.zeros_like(src, dtype=np.float32)
    angle_partials = np.zeros((blocks * config.row_threads, n_stages, n // 2), np.float32)
    if scale is None:
        scale_arr, scale_partials = np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
    else:
        scale_arr = np.ascontiguousarray(scale, np.float32)
        scale_partials = np.zeros((blocks, n), np.float32)
    if batch:
        launch_backward(
            np.ascontiguousarray(src, np.float32), np.ascontiguousarray(grad, np.float32),
            np.ascontiguousarray(pairs, np.int64), np.ascontiguousarray(angles, np.float32),
            scale_arr, recompute, grad_x, angle_partials, scale_partials, config, blocks,
        )
    grad_scale = None if scale is None else scale_partials.sum(0)
    return grad_x, angle_partials.sum(0), grad_scale


# ----------------------------------------------------------------------------------------------
# Ahead-of-time PTX and ptxas resource report (no GPU needed).

_matrix = types.Array(types.float32, 2, "C")
_vector = types.Array(types.float32, 1, "C")
_pairs = types.Array(types.int64, 2, "C")
_partials = types.Array(types.float32, 3, "C")
KERNEL_SIGNATURES = {
    "forward": (givens_forward_kernel, (_matrix, _pairs, _matrix, _vector, _matrix, types.int64)),
    "backward": (
        givens_backward_kernel,
        (_matrix, _matrix, _pairs, _matrix, _vector, types.int64, types.int64, _matrix,
         _partials, _matrix),
    ),
}


@dataclass(frozen=True)
class PtxasReport:
    """What ``ptxas -v`` says about one kernel on one architecture."""

    kernel: str
    arch: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    static_shared_bytes: int
    ptx_lines: int


def compile_ptx(kernel: str, cc: tuple[int, int]) -> str:
    """PTX of ``kernel`` (``"forward"`` or ``"backward"``) for compute capability ``cc``."""
    func, signature = KERNEL_SIGNATURES[kernel]
    try:
        ptx, _ = cuda.compile_ptx(func.py_func, signature, cc=cc)
    except Exception as err:  # numba-cuda loads NVRTC/NVVM lazily; name the missing piece
        if "nvrtc" in str(err).lower() or "nvvm" in str(err).lower():
            raise RLStructError(
                f"givens_cuda: numba-cuda cannot find the CUDA compiler libraries ({err}); "
                "pip install nvidia-cuda-nvrtc (and a CUDA toolkit for libnvvm)"
            ) from err
        raise
    return ptx


def find_ptxas() -> Optional[str]:
    """Path of ``ptxas`` on PATH or in ``/usr/local/cuda*/bin``, or ``None``."""
    found = shutil.which("ptxas")
    if found:
        return found
    candidates = sorted(Path("/usr/local").glob("cuda*/bin/ptxas"), reverse=True)
    return str(candidates[0]) if candidates else None


def ptxas_report(kernel: str, cc: tuple[int, int], ptxas: Optional[str] = None) -> PtxasReport:
    """Compile ``kernel`` to PTX for ``cc`` and assemble it with ``ptxas -v``."""
    ptxas = ptxas or find_ptxas()
    if ptxas is None:
        raise RLStructError("givens_cuda: ptxas not found; install the CUDA toolkit or put ptxas on PATH")
    ptx = compile_ptx(kernel, cc)
    arch = f"sm_{cc[0]}{cc[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kernel}.ptx"
        path.write_text(ptx)
        done = subprocess.run([ptxas, f"-arch={arch}", "-v", str(path), "-o", str(Path(tmp) / "k.cubin")],
                              capture_output=True, text=True, check=False)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RLStructError(f"givens_cuda: ptxas failed for {kernel} on {arch}: {log.strip()}")

    def number(pattern: str) -> int:
        match = re.search(pattern, log)
        return int(match.group(1)) if match else 0

    return PtxasReport(
        kernel=kernel, arch=arch,
        registers=number(r"Used (\d+) registers"),
        spill_stores=number(r"(\d+) bytes spill stores"),
        spill_loads=number(r"(\d+) bytes spill loads"),
        stack_bytes=number(r"(\d+) bytes stack frame"),
        static_shared_bytes=number(r"(\d+) bytes smem"),
        ptx_lines=ptx.count("\n"),
    )
