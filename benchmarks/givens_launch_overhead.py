"""Where the time of one small ``givens_cuda`` call goes (GPU only): the op end to end against
its parts (numba array views, the external stream, the bare kernel launch), in microseconds.

    python benchmarks/givens_launch_overhead.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlstruct.kernels import givens_cuda_op  # noqa: E402
from rlstruct.layers.givens import butterfly_pairs  # noqa: E402


def wall_us(fn: Callable[[], object], repeats: int = 200) -> float:
    """Mean wall-clock microseconds per call, synchronizing once at the end (host cost)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    from numba import cuda

    n, batch = 64, 256
    x = torch.randn(batch, n, device="cuda")
    pairs = butterfly_pairs(n).cuda()
    angles = torch.rand(pairs.shape[0], n // 2, device="cuda")
    rows = {
        "givens_cuda op (no grad)": lambda: givens_cuda_op.givens_cuda(x, pairs, angles),
        "cuda.as_cuda_array x1": lambda: cuda.as_cuda_array(x),
        "cuda.external_stream": lambda: cuda.external_stream(torch.cuda.current_stream().cuda_stream),
        "torch x + 1 (one torch launch)": lambda: x + 1,
    }
    with torch.no_grad():
        for name, fn in rows.items():
            print(f"| {name} | {wall_us(fn):.1f} |", flush=True)


if __name__ == "__main__":
    main()
