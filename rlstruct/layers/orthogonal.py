"""Orthogonal layers: a dense orthogonal matrix with a learned output scale.

``W = diag(scale) Q[:out, :in]`` with ``Q`` an ``n x n`` orthogonal matrix, ``n = max(in, out)``.
``Q`` is the single ``nn.Parameter`` ``weight_orth`` (a buffer in random mode), so optimizers
that keep it on the orthogonal group (the projUNN ones, :mod:`rlstruct.optim`) find it by name.
A plain optimizer does not preserve orthogonality; :meth:`OrthogonalLinear.orthogonalize_`
projects ``Q`` back (polar decomposition).

Parameters (learned): ``n^2 + out`` (+ ``out`` bias); random mode: ``out`` (+ bias).
Cost: that of a dense layer, ``O(in * out)`` per sample.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from rlstruct.layers.common import ZooLinear
from rlstruct.layers.haar import haar_orthogonal
from rlstruct.layers.registry import register
from rlstruct.optim.tags import mark_orthogonal

#: name of the orthogonal parameter.
ORTHOGONAL_PARAMETER = "weight_orth"


@register("orthogonal")
class OrthogonalLinear(ZooLinear):
    """``W = diag(scale) Q[:out, :in]``, ``Q = weight_orth`` ``(n, n)`` orthogonal at init.

    ``scale`` ``(out,)`` is learned in both modes (it starts at 1, or ``gain`` after
    :meth:`init_like_orthogonal`).
    """

    # Above RL widths, x Q^T then the output scale: building diag(scale) Q first copies the
    # whole matrix on every call (12x nn.Linear's time at width 4096, batch 1). Up to 256 the
    # built, cached W keeps rollouts at nn.Linear's cost.
    default_dense_threshold = 256
    always_scaled = True

    _repr_fields = (*ZooLinear._repr_fields, "n")

    def _configure(self) -> None:
        self.n = max(self.in_features, self.out_features)

    def _setup(self) -> None:
        super()._setup()
        if isinstance(self.weight_orth, torch.nn.Parameter):
            mark_orthogonal(self.weight_orth)

    def _draw(self, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        # QR returns q column-major; contiguous so flat views (parameters_to_vector in ES) work
        q = haar_orthogonal(self.n, generator).float().contiguous()
        return {ORTHOGONAL_PARAMETER: q}

    def orthogonalize_(self) -> None:
        """Replace ``Q`` by its nearest orthogonal matrix ``U V^T`` (from ``Q = U S V^T``)."""
        with torch.no_grad():
            q = self.weight_orth
            u, _, vh = torch.linalg.svd(q.double())
            q.copy_((u @ vh).to(q.dtype))

    def _dense(self) -> torch.Tensor:
        return self.weight_orth[: self.out_features, : self.in_features]

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self._dense().to(x.dtype).t()
