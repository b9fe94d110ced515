"""The fused CPU Givens kernels against the pure-torch reference.

Float64: ``gradcheck`` (and ``gradgradcheck`` of the double-backward fallback) on small sizes.
Float32: direct comparison with a float64 reference; tolerances are multiples of float32's
rounding unit times the number of roundings on a path (stages, plus the batch for sums).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba")

from rlstruct.errors import RLStructError  # noqa: E402
from rlstruct.kernels import dispatch, givens_cpu  # noqa: E402
from rlstruct.kernels.dispatch import dense_by_product, givens_dense, givens_product  # noqa: E402
from rlstruct.kernels.reference import givens_reference  # noqa: E402
from rlstruct.layers import make_layer  # noqa: E402
from rlstruct.layers.givens import butterfly_pairs, random_pairs  # noqa: E402

EPS32 = torch.finfo(torch.float32).eps


def _layout(kind: str, n: int, seed: int = 0) -> torch.Tensor:
    if kind == "butterfly":
        return butterfly_pairs(n)
    stages = max(1, (n - 1).bit_length())
    return random_pairs(n, stages, torch.Generator().manual_seed(seed))


def _angles(pairs: torch.Tensor, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(pairs.shape[0], pairs.shape[1] // 2, generator=g) * 6.3).to(dtype)


def _dense_ref(pairs, angles, scale, in_features, out_features):
    return dense_by_product(givens_reference, pairs, angles, scale, in_features, out_features)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# ------------------------------------------------------------------------------------------
# float64: gradcheck
@pytest.mark.parametrize("kind,n", [("butterfly", 2), ("butterfly", 4), ("butterfly", 8),
                                    ("random", 6), ("random", 10)])
@pytest.mark.parametrize("batch", [1, 3])
def test_product_gradcheck_float64(kind, n, batch):
    pairs = _layout(kind, n)
    x = torch.randn(batch, n, dtype=torch.float64, requires_grad=True)
    angles = _angles(pairs, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x_, a_: givens_cpu.givens_product_cpu(x_, pairs, a_), (x, angles)
    )


@pytest.mark.parametrize("kind,n,sizes", [("butterfly", 8, (8, 8)), ("butterfly", 8, (3, 8)),
                                          ("butterfly", 8, (8, 5)), ("random", 10, (7, 9)),
                                          ("butterfly", 2, (1, 2))])
def test_dense_build_gradcheck_float64(kind, n, sizes):
    pairs = _layout(kind, n)
    angles = _angles(pairs, torch.float64).requires_grad_()
    scale = torch.randn(n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a_, s_: givens_cpu.givens_dense_cpu(pairs, a_, s_, *sizes), (angles, scale)
    )


def test_double_backward_falls_back_to_the_reference():
    # TRPO differentiates gradients (create_graph=True): that must work, via the reference.
    pairs = _layout("random", 6)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    angles = _angles(pairs, torch.float64).requires_grad_()
    scale = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda x_, a_: givens_cpu.givens_product_cpu(x_, pairs, a_), (x, angles)
    )
    assert torch.autograd.gradgradcheck(
        lambda a_, s_: givens_cpu.givens_dense_cpu(pairs, a_, s_, 5, 4), (angles, scale)
    )


# ------------------------------------------------------------------------------------------
# float32: against the float64 reference
LAYOUTS32 = [("butterfly", n) for n in (2, 4, 8, 64, 256)] + [
    ("random", n) for n in (6, 10, 34, 66, 200)
]


@pytest.mark.parametrize("kind,n", LAYOUTS32)
@pytest.mark.parametrize("batch", [1, 3, 33])
def test_product_float32_matches_reference(kind, n, batch):
    pairs = _layout(kind, n, seed=n)
    stages = pairs.shape[0]
    x = torch.randn(batch, n, generator=torch.Generator().manual_seed(batch))
    angles = _angles(pairs, torch.float32)
    grad_out = torch.randn(batch, n, generator=torch.Generator().manual_seed(7))

    x32, a32 = x.clone().requires_grad_(), angles.clone().requires_grad_()
    y32 = givens_cpu.givens_product_cpu(x32, pairs, a32)
    gx32, ga32 = torch.autograd.grad(y32, (x32, a32), grad_out)
    x64, a64 = x.double().requires_grad_(), angles.double().requires_grad_()
    y64 = givens_reference(x64, pairs, a64)
    gx64, ga64 = torch.autograd.grad(y64, (x64, a64), grad_out.double())

    assert y32.dtype == torch.float32 and y32.shape == (batch, n)
    # Each stage rounds each entry a couple of times; rotations keep norms, so errors add up.
    assert _max_err(y32, y64) <= 2 * stages * EPS32 * x.abs().max().item()
    assert _max_err(gx32, gx64) <= 2 * stages * EPS32 * grad_out.abs().max().item()
    # Angle gradients: batch sums of products of recomputed stage outputs and gradients,
    # whose entries are bounded by their rows' norms.
    norms = x.norm(dim=1).max().item() * grad_out.norm(dim=1).max().item()
    assert _max_err(ga32, ga64) <= (2 * stages + batch) * EPS32 * norms


@pytest.mark.parametrize("kind,n", LAYOUTS32)
@pytest.mark.parametrize("in_features,out_features", [(None, None), (1, None), (None, 1),
                                                       ("half", None), (None, "third")])
def test_dense_build_float32_matches_reference(kind, n, in_features, out_features):
    size = {None: n, "half": max(1, n // 2), "third": max(1, n // 3), 1: 1}
    in_f, out_f = size[in_features], size[out_features]
    pairs = _layout(kind, n, seed=n + 1)
    stages = pairs.shape[0]
    angles = _angles(pairs, torch.float32)
    scale = torch.randn(n, generator=torch.Generator().manual_seed(3))
    grad_w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(4))

    a32, s32 = angles.clone().requires_grad_(), scale.clone().requires_grad_()
    w32 = givens_cpu.givens_dense_cpu(pairs, a32, s32, in_f, out_f)
    ga32, gs32 = torch.autograd.grad(w32, (a32, s32), grad_w)
    a64, s64 = angles.double().requires_grad_(), scale.double().requires_grad_()
    w64 = _dense_ref(pairs, a64, s64, in_f, out_f)
    ga64, gs64 = torch.autograd.grad(w64, (a64, s64), grad_w.double())

    # Columns of the rotated identity are unit vectors (rows have norm <= 1).
    smax = scale.abs().max().item()
    assert w32.shape == (out_f, in_f)
    assert _max_err(w32, w64) <= 2 * stages * EPS32 * smax
    row_norm = grad_w.norm(dim=1).max().item()
    assert _max_err(gs32, gs64) <= (stages + in_f) * EPS32 * row_norm
    col_norm = grad_w.norm(dim=0).max().item()
    assert _max_err(ga32, ga64) <= (2 * stages + in_f) * EPS32 * smax * col_norm


def test_repeated_backward_and_noncontiguous_input():
    # The backward works on copies of what it saved: a second backward gives the same grads.
    pairs = _layout("butterfly", 16)
    x = torch.randn(16, 5).t().requires_grad_()  # (5, 16), not contiguous
    angles = _angles(pairs, torch.float32).requires_grad_()
    scale = torch.randn(16, requires_grad=True)
    y = givens_cpu.givens_product_cpu(x, pairs, angles)
    w = givens_cpu.givens_dense_cpu(pairs, angles, scale, 12, 9)
    loss = (y ** 2).sum() + (w ** 3).sum()
    first = torch.autograd.grad(loss, (x, angles, scale), retain_graph=True)
    second = torch.autograd.grad(loss, (x, angles, scale))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    expected = givens_reference(x.detach().double(), pairs, angles.detach().double())
    assert _max_err(y, expected) <= 2 * pairs.shape[0] * EPS32 * x.abs().max().item()


# ------------------------------------------------------------------------------------------
# dispatch and the KAMA layer
def test_dispatch_uses_fused_cpu_path_and_falls_back(monkeypatch):
    pairs = _layout("butterfly", 8)
    angles = _angles(pairs, torch.float32).requires_grad_()
    scale = torch.ones(8, requires_grad=True)
    x = torch.randn(3, 8)
    assert "GivensProduct" in type(givens_product(x, pairs, angles).grad_fn).__name__
    assert "GivensDense" in type(givens_dense(pairs, angles, scale, 8, 8).grad_fn).__name__
    # dtypes the kernels are not compiled for, or mixed dtypes, take the reference
    assert not givens_cpu.supports(x.half(), angles.half())
    assert not givens_cpu.supports(x.double(), angles)
    # without numba: the reference, same values
    monkeypatch.setattr(dispatch, "givens_cpu", None)
    fallback = givens_dense(pairs, angles, scale, 8, 8)
    assert "GivensDense" not in type(fallback.grad_fn).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", [dict(), dict(layout="random", mode="random"),
                                     dict(layout="random", n_blocks=2)])
@pytest.mark.parametrize("sizes", [(11, 64), (64, 64), (64, 1), (40, 100)])
def test_kama_layer_same_with_and_without_fused_path(monkeypatch, dtype, options, sizes):
    torch.manual_seed(0)
    layer = make_layer("kama", *sizes, **options).to(dtype)
    x = torch.randn(5, sizes[0], dtype=dtype)
    eps = torch.finfo(dtype).eps
    tol = 16 * layer.n_stages_total * eps * (1 + x.abs().max().item()) * sizes[0]

    def run(structured: bool):
        layer.dense_threshold = 0 if structured else 1 << 30
        layer.zero_grad()
        y = layer(x)
        y.pow(2).sum().backward()
        grads = [p.grad.clone() for p in layer.parameters()]
        return y.detach(), grads

    fused = [run(False), run(True)]
    monkeypatch.setattr(dispatch, "givens_cpu", None)
    reference = [run(False), run(True)]
    for (y_f, g_f), (y_r, g_r) in zip(fused, reference):
        assert _max_err(y_f, y_r) <= tol
        for a, b in zip(g_f, g_r):
            assert _max_err(a, b) <= tol * (1 + b.abs().max().item()) * x.shape[0]


def test_bad_layouts_raise_instead_of_reading_stray_memory():
    pairs = _layout("butterfly", 8)
    angles = _angles(pairs, torch.float32)
    x = torch.randn(2, 8)
    bad = pairs.clone()
    bad[1, 3] = 8
    with pytest.raises(RLStructError, match="outside"):
        givens_cpu.givens_product_cpu(x, bad, angles)
    with pytest.raises(RLStructError, match="do not fit"):
        givens_cpu.givens_product_cpu(torch.randn(2, 6), pairs, angles)
    with pytest.raises(RLStructError, match="do not fit"):
        givens_cpu.givens_product_cpu(x, pairs, angles[:, :3])
    with pytest.raises(RLStructError, match="do not fit"):
        givens_cpu.givens_dense_cpu(pairs, angles, torch.ones(8), 9, 8)
