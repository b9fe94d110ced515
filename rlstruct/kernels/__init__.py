"""Fused implementations of structured products, each with a pure-torch reference beside it.

:func:`givens_product` is the single entry point the KAMA layer calls; it dispatches to the
fastest available implementation for the tensor's device and falls back to the pure-torch
reference (:func:`rlstruct.kernels.reference.givens_reference`).
"""

from rlstruct.kernels.dispatch import givens_product

__all__ = ["givens_product"]
