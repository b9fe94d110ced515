"""The normalized Walsh-Hadamard transform, ``x -> x H_n`` with ``H_n = H_2^{(x) m} / sqrt(n)``.

``H_n`` (Sylvester order, ``n = 2**m``) is symmetric and orthogonal. Because it is a Kronecker
product, ``H_n = H_{a} (x) H_{b}`` for ``a * b = n``, the transform is a few small matmuls
instead of ``m`` butterfly stages: viewing a row as an ``a x b`` array, ``H_b`` acts on one axis
and ``H_a`` on the other. With factors of at most 64, ``n <= 64`` is one matmul and
``n <= 4096`` two, so the op count stays tiny while the FLOPs stay ``O(n sqrt(n))``-ish
(BLAS-fast) rather than ``O(n^2)``.

This is the package's one Hadamard transform for torch (spinner layers, random-feature
projections). The ES direction sampler (:mod:`rlstruct.algos.estimators`) keeps a NumPy one:
its directions come from a NumPy random stream and it must not import torch.
"""

from __future__ import annotations

import functools
import math
from typing import List

import torch

from rlstruct.errors import RLStructError

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


def _size_error(n: int) -> RLStructError:
    return RLStructError(f"Hadamard transform needs a power-of-two size, got {n}; pad first")


def hadamard_transform(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Multiply ``x`` along ``dim`` by the normalized ``H_n`` (``n = x.shape[dim]`` a power of
    two); any other axes are batch axes.

    Differentiable; ``H_n`` is its own inverse and transpose.
    """
    if dim != -1 or x.dim() != 2:
        moved = x.movedim(dim, -1)
        if moved.shape[-1] < 1:  # reshape(-1, 0) would fail less clearly; 2-D rows check the rest
            raise _size_error(moved.shape[-1])
        rows = hadamard_transform(moved.reshape(-1, moved.shape[-1]))
        return rows.reshape(moved.shape).movedim(-1, dim)
    # The layers' case, (batch, n) rows, runs with no reshapes around it.
    batch, n = x.shape
    if n < 1 or n & (n - 1):
        raise _size_error(n)
    sizes = factor_sizes(n)
    if len(sizes) == 1:
        return x @ hadamard_matrix(n, x.dtype, x.device)
    # Apply the factor of the last axis, then move that axis to the front; after one pass
    # over all factors the axes are back in their original order.
    for size in reversed(sizes):
        y = x.reshape(-1, size) @ hadamard_matrix(size, x.dtype, x.device)
        x = y.reshape(batch, n // size, size).transpose(1, 2)
    return x.reshape(batch, n)
