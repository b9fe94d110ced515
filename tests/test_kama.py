"""KAMA layers against an explicit product of Givens matrices built one rotation at a time."""

from __future__ import annotations

import math

import pytest
import torch

from rlstruct.errors import RLStructError
from rlstruct.layers import make_layer
from rlstruct.layers.givens import butterfly_pairs, random_pairs


def explicit_matrix(layer) -> torch.Tensor:
    """W = D G_L ... G_1 from 2x2 rotations, in float64, padded/sliced like the layer."""
    n = layer.n
    rot = torch.eye(n, dtype=torch.float64)
    pairs = layer.pairs.tolist()
    angles = layer.angles.detach().double()
    for stage, stage_pairs in enumerate(pairs):
        g = torch.eye(n, dtype=torch.float64)
        for k in range(n // 2):
            p, q = stage_pairs[2 * k], stage_pairs[2 * k + 1]
            c, s = math.cos(angles[stage, k]), math.sin(angles[stage, k])
            g[p, p], g[p, q], g[q, p], g[q, q] = c, -s, s, c
        rot = g @ rot
    full = torch.diag(layer.scale.detach().double()) @ rot
    return full[: layer.out_features, : layer.in_features]


@pytest.mark.parametrize("layout", ["butterfly", "random"])
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 5), (7, 7), (11, 64), (64, 3), (33, 17)])
def test_to_dense_is_the_givens_product(layout, size):
    torch.manual_seed(0)
    layer = make_layer("kama", *size, layout=layout)
    with torch.no_grad():
        layer.scale.uniform_(0.5, 1.5)
    torch.testing.assert_close(layer.to_dense().double(), explicit_matrix(layer), rtol=0, atol=1e-5)


def test_butterfly_pairs_cover_every_coordinate_once_per_stage():
    pairs = butterfly_pairs(16)
    assert pairs.shape == (4, 16)
    for stage in pairs:
        assert sorted(stage.tolist()) == list(range(16))
    # stage s pairs i with i + 2**s
    for s, stage in enumerate(pairs):
        p, q = stage[0::2], stage[1::2]
        assert torch.all(q - p == 2**s)


def test_random_pairs_are_matchings_and_seeded():
    a = random_pairs(10, 3, torch.Generator().manual_seed(1))
    b = random_pairs(10, 3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    for stage in a:
        assert sorted(stage.tolist()) == list(range(10))


def test_rotation_part_is_orthogonal_and_full_mixing():
    layer = make_layer("kama", 64, 64)
    w = layer.to_dense().detach().double()
    torch.testing.assert_close(w.t() @ w, torch.eye(64, dtype=torch.float64), atol=1e-5, rtol=0)
    # the butterfly connects every input to every output
    assert (w.abs() > 0).all()


@pytest.mark.parametrize("size,expected", [((64, 64), 6 * 32 + 64 + 64), ((11, 64), 320), ((64, 3), 259), ((1, 1), 1 + 2 + 1)])
def test_parameter_count(size, expected):
    layer = make_layer("kama", *size)
    assert layer.num_parameters() == expected


def test_random_mode_freezes_angles_and_is_reproducible():
    a = make_layer("kama", 12, 12, layout="random", mode="random", seed=3)
    b = make_layer("kama", 12, 12, layout="random", mode="random", seed=3)
    c = make_layer("kama", 12, 12, layout="random", mode="random", seed=4)
    assert torch.equal(a.to_dense(), b.to_dense())
    assert not torch.equal(a.to_dense(), c.to_dense())
    trainable = {name for name, p in a.named_parameters() if p.requires_grad}
    assert trainable == {"scale", "bias"}


def test_gradients_match_dense_path():
    torch.manual_seed(0)
    layer = make_layer("kama", 9, 6, layout="random").double()
    x = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda inp: layer.apply_structured(inp), (x,))
    y1 = layer(x).square().sum()
    g1 = torch.autograd.grad(y1, [x, layer.angles, layer.scale])
    y2 = (layer.apply_structured(x) + layer.bias).square().sum()
    g2 = torch.autograd.grad(y2, [x, layer.angles, layer.scale])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_inference_cache_follows_parameter_updates():
    layer = make_layer("kama", 8, 8)
    x = torch.randn(2, 8)
    with torch.no_grad():
        y0 = layer(x)
        layer.angles.add_(0.1)
        y1 = layer(x)
    assert not torch.allclose(y0, y1)
    torch.testing.assert_close(y1, x @ layer.to_dense().detach().t() + layer.bias.detach())


@pytest.mark.parametrize("kwargs,match", [
    (dict(layout="zigzag"), "unknown layout"),
    (dict(mode="frozen"), "unknown mode"),
    (dict(n_blocks=0), "n_blocks"),
    (dict(n_stages=3), "n_stages applies to layout=random"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(RLStructError, match=match):
        make_layer("kama", 8, 8, **kwargs)
