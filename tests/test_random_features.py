"""PNG-kernel estimators: structure, unbiasedness, and where orthogonal rows must beat iid rows.

Statistical tests use fixed seeds and margins of several standard errors, so a pass is not luck
and a regression (e.g. a biased estimator or a non-orthogonal "orthogonal" draw) fails.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlstruct.errors import RLStructError
from rlstruct.kernels import givens_product
from rlstruct.random_features import (
    FEATURES,
    draw_projection,
    estimate_kernel,
    exact_kernel,
    hadamard_transform,
    unit_pair,
)

EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dim", [8, 16, 33])
def test_kama_products_are_orthogonal(dim):
    proj = draw_projection("kama", dim, dim + dim % 2, n_draws=3, generator=_gen(0))
    n = proj.n
    w = proj.to_dense()  # (3, n, dim): sqrt(n) times the first `dim` columns of an orthogonal matrix
    assert w.shape == (3, n, dim)
    gram = w.transpose(1, 2) @ w / n
    assert (gram - torch.eye(dim, dtype=torch.float64)).abs().max() < 50 * EPS64


def test_kama_float32_orthogonal_to_rounding():
    proj = draw_projection("kama", 64, 64, n_draws=2, generator=_gen(1))
    w = proj(torch.eye(64, dtype=torch.float32)).transpose(1, 2) / 8.0
    assert w.dtype == torch.float32
    assert (w @ w.transpose(1, 2) - torch.eye(64)).abs().max() < 50 * EPS32


def test_kama_stages_match_shared_givens_kernel():
    proj = draw_projection("kama", 16, 16, n_draws=2, generator=_gen(2))
    eye = torch.eye(16, dtype=torch.float64)
    for b in range(2):
        shared = givens_product(eye, proj.perms[b], proj.angles[b]).t() * 4.0
        assert torch.allclose(shared, proj.to_dense()[b], atol=20 * EPS64)


def test_spinner_is_orthogonal_and_hadamard_is_involution():
    x = torch.randn(5, 32, dtype=torch.float64, generator=_gen(3))
    assert torch.allclose(hadamard_transform(hadamard_transform(x)), x, atol=50 * EPS64)
    w = draw_projection("spinner", 32, 32, n_draws=2, generator=_gen(3)).to_dense() / math.sqrt(32)
    assert (w @ w.transpose(1, 2) - torch.eye(32, dtype=torch.float64)).abs().max() < 50 * EPS64


def test_orthogonal_blocks_have_orthogonal_rows_and_gaussian_norms():
    gen_iid, gen_ort = _gen(4), _gen(4)
    iid = draw_projection("iid", 12, 12, n_draws=3, generator=gen_iid).dense
    ort = draw_projection("orthogonal", 12, 12, n_draws=3, generator=gen_ort).dense
    gram = ort @ ort.transpose(1, 2)
    off_diag = gram - torch.diag_embed(torch.diagonal(gram, dim1=1, dim2=2))
    assert off_diag.abs().max() < 200 * EPS64
    # Each row keeps the norm of the Gaussian row it was built from (same seed, same draws).
    assert torch.allclose(ort.norm(dim=2), iid.norm(dim=2), rtol=100 * EPS64)


def _errors(kind, feature, dim, m, angle, trials, seed, scale=1.0):
    x, y = unit_pair(dim, angle)
    x, y = scale * x, scale * y
    proj = draw_projection(kind, dim, m, n_draws=trials, generator=_gen(seed))
    return (estimate_kernel(proj, x, y, feature) - exact_kernel(x, y, feature))[:, 0]


# softmax at norm 0.5: exp of a Gaussian has a finite, well-estimated variance there.
@pytest.mark.parametrize("kind", ["iid", "orthogonal"])
@pytest.mark.parametrize("feature", FEATURES)
def test_unstructured_estimators_are_unbiased(kind, feature):
    err = _errors(kind, feature, dim=8, m=12, angle=1.0, trials=4000, seed=5, scale=0.5)
    se = err.std() / math.sqrt(err.numel())
    assert err.mean().abs() < 4 * se, (err.mean(), se)


@pytest.mark.parametrize("feature", ["relu", "sign"])
def test_kama_is_unbiased_for_homogeneous_features(feature):
    # relu/sign kernels depend on w's direction times |w|^k, so fixed-norm rows stay unbiased.
    err = _errors("kama", feature, dim=16, m=16, angle=1.0, trials=4000, seed=6)
    se = err.std() / math.sqrt(err.numel())
    assert err.mean().abs() < 4 * se, (err.mean(), se)


def test_exact_kernels_at_known_points():
    x, y = unit_pair(4, math.pi / 2)
    assert exact_kernel(x, y, "sign").item() == pytest.approx(0.0, abs=1e-12)
    assert exact_kernel(x, y, "relu").item() == pytest.approx(1 / (2 * math.pi))
    assert exact_kernel(x, x, "relu").item() == pytest.approx(0.5)  # E[relu(g)^2] = 1/2
    assert exact_kernel(x, y, "softmax").item() == pytest.approx(1.0, abs=1e-12)
    assert exact_kernel(x, y, "gaussian").item() == pytest.approx(math.exp(-1.0))


@pytest.mark.parametrize(
    "feature, scale",
    [("sign", 1.0), ("gaussian", 1.0), ("softmax", 0.5), ("relu", 1.0)],
)
def test_orthogonal_beats_iid_paired(feature, scale):
    # Same seed: the orthogonal draw is Gram-Schmidt of the iid draw with the same row norms,
    # so the per-draw squared errors are paired and their difference has a small variance.
    args = dict(feature=feature, dim=16, m=16, angle=math.pi / 2, trials=10000, seed=7, scale=scale)
    diff = _errors("iid", **args) ** 2 - _errors("orthogonal", **args) ** 2
    se = diff.std() / math.sqrt(diff.numel())
    assert diff.mean() > 4 * se, (diff.mean(), se)


@pytest.mark.parametrize("kind", ["kama", "spinner"])
def test_structured_beats_iid_on_angular_kernel(kind):
    args = dict(feature="sign", dim=16, m=16, angle=math.pi / 2, trials=2000)
    sq_iid = _errors("iid", seed=8, **args) ** 2
    sq_s = _errors(kind, seed=9, **args) ** 2
    se = math.sqrt(sq_iid.var() / sq_iid.numel() + sq_s.var() / sq_s.numel())
    assert sq_iid.mean() - sq_s.mean() > 4 * se, (sq_iid.mean(), sq_s.mean(), se)


def test_bad_input_raises():
    with pytest.raises(RLStructError, match="projection"):
        draw_projection("gauss", 4, 4)
    with pytest.raises(RLStructError, match="feature"):
        exact_kernel(torch.ones(1, 2), torch.ones(1, 2), "tanh")
    with pytest.raises(RLStructError, match="shape"):
        draw_projection("iid", 4, 4)(torch.ones(2, 5))
