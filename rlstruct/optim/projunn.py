"""projUNN optimizers: keep square weights orthogonal with rank-k gradient steps (seed 003).

Two update rules for an orthogonal parameter ``W`` (``N x N``) with gradient ``G``; ``G_k`` is
the best rank-``k`` approximation of ``G`` (truncated SVD, or with ``lowrank="randomized"`` a
randomized subspace iteration, ``O(k N^2)``):

* :class:`ProjUNND` (directional): ``W <- polar(W - lr G_k)``, ``polar(M) = U V^T`` for the SVD
  ``M = U S V^T``: the nearest orthogonal matrix to the Euclidean step.
* :class:`ProjUNNT` (tangent): ``A = skew(W^T G_k) = (W^T G_k - G_k^T W) / 2`` (the projection of
  ``G_k`` onto the tangent space at ``W``, in ``W``'s frame), ``W <- W expm(-lr A)``.

With ``k = N``, ``G_k = G`` and both are the full projected-gradient steps.

How the step is computed is chosen per param group by the ``update`` option:

* ``"lowrank"``: ``O(k N^2 + k^3)``. Both steps change ``W`` only on a subspace of dimension
  ``r <= 2k``: with ``G_k = a b^T``, ``Q`` (``N x r``) an orthonormal basis of the span of
  ``[W^T a, b]`` and ``D`` (``r x r``) from a small polar factor or exponential,
  ``W_new = W + (W Q) D Q^T`` (:func:`lowrank_polar_factors`, :func:`lowrank_skew_expm`).
* ``"dense"``: the polar factor (an SVD) and ``matrix_exp`` of the ``N x N`` matrix, ``O(N^3)``.
* ``"auto"`` (default): ``"lowrank"`` when ``2k < N``, else ``"dense"`` (cheaper there, and the
  same result up to rounding).

The whole step is ``O(k N^2)`` only with ``lowrank="randomized"``: the exact truncated SVD of
``G`` (``lowrank="svd"``) is itself ``O(N^3)``. The low-rank updates assume ``W`` is orthogonal
and carry its rounding drift forward, so every 100th step ends with a dense polar factor
(``O(N^3 / 100)`` amortized).

Which parameters are orthogonal is decided per param group by the ``orthogonal`` option:

* ``"auto"`` (default): the Parameter attribute ``_rlstruct_orthogonal`` (:data:`ORTHOGONAL_ATTR`)
  decides when it is set (``True``/``False``); an untagged parameter is orthogonal iff it is square
  2-D.
* ``"tagged"``: only parameters with ``_rlstruct_orthogonal = True``. Use this for a whole SB3
  policy whose dense hidden layers happen to be square (e.g. 64 x 64) and must stay free.
* ``True``: every parameter of the group (each must be square 2-D); ``False``: none.

Layers that want projUNN set ``param._rlstruct_orthogonal = True`` on their orthogonal weight
(:func:`mark_orthogonal` does it). SB3 passes all parameters in one group
(``optimizer_class(self.parameters(), lr=lr, **optimizer_kwargs)``), so the attribute is how
such layers opt in, e.g. ``policy_kwargs=dict(optimizer_class=ProjUNND,
optimizer_kwargs=dict(rank=8, orthogonal="tagged"))``.

Every other parameter gets a plain step, identical to ``torch.optim.Adam`` (``base="adam"``,
default; L2 ``weight_decay`` like Adam's) or ``torch.optim.SGD`` (``base="sgd"``, with
``momentum``). Orthogonal parameters take the raw gradient (no momentum, no weight decay: a
decay toward zero has no meaning on the orthogonal group) with step ``orthogonal_lr`` (default:
the group's ``lr``). A parameter that is not orthogonal when first stepped (e.g. after SB3's
``ortho_init`` scaled it by a gain) is first replaced by its polar factor.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch.optim import Optimizer

from rlstruct.errors import RLStructError
from rlstruct.optim.tags import ORTHOGONAL_ATTR, mark_orthogonal  # noqa: F401  (kept importable here)

MODES = ("auto", "tagged", True, False)
BASES = ("adam", "sgd")
LOWRANK_METHODS = ("svd", "randomized")
UPDATES = ("auto", "lowrank", "dense")
# A parameter this far from orthogonal (max |W^T W - I|) is projected before its first step.
_REPROJECT_TOL = 1e-4
# Steps that do not end in a dense polar factor (ProjUNN-T, and ProjUNN-D's low-rank update) are
# re-projected every this many steps: float32 expm products drift ~5e-9 per step.
_REPROJECT_EVERY = 100


def polar(m: torch.Tensor) -> torch.Tensor:
    """``(N, N) -> (N, N)``: the orthogonal polar factor ``U V^T`` of ``m = U S V^T``.

    Computed in float64: LAPACK's divide-and-conquer SVD occasionally fails to converge on
    float32 matrices met in training; the eigendecomposition of ``m^T m`` is the fallback.
    """
    if not torch.isfinite(m).all():
        raise RLStructError(
            "projUNN: the orthogonal weight or its gradient is not finite; lower the learning rate "
            "(optimizer_kwargs.orthogonal_lr) or the rank"
        )
    m64 = m.double()
    try:
        u, _, vh = torch.linalg.svd(m64)
        return (u @ vh).to(m.dtype)
    except torch.linalg.LinAlgError:
        evals, evecs = torch.linalg.eigh(m64.t() @ m64)
        inv_sqrt = (evecs * evals.clamp_min(1e-30).rsqrt()) @ evecs.t()
        return (m64 @ inv_sqrt).to(m.dtype)


def skew(a: torch.Tensor) -> torch.Tensor:
    """``(N, N) -> (N, N)``: the skew-symmetric part ``(a - a^T) / 2``."""
    return 0.5 * (a - a.transpose(-2, -1))


def _times_skinny(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``m @ s`` for ``m`` ``(M, N)`` and a tall-skinny ``s`` ``(N, r)``, computed as
    ``(s^T m^T)^T``: with the big matrix as the left operand MKL's float32 GEMM is 10-80x slower
    for some memory layouts of ``m`` and ``s`` (measured at N = 1024, r = 2-8, one thread: 4-12 ms
    against 0.1-0.4 ms, which would dominate the low-rank step); this form was fast for all four
    row/column-major combinations."""
    return (s.t() @ m.t()).t()


def low_rank_factors(g: torch.Tensor, rank: int, method: str = "svd") -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``a @ b.T`` the best rank-``rank`` approximation of ``g`` ``(M, N)``.

    ``a`` is ``(M, k)`` and ``b`` ``(N, k)`` with ``k = rank`` (exact or randomized SVD); for
    ``rank >= min(M, N)`` they are ``g`` itself and the identity, so the product is exact.
    """
    if rank >= min(g.shape):
        return g, torch.eye(g.shape[1], dtype=g.dtype, device=g.device)
    if method == "svd":
        u, s, vh = torch.linalg.svd(g)
        return u[:, :rank] * s[:rank], vh[:rank].t()
    # Randomized subspace iteration (Halko, Martinsson & Tropp 2011) with 2 power steps; a few
    # extra directions make its top-k accurate. The same algorithm as torch.svd_lowrank(q, niter=2),
    # written with _times_skinny: svd_lowrank's products hit MKL's slow GEMM layouts (see
    # results/projunn_update.md: several times slower at N = 1024, k = 1-4).
    q = min(rank + 4, min(g.shape))
    omega = torch.randn(g.shape[1], q, dtype=g.dtype, device=g.device)
    basis, _ = torch.linalg.qr(_times_skinny(g, omega))
    for _ in range(2):
        basis, _ = torch.linalg.qr(_times_skinny(g.t(), basis))
        basis, _ = torch.linalg.qr(_times_skinny(g, basis))
    # g ~ basis (basis^T g) and basis^T g = U S V^T is small (q x N).
    u, s, vh = torch.linalg.svd(_times_skinny(g.t(), basis).t(), full_matrices=False)
    return (basis @ u[:, :rank]) * s[:rank], vh[:rank].t()


def _subspace(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthonormal ``Q`` ``(N, r)``, ``r = min(N, kx + ky)``, spanning the columns of ``x`` and ``y``,
    and their coordinates ``Q^T x``, ``Q^T y``, all in float64.

    Householder QR returns an orthonormal ``Q`` whose span contains the columns even when
    ``[x, y]`` is rank deficient (e.g. ``x`` parallel to ``y``, or a zero gradient), so no rank
    test is needed: ``Q Q^T x = x`` to rounding, column by column.
    """
    x, y = x.double(), y.double()
    q, _ = torch.linalg.qr(torch.cat([x, y], dim=1))
    return q, q.t() @ x, q.t() @ y


def lowrank_polar_factors(p: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, D)`` with ``polar(I + p y^T) = I + Q D Q^T``; ``p``, ``y`` ``(N, k)``, ``Q`` ``(N, r)``.

    ``r <= 2k``; cost ``O(N k^2 + k^3)``. With ``Q`` an orthonormal basis of the span of ``p`` and
    ``y``, ``Z = I + p y^T`` is the identity on the complement of that span and
    ``z = I_r + (Q^T p)(Q^T y)^T`` on it, so ``polar(Z) = (I - Q Q^T) + Q polar(z) Q^T``.
    ProjUNN-D uses it through ``polar(W + x y^T) = W polar(I + (W^T x) y^T)`` (``W`` orthogonal).

    The small polar factor comes from an SVD of ``z`` (backward stable), not from the inverse
    square root of ``z^T z``, which squares the condition number and breaks down when ``z`` is
    near singular. So no dense fallback is needed: for a singular ``z`` (a step that makes
    ``W + x y^T`` singular) the polar factor is not unique and the dense SVD would pick an
    equally arbitrary one; both are orthogonal and both reproduce ``W + x y^T`` on its row space.
    """
    q, pc, yc = _subspace(p, y)
    eye = torch.eye(q.shape[1], dtype=q.dtype, device=q.device)
    d = polar(eye + pc @ yc.t()) - eye
    return q.to(p.dtype), d.to(p.dtype)


def lowrank_skew_expm(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, D)`` with ``expm(x y^T - y x^T) = I + Q D Q^T``; ``x``, ``y`` ``(N, k)``, ``Q`` ``(N, r)``.

    ``r <= 2k``; cost ``O(N k^2 + k^3)``. ``x y^T - y x^T = Q S Q^T`` with the ``r x r`` skew
    matrix ``S = xc yc^T - yc xc^T`` (``xc = Q^T x``), and it vanishes on the complement of the
    span, so ``expm = (I - Q Q^T) + Q expm(S) Q^T``.
    """
    q, xc, yc = _subspace(x, y)
    eye = torch.eye(q.shape[1], dtype=q.dtype, device=q.device)
    d = torch.linalg.matrix_exp(xc @ yc.t() - yc @ xc.t()) - eye
    return q.to(x.dtype), d.to(x.dtype)


def _right_multiply(w: torch.Tensor, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``w (I + q d q^T)`` in ``O(N^2 r)``: never forms the ``N x N`` factor."""
    return torch.addmm(w, _times_skinny(w, q) @ d, q.t())


def _use_lowrank(update: str, rank: int, n: int) -> bool:
    """Whether ``update`` selects the low-rank path for rank ``rank`` on an ``N x N`` parameter."""
    if update == "auto":
        # For 2k >= N the subspace is all of R^N: the low-rank path only adds a QR.
        return 2 * rank < n
    return update == "lowrank"


def _check_rank(rank: Any) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise RLStructError(f"projUNN rank must be an integer >= 1, got {rank!r}")
    return rank


class _ProjUNN(Optimizer):
    """Shared machinery: option checks, orthogonal detection, the plain Adam/SGD step."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        rank: int = 1,
        orthogonal: Union[str, bool] = "auto",
        orthogonal_lr: Optional[float] = None,
        lowrank: str = "svd",
        update: str = "auto",
        base: str = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr > 0:
            raise RLStructError(f"projUNN lr must be > 0, got {lr}")
        defaults = dict(
            lr=lr, rank=rank, orthogonal=orthogonal, orthogonal_lr=orthogonal_lr,
            lowrank=lowrank, update=update, base=base, betas=betas, eps=eps, momentum=momentum,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._check_group(self.param_groups[-1])

    @staticmethod
    def _check_group(group: dict) -> None:
        _check_rank(group["rank"])
        mode = group["orthogonal"]
        if not (isinstance(mode, bool) or mode in ("auto", "tagged")):
            raise RLStructError(f"projUNN orthogonal={mode!r}; choose one of {MODES}")
        if group["lowrank"] not in LOWRANK_METHODS:
            raise RLStructError(f"projUNN lowrank={group['lowrank']!r}; choose one of {LOWRANK_METHODS}")
        if group["update"] not in UPDATES:
            raise RLStructError(f"projUNN update={group['update']!r}; choose one of {UPDATES}")
        if group["base"] not in BASES:
            raise RLStructError(f"projUNN base={group['base']!r}; choose one of {BASES}")
        for p in group["params"]:
            if _is_orthogonal(p, group["orthogonal"]):
                n = p.shape[0]
                if p.dim() != 2 or p.shape[0] != p.shape[1]:
                    raise RLStructError(
                        f"projUNN: orthogonal parameter must be square 2-D, got shape {tuple(p.shape)}; "
                        f"untag it or use orthogonal='auto'"
                    )
                if group["rank"] > n:
                    raise RLStructError(
                        f"projUNN rank {group['rank']} exceeds the width {n} of an orthogonal "
                        f"parameter; use rank <= {n}"
                    )

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None) -> Optional[torch.Tensor]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if _is_orthogonal(p, group["orthogonal"]):
                    self._orthogonal_step(p, group)
                elif group["base"] == "adam":
                    self._adam_step(p, group)
                else:
                    self._sgd_step(p, group)
        return loss

    def _orthogonal_step(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            eye = torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
            if (p.t() @ p - eye).abs().max() > _REPROJECT_TOL:
                p.copy_(polar(p))
        state["step"] += 1
        lr = group["lr"] if group["orthogonal_lr"] is None else group["orthogonal_lr"]
        a, b = low_rank_factors(p.grad, group["rank"], group["lowrank"])
        lowrank = _use_lowrank(group["update"], group["rank"], p.shape[0])
        w = self._update(p, a, b, lr, lowrank)
        if state["step"] % _REPROJECT_EVERY == 0 and (lowrank or not self._DENSE_IS_POLAR):
            w = polar(w)
        p.copy_(w)

    # Whether the dense update already ends in a polar factor (no periodic re-projection needed).
    _DENSE_IS_POLAR = False

    def _update(self, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lr: float,
                lowrank: bool) -> torch.Tensor:
        """The new ``W`` from ``W``, ``G_k = a b^T`` and the step size, low-rank or dense."""
        raise NotImplementedError

    def _adam_step(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        grad = p.grad
        if group["weight_decay"]:
            grad = grad.add(p, alpha=group["weight_decay"])
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        correction1 = 1 - beta1 ** state["step"]
        correction2 = 1 - beta2 ** state["step"]
        denom = (state["exp_avg_sq"].sqrt() / correction2**0.5).add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / correction1)

    def _sgd_step(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad
        if group["weight_decay"]:
            grad = grad.add(p, alpha=group["weight_decay"])
        if group["momentum"]:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.clone()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
            grad = state["momentum_buffer"]
        p.add_(grad, alpha=-group["lr"])


def _is_orthogonal(p: torch.Tensor, mode: Union[str, bool]) -> bool:
    tag = getattr(p, ORTHOGONAL_ATTR, None)
    if mode is True or mode is False:
        return mode
    if mode == "tagged":
        return bool(tag)
    if tag is not None:
        return bool(tag)
    return p.dim() == 2 and p.shape[0] == p.shape[1]


class ProjUNND(_ProjUNN):
    """projUNN-D: ``W <- polar(W - lr G_k)`` for orthogonal params, Adam/SGD for the rest.

    Args:
        params: parameters or param groups (group keys override the defaults below).
        lr: step size (plain params; orthogonal ones too unless ``orthogonal_lr`` is set).
        rank: ``k``, the rank of the gradient approximation (``1 <= k <= N``).
        orthogonal: ``"auto"``, ``"tagged"``, ``True`` or ``False`` (see the module docstring).
        orthogonal_lr: step size of orthogonal params (default ``lr``).
        lowrank: ``"svd"`` (exact truncated SVD, ``O(N^3)``) or ``"randomized"`` (randomized
            subspace iteration, ``O(k N^2)``).
        update: ``"auto"`` (default: ``"lowrank"`` when ``2 * rank < N``), ``"lowrank"``
            (``O(k N^2)``) or ``"dense"`` (``O(N^3)``); see the module docstring.
        base: ``"adam"`` or ``"sgd"``, the update of the non-orthogonal params.
        betas, eps: Adam's; momentum: SGD's; weight_decay: L2 on non-orthogonal params.
    """

    _DENSE_IS_POLAR = True

    def _update(self, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lr: float,
                lowrank: bool) -> torch.Tensor:
        if lowrank:
            # W - lr a b^T = W (I + (W^T (-lr a)) b^T), and polar(W Z) = W polar(Z).
            return _right_multiply(w, *lowrank_polar_factors(_times_skinny(w.t(), -lr * a), b))
        return polar(torch.addmm(w, a, b.t(), alpha=-lr))


class ProjUNNT(_ProjUNN):
    """projUNN-T: ``W <- W expm(-lr skew(W^T G_k))`` for orthogonal params, Adam/SGD for the rest.

    Same arguments as :class:`ProjUNND`. The exponential of a skew-symmetric matrix is orthogonal,
    so ``W`` stays on the group (and in its connected component) up to rounding; every 100 steps
    the result is replaced by its polar factor so rounding drift cannot accumulate.
    """

    def _update(self, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lr: float,
                lowrank: bool) -> torch.Tensor:
        p = _times_skinny(w.t(), a)  # W^T G_k = p b^T
        if lowrank:
            # -lr skew(p b^T) = x b^T - b x^T with x = -lr p / 2.
            return _right_multiply(w, *lowrank_skew_expm(-0.5 * lr * p, b))
        return w @ torch.linalg.matrix_exp(-lr * skew(p @ b.t()))
