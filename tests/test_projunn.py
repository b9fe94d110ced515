"""projUNN optimizers: orthogonality kept, loss decreases, rank-N equals the full step, plain
params get Adam/SGD exactly, bad options raise, and an SB3 policy trains with them; the
O(k N^2) low-rank polar factor and exponential equal the dense ones."""

from __future__ import annotations

import pytest
import torch

from rlstruct.errors import RLStructError
from rlstruct.optim import OPTIMIZERS, ProjUNND, ProjUNNT, check_optimizer_kwargs, get_optimizer, mark_orthogonal
from rlstruct.optim import projunn
from rlstruct.optim.projunn import ORTHOGONAL_ATTR, lowrank_polar_factors, lowrank_skew_expm, polar, skew

METHODS = [ProjUNND, ProjUNNT]


def _orthogonality_error(w: torch.Tensor) -> float:
    eye = torch.eye(w.shape[0], dtype=w.dtype)
    return (w.t() @ w - eye).abs().max().item()


def _regression(n: int, dtype: torch.dtype, seed: int):
    """Start W0, a same-component orthogonal target Q and data (X, Y = Q X)."""
    g = torch.Generator().manual_seed(seed)
    w0, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=dtype))
    # Target reachable from W0 along the group: W0 expm(skew), same determinant sign.
    target = w0 @ torch.linalg.matrix_exp(skew(torch.randn(n, n, generator=g, dtype=dtype)))
    x = torch.randn(n, 4 * n, generator=g, dtype=dtype)
    return w0, target, x, target @ x


def _loss(w, x, y):
    return 0.5 * ((w @ x - y) ** 2).sum() / x.shape[1]


@pytest.mark.parametrize("opt_class", METHODS)
@pytest.mark.parametrize("update", ["lowrank", "dense"])
def test_stays_orthogonal_float32_1000_steps(opt_class, update):
    w0, _, x, y = _regression(24, torch.float32, seed=0)
    w = torch.nn.Parameter(w0.clone())
    opt = opt_class([w], lr=0.05, rank=3, update=update)
    for _ in range(1000):
        opt.zero_grad()
        _loss(w, x, y).backward()
        opt.step()
    assert _orthogonality_error(w.detach()) < 1e-5


@pytest.mark.parametrize("opt_class", METHODS)
@pytest.mark.parametrize("rank, lowrank", [(1, "svd"), (4, "svd"), (4, "randomized")])
def test_loss_decreases_on_orthogonal_regression(opt_class, rank, lowrank):
    w0, target, x, y = _regression(16, torch.float64, seed=1)
    w = torch.nn.Parameter(w0.clone())
    opt = opt_class([w], lr=0.2, rank=rank, lowrank=lowrank)
    first = _loss(w, x, y).item()
    for _ in range(300):
        opt.zero_grad()
        loss = _loss(w, x, y)
        loss.backward()
        opt.step()
    assert _loss(w, x, y).item() < 0.1 * first
    assert _orthogonality_error(w.detach()) < 1e-12


@pytest.mark.parametrize("lowrank", ["svd", "randomized"])
def test_full_rank_matches_full_projected_step(lowrank):
    n = 10
    w0, _, x, y = _regression(n, torch.float64, seed=2)
    lr = 0.3
    w = torch.nn.Parameter(w0.clone())
    _loss(w, x, y).backward()
    grad = w.grad.clone()
    expected = {
        ProjUNND: polar(w0 - lr * grad),
        ProjUNNT: w0 @ torch.linalg.matrix_exp(-lr * 0.5 * (w0.t() @ grad - grad.t() @ w0)),
    }
    for opt_class, want in expected.items():
        p = torch.nn.Parameter(w0.clone())
        p.grad = grad.clone()
        opt_class([p], lr=lr, rank=n, lowrank=lowrank).step()
        assert torch.allclose(p.detach(), want, atol=1e-12)
    # A rank below N really truncates: the step differs from the full one.
    p = torch.nn.Parameter(w0.clone())
    p.grad = grad.clone()
    ProjUNND([p], lr=lr, rank=1).step()
    assert (p.detach() - expected[ProjUNND]).abs().max() > 1e-3


def _plain_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
                               torch.nn.Tanh(), torch.nn.Linear(8, 3))


@pytest.mark.parametrize("opt_class", METHODS)
@pytest.mark.parametrize(
    "base, kwargs, reference",
    [
        ("adam", dict(betas=(0.8, 0.99), weight_decay=0.01), torch.optim.Adam),
        ("sgd", dict(momentum=0.9, weight_decay=0.01), torch.optim.SGD),
    ],
)
def test_plain_params_get_plain_update(opt_class, base, kwargs, reference):
    ours, theirs = _plain_model(3), _plain_model(3)
    # The 8x8 middle weight is square: tag it plain so every parameter takes the base update.
    mark_orthogonal(ours[2].weight, False)
    opt_ours = opt_class(ours.parameters(), lr=0.01, rank=2, base=base, **kwargs)
    opt_theirs = reference(theirs.parameters(), lr=0.01, **kwargs)
    data = torch.randn(16, 5, generator=torch.Generator().manual_seed(4))
    for _ in range(5):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            model(data).pow(2).sum().backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_orthogonal_detection_modes():
    model = _plain_model(5)
    square = model[2].weight
    # auto: untagged square weights are orthogonal after one step (the first step projects them).
    opt = ProjUNND(model.parameters(), lr=1e-3, rank=2)
    model(torch.randn(4, 5)).sum().backward()
    opt.step()
    assert _orthogonality_error(square.detach()) < 1e-5
    assert _orthogonality_error(model[0].weight.detach()[:5]) > 1e-2  # 8x5 stays free
    # tagged: only tagged parameters are orthogonal.
    other = _plain_model(5)
    before = other[2].weight.detach().clone()
    opt = ProjUNNT(other.parameters(), lr=1e-3, rank=2, orthogonal="tagged")
    other(torch.randn(4, 5)).sum().backward()
    opt.step()
    assert _orthogonality_error(other[2].weight.detach()) > 1e-2
    assert not torch.equal(other[2].weight.detach(), before)
    assert getattr(mark_orthogonal(torch.nn.Parameter(torch.eye(3))), ORTHOGONAL_ATTR) is True


@pytest.mark.parametrize("rank", [0, -1, 1.5, "2", True, 9])
def test_bad_rank_raises(rank):
    with pytest.raises(RLStructError, match="rank"):
        ProjUNND([torch.nn.Parameter(torch.eye(8))], lr=0.1, rank=rank)


def test_bad_options_raise():
    w = torch.nn.Parameter(torch.eye(4))
    with pytest.raises(RLStructError, match="orthogonal"):
        ProjUNNT([w], rank=1, orthogonal="yes")
    with pytest.raises(RLStructError, match="base"):
        ProjUNNT([w], rank=1, base="rmsprop")
    with pytest.raises(RLStructError, match="lowrank"):
        ProjUNNT([w], rank=1, lowrank="lsi")
    with pytest.raises(RLStructError, match=r"update='fast'; choose one of \('auto', 'lowrank', 'dense'\)"):
        ProjUNND([w], rank=1, update="fast")
    with pytest.raises(RLStructError, match="square"):
        ProjUNND([torch.nn.Parameter(torch.ones(3, 4))], rank=1, orthogonal=True)
    with pytest.raises(RLStructError, match="projunn_d"):
        get_optimizer("projunn")
    assert get_optimizer("ProjUNN_T") is ProjUNNT and set(OPTIMIZERS) >= {"projunn_d", "adam"}


def test_optimizer_kwargs_typos_raise():
    check_optimizer_kwargs("projunn_t", {"rank": 8, "lr": 1e-3})
    check_optimizer_kwargs("adam", {"betas": (0.9, 0.99)})
    with pytest.raises(RLStructError, match=r"has no options \['rnk'\].*accepted: lr, rank"):
        check_optimizer_kwargs("projunn_t", {"rnk": 8})
    with pytest.raises(RLStructError, match=r"'sgd' has no options \['betas'\]"):
        check_optimizer_kwargs("sgd", {"betas": (0.9, 0.99)})


def test_sb3_policy_trains_with_projunn():
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    model = PPO(
        "MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu",
        policy_kwargs=dict(optimizer_class=get_optimizer("projunn_d"), optimizer_kwargs=dict(rank=8)),
    )
    model.learn(128)
    hidden = model.policy.mlp_extractor.policy_net[2].weight.detach()  # 64 x 64
    assert hidden.shape == (64, 64) and _orthogonality_error(hidden) < 1e-5
    assert isinstance(model.policy.optimizer, ProjUNND)


def test_polar_survives_an_svd_that_fails_to_converge(monkeypatch):
    from rlstruct.optim.projunn import polar

    def failing_svd(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", failing_svd)
    m = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    q = polar(m)
    torch.testing.assert_close(q.t() @ q, torch.eye(16), atol=1e-5, rtol=0)


def test_polar_rejects_non_finite_input():
    from rlstruct.errors import RLStructError
    from rlstruct.optim.projunn import polar

    with pytest.raises(RLStructError, match="not finite"):
        polar(torch.full((4, 4), float("nan")))


def _orthogonal(n: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q.to(dtype)


def _step_factors(n: int, k: int, dtype: torch.dtype, g: torch.Generator, norm: float):
    """Random ``x, y`` ``(n, k)`` whose product has spectral norm ``norm``."""
    x = torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.randn(n, k, generator=g, dtype=torch.float64)
    x = x * (norm / torch.linalg.matrix_norm(x @ y.t(), ord=2))
    return x.to(dtype), y.to(dtype)


def _apply(w: torch.Tensor, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return w + (w @ q) @ d @ q.t()


# Odd and even widths; k with 2k < N (a proper subspace) and 2k >= N (the subspace is all of R^N).
SIZES = [(7, 1), (7, 2), (7, 5), (33, 1), (33, 4), (33, 16), (64, 3)]
# float64: agreement to 1e-10; float32: to 8x its rounding unit (1.2e-7; observed <= 1.7e-7).
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-6}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n, k", SIZES)
def test_lowrank_polar_equals_dense_polar(n, k, dtype):
    g = torch.Generator().manual_seed(100 * n + k)
    w = _orthogonal(n, dtype, g)
    # Spectral norm 0.5 keeps the smallest singular value of W + x y^T >= 0.5 (well conditioned).
    x, y = _step_factors(n, k, dtype, g, norm=0.5)
    got = _apply(w, *lowrank_polar_factors(w.t() @ x, y))
    want = polar((w + x @ y.t()).double())
    assert got.dtype == dtype and got.shape == (n, n)
    assert (got.double() - want).abs().max() < TOLERANCES[dtype]
    q, _ = lowrank_polar_factors(w.t() @ x, y)
    assert q.shape == (n, min(n, 2 * k))


@pytest.mark.parametrize("n, k", [(7, 2), (33, 4)])
def test_lowrank_polar_large_step_and_rank_deficient_factors(n, k):
    g = torch.Generator().manual_seed(7)
    w = _orthogonal(n, torch.float64, g)
    x, y = _step_factors(n, k, torch.float64, g, norm=3.0)
    assert torch.linalg.svdvals(w + x @ y.t()).min() > 1e-3  # far from the identity, still regular
    got = _apply(w, *lowrank_polar_factors(w.t() @ x, y))
    assert (got - polar(w + x @ y.t())).abs().max() < 1e-10
    # x in the span of y (the basis has only k independent columns) and a zero step.
    x = -0.3 * w @ y
    got = _apply(w, *lowrank_polar_factors(w.t() @ x, y))
    assert (got - polar(w + x @ y.t())).abs().max() < 1e-10
    zero = torch.zeros(n, k, dtype=torch.float64)
    assert (_apply(w, *lowrank_polar_factors(zero, y)) - w).abs().max() < 1e-14


def test_lowrank_polar_of_singular_step_is_a_polar_factor():
    # W + x y^T = W (I - u u^T) is singular: its polar factor is unique only off u, where it is W.
    n = 9
    g = torch.Generator().manual_seed(8)
    w = _orthogonal(n, torch.float64, g)
    u = torch.nn.functional.normalize(torch.randn(n, 1, generator=g, dtype=torch.float64), dim=0)
    m = w - w @ u @ u.t()
    got = _apply(w, *lowrank_polar_factors(-u, u))
    assert _orthogonality_error(got) < 1e-12
    # M = O H with H = (M^T M)^(1/2) = I - u u^T.
    assert (got @ (torch.eye(n, dtype=torch.float64) - u @ u.t()) - m).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n, k", SIZES)
def test_lowrank_skew_expm_equals_matrix_exp(n, k, dtype):
    g = torch.Generator().manual_seed(200 * n + k)
    x, y = _step_factors(n, k, dtype, g, norm=2.0)
    q, d = lowrank_skew_expm(x, y)
    got = torch.eye(n, dtype=dtype) + q @ d @ q.t()
    a = (x @ y.t() - y @ x.t()).double()
    want = torch.linalg.matrix_exp(a)
    assert a.abs().max() > 0.1  # a rotation that really moves things
    assert got.dtype == dtype and (got.double() - want).abs().max() < TOLERANCES[dtype]


@pytest.mark.parametrize("opt_class", METHODS)
@pytest.mark.parametrize("n, rank, lowrank", [(33, 2, "svd"), (33, 2, "randomized"), (7, 3, "svd"), (16, 16, "svd")])
def test_lowrank_and_dense_updates_give_the_same_weights(opt_class, n, rank, lowrank):
    w0, _, x, y = _regression(n, torch.float64, seed=9)
    weights = {}
    for update in ("lowrank", "dense"):
        # Same seed for svd_lowrank's random start in both runs.
        torch.manual_seed(0)
        w = torch.nn.Parameter(w0.clone())
        opt = opt_class([w], lr=0.1, rank=rank, lowrank=lowrank, update=update)
        for _ in range(5):
            opt.zero_grad()
            _loss(w, x, y).backward()
            opt.step()
        weights[update] = w.detach()
    assert (weights["lowrank"] - w0).abs().max() > 1e-2  # the steps moved W
    assert (weights["lowrank"] - weights["dense"]).abs().max() < 1e-10


@pytest.mark.parametrize("opt_class, helper", [(ProjUNND, "lowrank_polar_factors"), (ProjUNNT, "lowrank_skew_expm")])
@pytest.mark.parametrize("rank, update, expect_lowrank", [
    (3, "auto", True), (8, "auto", False), (8, "lowrank", True), (3, "dense", False),
])
def test_update_option_selects_the_path(monkeypatch, opt_class, helper, rank, update, expect_lowrank):
    calls = []
    real = getattr(projunn, helper)
    monkeypatch.setattr(projunn, helper, lambda *args: calls.append(1) or real(*args))
    w0, _, x, y = _regression(16, torch.float64, seed=10)
    w = torch.nn.Parameter(w0.clone())
    opt = opt_class([w], lr=0.1, rank=rank, update=update)
    _loss(w, x, y).backward()
    opt.step()
    assert bool(calls) is expect_lowrank


@pytest.mark.parametrize("shape, rank", [((40, 40), 3), ((33, 20), 5), ((64, 64), 1)])
def test_randomized_factors_match_truncated_svd(shape, rank):
    g = torch.Generator().manual_seed(11)
    m, n = shape
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    # A clear gap after the top `rank` singular values: the randomized top-k is then accurate.
    s = torch.cat([torch.linspace(10, 5, rank), 1e-3 * torch.rand(min(m, n) - rank, generator=g)]).double()
    grad = (u[:, : s.numel()] * s) @ v[:, : s.numel()].t()
    torch.manual_seed(0)
    a, b = projunn.low_rank_factors(grad, rank, "randomized")
    exact_a, exact_b = projunn.low_rank_factors(grad, rank, "svd")
    assert a.shape == (m, rank) and b.shape == (n, rank)
    assert (a @ b.t() - exact_a @ exact_b.t()).abs().max() < 1e-5
    assert (a @ b.t() - grad).abs().max() > 1e-5  # the small tail really was dropped
