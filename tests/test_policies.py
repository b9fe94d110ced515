"""StructuredActorCriticPolicy inside SB3: aliases, counts, save/load round trips."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from torch import nn

import rlstruct.policies  # noqa: F401  (registers the alias)
from rlstruct.errors import RLStructError
from rlstruct.layers import StructuredLinear, available_structures
from rlstruct.policies import StructuredActorCriticPolicy


def hopper():
    return gym.make("Hopper-v5")


@pytest.mark.parametrize(
    "structure,total",
    # dense equals SB3's MlpPolicy; kama: 2 x (32 log2(64) + 64 + 64) + heads = 1,543
    [("dense", 10119), ("kama", 1543), ("toeplitz", 921)],
)
def test_hopper_parameter_counts(structure, total):
    model = PPO("StructuredMlpPolicy", hopper(), policy_kwargs=dict(structure=structure), device="cpu")
    counts = model.policy.parameter_counts()
    assert counts["total"] == total == sum(p.numel() for p in model.policy.parameters() if p.requires_grad)
    assert counts["dense_total"] == 10119
    assert counts["actor"] + counts["critic"] == counts["total"]


def test_dense_structure_matches_sb3_mlp_policy():
    env = hopper()
    ours = PPO("StructuredMlpPolicy", env, seed=0, device="cpu").policy
    sb3 = PPO("MlpPolicy", env, seed=0, device="cpu").policy
    ours_state, sb3_state = ours.state_dict(), sb3.state_dict()
    assert set(ours_state) == set(sb3_state)
    # same seed, same draws: the dense baseline is MlpPolicy to the bit
    for key, value in sb3_state.items():
        assert torch.equal(ours_state[key], value), key


def test_actor_and_critic_configured_separately():
    model = PPO(
        "StructuredMlpPolicy",
        hopper(),
        policy_kwargs=dict(
            structure="kama", critic_structure="toeplitz", net_arch=dict(pi=[32, 16], vf=[8]),
            activation_fn="relu", critic_activation_fn="tanh",
        ),
        device="cpu",
    )
    ext = model.policy.mlp_extractor
    assert [m.structure for m in ext.policy_net if isinstance(m, StructuredLinear)] == ["kama", "kama"]
    assert [m.structure for m in ext.value_net if isinstance(m, StructuredLinear)] == ["toeplitz"]
    assert isinstance(ext.policy_net[1], nn.ReLU) and isinstance(ext.value_net[1], nn.Tanh)
    assert (ext.latent_dim_pi, ext.latent_dim_vf) == (16, 8)


@pytest.mark.parametrize("structure", available_structures())
def test_every_structure_trains_and_round_trips(tmp_path, structure):
    env = hopper()
    model = PPO(
        "StructuredMlpPolicy", env, policy_kwargs=dict(structure=structure, layer_kwargs={}),
        n_steps=64, batch_size=32, n_epochs=1, seed=1, device="cpu",
    )
    before = [p.detach().clone() for p in model.policy.mlp_extractor.parameters()]
    model.learn(64)
    after = list(model.policy.mlp_extractor.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "PPO did not update the layers"
    assert all(torch.isfinite(p).all() for p in after)
    model.save(tmp_path / "m.zip")
    loaded = PPO.load(tmp_path / "m.zip", device="cpu")  # no extra arguments
    assert isinstance(loaded.policy, StructuredActorCriticPolicy)
    obs = np.random.default_rng(0).normal(size=(16, 11)).astype(np.float32)
    a1, _ = model.predict(obs, deterministic=True)
    a2, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a1, a2)


def test_random_layout_survives_save_load(tmp_path):
    model = PPO(
        "StructuredMlpPolicy", hopper(),
        policy_kwargs=dict(structure="kama", layer_kwargs=dict(layout="random")), device="cpu",
    )
    model.save(tmp_path / "m.zip")
    torch.manual_seed(123)  # a different global RNG must not change the loaded layout
    loaded = PPO.load(tmp_path / "m.zip", device="cpu")
    torch.testing.assert_close(
        loaded.policy.mlp_extractor.policy_net[0].to_dense(),
        model.policy.mlp_extractor.policy_net[0].to_dense(),
    )


def test_bad_activation_and_net_arch():
    with pytest.raises(RLStructError, match="unknown activation"):
        PPO("StructuredMlpPolicy", hopper(), policy_kwargs=dict(activation_fn="swishy"))
    with pytest.raises(RLStructError, match="net_arch has unknown keys"):
        PPO("StructuredMlpPolicy", hopper(), policy_kwargs=dict(net_arch=dict(pi=[8], qf=[8])))


def test_default_adam_is_fused_and_explicit_choices_win():
    default = PPO("StructuredMlpPolicy", hopper(), policy_kwargs=dict(structure="kama"),
                  device="cpu").policy
    group = default.optimizer.param_groups[0]
    assert isinstance(default.optimizer, torch.optim.Adam)
    assert group["fused"] is True and group["eps"] == 1e-5
    assert default.optimizer_kwargs == dict(eps=1e-5, fused=True)  # stored in the zip
    mine = PPO("StructuredMlpPolicy", hopper(), device="cpu",
               policy_kwargs=dict(structure="kama", optimizer_kwargs=dict(eps=1e-5))).policy
    assert not mine.optimizer.param_groups[0]["fused"]
    empty = PPO("StructuredMlpPolicy", hopper(), device="cpu",
                policy_kwargs=dict(optimizer_kwargs={})).policy
    assert not empty.optimizer.param_groups[0]["fused"]
    sgd = PPO("StructuredMlpPolicy", hopper(), device="cpu",
              policy_kwargs=dict(optimizer_class=torch.optim.SGD)).policy
    assert isinstance(sgd.optimizer, torch.optim.SGD)
    # plain Adam without kwargs: SB3's default eps, fused
    adam = StructuredActorCriticPolicy.default_optimizer_kwargs(
        dict(optimizer_class=torch.optim.Adam))
    assert adam["optimizer_kwargs"] == dict(eps=1e-5, fused=True)


@pytest.mark.parametrize("structure", ["kama", "hd3", "dense"])
def test_fused_adam_matches_for_loop_adam(structure):
    """The default (fused) Adam takes the for-loop Adam's steps to float32 rounding."""
    policies = []
    for kwargs in (None, dict(eps=1e-5, foreach=False)):
        torch.manual_seed(0)
        extra = {} if kwargs is None else dict(optimizer_kwargs=kwargs)
        policies.append(PPO("StructuredMlpPolicy", hopper(), seed=0, device="cpu",
                            policy_kwargs=dict(structure=structure, **extra)).policy)
    fused, loop = policies
    assert fused.optimizer.param_groups[0]["fused"] and not loop.optimizer.param_groups[0]["fused"]
    for a, b in zip(fused.parameters(), loop.parameters()):
        assert torch.equal(a, b)
    generator = torch.Generator().manual_seed(1)
    start = [p.detach().clone() for p in loop.parameters()]
    for _ in range(50):
        grads = [torch.randn(p.shape, generator=generator) for p in loop.parameters()]
        for policy in policies:
            for p, g in zip(policy.parameters(), grads):
                p.grad = g.clone()
            policy.optimizer.step()
    for a, b, s in zip(fused.parameters(), loop.parameters(), start):
        assert not torch.equal(b, s)  # the parameters moved
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_adam_survives_save_load(tmp_path):
    model = PPO("StructuredMlpPolicy", hopper(), policy_kwargs=dict(structure="kama"),
                n_steps=64, batch_size=32, n_epochs=1, device="cpu", seed=0)
    model.learn(64)
    model.save(tmp_path / "m.zip")
    loaded = PPO.load(tmp_path / "m.zip", env=hopper(), device="cpu")
    assert loaded.policy.optimizer.param_groups[0]["fused"] is True
    loaded.learn(64)


def test_fused_step_invalidates_the_inference_cache():
    """Fused Adam does not bump version counters by itself; the policy's hook does, so a
    rollout after a step never uses a W cached before it."""
    policy = PPO("StructuredMlpPolicy", hopper(), policy_kwargs=dict(structure="kama"),
                 device="cpu", seed=0).policy
    obs = torch.randn(4, 11)
    layer = policy.mlp_extractor.policy_net[0]
    with torch.no_grad():
        policy.get_distribution(obs)
    cached = layer._cached_weight
    for p in policy.parameters():
        p.grad = torch.ones_like(p)
    policy.optimizer.step()
    with torch.no_grad():
        policy.get_distribution(obs)
        assert layer._cached_weight is not cached
        torch.testing.assert_close(layer._cached_weight, layer.to_dense())


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_deterministic_predict_equals_sb3s_distribution_path(env_id):
    """The fast deterministic ``_predict`` returns exactly what SB3's distribution would."""
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3 import PPO

    from rlstruct.policies import StructuredActorCriticPolicy

    model = PPO("StructuredMlpPolicy", gym.make(env_id), policy_kwargs=dict(structure="kama"), seed=0)
    policy: StructuredActorCriticPolicy = model.policy
    obs = torch.as_tensor(np.stack([model.observation_space.sample() for _ in range(16)]), dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(policy._predict(obs, deterministic=True), policy.get_distribution(obs).get_actions(True))
        torch.manual_seed(0)
        sampled = policy._predict(obs, deterministic=False)
        torch.manual_seed(0)
        assert torch.equal(sampled, policy.get_distribution(obs).get_actions(False))


@pytest.mark.parametrize("structure", ["kama", "toeplitz", "hd3", "dense"])
@pytest.mark.parametrize("share", [True, False])
def test_gaussian_head_is_bitwise_sb3s_distribution_path(structure, share):
    """``forward`` and ``evaluate_actions`` without the distribution object give SB3's exact
    tensors, random draws and gradients (rollouts with and without gradients, PPO's loss)."""
    from stable_baselines3.common.policies import ActorCriticPolicy

    kwargs = dict(structure=structure, share_features_extractor=share)
    policy = PPO("StructuredMlpPolicy", gym.make("Pendulum-v1"), policy_kwargs=kwargs, seed=0).policy
    policy.log_std.data.fill_(-0.3)  # a std away from 1, so the formulas are exercised
    obs, actions = torch.randn(33, 3), torch.randn(33, 1)
    for deterministic in (False, True):
        with torch.no_grad():
            torch.manual_seed(5)
            ours = policy(obs, deterministic)
            torch.manual_seed(5)
            sb3 = ActorCriticPolicy.forward(policy, obs, deterministic)
        assert all(torch.equal(a, b) for a, b in zip(ours, sb3))
        assert ours[2].shape == (33,)
    params = [p for p in policy.parameters() if p.requires_grad]
    grads = []
    for evaluate in (policy.evaluate_actions, lambda o, a: ActorCriticPolicy.evaluate_actions(policy, o, a)):
        values, log_prob, entropy = evaluate(obs, actions)
        grads.append(([values, log_prob, entropy],
                      torch.autograd.grad((values.sum() + log_prob.sum() - entropy.sum()), params)))
    (ours, ours_grad), (sb3, sb3_grad) = grads
    assert all(torch.equal(a, b) for a, b in zip(ours, sb3))
    assert all(torch.equal(a, b) for a, b in zip(ours_grad, sb3_grad))


def test_gaussian_head_names_a_diverged_policy():
    policy = PPO("StructuredMlpPolicy", gym.make("Pendulum-v1"), policy_kwargs=dict(structure="kama"), seed=0).policy
    policy.action_net.bias.data.fill_(float("nan"))
    with pytest.raises(RLStructError, match="NaN: training diverged"):
        policy(torch.zeros(2, 3))


def test_rollout_path_checks_the_input_width():
    """The no-grad extractor path multiplies by cached W directly; a wrong width still gets our error."""
    policy = PPO("StructuredMlpPolicy", gym.make("Pendulum-v1"), policy_kwargs=dict(structure="kama"), seed=0).policy
    with torch.no_grad(), pytest.raises(RLStructError, match="last dimension 3"):
        policy.mlp_extractor.forward_actor(torch.zeros(2, 5))
    with torch.no_grad():
        latent = policy.mlp_extractor.forward_actor(torch.ones(4, 3))
    torch.testing.assert_close(latent, policy.mlp_extractor.policy_net(torch.ones(4, 3)))
