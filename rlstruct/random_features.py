"""Random-feature estimators of PNG kernels with unstructured and structured projections.

A PNG kernel (pointwise nonlinear Gaussian) is ``K(x, y) = E_w[f(w.x) f(w.y)]`` for
``w ~ N(0, I_d)``. With ``m`` random rows ``w_1 .. w_m`` the estimator is::

    K_hat(x, y) = (1/m) sum_i f(w_i.x) f(w_i.y)

KAMA-NNs (seed 000) and structured spinners (seed 001) replace the iid Gaussian rows by rows of
structured orthogonal matrices; this module draws all four kinds (:data:`PROJECTIONS`) so the
claim "orthogonal/structured rows give more accurate estimators" can be measured:

* ``iid``: unstructured Gaussian rows.
* ``orthogonal``: each block of ``d`` rows is Gram-Schmidt of a Gaussian block, each row rescaled
  by the norm of the Gaussian row it came from (chi(d)-distributed and independent of the
  directions, so every row is still exactly ``N(0, I_d)``: the estimator stays unbiased).
* ``kama``: ``sqrt(n) * G_L ... G_1`` with ``G_l`` a stage of ``n/2`` Givens rotations on a random
  perfect matching of the coordinates, angles uniform on ``[0, 2 pi)``: a Kac random walk that
  rotates ``n/2`` disjoint random pairs ``p != q`` at a time (``n`` is ``d`` rounded up to even).
* ``spinner``: ``sqrt(n) * H D3 H D2 H D1`` with ``H`` the normalized Hadamard matrix and ``D_i``
  Rademacher diagonals (``n`` is ``d`` rounded up to a power of two).

Inputs shorter than the working size ``n`` are zero-padded; ``m > n`` stacks independent blocks
and the last block is truncated. ``kama`` and ``spinner`` rows have the fixed norm ``sqrt(n)``
(as in the papers), so only kernels that are homogeneous in ``w`` (``relu``, ``sign``) stay
unbiased under them when the directions are uniform; ``softmax`` and ``gaussian`` pick up an
``O(1/d)`` bias that the benchmark reports.

Feature functions (:data:`FEATURES`) and their exact kernels (``theta`` the angle of x and y):

* ``relu``: ``f(u) = max(u, 0)``; ``K = |x||y| (sin theta + (pi - theta) cos theta) / (2 pi)``
  (the order-1 arc-cosine kernel, halved: Cho and Saul's ``k_1`` carries a factor 2).
* ``sign``: ``f(u) = sign(u)``; ``K = 1 - 2 theta / pi`` (the angular kernel).
* ``softmax``: positive features ``f_x(u) = exp(u - |x|^2 / 2)``; ``K = exp(x.y)``.
* ``gaussian``: the pair ``(cos u, sin u)``, summed; ``K = exp(-|x - y|^2 / 2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from rlstruct.errors import RLStructError
from rlstruct.kernels.reference import givens_reference
from rlstruct.layers.haar import orthogonal_gaussian_rows
from rlstruct.layers.hadamard import hadamard_transform

PROJECTIONS = ("iid", "orthogonal", "kama", "spinner")
FEATURES = ("relu", "sign", "softmax", "gaussian")


def _check_choice(kind: str, name: str, choices: tuple[str, ...]) -> None:
    if name not in choices:
        raise RLStructError(f"unknown {kind} {name!r}; choose one of {choices}")


def working_size(projection: str, dim: int) -> int:
    """Size ``n`` of the square blocks a projection uses for inputs of dimension ``dim``."""
    _check_choice("projection", projection, PROJECTIONS)
    if dim < 1:
        raise RLStructError(f"input dimension must be >= 1, got {dim}")
    if projection == "kama":
        return dim + dim % 2
    if projection == "spinner":
        return 1 << (dim - 1).bit_length()
    return dim


def default_kama_stages(n: int) -> int:
    """Stages of the KAMA walk: ``2 ceil(log2 n)``, i.e. ``n ceil(log2 n)`` rotations, the
    ``O(n log n)`` order at which Kac's walk mixes."""
    return 2 * max(1, math.ceil(math.log2(n)))


@dataclass
class RandomProjection:
    """``n_draws`` independent random ``(m, d)`` projections, stored in their compact form.

    ``dense`` is ``(n_draws, m, d)`` for ``iid``/``orthogonal``; ``kama`` stores ``perms``
    ``(n_draws * blocks, L, n)`` and ``angles`` ``(n_draws * blocks, L, n/2)``; ``spinner`` stores
    ``signs`` ``(n_draws * blocks, 3, n)``. Call it on ``x`` ``(batch, d)`` to get
    ``(n_draws, batch, m)``.
    """

    kind: str
    dim: int
    n_features: int
    n_draws: int
    dense: Optional[torch.Tensor] = None
    perms: Optional[torch.Tensor] = None
    angles: Optional[torch.Tensor] = None
    signs: Optional[torch.Tensor] = None

    @property
    def n(self) -> int:
        return working_size(self.kind, self.dim)

    @property
    def n_blocks(self) -> int:
        return -(-self.n_features // self.n)

    def stored_numbers(self) -> int:
        """Numbers kept per draw (matrix entries, or indices + angles, or signs)."""
        tensors = (self.dense, self.perms, self.angles, self.signs)
        return sum(t.numel() for t in tensors if t is not None) // self.n_draws

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, d) -> (n_draws * blocks, n, batch)``: every block applied to every x."""
        n, batch = self.n, x.shape[0]
        cols = torch.nn.functional.pad(x, (0, n - self.dim)).t()  # (n, batch)
        cols = cols.expand(self.n_draws * self.n_blocks, n, batch)
        if self.kind == "kama":
            # Each block has its own stages: the reference's per-leading-index form, on rows.
            rows = givens_reference(cols.transpose(1, 2), self.perms, self.angles.to(x.dtype))
            return math.sqrt(n) * rows.transpose(1, 2)
        signs = self.signs.to(x.dtype)
        for i in range(3):
            cols = hadamard_transform(signs[:, i].unsqueeze(-1) * cols, dim=1)
        return math.sqrt(n) * cols

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise RLStructError(f"expected inputs of shape (batch, {self.dim}), got {tuple(x.shape)}")
        if self.dense is not None:
            return torch.einsum("rmd,bd->rbm", self.dense.to(x.dtype), x)
        blocks = self._blocks(x)  # (draws * blocks, n, batch)
        rows = blocks.reshape(self.n_draws, self.n_blocks * self.n, x.shape[0])
        return rows[:, : self.n_features].transpose(1, 2)

    def to_dense(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The projection matrices, ``(n_draws, m, d)``."""
        return self(torch.eye(self.dim, dtype=dtype)).transpose(1, 2)


def draw_projection(
    kind: str,
    dim: int,
    n_features: int,
    n_draws: int = 1,
    generator: Optional[torch.Generator] = None,
    n_stages: Optional[int] = None,
    dtype: torch.dtype = torch.float64,
) -> RandomProjection:
    """Draw ``n_draws`` independent projections of ``kind`` mapping ``R^dim -> R^n_features``.

    ``n_stages`` sets the KAMA walk's stages (default :func:`default_kama_stages`).
    """
    n = working_size(kind, dim)
    if n_features < 1 or n_draws < 1:
        raise RLStructError(f"n_features and n_draws must be >= 1, got {n_features}, {n_draws}")
    blocks = n_draws * (-(-n_features // n))
    proj = RandomProjection(kind, dim, n_features, n_draws)
    if kind == "iid":
        proj.dense = torch.randn(n_draws, n_features, dim, generator=generator, dtype=dtype)
    elif kind == "orthogonal":
        proj.dense = orthogonal_gaussian_rows(n_features, dim, generator, n_draws, dtype)
    elif kind == "kama":
        stages = default_kama_stages(n) if n_stages is None else n_stages
        if stages < 1:
            raise RLStructError(f"kama needs n_stages >= 1, got {stages}")
        proj.perms = torch.argsort(torch.rand(blocks, stages, n, generator=generator), dim=-1)
        proj.angles = 2 * math.pi * torch.rand(blocks, stages, n // 2, generator=generator, dtype=dtype)
    else:
        bits = torch.randint(0, 2, (blocks, 3, n), generator=generator, dtype=torch.int8)
        proj.signs = 2 * bits - 1
    return proj


def features(projected: torch.Tensor, x: torch.Tensor, feature: str) -> torch.Tensor:
    """``f`` applied to ``projected`` ``(..., batch, m)`` of inputs ``x`` ``(batch, d)``.

    Returns ``(..., batch, m)`` (``(..., batch, 2m)`` for ``gaussian``: cos then sin), scaled so
    that ``K_hat(x, y) = phi(x) . phi(y) / m``.
    """
    _check_choice("feature", feature, FEATURES)
    if feature == "relu":
        return torch.relu(projected)
    if feature == "sign":
        return torch.sign(projected)
    if feature == "softmax":
        return torch.exp(projected - 0.5 * (x * x).sum(-1, keepdim=True))
    return torch.cat((torch.cos(projected), torch.sin(projected)), dim=-1)


def estimate_kernel(proj: RandomProjection, x: torch.Tensor, y: torch.Tensor, feature: str) -> torch.Tensor:
    """``K_hat`` for the pairs ``(x[i], y[i])`` under every draw: ``(n_draws, batch)``."""
    if x.shape != y.shape:
        raise RLStructError(f"x and y must have the same shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    phi_x = features(proj(x), x, feature)
    phi_y = features(proj(y), y, feature)
    return (phi_x * phi_y).sum(-1) / proj.n_features


def exact_kernel(x: torch.Tensor, y: torch.Tensor, feature: str) -> torch.Tensor:
    """Closed-form ``K(x[i], y[i])``: ``(batch,)``."""
    _check_choice("feature", feature, FEATURES)
    nx, ny = x.norm(dim=-1), y.norm(dim=-1)
    dot = (x * y).sum(-1)
    if feature == "softmax":
        return torch.exp(dot)
    if feature == "gaussian":
        return torch.exp(-0.5 * ((x - y) ** 2).sum(-1))
    theta = torch.arccos((dot / (nx * ny)).clamp(-1.0, 1.0))
    if feature == "sign":
        return 1 - 2 * theta / math.pi
    return nx * ny * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)


def unit_pair(
    dim: int, angle: float, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors in ``R^dim`` at ``angle`` radians, each ``(1, dim)``, spread over all
    coordinates (a coordinate-aligned pair would flatter the structured projections)."""
    if dim < 2:
        raise RLStructError(f"unit_pair needs dim >= 2, got {dim}")
    g = torch.Generator().manual_seed(dim)
    basis, _ = torch.linalg.qr(torch.randn(dim, 2, generator=g, dtype=dtype))
    x = basis[:, 0]
    y = math.cos(angle) * basis[:, 0] + math.sin(angle) * basis[:, 1]
    return x.unsqueeze(0), y.unsqueeze(0)
