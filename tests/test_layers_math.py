"""The shared math under the layers: Hadamard transform, Toeplitz-by-FFT, Haar sampling.

Each helper has one home (``rlstruct.layers.hadamard``, ``.convolution``, ``.haar``) and is
checked here against an explicit construction, with tolerances in units of the dtype's eps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlstruct.errors import RLStructError
from rlstruct.layers import make_layer
from rlstruct.layers.convolution import toeplitz_product
from rlstruct.layers.haar import gram_schmidt, haar_orthogonal, orthogonal_gaussian_rows
from rlstruct.layers.hadamard import hadamard_transform

DTYPES = [torch.float32, torch.float64]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sylvester(n: int) -> np.ndarray:
    """Normalized Sylvester Hadamard matrix by its entry formula ``(-1)^popcount(i & j)``,
    independent of the Kronecker construction under test."""
    i = np.arange(n)
    both = np.bitwise_and.outer(i, i)
    parity = np.zeros_like(both)
    while both.any():
        parity ^= both & 1
        both >>= 1
    return (1 - 2 * parity) / math.sqrt(n)


# ---------------------------------------------------------------------------------------------
# Hadamard
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead", [(), (1,), (5,), (2, 3)], ids=str)
@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 256, 1024])
def test_hadamard_transform_matches_sylvester(n, lead, dtype):
    x = torch.randn(*lead, n, generator=_gen(n), dtype=torch.float64)
    want = x @ torch.from_numpy(sylvester(n))
    got = hadamard_transform(x.to(dtype))
    assert got.dtype == dtype and got.shape == x.shape
    # Every output sums n terms in a log2(n)-deep (or shallower, blocked) tree.
    tol = 4 * torch.finfo(dtype).eps * math.log2(2 * n) * max(want.abs().max().item(), 1.0)
    assert (got.double() - want).abs().max().item() <= tol


@pytest.mark.parametrize("dim", [0, 1, -2])
def test_hadamard_transform_along_any_axis(dim):
    x = torch.randn(8, 8, 3, generator=_gen(1), dtype=torch.float64)
    moved = hadamard_transform(x.movedim(dim, -1)).movedim(-1, dim)
    torch.testing.assert_close(hadamard_transform(x, dim=dim), moved, rtol=0, atol=0)


def test_hadamard_transform_is_an_involution_with_gradients():
    x = torch.randn(3, 4096, generator=_gen(2), dtype=torch.float64, requires_grad=True)
    y = hadamard_transform(hadamard_transform(x))
    torch.testing.assert_close(y, x, rtol=0, atol=100 * torch.finfo(torch.float64).eps)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, torch.ones_like(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3), (2, 12), (4, 0), (0,)], ids=str)
def test_hadamard_transform_rejects_other_sizes(shape):
    with pytest.raises(RLStructError, match="power-of-two"):
        hadamard_transform(torch.zeros(shape))


# ---------------------------------------------------------------------------------------------
# Toeplitz by FFT
def explicit_toeplitz(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return torch.tensor(
        [[t[i - j + cols - 1].item() for j in range(cols)] for i in range(rows)], dtype=torch.float64
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "cols, rows", [(1, 1), (1, 4), (4, 1), (3, 5), (5, 3), (7, 7), (13, 6), (6, 13), (33, 17)],
    ids=str,
)
def test_toeplitz_product_matches_explicit_matrix(cols, rows, dtype):
    gen = _gen(cols * 100 + rows)
    x = torch.randn(3, cols, generator=gen, dtype=torch.float64)
    t = torch.randn(cols + rows - 1, generator=gen, dtype=torch.float64)
    want = x @ explicit_toeplitz(t, rows, cols).t()
    got = toeplitz_product(x.to(dtype), t.to(dtype), rows)
    assert got.dtype == dtype and got.shape == (3, rows)
    # FFT convolution error scales with the operands' norms and log of the FFT size.
    size = 1 << (2 * cols + rows - 3).bit_length()
    scale = x.norm(dim=1).max().item() * t.norm().item()
    tol = 2 * torch.finfo(dtype).eps * math.log2(2 * size) * scale
    assert (got.double() - want).abs().max().item() <= tol


def test_hankel_layer_is_a_toeplitz_product_of_the_reversed_input():
    layer = make_layer("hankel", 6, 4).double()
    x = torch.randn(5, 6, generator=_gen(3), dtype=torch.float64)
    torch.testing.assert_close(layer.apply_structured(x), x @ layer.to_dense().t())


# ---------------------------------------------------------------------------------------------
# Haar sampling
def test_gram_schmidt_makes_r_positive():
    # The defining property of the sign fix: A = Q R with diag(R) > 0, so Q is unique and
    # Gram-Schmidt of A's columns. Plain torch.linalg.qr leaves about half of diag(R) negative.
    a = torch.randn(20, 6, 6, generator=_gen(4), dtype=torch.float64)
    q = gram_schmidt(a)
    eye = torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(q.transpose(1, 2) @ q, eye.expand(20, 6, 6))
    r = q.transpose(1, 2) @ a
    assert (torch.diagonal(r, dim1=1, dim2=2) > 0).all()
    torch.testing.assert_close(torch.tril(r, -1), torch.zeros_like(r), rtol=0, atol=1e-12)


def test_haar_orthogonal_has_zero_mean_and_symmetric_diagonal():
    # Haar Q and -Q (column by column) are equally likely, so E[Q] = 0 and each diagonal entry is
    # positive half the time. Householder QR without the fix has Q[0, 0] < 0 every time.
    gen = _gen(5)
    draws = torch.stack([haar_orthogonal(4, gen) for _ in range(600)])
    se = math.sqrt(1 / 4) / math.sqrt(600)  # each entry has variance 1/n
    assert draws.mean(0).abs().max().item() < 4 * se
    positive = (torch.diagonal(draws, dim1=1, dim2=2) > 0).double().mean(0)
    assert ((positive - 0.5).abs() < 4 * math.sqrt(0.25 / 600)).all(), positive


def test_orthogonal_gaussian_rows_are_orthogonal_gaussians():
    rows = orthogonal_gaussian_rows(10, 4, _gen(6), n_draws=3)
    assert rows.shape == (3, 10, 4)
    for block in (rows[:, :4], rows[:, 4:8]):
        gram = block @ block.transpose(1, 2)
        off_diag = gram - torch.diag_embed(torch.diagonal(gram, dim1=1, dim2=2))
        assert off_diag.abs().max().item() < 1e-12


def test_snnk_features_are_haar_orthogonal_features():
    # Each row of an SNNK feature matrix must be marginally N(0, I) (orthogonal random features):
    # mean 0, second moment 1 in every entry, over layers with different seeds. The sampler
    # without the QR sign fix gives features[0, 0] < 0 for every seed (mean about -0.8).
    n_layers, d = 400, 4
    feats = torch.stack([
        make_layer("snnk", d, 2, n_features=d, seed=s).features.double() for s in range(n_layers)
    ])
    se = 1 / math.sqrt(n_layers)
    assert feats.mean(0).abs().max().item() < 4 * se, feats.mean(0)
    assert ((feats**2).mean(0) - 1).abs().max().item() < 4 * math.sqrt(2) * se
    positive = (torch.diagonal(feats, dim1=1, dim2=2) > 0).double().mean(0)
    assert ((positive - 0.5).abs() < 4 * 0.5 * se).all(), positive
