"""One autograd node building several layers' W (rlstruct.layers.batched) against each layer's own
forward, and the policies' extractor that uses it against running its layers one by one."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba")

from rlstruct.layers import available_structures, make_layer  # noqa: E402
from rlstruct.layers.batched import built_weights, linear_with  # noqa: E402

FUSED = ["kama", "hd3", "toeplitz"]
# odd, rectangular and square; (64, 64) is where hd3's per-batch rule decides at rows == in
CHAINS = [[3, 5, 2], [11, 64, 64], [7, 1, 9], [64, 33, 17]]


def _chain(structures, sizes, dtype, bias=True):
    torch.manual_seed(0)
    return [make_layer(s, i, o, bias=bias).to(dtype)
            for s, i, o in zip(structures, sizes[:-1], sizes[1:])]


def _params(layers):
    return [p for layer in layers for p in layer.parameters() if p.requires_grad]


def _run_batched(layers, x):
    weights = built_weights(layers, x)
    for layer, weight in zip(layers, weights):
        x = torch.tanh(layer(x) if weight is None else linear_with(layer, x, weight))
    return x


def _run_each(layers, x):
    for layer in layers:
        x = torch.tanh(layer(x))
    return x


@pytest.mark.parametrize("structure", FUSED)
@pytest.mark.parametrize("sizes", CHAINS)
@pytest.mark.parametrize("bias", [True, False])
def test_batched_build_matches_each_layers_forward(structure, sizes, bias):
    layers = _chain([structure] * (len(sizes) - 1), sizes, torch.float64, bias)
    x = torch.randn(70, sizes[0], dtype=torch.float64, requires_grad=True)  # above hd3's product rule
    assert any(w is not None for w in built_weights(layers, x)), "no layer took the batched build"
    y = _run_batched(layers, x)
    grads = torch.autograd.grad(y.sin().sum(), [x, *_params(layers)])
    y_ref = _run_each(layers, x)
    grads_ref = torch.autograd.grad(y_ref.sin().sum(), [x, *_params(layers)])
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_batched_build_mixes_families_and_leaves_the_others_alone():
    # dense (no fused build) and fastfood (no fused build) come back None and run as layers
    structures = ["kama", "dense", "toeplitz", "fastfood", "hd3"]
    layers = _chain(structures, [6, 8, 8, 8, 8, 5], torch.float64)
    x = torch.randn(12, 6, dtype=torch.float64, requires_grad=True)
    weights = built_weights(layers, x)
    assert [w is not None for w in weights] == [True, False, True, False, True]
    y, y_ref = _run_batched(layers, x), _run_each(layers, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    g = torch.autograd.grad(y.sum(), _params(layers))
    g_ref = torch.autograd.grad(y_ref.sum(), _params(layers))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_batched_build_follows_the_layers_path_rule():
    hd3 = make_layer("hd3", 64, 64)  # product below 64 rows, build from 64 rows
    like = torch.randn(2, 64)
    assert built_weights([hd3], like, rows=32) == [None]
    assert built_weights([hd3], like, rows=64)[0] is not None
    with torch.no_grad():  # rollouts use the cached W, never the node
        assert built_weights([hd3], like, rows=64) == [None]
    for p in hd3.parameters():
        p.requires_grad_(False)
    assert built_weights([hd3], like, rows=64) == [None]


@pytest.mark.parametrize("structure", FUSED)
def test_batched_build_gradcheck_and_double_backward(structure):
    layers = _chain([structure] * 2, [4, 5, 3], torch.float64)
    names = [[n for n, p in layer.named_parameters() if p.requires_grad] for layer in layers]
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)

    def fn(x_, *ps):
        saved = [{n: layer._parameters[n] for n in ns} for layer, ns in zip(layers, names)]
        it = iter(ps)
        try:
            for layer, ns in zip(layers, names):
                for n in ns:
                    layer._parameters[n] = next(it)
            return _run_batched(layers, x_)
        finally:
            for layer, s in zip(layers, saved):
                layer._parameters.update(s)

    inputs = (x, *[p.detach().clone().requires_grad_() for p in _params(layers)])
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("structure", ["kama", "hd3", "toeplitz", "dense"])
@pytest.mark.parametrize("critic", [None, "toeplitz"])
def test_policy_extractor_batched_matches_layer_by_layer(structure, critic, monkeypatch):
    from stable_baselines3 import PPO

    import rlstruct.policies as policies

    torch.manual_seed(0)
    model = PPO("StructuredMlpPolicy", "Pendulum-v1", seed=0,
                policy_kwargs=dict(structure=structure, critic_structure=critic, net_arch=[64, 64]))
    policy = model.policy
    obs, actions = torch.randn(64, 3), torch.randn(64, 1)
    values, log_prob, entropy = policy.evaluate_actions(obs, actions)
    grads = torch.autograd.grad((values.sum() + log_prob.sum()), list(policy.parameters()), allow_unused=True)
    monkeypatch.setattr(policies.StructuredMlpExtractor, "_run",
                        staticmethod(lambda nets, features: [net(features) for net in nets]))
    values_ref, log_prob_ref, _ = policy.evaluate_actions(obs, actions)
    grads_ref = torch.autograd.grad((values_ref.sum() + log_prob_ref.sum()), list(policy.parameters()),
                                    allow_unused=True)
    torch.testing.assert_close(values, values_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log_prob, log_prob_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_only_the_fused_families_join_the_node():
    # families without a fused build never reach the node: built_weights returns None for them
    like = torch.randn(16, 8)  # more rows than inputs: hd3 builds
    for structure in available_structures():
        layer = make_layer(structure, 8, 8)
        (weight,) = built_weights([layer], like)
        assert (weight is not None) == (structure in FUSED), structure
