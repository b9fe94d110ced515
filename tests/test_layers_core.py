"""The layer base, the registry and the foundation families (dense, toeplitz, kama)."""

from __future__ import annotations

import pytest
import torch

from rlstruct.errors import RLStructError
from rlstruct.layers import available_structures, make_layer

FOUNDATION = ["dense", "toeplitz", "kama"]
SIZES = [(1, 1), (3, 5), (7, 7), (11, 64), (64, 3), (33, 17)]


@pytest.mark.parametrize("structure", FOUNDATION)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_gradients_match_dense(structure, size, dtype):
    torch.manual_seed(0)
    layer = make_layer(structure, *size).to(dtype)
    x = torch.randn(5, size[0], dtype=dtype, requires_grad=True)
    weight = layer.to_dense()
    assert weight.shape == (size[1], size[0])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    # structured algorithm vs explicit matrix, forward and all gradients
    y_struct = layer.apply_structured(x) + layer.bias
    y_dense = x @ weight.t() + layer.bias
    torch.testing.assert_close(y_struct, y_dense, **tol)
    torch.testing.assert_close(layer(x), y_dense, **tol)
    params = [p for p in layer.parameters() if p.requires_grad]
    g_struct = torch.autograd.grad(y_struct.sin().sum(), [x, *params])
    g_dense = torch.autograd.grad((x @ layer.to_dense().t() + layer.bias).sin().sum(), [x, *params])
    for a, b in zip(g_struct, g_dense):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("size", [(5, 3), (64, 64), (11, 64)])
def test_toeplitz_is_constant_along_diagonals(size):
    w = make_layer("toeplitz", *size).to_dense().detach()
    out_f, in_f = w.shape
    for i in range(1, out_f):
        for j in range(1, in_f):
            assert w[i, j] == w[i - 1, j - 1]
    assert make_layer("toeplitz", *size).num_parameters() == size[0] + size[1] - 1 + size[1]


def test_dense_counts_and_repr():
    layer = make_layer("dense", 11, 64)
    assert layer.num_parameters() == 11 * 64 + 64 == layer.dense_num_parameters()
    assert "in_features=11, out_features=64" in repr(layer)
    assert "params=" in repr(make_layer("kama", 11, 64))


def test_large_width_uses_structured_path_and_matches():
    torch.manual_seed(0)
    layer = make_layer("toeplitz", 2048, 1500)
    assert not layer.uses_dense_path()
    x = torch.randn(3, 2048, dtype=torch.float64)
    layer = layer.double()
    torch.testing.assert_close(layer(x), x @ layer.to_dense().t() + layer.bias)


def test_reset_parameters_redraws():
    layer = make_layer("toeplitz", 8, 8)
    before = layer.diagonals.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.diagonals)


def test_unknown_structure_lists_known_ones():
    with pytest.raises(RLStructError) as info:
        make_layer("toplitz", 4, 4)
    message = str(info.value)
    assert "toplitz" in message
    for name in FOUNDATION:
        assert name in message
    assert set(FOUNDATION) <= set(available_structures())


@pytest.mark.parametrize("size", [(0, 4), (4, -1), (2.5, 3)])
def test_impossible_sizes(size):
    with pytest.raises(RLStructError, match="positive integer"):
        make_layer("kama", *size)


def test_unknown_option_names_accepted_ones():
    with pytest.raises(RLStructError, match="accepted options: .*layout"):
        make_layer("kama", 4, 4, lay_out="random")


def test_wrong_input_width():
    with pytest.raises(RLStructError, match="last dimension 4"):
        make_layer("toeplitz", 4, 4)(torch.randn(2, 5))


@pytest.mark.parametrize("structure", ["toeplitz", "kama"])
def test_frozen_layer_takes_the_cached_path_and_still_passes_input_gradients(structure):
    """A layer that trains nothing (frozen parameters, gradients on) multiplies by the cached W,
    as under ``no_grad``; the input still gets its gradient, the structure none; a wide-enough
    ``inference_dense_threshold`` of 0 sends the same forward through the structure instead."""
    torch.manual_seed(0)
    layer = make_layer(structure, 7, 5).double().requires_grad_(False)
    assert layer.infers_dense
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert layer._cached_weight is not None  # filled by this forward
    expected = x @ layer.to_dense().t() + layer.bias
    torch.testing.assert_close(y, expected)
    (grad_x,) = torch.autograd.grad(y.sum(), [x])
    torch.testing.assert_close(grad_x, torch.ones(4, 5, dtype=torch.float64) @ layer.to_dense())
    with pytest.raises(RLStructError, match="last dimension 7"):
        layer.forward_cached(torch.randn(4, 6, dtype=torch.float64))
    layer.inference_dense_threshold = 0
    assert not layer.infers_dense
    layer._cached_weight = None
    torch.testing.assert_close(layer(x), expected)
    assert layer._cached_weight is None  # went through apply_structured
