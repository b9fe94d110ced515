"""The one Givens-stage reference (``rlstruct.kernels.reference``) against explicit rotations.

Shared stages ``(L, n)`` serve the KAMA layers and kernels; per-index stages ``(*lead, L, n)``
serve the Kac-walk random features. Both are checked against a product of dense 2x2 rotations.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlstruct.kernels.reference import dense_by_product, givens_reference


def _stages(lead, n_stages, n, seed):
    g = torch.Generator().manual_seed(seed)
    pairs = torch.argsort(torch.rand(*lead, n_stages, n, generator=g), dim=-1)
    angles = 2 * math.pi * torch.rand(*lead, n_stages, n // 2, generator=g, dtype=torch.float64)
    return pairs, angles


def explicit_matrix(pairs: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """``G_L ... G_1`` from dense rotations: ``x_p <- c x_p - s x_q``, ``x_q <- s x_p + c x_q``."""
    n = pairs.shape[-1]
    total = torch.eye(n, dtype=torch.float64)
    for stage in range(pairs.shape[0]):
        g = torch.eye(n, dtype=torch.float64)
        for k in range(n // 2):
            p, q = pairs[stage, 2 * k].item(), pairs[stage, 2 * k + 1].item()
            c, s = math.cos(angles[stage, k].item()), math.sin(angles[stage, k].item())
            g[p, p], g[p, q], g[q, p], g[q, q] = c, -s, s, c
        total = g @ total
    return total


@pytest.mark.parametrize("n, n_stages", [(2, 1), (6, 3), (16, 5)])
def test_shared_stages_match_explicit_rotations(n, n_stages):
    pairs, angles = _stages((), n_stages, n, seed=n)
    x = torch.randn(4, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = x @ explicit_matrix(pairs, angles).t()
    torch.testing.assert_close(givens_reference(x, pairs, angles), want)
    dense = dense_by_product(givens_reference, pairs, angles, torch.ones(n, dtype=torch.float64), n, n)
    torch.testing.assert_close(dense, explicit_matrix(pairs, angles))


@pytest.mark.parametrize("lead", [(3,), (2, 2)], ids=str)
def test_per_index_stages_equal_separate_shared_calls(lead):
    n, n_stages = 8, 4
    pairs, angles = _stages(lead, n_stages, n, seed=1)
    x = torch.randn(*lead, 5, n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = givens_reference(x, pairs, angles)
    flat = zip(x.reshape(-1, 5, n), pairs.reshape(-1, n_stages, n), angles.reshape(-1, n_stages, n // 2))
    want = torch.stack([givens_reference(*args) for args in flat]).reshape(x.shape)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_per_index_stages_gradcheck():
    pairs, angles = _stages((2,), 3, 6, seed=3)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x_, a_: givens_reference(x_, pairs, a_), (x, angles.requires_grad_())
    )
