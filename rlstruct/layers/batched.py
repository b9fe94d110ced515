"""Several layers' weight matrices built in one autograd node.

A training forward through ``k`` structured layers on the fused build path runs ``k`` Python
``autograd.Function`` s forward and ``k`` backward (:class:`~rlstruct.layers.base._BuiltLinear`).
At reinforcement-learning widths that Python overhead, not arithmetic, is what a structured
layer costs over ``nn.Linear``. The builds do not depend on the layers' inputs, so a network
can build every ``W`` at once before its forward::

    weights = built_weights(layers, like=features)      # one node; None where a layer can't
    y = linear_with(layer, x, weights[i])               # F.linear: autograd in C++

Values and gradients are those of each layer's own forward (the same kernels); double backward
(``create_graph``, e.g. TRPO) differentiates the families' pure-torch references.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from rlstruct.layers.base import StructuredLinear, reference_build_grads


def built_weights(layers: Sequence[StructuredLinear], like: torch.Tensor, rows: Optional[int] = None
                  ) -> List[Optional[torch.Tensor]]:
    """For each layer, its built weight (``W`` or ``W^T``, see :func:`linear_with`) where its
    training forward would take the fused build path, else ``None`` (call the layer itself).

    Args:
        layers: the layers, in any order; each may appear once.
        like: a 2-D tensor with the inputs' dtype and device (the network's input will do).
        rows: the batch size the layers will see (default ``like.shape[0]``).
    """
    rows = like.shape[0] if rows is None else rows
    chosen: List[StructuredLinear] = []
    inputs: List[Tuple[torch.Tensor, ...]] = []
    for layer in layers:
        found = layer.fused_build_inputs(like, rows)
        if found is not None:
            chosen.append(layer)
            inputs.append(found)
    out: List[Optional[torch.Tensor]] = [None] * len(layers)
    if not chosen:
        return out
    counts = tuple(len(group) for group in inputs)
    built = _BuiltWeights.apply(tuple(chosen), counts, *[t for group in inputs for t in group])
    where = {id(layer): i for i, layer in enumerate(layers)}
    for layer, weight in zip(chosen, built):
        out[where[id(layer)]] = weight
    return out


def linear_with(layer: StructuredLinear, x: torch.Tensor, built: torch.Tensor) -> torch.Tensor:
    """``x W^T + b`` for ``layer`` from its weight as :func:`built_weights` returned it.

    Shape: ``(batch, in_features) -> (batch, out_features)``.
    """
    if layer._fused_transposed:  # built is W^T (in, out)
        return x.mm(built) if layer.bias is None else torch.addmm(layer.bias, x, built)
    return F.linear(x, built, layer.bias)


class _BuiltWeights(torch.autograd.Function):
    """Every chosen layer's ``_fused_build`` forward, every ``_fused_build_backward`` backward."""

    @staticmethod
    def forward(ctx, layers: Tuple[StructuredLinear, ...], counts: Tuple[int, ...], *flat: torch.Tensor):
        weights, states, start = [], [], 0
        for layer, count in zip(layers, counts):
            weight, state = layer._fused_build(flat[start:start + count])
            weights.append(weight)
            states.append(state)
            start += count
        ctx.layers, ctx.counts, ctx.states = layers, counts, states
        ctx.save_for_backward(*flat)
        return tuple(weights)

    @staticmethod
    def backward(ctx, *grads: Optional[torch.Tensor]):
        flat = ctx.saved_tensors
        need = ctx.needs_input_grad[2:]
        out: List[Optional[torch.Tensor]] = []
        start = 0
        for layer, count, state, grad in zip(ctx.layers, ctx.counts, ctx.states, grads):
            inputs, wanted = flat[start:start + count], need[start:start + count]
            start += count
            if grad is None or not any(wanted):
                out.extend([None] * count)
            elif torch.is_grad_enabled():  # create_graph: through the differentiable reference
                with torch.enable_grad():
                    weight = layer._fused_reference(tuple(inputs))  # W (out, in)
                    grad_w = grad.t() if layer._fused_transposed else grad
                    out.extend(reference_build_grads(weight, inputs, wanted, grad_w))
            else:
                found = layer._fused_build_backward(state, grad)
                out.extend(g if k else None for g, k in zip(found, wanted))
        return (None, None, *out)

