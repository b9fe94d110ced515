"""TRPO (sb3-contrib) with structured policies: autograd reaches every structured parameter,
the conjugate-gradient step is finite, and a short CartPole run beats its initial policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlstruct.layers import StructuredLinear
from rlstruct.envs import evaluate_episodes as evaluate_model
from rlstruct.envs import make_vec_env
from rlstruct.policies import algo_class

TRPO = algo_class("trpo")  # also registers "StructuredMlpPolicy" with TRPO

CARTPOLE = {"name": "cartpole", "id": "CartPole-v1"}
STRUCTURES = [("kama", {"layout": "butterfly"}), ("toeplitz", {})]


def make_trpo(structure: str, layer_kwargs: dict, seed: int = 0, **kwargs):
    torch.set_num_threads(1)
    env = make_vec_env(CARTPOLE, n_envs=1, seed=seed)
    settings = dict(n_steps=512, batch_size=128, cg_max_steps=25, n_critic_updates=10, gamma=0.98)
    settings.update(kwargs)
    return TRPO(
        "StructuredMlpPolicy",
        env,
        policy_kwargs=dict(structure=structure, layer_kwargs=layer_kwargs, net_arch=[16, 16]),
        seed=seed,
        device="cpu",
        **settings,
    )


def actor_parameters(policy) -> dict:
    # TRPO's actor step covers every parameter whose name lacks "value" (sb3-contrib's rule).
    return {n: p for n, p in policy.named_parameters() if "value" not in n and p.requires_grad}


@pytest.mark.parametrize("structure,layer_kwargs", STRUCTURES)
def test_every_structured_parameter_gets_a_finite_gradient(structure, layer_kwargs):
    model = make_trpo(structure, layer_kwargs)
    policy = model.policy
    structured = [
        (f"mlp_extractor.policy_net.{name}", p)
        for name, p in policy.mlp_extractor.policy_net.named_parameters()
    ]
    assert any(isinstance(m, StructuredLinear) for m in policy.mlp_extractor.policy_net)
    actor = actor_parameters(policy)
    for name, _ in structured:
        assert name in actor, f"{name} is not in TRPO's actor step"

    obs = torch.as_tensor(np.random.default_rng(0).normal(size=(64, 4)), dtype=torch.float32)
    actions = torch.as_tensor(np.random.default_rng(1).integers(0, 2, size=64))
    advantages = torch.as_tensor(np.random.default_rng(2).normal(size=64), dtype=torch.float32)
    _, log_prob, _ = policy.evaluate_actions(obs, actions)
    objective = (advantages * torch.exp(log_prob - log_prob.detach())).mean()
    grads = torch.autograd.grad(objective, [p for _, p in structured])
    for (name, _), grad in zip(structured, grads):
        assert torch.isfinite(grad).all(), name
        assert grad.abs().max() > 0, f"{name} gets a zero gradient"


@pytest.mark.parametrize("structure,layer_kwargs", STRUCTURES)
def test_one_trpo_update_moves_the_actor_to_finite_values(structure, layer_kwargs):
    model = make_trpo(structure, layer_kwargs)
    before = {n: p.detach().clone() for n, p in actor_parameters(model.policy).items()}
    model.learn(total_timesteps=512)  # one rollout, one train(): CG + line search
    after = actor_parameters(model.policy)
    for name, value in after.items():
        assert torch.isfinite(value).all(), name
    moved = [n for n in before if not torch.equal(before[n], after[n].detach())]
    structured_moved = [n for n in moved if n.startswith("mlp_extractor.policy_net")]
    assert structured_moved, "the trust-region step left every structured parameter unchanged"


@pytest.mark.parametrize("structure,layer_kwargs", STRUCTURES)
def test_trpo_improves_over_the_initial_policy_on_cartpole(structure, layer_kwargs):
    model = make_trpo(structure, layer_kwargs, seed=1)
    eval_env = make_vec_env(CARTPOLE, n_envs=1, seed=123)
    initial = float(np.mean(evaluate_model(model, eval_env, episodes=10)))
    model.learn(total_timesteps=6 * 512)
    final = float(np.mean(evaluate_model(model, eval_env, episodes=10)))
    assert final > max(1.5 * initial, initial + 40), (initial, final)
