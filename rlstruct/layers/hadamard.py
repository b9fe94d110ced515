"""The normalized Walsh-Hadamard transform, ``x -> x H_n`` with ``H_n = H_2^{(x) m} / sqrt(n)``.

``H_n`` (Sylvester order, ``n = 2**m``) is symmetric and orthogonal. Because it is a Kronecker
product, ``H_n = H_{a} (x) H_{b}`` for ``a * b = n``, the transform is a few small matmuls
instead of ``m`` butterfly stages: viewing a row as an ``a x b`` array, ``H_b`` acts on one axis
and ``H_a`` on the other. With factors of at most 64, ``n <= 64`` is one matmul and
``n <= 4096`` two, so the op count stays tiny while the FLOPs stay ``O(n sqrt(n))``-ish
(BLAS-fast) rather than ``O(n^2)``.
"""

from __future__ import annotations

import functools
import math
from typing import List

import torch

#: largest Kronecker factor applied as one dense matmul (2**6).
MAX_FACTOR_BITS = 6


@functools.lru_cache(maxsize=64)
def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32,
                    device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """The normalized ``(n, n)`` Sylvester Hadamard matrix (``n`` a power of two).

    Cached per ``(n, dtype, device)``: callers must not modify it in place.
    """
    h = torch.ones(1, 1, dtype=torch.float64)
    block = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    for _ in range(int(math.log2(n))):
        h = torch.kron(h, block)
    return (h / math.sqrt(n)).to(dtype=dtype, device=device)


def factor_sizes(n: int) -> List[int]:
    """Split ``n = 2**m`` into as few as possible near-equal power-of-two factors <= 64."""
    bits = n.bit_length() - 1
    count = max(1, math.ceil(bits / MAX_FACTOR_BITS))
    base, extra = divmod(bits, count)
    return [1 << (base + (1 if i < extra else 0)) for i in range(count)]


def hadamard_transform(x: torch.Tensor) -> torch.Tensor:
    """``(batch, n) -> (batch, n)``: rows times the normalized ``H_n`` (``n`` a power of two).

    Differentiable; ``H_n`` is its own inverse and transpose.
    """
    batch, n = x.shape
    sizes = factor_sizes(n)
    if len(sizes) == 1:
        return x @ hadamard_matrix(n, x.dtype, x.device)
    # Apply the factor of the last axis, then move that axis to the front; after one pass
    # over all factors the axes are back in their original order.
    for size in reversed(sizes):
        y = x.reshape(-1, size) @ hadamard_matrix(size, x.dtype, x.device)
        x = y.reshape(batch, n // size, size).transpose(1, 2)
    return x.reshape(batch, n)
