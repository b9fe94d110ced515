"""Fused CPU ops (Toeplitz build, HD3 product) against their pure-torch references.

Float64: ``gradcheck`` on small sizes. Float32: comparison with the float64 reference, with
tolerances in units of float32's rounding unit times the roundings on a path (``log2 N`` per
Hadamard transform, the batch for the diagonal-gradient sums, the row length for the Toeplitz
diagonal sums).
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("numba")

from rlstruct.kernels.hd3_cpu import hd3_product, hd3_reference  # noqa: E402
from rlstruct.kernels.toeplitz_cpu import toeplitz_dense, toeplitz_dense_reference  # noqa: E402
from rlstruct.layers import make_layer  # noqa: E402

EPS32 = torch.finfo(torch.float32).eps
TOEPLITZ_SIZES = [(1, 1), (1, 7), (7, 1), (3, 5), (11, 64), (64, 64), (65, 33), (256, 256),
                  (17, 300)]
HD3_SIZES = [(1, 1), (1, 2), (3, 5), (11, 64), (64, 64), (64, 11), (33, 17), (100, 256),
             (256, 256)]


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (5, 3), (4, 4)])
def test_toeplitz_gradcheck_float64(size):
    t = torch.randn(sum(size) - 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t_: toeplitz_dense(t_, *size), (t,))
    assert torch.autograd.gradgradcheck(lambda t_: toeplitz_dense(t_, *size), (t,))


@pytest.mark.parametrize("size", TOEPLITZ_SIZES)
def test_toeplitz_matches_reference_float32(size):
    in_f, out_f = size
    t = torch.randn(in_f + out_f - 1, requires_grad=True)
    w = toeplitz_dense(t, in_f, out_f)
    t64 = t.detach().double().requires_grad_()
    w_ref = toeplitz_dense_reference(t64, in_f, out_f)
    assert w.shape == (out_f, in_f)
    assert torch.equal(w.double(), w_ref.detach())  # a copy: exact
    g = torch.randn(out_f, in_f)
    (grad,) = torch.autograd.grad(w, t, g)
    (grad_ref,) = torch.autograd.grad(w_ref, t64, g.double())
    # each entry sums at most min(in, out) terms of size |g|
    assert _err(grad, grad_ref) <= 2 * EPS32 * min(in_f, out_f) * g.abs().max().item()


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (5, 3), (8, 8)])
@pytest.mark.parametrize("batch", [1, 4])
def test_hd3_gradcheck_float64(size, batch):
    in_f, out_f = size
    n = 1 << (max(in_f, out_f) - 1).bit_length()
    x = torch.randn(batch, in_f, dtype=torch.float64, requires_grad=True)
    ds = [torch.randn(k, dtype=torch.float64, requires_grad=True) for k in (in_f, n, n)]
    fn = lambda *a: hd3_product(*a, n, out_f)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, *ds))
    assert torch.autograd.gradgradcheck(fn, (x, *ds))


@pytest.mark.parametrize("size", HD3_SIZES)
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_hd3_matches_reference_float32(size, batch):
    in_f, out_f = size
    n = 1 << (max(in_f, out_f, 1) - 1).bit_length()
    x = torch.randn(batch, in_f, requires_grad=True)
    ds = [torch.randn(k).requires_grad_() for k in (in_f, n, n)]
    y = hd3_product(x, *ds, n, out_f)
    ref_in = [t.detach().double().requires_grad_() for t in (x, *ds)]
    y_ref = hd3_reference(*ref_in, n, out_f)
    assert y.shape == (batch, out_f)
    stages = 3 * max(1, int(math.log2(n)))
    scale = y_ref.abs().max().item() + 1
    assert _err(y, y_ref) <= 4 * EPS32 * stages * scale
    g = torch.randn(batch, out_f)
    grads = torch.autograd.grad(y, [x, *ds], g)
    grads_ref = torch.autograd.grad(y_ref, ref_in, g.double())
    for a, b in zip(grads, grads_ref):
        tol = 4 * EPS32 * (stages + batch) * (b.abs().max().item() + 1) * math.sqrt(batch)
        assert _err(a, b) <= tol


def test_hd3_falls_back_off_cpu_dtypes():
    x = torch.randn(3, 5, dtype=torch.float16)
    ds = [torch.randn(k, dtype=torch.float16) for k in (5, 8, 8)]
    assert hd3_product(x, *ds, 8, 4).shape == (3, 4)


@pytest.mark.parametrize("structure", ["kama", "hd3", "toeplitz"])
@pytest.mark.parametrize("size,rows", [((256, 256), 64), ((256, 256), 600), ((64, 64), 64),
                                       ((64, 64), 65), ((11, 256), 32), ((129, 130), 3)])
def test_batch_rule_paths_agree(structure, size, rows):
    """The per-batch path choice (build vs structure) gives the same forward and gradients."""
    torch.manual_seed(0)
    layer = make_layer(structure, *size).double()
    x = torch.randn(rows, size[0], dtype=torch.float64, requires_grad=True)
    y = layer(x)
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad(y.sin().sum(), [x, *params])
    y_ref = x @ layer.to_dense().t() + layer.bias
    grads_ref = torch.autograd.grad(y_ref.sin().sum(), [x, *params])
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_explicit_threshold_disables_the_batch_rule():
    layer = make_layer("kama", 256, 256, dense_threshold=1024)
    assert not layer._threshold_given or layer.train_structured(64)
    calls = []
    original = layer.apply_structured
    layer.apply_structured = lambda x: calls.append(1) or original(x)
    layer(torch.randn(8, 256)).sum().backward()
    assert not calls  # the build path, as requested


# ---------------------------------------------------------------------------------------------
# Fused training path: build kernel + matmul + bias as one autograd node (StructuredLinear
# `_BuiltLinear`), against the unfused reference F.linear(x, to_dense(), bias).
FUSED_SIZES = [(1, 1), (3, 5), (11, 64), (64, 11), (64, 64), (65, 33), (17, 130)]


def _fused_layer(structure, size, dtype, bias=True):
    torch.manual_seed(0)
    # A huge threshold keeps the build path (where the fused node applies) at every size.
    return make_layer(structure, *size, bias=bias, dense_threshold=1 << 30).to(dtype)


@pytest.mark.parametrize("structure", ["kama", "hd3", "toeplitz"])
@pytest.mark.parametrize("size", FUSED_SIZES)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_training_path_matches_unfused(structure, size, bias, monkeypatch):
    layer = _fused_layer(structure, size, torch.float64, bias)
    assert layer._fused_inputs(torch.randn(2, size[0], dtype=torch.float64)) is not None
    x = torch.randn(9, size[0], dtype=torch.float64, requires_grad=True)
    params = [p for p in layer.parameters() if p.requires_grad]
    y = layer(x)
    assert y.grad_fn is not None and "BuiltLinear" in type(y.grad_fn).__name__
    grads = torch.autograd.grad(y.sin().sum(), [x, *params])
    y_ref = torch.nn.functional.linear(x, layer.to_dense(), layer.bias)
    grads_ref = torch.autograd.grad(y_ref.sin().sum(), [x, *params])
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # the class-wide switch gives the unfused node and the same numbers
    monkeypatch.setattr(type(layer), "fused_training", False)
    y_off = layer(x)
    assert "BuiltLinear" not in type(y_off.grad_fn).__name__
    torch.testing.assert_close(y_off, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("structure", ["kama", "hd3", "toeplitz"])
def test_fused_training_path_gradcheck_and_double_backward(structure):
    layer = _fused_layer(structure, (5, 6), torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    params = [p for p in layer.parameters() if p.requires_grad]
    names = [n for n, p in layer.named_parameters() if p.requires_grad]

    def fn(x_, *ps):
        saved = {n: getattr(layer, n) for n in names}
        try:
            for n, p in zip(names, ps):
                layer._parameters[n] = p
            return layer(x_)
        finally:
            for n, p in saved.items():
                layer._parameters[n] = p

    inputs = (x, *[p.detach().clone().requires_grad_() for p in params])
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("structure", ["kama", "hd3", "toeplitz"])
def test_fused_training_path_float32_close_to_float64(structure):
    layer64 = _fused_layer(structure, (64, 64), torch.float64)
    layer32 = _fused_layer(structure, (64, 64), torch.float32)
    x = torch.randn(64, 64, dtype=torch.float64)
    y64, y32 = layer64(x), layer32(x.float())
    assert _err(y32, y64) < 1e-4
    y32.sum().backward()
    y64.sum().backward()
    for p32, p64 in zip(layer32.parameters(), layer64.parameters()):
        assert _err(p32.grad, p64.grad) < 1e-3 * max(1.0, p64.grad.abs().max().item())


def test_fused_path_not_taken_for_random_mode_or_mixed_dtype():
    hd3 = make_layer("hd3", 8, 8, mode="random", dense_threshold=1 << 30)
    assert hd3._fused_inputs(torch.randn(2, 8)) is None  # output scale: unfused build
    kama = make_layer("kama", 8, 8)
    assert kama._fused_inputs(torch.randn(2, 8, dtype=torch.float64)) is None


def test_inference_cache_follows_data_reassignment():
    """`vector_to_parameters` reassigns `.data` without bumping versions: the cache key
    (versions and data pointers) still sees it."""
    layer = make_layer("kama", 8, 8)
    x = torch.randn(3, 8)
    with torch.no_grad():
        before = layer(x)
        vec = torch.nn.utils.parameters_to_vector(layer.parameters()) * 0.5
        torch.nn.utils.vector_to_parameters(vec, layer.parameters())
        after = layer(x)
        expected = torch.nn.functional.linear(x, layer.to_dense(), layer.bias)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected)


def test_kama_layout_checked_once_and_again_after_an_edit(monkeypatch):
    import copy
    import pickle

    from rlstruct.errors import RLStructError
    from rlstruct.kernels import givens_cpu

    calls = []
    original = givens_cpu.checked_dense_pairs
    monkeypatch.setattr(givens_cpu, "checked_dense_pairs",
                        lambda *a: calls.append(1) or original(*a))
    layer = make_layer("kama", 11, 64)
    x = torch.randn(8, 11)
    for _ in range(3):
        y = layer(x)
        y.sum().backward()
    assert len(calls) == 1  # to_dense (unfused autograd node) still checks on every call
    torch.testing.assert_close(y, torch.nn.functional.linear(x, layer.to_dense(), layer.bias))
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone._pairs_cache is None
        torch.testing.assert_close(clone(x), layer(x))
    with torch.no_grad():
        layer.pairs[0, 0] = 64  # out of range: the in-place edit bumps the version
    with pytest.raises(RLStructError, match="outside"):
        layer(x)
    with torch.no_grad():
        layer.pairs.copy_(make_layer("kama", 11, 64).pairs)
    y = layer(x)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, layer.to_dense(), layer.bias))


def test_hd3_shared_identity_stays_an_identity():
    from rlstruct.layers.spinners import _numpy_eye

    for dtype in (torch.float32, torch.float64):
        layer = _fused_layer("hd3", (11, 64), dtype)
        x = torch.randn(16, 11, dtype=dtype)
        for _ in range(2):
            y = layer(x)
            y.square().sum().backward()
            with torch.no_grad():
                for p in layer.parameters():
                    p.add_(0.01 * p.grad)
                    p.grad = None
        y = layer(x)
        torch.testing.assert_close(y, torch.nn.functional.linear(x, layer.to_dense(), layer.bias))
        np_eye = _numpy_eye(11, dtype)
        assert (np_eye == torch.eye(11, dtype=dtype).numpy()).all()
