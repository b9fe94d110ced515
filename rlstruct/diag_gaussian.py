"""The diagonal Gaussian action head of SB3's continuous policies, without a distribution object.

SB3's ``DiagGaussianDistribution`` wraps a ``torch.distributions.Normal``; building one (shape
broadcasting, argument validation) and scoring with it costs more per rollout step than a whole
64-64 actor. These functions compute the same tensors with the same operations in the same
order, so values, gradients and random draws are bitwise those of SB3's path (tested in
``tests/test_policies.py``):

* ``std = ones_like(mean) * exp(log_std)``;
* a sample ``mean + eps * std`` with ``eps`` from ``torch.empty(...).normal_()`` (``rsample``);
* ``log_prob`` summed over the action dimension, ``entropy`` likewise.

What is not kept is ``Normal``'s argument validation; :func:`action_std` keeps its one check that
can fire in practice, a NaN mean (training diverged), as a clear error.
"""

from __future__ import annotations

import math

import torch

from rlstruct.errors import RLStructError

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))
_ENTROPY_CONSTANT = 0.5 + 0.5 * math.log(2 * math.pi)


def action_std(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Per-sample standard deviation, shape of ``mean`` ``(batch, act_dim)``."""
    if torch.isnan(mean).any():
        raise RLStructError(
            "the policy's action means contain NaN: training diverged (lower the learning rate, "
            "check the observations and rewards for NaN or inf, or clip gradients)"
        )
    return torch.ones_like(mean) * log_std.exp()


def sample(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A reparametrized draw ``mean + eps * std``; shape ``(batch, act_dim)``."""
    eps = torch.empty(mean.shape, dtype=mean.dtype, device=mean.device).normal_()
    return mean + eps * std


def _sum_actions(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.sum(dim=1) if tensor.dim() > 1 else tensor.sum()


def log_prob(actions: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Log-density of ``actions`` summed over the action dimension: ``(batch, act_dim) -> (batch,)``."""
    var = std**2
    per_dim = -((actions - mean) ** 2) / (2 * var) - std.log() - _LOG_SQRT_2PI
    return _sum_actions(per_dim)


def entropy(std: torch.Tensor) -> torch.Tensor:
    """Entropy summed over the action dimension: ``(batch, act_dim) -> (batch,)``."""
    return _sum_actions(_ENTROPY_CONSTANT + torch.log(std))
