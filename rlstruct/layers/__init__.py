"""Structured linear layers: the math, with no knowledge of reinforcement learning.

Every family is a :class:`StructuredLinear` registered under a name::

    from rlstruct.layers import make_layer
    layer = make_layer("kama", 11, 64)        # in=11, out=64
    layer.to_dense()                          # (64, 11) weight, differentiable
"""

from rlstruct.layers.base import StructuredLinear
from rlstruct.layers.registry import (
    available_structures,
    get_structure,
    make_layer,
    register,
)

# Importing a family module registers it.
from rlstruct.layers import (  # noqa: E402,F401  (registration)
    dense, toeplitz, givens, lowrank, ldr, spinners, kaleidoscope, snnk, orthogonal,
)

__all__ = [
    "StructuredLinear",
    "available_structures",
    "get_structure",
    "make_layer",
    "register",
]
