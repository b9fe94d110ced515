"""The common base of every structured linear map.

A structured layer computes ``y = x W^T + b`` where ``W`` (``out_features x in_features``) is
never stored: it is a function of a few structured parameters (angles, a Toeplitz diagonal, ...).
Each family implements two ways to apply ``W``:

* :meth:`StructuredLinear.to_dense` builds ``W`` from the structured parameters with a handful
  of tensor ops (differentiable). At reinforcement-learning widths (64 to 256) one matmul with a
  freshly built ``W`` is the fastest path on a CPU, because the cost there is the number of
  dispatched ops, not FLOPs.
* :meth:`StructuredLinear.apply_structured` applies the structure directly (stage by stage,
  FFT, ...). It is the reference the tests compare ``to_dense`` against, and the fast path at
  large widths where ``O(n log n)`` beats ``O(n^2)``.

:meth:`forward` picks between them by :attr:`dense_threshold`, and while gradients are off it
reuses the built ``W`` until a parameter changes (rollouts then cost what ``nn.Linear`` costs).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from rlstruct.errors import RLStructError


class StructuredLinear(nn.Module):
    """Base class: an affine map ``(..., in_features) -> (..., out_features)``.

    Subclasses set their structured parameters in ``__init__`` (after calling this one), then
    call :meth:`reset_parameters`; they implement :meth:`to_dense` and, where a fast transform
    exists, :meth:`apply_structured`.

    Args:
        in_features: size of each input sample (>= 1).
        out_features: size of each output sample (>= 1).
        bias: learn an additive bias of shape ``(out_features,)``.
        dense_threshold: widths (``max(in, out)``) up to this use the build-then-matmul path in
            :meth:`forward`; larger ones use :meth:`apply_structured`. ``None`` keeps the
            family's default.
    """

    #: registry name of the family, set by :func:`rlstruct.layers.registry.register`.
    structure: str = "structured"
    #: default switch-over width from the dense path to the structured path (training).
    default_dense_threshold: int = 1 << 30
    #: without gradients, widths up to this reuse the cached dense W (built once per update).
    inference_dense_threshold: int = 2048
    #: set per instance when ``dense_threshold`` is passed (class default: layers pickled
    #: before the attribute existed).
    _threshold_given: bool = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dense_threshold: Optional[int] = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RLStructError(
                    f"{type(self).__name__}: {name} must be a positive integer, got {value!r}; "
                    "pass layer sizes >= 1"
                )
        self.in_features = in_features
        self.out_features = out_features
        self._width = max(in_features, out_features)
        self.dense_threshold = (
            self.default_dense_threshold if dense_threshold is None else int(dense_threshold)
        )
        # An explicit threshold is a request for one path: the per-batch rule then stays off.
        self._threshold_given = dense_threshold is not None
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
        else:
            self.register_parameter("bias", None)
        self._cached_weight: Optional[torch.Tensor] = None
        self._cache_key: Optional[tuple] = None
        self._init_structure()

    # ----------------------------------------------------------------------------------------
    # what a family implements
    def _init_structure(self) -> None:
        """Create the structured tensors and initialize them; the last step of ``__init__``
        (the default creates nothing: families with their own ``__init__`` do it there)."""

    def to_dense(self) -> torch.Tensor:
        """The weight matrix ``W`` of shape ``(out_features, in_features)``, differentiable."""
        raise NotImplementedError

    def apply_structured(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T`` without the bias, by the structured algorithm.

        Shape: ``(batch, in_features) -> (batch, out_features)``. The default multiplies by
        :meth:`to_dense`; families with a fast transform override it.
        """
        return x @ self.to_dense().t()

    def reset_structure(self) -> None:
        """Initialize the structured parameters (the bias is handled by the base class)."""

    #: attributes appended to :meth:`extra_repr` as ``name=value``.
    _repr_fields: Tuple[str, ...] = ()

    # Fused training path (optional): a family whose build has a kernel without autograd
    # implements these three, and a training forward on the dense path is then one autograd
    # node (build + matmul + bias) instead of a build node and a linear node.
    def _fused_inputs(self, x: torch.Tensor) -> Optional[Tuple[torch.Tensor, ...]]:
        """The tensors the build is differentiated in, or ``None`` where the fused path does
        not apply to ``x`` (dtype, device, missing kernels)."""
        return None

    def _fused_build(self, inputs: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, object]:
        """``(W^T (in, out) or W (out, in), state)`` without autograd; which one: class
        attribute ``_fused_transposed``."""
        raise NotImplementedError

    def _fused_build_backward(self, state: object, grad: torch.Tensor) -> Tuple:
        """Gradients of ``inputs`` from the gradient of what :meth:`_fused_build` returned."""
        raise NotImplementedError

    def _fused_reference(self, inputs: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Differentiable ``W (out, in)`` from ``inputs`` (double backward, e.g. TRPO)."""
        raise NotImplementedError

    #: whether :meth:`_fused_build` returns ``W^T`` (``(in, out)``) rather than ``W``.
    _fused_transposed: bool = False
    #: class-wide switch of the fused training path (tests compare both paths).
    fused_training: bool = True

    # ----------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Re-draw the structured parameters and the bias, like ``nn.Linear.reset_parameters``."""
        self.reset_structure()
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            with torch.no_grad():
                self.bias.uniform_(-bound, bound)
        self._cached_weight = None

    def init_like_orthogonal(self, gain: float) -> None:
        """The counterpart of SB3's orthogonal initialization (``orthogonal_(W, gain)``, zero bias).

        Policies call this where SB3 would orthogonally initialize an ``nn.Linear``. The default
        zeroes the bias and keeps the family's own initialization of ``W``; families that can
        match an orthogonal matrix of norm ``gain`` (dense, KAMA, and the
        :class:`~rlstruct.layers.common.ZooLinear` families such as hd3) override it.
        """
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()

    def num_parameters(self) -> int:
        """Number of learned scalars (trainable parameters, bias included)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def dense_num_parameters(self) -> int:
        """What an ``nn.Linear`` of the same shape (and bias setting) would learn."""
        return self.in_features * self.out_features + (
            self.out_features if self.bias is not None else 0
        )

    def train_structured(self, rows: int) -> bool:
        """Whether a training forward on ``rows`` input rows applies the structure directly
        even though the width is within :attr:`dense_threshold`.

        Building ``W`` costs about ``in_features`` transforms of one row (plus its backward),
        applying the structure ``rows`` transforms, so at PPO minibatch sizes (32 to 64) a wide
        layer is cheaper without the build. The default keeps the build; families whose
        transform is cheap override this with a rule measured in
        ``benchmarks/ppo_throughput.py`` (``results/ppo_throughput.md``, "Paths").
        """
        return False

    def uses_dense_path(self) -> bool:
        """Whether a training forward (gradients on) builds ``W`` rather than applying the structure."""
        return self._width <= self.dense_threshold

    @property
    def infers_dense(self) -> bool:
        """Whether a forward that trains nothing multiplies by the cached ``W``
        (width within :attr:`inference_dense_threshold`): see :meth:`forward_cached`."""
        return self._width <= self.inference_dense_threshold

    def forward_cached(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b`` with ``W`` built once and reused until a parameter changes; no
        gradient reaches the structure. Rollouts and ``predict`` take this path, so a forward
        costs what ``nn.Linear``'s does.

        Shape: ``(..., in_features) -> (..., out_features)``.
        """
        if x.shape[-1] != self.in_features:
            self.check_input(x)
        return F.linear(x, self._weight_for_inference(), self.bias)

    def _weight_for_inference(self) -> torch.Tensor:
        # Without autograd the built matrix can be reused until a parameter is modified.
        # Parameter `_version` counters are bumped by every in-place update (optimizer steps,
        # load_state_dict); `data_ptr` changes when a tensor is replaced or its `.data`
        # reassigned (`.to(dtype)`, `vector_to_parameters`), which also covers dtype and
        # device changes. Buffers are part of the structure too (random-mode layers keep it
        # there). One flat list, no per-tensor tuple: this runs on every rollout step.
        key = [(t._version, t.data_ptr())
               for t in (*self._parameters.values(), *self._buffers.values()) if t is not None]
        if self._cached_weight is None or key != self._cache_key:
            self._cached_weight = self.to_dense().detach()
            self._cache_key = key
        return self._cached_weight

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`RLStructError` unless ``x`` has shape ``(..., in_features)``."""
        if x.shape[-1] != self.in_features:
            raise RLStructError(
                f"{type(self).__name__} expects inputs with last dimension {self.in_features}, "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: ``(..., in_features) -> (..., out_features)``."""
        training = torch.is_grad_enabled() and self._trains()
        if not training and self.infers_dense:
            return self.forward_cached(x)
        if x.shape[-1] != self.in_features:
            self.check_input(x)
        if training and self._builds_for(x.numel() // self.in_features):
            inputs = self._fused_inputs(x) if self.fused_training and x.dim() == 2 else None
            if inputs is not None:
                return _BuiltLinear.apply(self, x, self.bias, *inputs)
            return F.linear(x, self.to_dense(), self.bias)
        lead = x.shape[:-1]
        y = self.apply_structured(x.reshape(-1, self.in_features))
        y = y.reshape(*lead, self.out_features)
        return y + self.bias if self.bias is not None else y

    def _trains(self) -> bool:
        """Whether any structured parameter requires grad (only direct parameters: every family
        keeps its structure on the layer itself)."""
        return any(p.requires_grad for p in self._parameters.values() if p is not None)

    def _builds_for(self, rows: int) -> bool:
        """Whether a training forward on ``rows`` input rows builds ``W`` (then multiplies)
        rather than applying the structure: :attr:`dense_threshold`, then the per-batch rule."""
        return self._width <= self.dense_threshold and (
            self._threshold_given or not self.train_structured(rows)
        )

    def fused_build_inputs(self, like: torch.Tensor, rows: int) -> Optional[Tuple[torch.Tensor, ...]]:
        """What :meth:`forward` would hand its fused build for a training input of ``rows`` rows
        with ``like``'s dtype and device (2-D), or ``None`` where it would take another path.

        For :func:`rlstruct.layers.batched.built_weights`, which builds several layers' ``W`` in
        one autograd node: the same path as :meth:`forward`, chosen by the same rule.
        """
        if not (self.fused_training and like.dim() == 2 and torch.is_grad_enabled()):
            return None
        if not self._trains():
            return None
        return self._fused_inputs(like) if self._builds_for(rows) else None

    def extra_repr(self) -> str:
        text = (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, params={self.num_parameters()}"
        )
        return text + "".join(f", {name}={getattr(self, name)}" for name in self._repr_fields)

    def __getstate__(self):
        # The inference cache is derived data: never pickle it.
        state = self.__dict__.copy()
        state["_cached_weight"] = None
        state["_cache_key"] = None
        return state


class _BuiltLinear(torch.autograd.Function):
    """``x W^T + b`` with ``W`` built by the family's kernel, as one autograd node.

    Same values and gradients as ``F.linear(x, layer.to_dense(), bias)``: forward builds ``W``
    (no autograd) and runs one ``addmm``; backward computes ``grad_x = g W``,
    ``grad_b = sum g``, ``grad_W = g^T x`` and hands ``grad_W`` to the family's build
    backward. Double backward (``create_graph``) differentiates ``layer._fused_reference``.
    """

    @staticmethod
    def forward(ctx, layer: StructuredLinear, x: torch.Tensor, bias: Optional[torch.Tensor],
                *inputs: torch.Tensor) -> torch.Tensor:
        built, state = layer._fused_build(inputs)
        wt = built if layer._fused_transposed else built.t()  # (in, out)
        y = x.mm(wt) if bias is None else torch.addmm(bias, x, wt)
        ctx.layer, ctx.state, ctx.wt = layer, state, wt
        ctx.save_for_backward(x, bias, *inputs)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        layer = ctx.layer
        x, bias, *inputs = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: through the differentiable reference
            with torch.enable_grad():
                weight = layer._fused_reference(tuple(inputs))  # W (out, in)
                grad_x = grad.mm(weight) if need[1] else None
                grad_b = grad.sum(0) if bias is not None and need[2] else None
                grads = reference_build_grads(weight, inputs, need[3:], grad.t().mm(x))
            return (None, grad_x, grad_b, *grads)
        grad_x = grad.mm(ctx.wt.t()) if need[1] else None
        grad_b = grad.sum(0) if bias is not None and need[2] else None
        if any(need[3:]):
            grad_w = x.t().mm(grad) if layer._fused_transposed else grad.t().mm(x)
            grads = layer._fused_build_backward(ctx.state, grad_w)
            grads = [g if k else None for g, k in zip(grads, need[3:])]
        else:
            grads = [None] * len(inputs)
        return (None, grad_x, grad_b, *grads)


def reference_build_grads(weight: torch.Tensor, inputs: Sequence[torch.Tensor], wanted: Sequence[bool],
                          grad_weight: torch.Tensor) -> List[Optional[torch.Tensor]]:
    """Gradients of the build ``inputs`` (``None`` where not ``wanted``) from ``grad_weight``,
    the gradient of ``weight`` (``W``, ``(out, in)``, built from ``inputs`` by the family's
    differentiable ``_fused_reference``), with a graph for double backward (``create_graph``)."""
    leaves = [t for t, k in zip(inputs, wanted) if k]
    found = iter(torch.autograd.grad(weight, leaves, grad_weight, create_graph=True) if leaves else ())
    return [next(found) if k else None for k in wanted]
