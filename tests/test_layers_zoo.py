"""Every registered structure against its dense form, plus each family's defining formula.

Parametrized over ``available_structures()``, so a newly registered family is covered by the
generic checks (forward / fast transform / gradients vs ``x W^T + b``, state_dict round trip).
"""

from __future__ import annotations

import inspect
import io
import math

import pytest
import torch

from rlstruct.errors import RLStructError
from rlstruct.layers import available_structures, get_structure, make_layer
from rlstruct.layers.hadamard import hadamard_matrix, hadamard_transform

FAMILIES = available_structures()
MODED = [f for f in FAMILIES if "mode" in inspect.signature(get_structure(f).__init__).parameters]
ZOO = [f for f in MODED if f != "kama"]  # families built on rlstruct.layers.common.ZooLinear
SIZES = [(1, 1), (3, 5), (7, 7), (11, 64), (64, 3), (33, 17)]
DTYPES = [torch.float32, torch.float64]


def pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def build(name: str, n_in: int, n_out: int, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    return make_layer(name, n_in, n_out, **kwargs).to(dtype)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Equal up to float rounding: error within 200 eps of the reference's magnitude."""
    assert actual.shape == expected.shape
    scale = max(expected.abs().max().item(), 1e-3)
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert err <= 200 * torch.finfo(dtype).eps * scale, f"error {err:.3g} at scale {scale:.3g}"


def outputs_and_grads(layer, fn, x: torch.Tensor, probe: torch.Tensor):
    """``fn(x)`` and the gradients of ``<fn(x), probe>`` w.r.t. ``x`` and every trainable param."""
    x = x.detach().requires_grad_(True)
    params = [p for p in layer.parameters() if p.requires_grad]
    y = fn(x)
    grads = torch.autograd.grad((y * probe).sum(), [x, *params], allow_unused=True)
    return [y, *grads]


def check_against_dense(layer, fn, with_bias: bool, dtype, lead=(2, 3)) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*lead, layer.in_features, generator=gen, dtype=dtype)
    probe = torch.randn(*lead, layer.out_features, generator=gen, dtype=dtype)

    def reference(inp):
        y = inp @ layer.to_dense().t()
        return y + layer.bias if with_bias and layer.bias is not None else y

    got = outputs_and_grads(layer, fn, x, probe)
    want = outputs_and_grads(layer, reference, x, probe)
    for g, w in zip(got, want):
        if w is None:
            assert g is None or not g.abs().any()
        else:
            assert g is not None
            assert_close(g, w, dtype)


# -------------------------------------------------------------------------------------------
# generic: every family against x W^T + b
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", FAMILIES)
def test_forward_and_fast_path_match_dense(name, size, dtype):
    layer = build(name, *size, dtype)
    check_against_dense(layer, layer, True, dtype)  # the default path of forward
    check_against_dense(layer, layer.apply_structured, False, dtype, lead=(4,))
    fast = build(name, *size, dtype, dense_threshold=0)  # forward through apply_structured
    check_against_dense(fast, fast, True, dtype)


@pytest.mark.parametrize("name", MODED)
def test_random_mode_matches_dense(name):
    layer = build(name, 33, 17, mode="random", seed=5)
    with torch.no_grad():
        layer.scale.uniform_(0.5, 1.5)  # a non-trivial learned scale
    check_against_dense(layer, layer, True, torch.float64)
    check_against_dense(layer, layer.apply_structured, False, torch.float64, lead=(4,))


@pytest.mark.parametrize("name", ZOO)
def test_random_mode_reproducible_and_frozen(name):
    a = make_layer(name, 7, 5, mode="random", seed=3)
    b = make_layer(name, 7, 5, mode="random", seed=3)
    c = make_layer(name, 7, 5, mode="random", seed=4)
    assert torch.equal(a.to_dense(), b.to_dense())
    assert not torch.allclose(a.to_dense(), c.to_dense())
    assert sorted(n for n, p in a.named_parameters() if p.requires_grad) == ["bias", "scale"]
    # What learned mode trains, random mode keeps as saved buffers.
    learned = make_layer(name, 7, 5, mode="learned", seed=3)
    structure = {n for n, _ in learned.named_parameters()} - {"bias", "scale"}
    assert structure and structure <= set(a.state_dict())
    assert torch.equal(learned.to_dense(), a.to_dense())  # same seed, same draw
    torch.manual_seed(11)
    d = make_layer(name, 7, 5, mode="random")
    torch.manual_seed(11)
    e = make_layer(name, 7, 5, mode="random")
    assert torch.equal(d.to_dense(), e.to_dense())


@pytest.mark.parametrize("name", ZOO)
def test_reset_reproduces_the_seeded_draw(name):
    layer = make_layer(name, 6, 9, seed=2)
    before = layer.to_dense().detach().clone()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(1.0)
    layer.reset_parameters()
    assert torch.equal(layer.to_dense(), before)


def n2(i, o):
    return pow2(max(i, o))


# (kwargs, learned-mode parameter count without bias)
FORMULAS = {
    "dense": ({}, lambda i, o: i * o),
    "toeplitz": ({}, lambda i, o: i + o - 1),
    "kama": ({}, lambda i, o: int(math.log2(pow2(max(i, o, 2)))) * pow2(max(i, o, 2)) // 2
             + pow2(max(i, o, 2))),
    "lowrank": ({"rank": 3}, lambda i, o: 3 * (i + o)),
    "circulant": ({}, lambda i, o: max(i, o)),
    "skew_circulant": ({}, lambda i, o: max(i, o)),
    "hankel": ({}, lambda i, o: i + o - 1),
    "ldr": ({"rank": 3}, lambda i, o: 2 * 3 * max(i, o)),
    "hd3": ({}, lambda i, o: i + 2 * n2(i, o)),
    "fastfood": ({}, lambda i, o: i + n2(i, o) + o),
    "toeplitz_spinner": ({}, lambda i, o: i + pow2(i) + o + pow2(i) - 1),
    "kaleidoscope": ({"n_blocks": 2},
                     lambda i, o: 2 * 4 * pow2(max(i, o, 2)) * int(math.log2(pow2(max(i, o, 2))))),
    "snnk": ({"n_features": 5}, lambda i, o: 5 * o),
    "orthogonal": ({}, lambda i, o: max(i, o) ** 2 + o),
}


def test_every_family_has_a_formula():
    assert set(FORMULAS) == set(FAMILIES)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (64, 3), (33, 17), (64, 64)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", FAMILIES)
def test_parameter_counts(name, size):
    kwargs, formula = FORMULAS[name]
    i, o = size
    assert make_layer(name, i, o, **kwargs).num_parameters() == formula(i, o) + o
    assert make_layer(name, i, o, bias=False, **kwargs).num_parameters() == formula(i, o)
    if name in ZOO:
        assert make_layer(name, i, o, mode="random", **kwargs).num_parameters() == 2 * o


@pytest.mark.parametrize("name", FAMILIES)
def test_parameters_flatten_to_one_vector(name):
    """ES flattens a policy's parameters with flat views: every tensor must be contiguous."""
    layer = build(name, 11, 7, dtype=torch.float32)
    layer.reset_parameters()
    vector = torch.nn.utils.parameters_to_vector(layer.parameters())
    assert vector.numel() == layer.num_parameters()


@pytest.mark.parametrize("name", FAMILIES)
def test_state_dict_round_trip(name):
    extra = {"mode": "random"} if name in ZOO else {}
    for kwargs in ({}, extra):
        torch.manual_seed(1)
        saved = make_layer(name, 11, 6, **kwargs)
        torch.manual_seed(2)
        loaded = make_layer(name, 11, 6, **kwargs)
        x = torch.randn(4, 11)
        with torch.no_grad():
            loaded(x)  # fill the inference cache, which the load must invalidate
            buffer = io.BytesIO()
            torch.save(saved.state_dict(), buffer)
            buffer.seek(0)
            loaded.load_state_dict(torch.load(buffer))
            assert torch.equal(loaded(x), saved(x))


BAD_OPTIONS = [
    ("lowrank", {"rank": 0}),
    ("ldr", {"rank": -1}),
    ("kaleidoscope", {"n_blocks": 0}),
    ("snnk", {"n_features": 0}),
    ("circulant", {"no_such_option": 1}),
    *[(name, {"mode": "adaptive"}) for name in MODED],
    *[(name, {"seed": "seven"}) for name in ZOO],
]


@pytest.mark.parametrize("name,kwargs", BAD_OPTIONS)
def test_bad_options_raise(name, kwargs):
    with pytest.raises(RLStructError):
        make_layer(name, 4, 4, **kwargs)


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_sizes_and_inputs_raise(name):
    with pytest.raises(RLStructError):
        make_layer(name, 0, 4)
    with pytest.raises(RLStructError):
        make_layer(name, 4, 3)(torch.zeros(2, 5))


# -------------------------------------------------------------------------------------------
# each family's to_dense is the matrix its docstring defines
def test_hadamard_matrix_and_transform():
    def butterfly_reference(x):  # the textbook log2(n)-stage transform
        n, h = x.shape[1], 1
        while h < n:
            y = x.reshape(x.shape[0], n // (2 * h), 2, h)
            x = torch.stack([y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]], 2).reshape(-1, n)
            h *= 2
        return x / math.sqrt(n)

    for n in (1, 2, 8, 64, 128, 512):
        idx = torch.arange(n)
        signs = torch.tensor([[(-1.0) ** bin(i & j).count("1") for j in idx] for i in idx])
        assert_close(hadamard_matrix(n, torch.float64), signs.double() / math.sqrt(n),
                     torch.float64)
    for n in (4096, 8192):  # two and three Kronecker factors
        x = torch.randn(3, n, dtype=torch.float64)
        assert_close(hadamard_transform(x), butterfly_reference(x), torch.float64)


def f_circulant_reference(v: torch.Tensor, f: float, rows: int, cols: int) -> torch.Tensor:
    n = v.numel()
    return torch.tensor([[v[i - j] if i >= j else f * v[i - j + n] for j in range(cols)]
                         for i in range(rows)], dtype=v.dtype)


@pytest.mark.parametrize("size", [(5, 7), (7, 5), (6, 6)], ids=str)
def test_ldr_family_entries(size):
    i, o = size
    circ = build("circulant", i, o)
    assert_close(circ.to_dense(), f_circulant_reference(circ.c.detach(), 1.0, o, i), torch.float64)
    skew = build("skew_circulant", i, o)
    assert_close(skew.to_dense(), f_circulant_reference(skew.c.detach(), -1.0, o, i),
                 torch.float64)
    hank = build("hankel", i, o)
    h = hank.h.detach()
    want = torch.tensor([[h[r + c] for c in range(i)] for r in range(o)], dtype=h.dtype)
    assert_close(hank.to_dense(), want, torch.float64)
    ldr = build("ldr", i, o, rank=2)
    n = max(i, o)
    want = sum(f_circulant_reference(ldr.g[k].detach(), 1.0, n, n)
               @ f_circulant_reference(ldr.h[k].detach(), -1.0, n, n) for k in range(2))
    assert_close(ldr.to_dense(), want[:o, :i], torch.float64)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_ldr_displacement_rank(rank):
    n = 8
    w = build("ldr", n, n, rank=rank).to_dense().detach()
    shift = torch.roll(torch.eye(n, dtype=torch.float64), 1, 0)  # Z_1: cyclic down-shift
    skew_shift = shift.clone()
    skew_shift[0, -1] = -1.0  # Z_{-1}
    singular = torch.linalg.svdvals(shift @ w - w @ skew_shift)
    assert singular[rank - 1] > 1e-6 and singular[rank:].max() < 1e-12


def test_spinner_products():
    i, o = 5, 7
    n = pow2(max(i, o))
    h = hadamard_matrix(n, torch.float64)

    def diag_in(v):  # a diagonal acting on the padded input
        return torch.diag(torch.cat([v.detach(), v.new_zeros(n - v.numel())]))

    hd3 = build("hd3", i, o)
    want = h @ torch.diag(hd3.d3.detach()) @ h @ torch.diag(hd3.d2.detach()) @ h @ diag_in(hd3.d1)
    assert_close(hd3.to_dense(), want[:o, :i], torch.float64)

    ff = build("fastfood", i, o)
    perm = torch.eye(n, dtype=torch.float64)[ff.perm]
    want = (h @ torch.diag(ff.g.detach()) @ perm @ h @ diag_in(ff.b))[:o]
    assert_close(ff.to_dense(), (ff.s.detach().unsqueeze(1) * want)[:, :i], torch.float64)

    ts = build("toeplitz_spinner", i, o)
    m = pow2(i)
    hm, t = hadamard_matrix(m, torch.float64), ts.t.detach()
    toeplitz = torch.tensor([[t[r - c + m - 1] for c in range(m)] for r in range(o)],
                            dtype=torch.float64)
    d1 = torch.diag(torch.cat([ts.d1.detach(), t.new_zeros(m - i)]))
    want = toeplitz @ torch.diag(ts.d2.detach()) @ hm @ d1
    assert_close(ts.to_dense(), want[:, :i], torch.float64)


def test_kaleidoscope_is_a_product_of_butterfly_stages():
    layer = build("kaleidoscope", 8, 8, n_blocks=2)
    with torch.no_grad():
        layer.twiddles.normal_()  # general 2x2 twiddles, not just rotations
    n, w = 8, torch.eye(8, dtype=torch.float64)
    for stage, stride in enumerate(layer.strides):
        m = torch.zeros(n, n, dtype=torch.float64)
        firsts = [p for p in range(n) if not p & stride]
        for k, p in enumerate(firsts):
            t = layer.twiddles[stage, :, :, k].detach()
            for a, r in enumerate((p, p + stride)):
                for b, c in enumerate((p, p + stride)):
                    m[r, c] = t[a, b]
        w = m @ w
    assert layer.strides == [1, 2, 4, 4, 2, 1] * 2
    assert_close(layer.to_dense(), w, torch.float64)


@pytest.mark.parametrize("name", ["hd3", "kaleidoscope", "orthogonal", "lowrank"])
@pytest.mark.parametrize("mode", ["learned", "random"])
def test_init_like_orthogonal(name, mode):
    if mode == "random" and name == "lowrank":
        pytest.skip("a random low-rank product is not orthogonal")
    layer = build(name, 16, 16, mode=mode, seed=0)
    layer.init_like_orthogonal(2.0)
    w = layer.to_dense().detach()
    rank = 4 if name == "lowrank" else 16
    # Structures are drawn in float32, so orthogonality holds to float32 rounding.
    assert_close(torch.linalg.svdvals(w)[:rank], torch.full((rank,), 2.0, dtype=w.dtype),
                 torch.float32)
    assert not layer.bias.abs().any()


def test_orthogonal_parameter_and_projection():
    layer = build("orthogonal", 5, 9)
    q = dict(layer.named_parameters())["weight_orth"]
    eye = torch.eye(9, dtype=torch.float64)
    assert_close(q.detach().t() @ q.detach(), eye, torch.float32)  # drawn in float32
    with torch.no_grad():
        q.add_(0.01 * torch.randn_like(q))
    layer.orthogonalize_()
    assert_close(q.detach().t() @ q.detach(), eye, torch.float64)


def test_snnk_is_a_random_feature_estimate_of_its_dense_init():
    layer = build("snnk", 8, 3, n_features=8)
    g = layer.features.double()
    # One orthogonal block (drawn in float32): the rows are mutually orthogonal.
    assert_close(g @ g.t(), torch.diag((g * g).sum(1)), torch.float32)
    assert_close(layer.to_dense(), layer.psi.detach() @ g / math.sqrt(8), torch.float64)
