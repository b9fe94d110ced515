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
