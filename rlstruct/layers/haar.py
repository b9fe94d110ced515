"""Random orthogonal matrices: Haar-distributed blocks and orthogonal Gaussian rows.

``torch.linalg.qr`` of a Gaussian matrix is *not* Haar-distributed by itself: Householder QR
gives each ``R[k, k]`` the sign opposite to its pivot, so ``Q``'s diagonal comes out mostly
negative (``Q[0, 0] < 0`` always; ``E[Q] != 0``). Multiplying ``Q``'s columns by
``sign(diag(R))`` makes ``R``'s diagonal positive, so ``Q`` is exactly Gram-Schmidt of the
Gaussian columns, which is Haar (Mezzadri 2007). Every torch caller in the package (the
``orthogonal`` and ``snnk`` layers, :mod:`rlstruct.random_features`) samples through here; the
ES sampler (:mod:`rlstruct.algos.estimators`) keeps a NumPy twin, as it draws from a NumPy stream.
"""

from __future__ import annotations

from typing import Optional

import torch


def gram_schmidt(a: torch.Tensor) -> torch.Tensor:
    """``(..., n, k) -> (..., n, k)``: orthonormal columns, column ``j`` the Gram-Schmidt
    direction of ``a``'s column ``j`` (QR with ``R``'s diagonal made positive)."""
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def haar_orthogonal(
    n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """A Haar-distributed ``(n, n)`` orthogonal matrix."""
    return gram_schmidt(torch.randn(n, n, generator=generator, dtype=dtype))


def orthogonal_gaussian_rows(
    n_rows: int,
    dim: int,
    generator: Optional[torch.Generator] = None,
    n_draws: int = 1,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``(n_draws, n_rows, dim)`` orthogonal random features: every row marginally
    ``N(0, I_dim)``, rows of one ``dim``-row block exactly orthogonal.

    Each block is Gram-Schmidt of ``dim`` Gaussian rows, each row rescaled to the norm of the
    Gaussian row it came from: the norms (chi(dim)) are independent of the directions, so every
    row stays exactly Gaussian and random-feature estimators stay unbiased. ``n_rows > dim``
    stacks independent blocks and truncates the last one.
    """
    blocks = n_draws * -(-n_rows // dim)
    gauss = torch.randn(blocks, dim, dim, generator=generator, dtype=dtype)
    rows = gram_schmidt(gauss.transpose(1, 2)).transpose(1, 2) * gauss.norm(dim=2, keepdim=True)
    return rows.reshape(n_draws, -1, dim)[:, :n_rows].contiguous()
