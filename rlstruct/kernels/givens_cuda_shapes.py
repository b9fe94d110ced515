"""Launch geometry and input checks of the CUDA Givens kernels (pure Python, no numba).

Kept apart from :mod:`rlstruct.kernels.givens_cuda` so the torch op and the dispatcher can
validate inputs and size buffers without importing numba.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rlstruct.errors import RLStructError

#: Threads per block the launch heuristic aims for.
DEFAULT_THREADS = 256
#: Shared memory a tile may use (bytes). 48 KiB is the most a kernel gets without an opt-in,
#: which numba cannot request; the forward keeps to 32 KiB so several blocks share an SM.
FORWARD_SMEM_BYTES = 32 * 1024
BACKWARD_SMEM_BYTES = 48 * 1024
#: Cap on rows per tile: beyond this a tile only adds shared memory, not reuse of cos/sin.
MAX_TILE_ROWS = 64
#: Largest width the kernels accept: one row (two in the backward) must fit in shared memory.
MAX_WIDTH = 4096
FLOAT_BYTES = 4


@dataclass(frozen=True)
class LaunchConfig:
    """Geometry of one launch: ``threads = (pair_threads, row_threads)``, ``rows`` per tile."""

    pair_threads: int
    row_threads: int
    rows: int
    tiles: int
    shared_bytes: int

    @property
    def block(self) -> tuple[int, int]:
        return (self.pair_threads, self.row_threads)


def launch_config(
    n: int, batch: int, *, backward: bool = False, threads: int = DEFAULT_THREADS,
    max_rows: int = MAX_TILE_ROWS,
) -> LaunchConfig:
    """Tile and block shape for a width-``n`` product over ``batch`` rows.

    Threads go to pairs first (up to ``threads``), the rest to rows; a tile holds as many rows
    as the shared-memory budget allows (at least one, at most ``max_rows`` and ``batch``).
    """
    if threads < 1 or max_rows < 1:
        raise RLStructError(f"givens_cuda: threads and max_rows must be >= 1, got {threads}, {max_rows}")
    arrays = 2 if backward else 1  # the backward keeps values and gradients
    budget = BACKWARD_SMEM_BYTES if backward else FORWARD_SMEM_BYTES
    pair_threads = min(n // 2, threads)
    row_threads = max(1, threads // pair_threads)
    rows = max(1, min(budget // (arrays * n * FLOAT_BYTES), max_rows, batch))
    row_threads = min(row_threads, rows)
    tiles = -(-batch // rows)
    return LaunchConfig(pair_threads, row_threads, rows, tiles, arrays * rows * n * FLOAT_BYTES)


def check_inputs(x_shape: tuple[int, ...], pairs_shape: tuple[int, ...], angles_shape: tuple[int, ...], scale_len: Optional[int]) -> None:
    """Raise :class:`RLStructError` unless the shapes form a valid Givens product."""
    if len(x_shape) != 2:
        raise RLStructError(f"givens_cuda: x must be (batch, n), got shape {tuple(x_shape)}")
    n = x_shape[1]
    if n < 2 or n % 2 or n > MAX_WIDTH:
        raise RLStructError(
            f"givens_cuda: width must be even and in 2..{MAX_WIDTH}, got {n}; "
            "use the reference path (rlstruct.kernels.reference) for other widths"
        )
    if len(pairs_shape) != 2 or pairs_shape[1] != n:
        raise RLStructError(f"givens_cuda: pairs must be (L, {n}), got {tuple(pairs_shape)}")
    if tuple(angles_shape) != (pairs_shape[0], n // 2):
        raise RLStructError(
            f"givens_cuda: angles must be ({pairs_shape[0]}, {n // 2}), got {tuple(angles_shape)}"
        )
    if scale_len is not None and scale_len != n:
        raise RLStructError(f"givens_cuda: scale must have {n} entries, got {scale_len}")


def backward_blocks(n: int, n_stages: int, config: LaunchConfig, max_blocks: int) -> int:
    """Blocks of a backward launch: enough to fill the GPU, few enough that the angle partials
    (``blocks * row_threads * L * n/2`` floats) stay within ~32 MiB."""
    per_block = config.row_threads * n_stages * (n // 2) * FLOAT_BYTES
    return max(1, min(config.tiles, max_blocks, (32 << 20) // max(per_block, 1)))
