"""Shared plumbing of the structured-matrix families (the "zoo").

Every zoo family has the same two modes:

* ``mode="learned"``: the structured tensors (diagonals, twiddles, generators, ...) are
  ``nn.Parameter`` s.
* ``mode="random"``: the same tensors are drawn from ``seed`` and kept as (persistent) buffers, so
  they are frozen but saved with the model; a learned output scale ``scale`` of shape
  ``(out_features,)`` and the bias are then the only trainable parameters. This is the
  random-feature setting of the structured-spinner and KAMA papers.

A family implements :meth:`ZooLinear._draw` (the structured tensors, from a generator) and
:meth:`ZooLinear._transform` (the unscaled fast transform), and overrides
:meth:`ZooLinear._dense` (the unscaled weight) where a direct formula beats transforming the
identity; this class adds the scale, the seeding and the parameter/buffer split.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import nn

from rlstruct.errors import RLStructError
from rlstruct.layers.base import StructuredLinear

MODES = ("learned", "random")


def next_pow2(n: int) -> int:
    """Smallest power of two ``>= n`` (``n >= 1``)."""
    return 1 << (n - 1).bit_length()


def pad_columns(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad ``(batch, k)`` to ``(batch, n)`` (``n >= k``)."""
    return x if x.shape[1] == n else nn.functional.pad(x, (0, n - x.shape[1]))


def rademacher(shape: tuple, generator: torch.Generator) -> torch.Tensor:
    """Independent +-1 entries."""
    return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1


def check_positive(family: str, name: str, value: int) -> None:
    """Raise :class:`RLStructError` unless ``value`` is a positive integer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RLStructError(f"{family}: {name} must be a positive integer, got {value!r}")


class ZooLinear(StructuredLinear):
    """Base of the zoo families: ``W = diag(scale) W_struct`` with ``scale`` only where present.

    Args:
        in_features, out_features, bias, dense_threshold: as in :class:`StructuredLinear`.
        mode: ``"learned"`` or ``"random"`` (see the module docstring).
        seed: seed of every random draw (``None``: one drawn from torch's global RNG, so
            ``torch.manual_seed`` still fixes it).

    A family without options of its own needs no ``__init__``: it sets derived sizes in
    :meth:`_configure`. One with options validates and stores them, then calls this
    ``__init__`` (which configures, draws and initializes).
    """

    #: families whose learned ``W`` should also carry the output scale (e.g. ``orthogonal``).
    always_scaled: bool = False
    _repr_fields = ("mode",)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        mode: str = "learned",
        seed: Optional[int] = None,
        dense_threshold: Optional[int] = None,
    ) -> None:
        if mode not in MODES:
            raise RLStructError(f"{self.structure}: unknown mode {mode!r}; choose one of {MODES}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise RLStructError(f"{self.structure}: seed must be an integer or None, got {seed!r}")
        self.mode, self.seed = mode, seed  # plain attributes: fine before Module.__init__
        # The base constructor ends with _init_structure: configure, draw, initialize.
        super().__init__(in_features, out_features, bias, dense_threshold)

    def _init_structure(self) -> None:
        seed = self.seed
        self._draw_seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else seed
        self._configure()
        self._setup()

    def _configure(self) -> None:
        """Derived sizes and fixed tensors the draw needs (e.g. ``self.n``); default none."""

    def _setup(self) -> None:
        """Create the structured tensors (parameters or buffers) and initialize everything."""
        for name, value in self._draw(self._generator()).items():
            if self.mode == "learned":
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)
        if self.mode == "random" or self.always_scaled:
            self.scale = nn.Parameter(torch.ones(self.out_features))
        else:
            self.register_parameter("scale", None)
        self.reset_parameters()

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self._draw_seed)

    # ----------------------------------------------------------------------------------------
    # what a family implements
    def _draw(self, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """The structured tensors by name, drawn from ``generator`` (float32, CPU)."""
        raise NotImplementedError

    def _dense(self) -> torch.Tensor:
        """The unscaled weight, ``(out_features, in_features)``.

        The default runs the family's transform on the identity, which is the cheapest build
        for product structures (spinners, butterflies); families with a direct formula
        override it.
        """
        return self._transform(identity_like(self)).t()

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """The unscaled fast transform, ``(batch, in_features) -> (batch, out_features)``."""
        raise NotImplementedError

    def _init_like_orthogonal_learned(self, gain: float) -> None:
        """Learned mode only: make ``W`` an orthogonal-like matrix of norm ``gain`` if the
        family can (the default keeps the family's own initialization)."""

    # ----------------------------------------------------------------------------------------
    def reset_structure(self) -> None:
        # The same seed gives the same draw, so a reset reproduces the constructed layer.
        with torch.no_grad():
            for name, value in self._draw(self._generator()).items():
                getattr(self, name).copy_(value)
            if self.scale is not None:
                self.scale.fill_(1.0)

    def init_like_orthogonal(self, gain: float) -> None:
        super().init_like_orthogonal(gain)
        if self.scale is not None:
            with torch.no_grad():
                self.scale.fill_(gain)
        else:
            self._init_like_orthogonal_learned(gain)

    def to_dense(self) -> torch.Tensor:
        w = self._dense()
        return w if self.scale is None else w * self.scale.to(w.dtype).unsqueeze(1)

    def apply_structured(self, x: torch.Tensor) -> torch.Tensor:
        y = self._transform(x)
        return y if self.scale is None else y * self.scale.to(y.dtype)



def identity_like(layer: StructuredLinear) -> torch.Tensor:
    """``eye(in_features)`` in the dtype and device of the layer's parameters.

    Families whose ``W`` is cheapest to build by their own transform apply it to this.
    """
    like = next(layer.parameters())
    return torch.eye(layer.in_features, dtype=like.dtype, device=like.device)


def uniform_bound(fan_in: int) -> float:
    """nn.Linear's default weight bound, ``1 / sqrt(fan_in)``."""
    return 1.0 / math.sqrt(fan_in)
