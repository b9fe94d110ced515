"""KAMA layers: products of Givens rotations with learned (or random) angles.

A Givens rotation ``G(p, q, theta)`` mixes two coordinates::

    x_p <- cos(theta) x_p - sin(theta) x_q
    x_q <- sin(theta) x_p + cos(theta) x_q      (both from the *old* x_p, x_q)

A *stage* applies ``n / 2`` rotations on disjoint pairs at once. A KAMA layer is
``W = D G_L ... G_2 G_1`` on a working size ``n >= max(in, out)``: the input is zero-padded to
``n``, rotated, scaled by the diagonal ``D`` and sliced to ``out`` coordinates.

Layouts:

* ``butterfly``: ``n`` a power of two, ``log2 n`` stages; stage ``s`` pairs ``i`` with
  ``i + 2**s`` (bit ``s`` of ``i`` clear), so every output depends on every input.
* ``random``: ``n`` even, ``n_stages`` stages (default ``ceil(log2 n)``), each a random perfect
  matching of the coordinates, drawn from ``seed`` (a Kac-walk style product).

The stages are applied by :func:`rlstruct.kernels.givens_product` (stage representation in
:mod:`rlstruct.kernels.reference`), which picks a fused kernel where one is available.

Parameters per layer: ``n_blocks * L * n / 2`` angles, ``n`` diagonal entries (if
``diagonal``), ``out`` bias: e.g. 256 + 64 for a 64 x 64 layer, against 4160 dense.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from rlstruct.errors import RLStructError
from rlstruct.layers.base import StructuredLinear
from rlstruct.layers.registry import register
from rlstruct.kernels import dispatch, givens_product
from rlstruct.kernels.dispatch import givens_dense
from rlstruct.kernels.reference import dense_by_product, givens_reference

LAYOUTS = ("butterfly", "random")
MODES = ("learned", "random")


def butterfly_pairs(n: int) -> torch.Tensor:
    """Pairs of the butterfly layout for a power-of-two ``n``: shape ``(log2 n, n)``."""
    stages = []
    idx = torch.arange(n)
    for s in range(int(math.log2(n))):
        stride = 1 << s
        p = idx[(idx & stride) == 0]
        stages.append(torch.stack([p, p + stride], dim=1).reshape(-1))
    return torch.stack(stages)


def random_pairs(n: int, n_stages: int, generator: torch.Generator) -> torch.Tensor:
    """``n_stages`` random perfect matchings of ``n`` (even) coordinates: shape ``(L, n)``."""
    return torch.stack([torch.randperm(n, generator=generator) for _ in range(n_stages)])


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # `Tensor.to` costs a dispatched op (~1.5 us) even when the dtype already matches.
    return t if t.dtype == dtype else t.to(dtype)


@register("kama")
class KamaLinear(StructuredLinear):
    """Product of Givens rotations times a diagonal, padded/sliced to ``in -> out``.

    Args:
        in_features, out_features, bias: as in ``nn.Linear``.
        layout: ``"butterfly"`` (``log2 n`` stages) or ``"random"`` (random pairs).
        n_stages: stages per block for the ``random`` layout (default ``ceil(log2 n)``).
        n_blocks: how many rotation products to chain (each with its own angles).
        diagonal: learn a diagonal scale ``D`` (else ``D = scale_init * I``, fixed).
        mode: ``"learned"`` trains the angles; ``"random"`` draws them from ``seed`` and freezes
            them (only the diagonal and bias learn), the random-feature setting of the paper.
        seed: seed for the random layout and random-mode angles (``None``: torch's global RNG).
        scale_init: initial value of the diagonal.

    Shapes: ``angles`` ``(n_blocks * L, n / 2)``, ``scale`` ``(n,)``, ``pairs`` ``(n_blocks * L, n)``.
    """

    default_dense_threshold = 512

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        layout: str = "butterfly",
        n_stages: Optional[int] = None,
        n_blocks: int = 1,
        diagonal: bool = True,
        mode: str = "learned",
        seed: Optional[int] = None,
        scale_init: float = 1.0,
        dense_threshold: Optional[int] = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, dense_threshold)
        if layout not in LAYOUTS:
            raise RLStructError(f"kama: unknown layout {layout!r}; choose one of {LAYOUTS}")
        if mode not in MODES:
            raise RLStructError(f"kama: unknown mode {mode!r}; choose one of {MODES}")
        if n_blocks < 1:
            raise RLStructError(f"kama: n_blocks must be >= 1, got {n_blocks}")
        width = max(in_features, out_features, 2)
        if layout == "butterfly":
            if n_stages is not None:
                raise RLStructError(
                    "kama: n_stages applies to layout=random only (butterfly has log2(n) stages)"
                )
            n = 1 << (width - 1).bit_length()
        else:
            n = width + (width % 2)
            if n_stages is None:
                n_stages = max(1, math.ceil(math.log2(n)))
            if n_stages < 1:
                raise RLStructError(f"kama: n_stages must be >= 1, got {n_stages}")
        self.layout, self.mode, self.n_blocks = layout, mode, n_blocks
        self.diagonal, self.seed, self.scale_init = diagonal, seed, scale_init
        self.n = n
        # With no seed, draw one from torch's global RNG so torch.manual_seed still fixes it.
        self._draw_seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else seed
        generator = torch.Generator().manual_seed(self._draw_seed)
        blocks = []
        for _ in range(n_blocks):
            if layout == "butterfly":
                blocks.append(butterfly_pairs(n))
            else:
                blocks.append(random_pairs(n, n_stages, generator))
        pairs = torch.cat(blocks)
        # The layout is part of the model: persistent, so a saved policy reloads the same pairs.
        self.register_buffer("pairs", pairs)
        angles = torch.empty(pairs.shape[0], n // 2)
        if mode == "learned":
            self.angles = nn.Parameter(angles)
        else:
            self.register_buffer("angles", angles)
        if diagonal:
            self.scale = nn.Parameter(torch.empty(n))
        else:
            self.register_buffer("scale", torch.empty(n))
        self.reset_parameters()

    def train_structured(self, rows: int) -> bool:
        # Building W rotates `in` columns through every stage, the product rotates `rows`: at
        # width 256 and PPO's minibatch 64 the product (fwd+bwd) costs 0.4x build + matmul;
        # at width 64 they tie, and with 11 input columns the build is cheaper (Paths table).
        return self.in_features >= 128 and rows <= 2 * self.in_features

    @property
    def n_stages_total(self) -> int:
        return self.pairs.shape[0]

    def reset_structure(self) -> None:
        with torch.no_grad():
            # Angles uniform on [0, 2 pi): the Kac random walk's distribution.
            generator = torch.Generator().manual_seed(self._draw_seed + 1)
            self.angles.copy_(torch.rand(self.angles.shape, generator=generator) * (2 * math.pi))
            self.scale.fill_(self.scale_init)

    def init_like_orthogonal(self, gain: float) -> None:
        # Rotations are orthogonal already: a diagonal of `gain` gives SB3's ortho init norm.
        super().init_like_orthogonal(gain)
        with torch.no_grad():
            self.scale.fill_(gain)

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, in) -> (batch, out)``: pad, rotate, scale, slice."""
        if self.in_features < self.n:
            x = nn.functional.pad(x, (0, self.n - self.in_features))
        y = givens_product(x, self.pairs, _as(self.angles, x.dtype), _as(self.scale, x.dtype))
        return y[:, : self.out_features]

    def to_dense(self) -> torch.Tensor:
        # One fused call on CPU (and one for its backward): the per-minibatch build is what
        # PPO pays for at RL widths.
        return givens_dense(
            self.pairs, _as(self.angles, self.scale.dtype), self.scale,
            self.in_features, self.out_features,
        )

    def apply_structured(self, x: torch.Tensor) -> torch.Tensor:
        return self._rotate(x)

    # fused training path: the build kernel and the matmul as one autograd node
    def _fused_inputs(self, x: torch.Tensor):
        kernels = dispatch.givens_cpu
        angles, scale = self.angles, self.scale
        if kernels is None or not kernels.supports(x, angles, scale):
            return None
        return angles, scale

    #: ``(key, pairs as NumPy)`` of the last checked layout (see :meth:`_checked_pairs`).
    _pairs_cache: Optional[tuple] = None

    def _checked_pairs(self, kernels, angles: torch.Tensor, scale: torch.Tensor):
        # The layout checks (shapes, indices in range: the kernels do not bounds-check) cost
        # as much as the 64x64 build itself; the layout only changes when the buffer does.
        pairs = self.pairs
        key = (pairs._version, pairs.data_ptr(), pairs.shape, angles.shape, scale.shape)
        cache = self._pairs_cache
        if cache is None or cache[0] != key:
            cache = self._pairs_cache = (key, kernels.checked_dense_pairs(
                pairs, angles, scale, self.in_features, self.out_features))
        return cache[1]

    def _fused_build(self, inputs):
        kernels = dispatch.givens_cpu
        angles, scale = inputs
        return kernels.dense_build_checked(self._checked_pairs(kernels, angles, scale),
                                           angles, scale, self.in_features, self.out_features)

    def __getstate__(self):
        state = super().__getstate__()
        state["_pairs_cache"] = None  # a NumPy view of the buffer: derived data
        return state

    def _fused_build_backward(self, state, grad):
        return dispatch.givens_cpu.dense_build_backward(state, grad)

    def _fused_reference(self, inputs):
        return dense_by_product(givens_reference, self.pairs, *inputs, self.in_features,
                                self.out_features)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n={self.n}, layout={self.layout}, "
            f"stages={self.n_stages_total}, mode={self.mode}"
        )
