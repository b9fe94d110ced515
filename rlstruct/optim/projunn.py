"""projUNN optimizers: keep square weights orthogonal with rank-k gradient steps (seed 003).

Two update rules for an orthogonal parameter ``W`` (``N x N``) with gradient ``G``; ``G_k`` is
the best rank-``k`` approximation of ``G`` (truncated SVD, or ``torch.svd_lowrank``'s randomized
subspace iteration with ``lowrank="randomized"``):

* :class:`ProjUNND` (directional): ``W <- polar(W - lr G_k)``, ``polar(M) = U V^T`` for the SVD
  ``M = U S V^T``: the nearest orthogonal matrix to the Euclidean step.
* :class:`ProjUNNT` (tangent): ``A = skew(W^T G_k) = (W^T G_k - G_k^T W) / 2`` (the projection of
  ``G_k`` onto the tangent space at ``W``, in ``W``'s frame), ``W <- W expm(-lr A)``.

With ``k = N``, ``G_k = G`` and both are the full projected-gradient steps. The polar factor and
the exponential are computed densely (``O(N^3)`` per step, cheap at RL widths of 64-256); the
paper's ``O(k N^2)`` low-rank update of the polar factor is not implemented.

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
from rlstruct.layers.orthogonal import ORTHOGONAL_ATTR

MODES = ("auto", "tagged", True, False)
BASES = ("adam", "sgd")
LOWRANK_METHODS = ("svd", "randomized")
# A parameter this far from orthogonal (max |W^T W - I|) is projected before its first step.
_REPROJECT_TOL = 1e-4
# ProjUNN-T re-projects every this many steps: float32 expm products drift ~5e-9 per step.
_TANGENT_REPROJECT_EVERY = 100


def mark_orthogonal(param: torch.nn.Parameter, orthogonal: bool = True) -> torch.nn.Parameter:
    """Tag ``param`` so projUNN optimizers treat it as orthogonal (or, with False, as plain)."""
    setattr(param, ORTHOGONAL_ATTR, bool(orthogonal))
    return param


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


def low_rank(g: torch.Tensor, rank: int, method: str = "svd") -> torch.Tensor:
    """Best rank-``rank`` approximation of ``g`` ``(N, N)`` (exact or randomized SVD)."""
    if rank >= min(g.shape):
        return g
    if method == "svd":
        u, s, vh = torch.linalg.svd(g)
        u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    else:
        # A few extra directions make the randomized subspace iteration's top-k accurate.
        q = min(rank + 4, min(g.shape))
        u, s, v = torch.svd_lowrank(g, q=q, niter=2)
        u, s, vh = u[:, :rank], s[:rank], v[:, :rank].t()
    return (u * s) @ vh


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
            lowrank=lowrank, base=base, betas=betas, eps=eps, momentum=momentum,
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
        g_k = low_rank(p.grad, group["rank"], group["lowrank"])
        p.copy_(self._update(p, g_k, lr, state["step"]))

    def _update(self, w: torch.Tensor, g_k: torch.Tensor, lr: float, step: int) -> torch.Tensor:
        """The new orthogonal ``W`` from ``W``, ``G_k`` and the step size (step counts from 1)."""
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
        lowrank: ``"svd"`` (exact truncated SVD) or ``"randomized"`` (``torch.svd_lowrank``).
        base: ``"adam"`` or ``"sgd"``, the update of the non-orthogonal params.
        betas, eps: Adam's; momentum: SGD's; weight_decay: L2 on non-orthogonal params.
    """

    def _update(self, w: torch.Tensor, g_k: torch.Tensor, lr: float, step: int) -> torch.Tensor:
        return polar(w - lr * g_k)


class ProjUNNT(_ProjUNN):
    """projUNN-T: ``W <- W expm(-lr skew(W^T G_k))`` for orthogonal params, Adam/SGD for the rest.

    Same arguments as :class:`ProjUNND`. The exponential of a skew-symmetric matrix is orthogonal,
    so ``W`` stays on the group (and in its connected component) up to rounding; every 100 steps
    the result is replaced by its polar factor so rounding drift cannot accumulate.
    """

    def _update(self, w: torch.Tensor, g_k: torch.Tensor, lr: float, step: int) -> torch.Tensor:
        w = w @ torch.linalg.matrix_exp(-lr * skew(w.t() @ g_k))
        return polar(w) if step % _TANGENT_REPROJECT_EVERY == 0 else w
