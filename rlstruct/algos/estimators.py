"""The ES mathematics: exploration directions, fitness shaping, the gradient estimate, the step.

Directions (rows of an ``(n, dim)`` array, all with ``E[eps eps^T] = I``):

* ``gaussian``: iid ``N(0, I)``.
* ``orthogonal``: blocks of ``min(n, dim)`` Gaussian vectors orthogonalized (QR of a Gaussian
  matrix, signs fixed so the block is Haar-distributed), each rescaled to an independent
  chi(dim) norm so every row is still marginally ``N(0, I)`` (structured ES, Choromanski et
  al. 2018). Rows within a block are exactly orthogonal.
* ``hadamard``: rows of ``sqrt(D) H D1 H D2 H D3`` (``H`` the normalized ``D x D`` Hadamard
  matrix, ``Di`` random +-1 diagonals, ``D`` the next power of two >= dim), restricted to the
  first ``dim`` coordinates. Computed with fast Walsh-Hadamard transforms, ``O(n D log D)``.
  Exactly orthogonal, norm ``sqrt(dim)``, when ``dim`` is a power of two.

The antithetic estimate of the gradient of the Gaussian smoothing of ``F`` at ``theta`` is
``g = 1/(2 n sigma) sum_k (F(theta + sigma eps_k) - F(theta - sigma eps_k)) eps_k``; the even
part of ``F`` (its curvature) cancels exactly in each pair.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

from rlstruct.errors import RLStructError

SAMPLINGS = ("gaussian", "orthogonal", "hadamard")
SHAPINGS = ("centered_ranks", "ars", "none")
OPTIMIZERS = ("sgd", "adam")


# NumPy twins of rlstruct.layers.hadamard.hadamard_transform and rlstruct.layers.haar.
# ES directions come from a NumPy Generator seeded per iteration (es.py): torch's samplers would
# draw other numbers and change every recorded ES run, and this module is NumPy-only by design
# (rlstruct.algos docstring). These are the package's only NumPy Hadamard transform and Haar
# sampler.
def fwht(x: np.ndarray) -> np.ndarray:
    """Normalized fast Walsh-Hadamard transform along the last axis (a power of two)."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    y = x.astype(np.float64, copy=True)
    while h < n:
        y = y.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = np.stack((a + b, a - b), axis=-2).reshape(*lead, n)
        h *= 2
    return y / np.sqrt(n)


def _orthogonal_block(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``(rows, dim)`` orthonormal rows (Haar), each rescaled to an independent chi(dim) norm."""
    q, r = np.linalg.qr(rng.standard_normal((dim, rows)))
    q = q * np.sign(np.diag(r))  # Haar measure: QR alone is biased by its sign convention
    norms = np.sqrt(rng.chisquare(dim, size=rows))
    return q.T * norms[:, None]


def _hadamard_block(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    size = 1 << max(dim - 1, 0).bit_length()
    signs = rng.choice((-1.0, 1.0), size=(3, size))
    picked = rng.choice(size, size=rows, replace=False)
    # Row i of H D1 H D2 H D3 is e_i^T H D1 H D2 H D3: transform the unit vectors (H = H^T).
    y = np.zeros((rows, size))
    y[np.arange(rows), picked] = 1.0
    for diagonal in signs:
        y = fwht(y) * diagonal
    return np.sqrt(size) * y[:, :dim]


def sample_directions(kind: str, n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` exploration directions of ``dim`` coordinates: shape ``(n, dim)``."""
    if kind == "gaussian":
        return rng.standard_normal((n, dim))
    if kind not in SAMPLINGS:
        raise RLStructError(f"unknown ES sampling {kind!r}; choose one of: {', '.join(SAMPLINGS)}")
    block = dim if kind == "orthogonal" else 1 << max(dim - 1, 0).bit_length()
    make = _orthogonal_block if kind == "orthogonal" else _hadamard_block
    blocks = [make(min(block, n - start), dim, rng) for start in range(0, n, block)]
    return np.concatenate(blocks, axis=0)


def sample_block_directions(
    kind: str, n: int, sizes: Sequence[int], rng: np.random.Generator
) -> np.ndarray:
    """``n`` directions drawn independently on consecutive coordinate blocks of ``sizes``.

    Shape ``(n, sum(sizes))``. Each block is sampled by :func:`sample_directions` in turn from the
    same generator, so with ``orthogonal`` the rows restricted to one block (say one KAMA layer's
    rotation angles) are orthogonal there, not only over the whole vector; each row is still
    marginally ``N(0, I)`` (independent blocks of ``N(0, I)`` rows).
    """
    return np.concatenate([sample_directions(kind, n, int(size), rng) for size in sizes], axis=1)


def centered_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks of ``values`` mapped to ``[-0.5, 0.5]`` (ties broken by position)."""
    ranks = np.empty(values.size)
    ranks[np.argsort(values, kind="stable")] = np.arange(values.size)
    return ranks / max(values.size - 1, 1) - 0.5


def es_gradient(
    returns_pos: np.ndarray,
    returns_neg: np.ndarray,
    directions: np.ndarray,
    sigma: float,
    shaping: str = "centered_ranks",
    top_b: Optional[int] = None,
) -> np.ndarray:
    """Ascent direction from antithetic returns.

    Shapes: ``returns_pos``/``returns_neg`` ``(n,)`` (returns at ``theta +- sigma eps_k``),
    ``directions`` ``(n, dim)``; result ``(dim,)``.

    ``top_b`` keeps the ``b`` directions whose better member scored highest (ARS). Shaping:
    ``none`` is the plain antithetic estimate ``sum_k (F+ - F-) eps_k / (2 b sigma)``;
    ``centered_ranks`` replaces returns by their centered ranks (OpenAI ES);
    ``ars`` is ARS's ``sum_k (F+ - F-) eps_k / (b std(F))`` (no ``1/sigma``: the step size absorbs it).
    """
    n = len(returns_pos)
    b = n if top_b is None else int(top_b)
    if not 1 <= b <= n:
        raise RLStructError(f"top_b must be in [1, {n}] (the number of directions), got {top_b}")
    keep = np.argsort(-np.maximum(returns_pos, returns_neg), kind="stable")[:b]
    keep.sort()  # sum in index order: the same floats whatever the ranking
    pos, neg, dirs = returns_pos[keep], returns_neg[keep], directions[keep]
    if shaping == "centered_ranks":
        ranked = centered_ranks(np.concatenate([pos, neg]))
        pos, neg = ranked[:b], ranked[b:]
    elif shaping == "ars":
        scale = float(np.std(np.concatenate([pos, neg])))
        return (pos - neg) @ dirs / (b * scale) if scale > 0 else np.zeros(directions.shape[1])
    elif shaping != "none":
        raise RLStructError(f"unknown ES shaping {shaping!r}; choose one of: {', '.join(SHAPINGS)}")
    return (pos - neg) @ dirs / (2 * b * sigma)


class Optimizer:
    """Gradient *ascent* steps on a flat parameter vector: ``delta = step(grad)``.

    ``sgd``: ``delta = lr * grad``. ``adam``: Adam's bias-corrected moment ratio times ``lr``.
    Weight decay is added by the caller (``grad - weight_decay * theta``).
    """

    def __init__(self, kind: str, dim: int, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        if kind not in OPTIMIZERS:
            raise RLStructError(f"unknown ES optimizer {kind!r}; choose one of: {', '.join(OPTIMIZERS)}")
        self.kind, self.lr, self.betas, self.eps = kind, float(lr), betas, eps
        self.t = 0
        self.m = np.zeros(dim)
        self.v = np.zeros(dim)

    def step(self, grad: np.ndarray) -> np.ndarray:
        if self.kind == "sgd":
            return self.lr * grad
        b1, b2 = self.betas
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * grad
        self.v = b2 * self.v + (1 - b2) * grad**2
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        return self.lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def state_dict(self) -> Dict[str, Any]:
        return {"t": self.t, "m": self.m.tolist(), "v": self.v.tolist()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.t = int(state["t"])
        self.m = np.asarray(state["m"], dtype=np.float64)
        self.v = np.asarray(state["v"], dtype=np.float64)
