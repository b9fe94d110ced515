"""Run an exported rlstruct policy with numpy alone (no torch, SB3, gymnasium or rlstruct).

This file is self-contained: copy it next to a runtime bundle (``runtime.json`` +
``runtime.npz``, written by ``python -m rlstruct.export POLICY --format numpy --out DIR``) onto
the target machine and::

    from runtime import load_policy
    policy = load_policy("DIR")            # mode="dense" (default, fastest) or "compact"
    action = policy.act(obs)               # obs (obs_dim,) -> (act_dim,); (batch, obs_dim) too

``act`` is SB3's deterministic ``predict`` of the exported policy, step for step: observation
normalization as VecNormalize does it (``clip((obs - mean) / sqrt(var + eps), -clip, clip)`` in
float64, then float32), the actor's hidden layers and activations, the dense action head, then
``clip`` to the action-space bounds (Box) or ``argmax`` (Discrete).

Bundle format (version 1): ``runtime.json`` lists the layers; each layer is a chain of *ops*
(its linear map ``x -> x W^T`` in structured form), a bias and an activation. The ops are

* ``linear`` ``w`` ``(out, in)``: a dense matmul;
* ``strided`` ``v`` ``(r, L)``: ``W_k[i, j] = v[k, offset + row_step * i + col_step * j]``
  (Toeplitz, Hankel and (skew-)circulant matrices are all of this form); ``r`` branches take the
  same input (or consecutive slices of it, ``split_input``) and are stacked (or summed,
  ``sum_output``);
* ``pad`` / ``slice`` to ``size`` coordinates; ``mul`` by a vector ``d``; ``gather`` ``index``;
* ``hadamard``: the normalized Walsh-Hadamard transform (Sylvester order);
* ``givens`` ``pairs`` ``(L, n)``, ``angles`` ``(L, n/2)``: stage ``l`` rotates the coordinates
  ``(pairs[l, 2k], pairs[l, 2k+1])`` by ``angles[l, k]``;
* ``butterfly`` ``twiddle`` ``(4, n/2)``, ``stride``: pair ``k`` joins ``p`` and ``p + stride``
  (``p = (k // stride) * 2 stride + k % stride``) by the 2x2 matrix of planes ``(a, b; c, d)``.

``mode="dense"`` (the default) multiplies each layer's chain out into one dense ``W`` at load
time (one matmul per layer: the fastest at the usual RL widths of 16 to 256; the bundle on disk
stays compact); ``mode="compact"`` applies the ops as written (memory stays that of the compact
parameters, for large widths or small memories).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = ["BundleError", "Policy", "load_policy", "load_bundle", "fold_dense", "MODES"]

BUNDLE_FORMAT = "rlstruct-runtime-bundle"
BUNDLE_VERSION = 1
SPEC_FILE = "runtime.json"
ARRAYS_FILE = "runtime.npz"
MODES = ("compact", "dense")
#: largest Walsh-Hadamard factor applied as one small matmul in compact mode.
HADAMARD_MAX_FACTOR = 16

Op = Callable[[np.ndarray], np.ndarray]


class BundleError(ValueError):
    """A missing, corrupt or unsupported runtime bundle, or a bad call (one-line message)."""


# ---------------------------------------------------------------------------------------------
# loading
def load_bundle(folder: Union[str, os.PathLike]) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """``(spec, arrays)`` of the bundle in ``folder`` (``runtime.json`` + ``runtime.npz``)."""
    folder = os.fspath(folder)
    spec_path = os.path.join(folder, SPEC_FILE)
    arrays_path = os.path.join(folder, ARRAYS_FILE)
    if not (os.path.isfile(spec_path) and os.path.isfile(arrays_path)):
        raise BundleError(
            f"{folder} is not a runtime bundle (needs {SPEC_FILE} and {ARRAYS_FILE}); write one with "
            "python -m rlstruct.export POLICY --format numpy --out DIR"
        )
    try:
        with open(spec_path, "r", encoding="utf-8") as handle:
            spec = json.load(handle)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{spec_path} is corrupt ({exc}); re-export the policy") from None
    if not isinstance(spec, dict) or spec.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{spec_path} is not an rlstruct runtime bundle; re-export the policy")
    if int(spec.get("version", 0)) > BUNDLE_VERSION:
        raise BundleError(
            f"{folder} is bundle v{spec['version']} but this runtime reads v{BUNDLE_VERSION}; "
            "copy the runtime.py that came with the bundle"
        )
    try:
        with np.load(arrays_path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{arrays_path} is corrupt or truncated ({exc}); re-export the policy") from None
    return spec, arrays


def _array(arrays: Dict[str, np.ndarray], name: Any, what: str) -> np.ndarray:
    if name not in arrays:
        raise BundleError(f"the bundle lacks array {name!r} ({what}); the files were mixed up: re-export")
    return arrays[name]


# ---------------------------------------------------------------------------------------------
# activations
def _activation(spec: Optional[Dict[str, Any]]) -> Optional[Op]:
    if spec is None:
        return None
    name = spec.get("name")
    alpha = float(spec.get("alpha", 0.0))
    if name == "identity":
        return None
    if name == "tanh":
        return lambda x: np.tanh(x, out=x)
    if name == "relu":
        return lambda x: np.maximum(x, 0, out=x)
    if name == "leaky_relu":
        return lambda x: np.where(x >= 0, x, x * x.dtype.type(alpha))
    if name == "elu":
        return lambda x: np.where(x > 0, x, np.expm1(x) * x.dtype.type(alpha))
    if name == "silu":
        return lambda x: x / (1 + np.exp(-x))
    if name == "gelu":
        if spec.get("approximate", "none") == "tanh":
            c = math.sqrt(2.0 / math.pi)
            return lambda x: 0.5 * x * (1 + np.tanh(x.dtype.type(c) * (x + x.dtype.type(0.044715) * x ** 3)))
        erf = np.vectorize(math.erf, otypes=[np.float64])
        return lambda x: (0.5 * x * (1 + erf(x / math.sqrt(2.0)))).astype(x.dtype)
    raise BundleError(f"unknown activation {name!r} in the bundle; update runtime.py")


# ---------------------------------------------------------------------------------------------
# ops: each compiles to a function of a (batch, size) array; `dims` tracks the size
def _hadamard_sizes(n: int) -> List[int]:
    bits = n.bit_length() - 1
    max_bits = HADAMARD_MAX_FACTOR.bit_length() - 1
    count = max(1, -(-bits // max_bits))
    base, extra = divmod(bits, count)
    return [1 << (base + (1 if i < extra else 0)) for i in range(count)]


def _sylvester(n: int, dtype: np.dtype) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h.astype(dtype)


def _compile_hadamard(n: int, dtype: np.dtype) -> Op:
    if n < 1 or n & (n - 1):
        raise BundleError(f"hadamard op on size {n}, not a power of two; re-export the policy")
    sizes = _hadamard_sizes(n)
    factors = [(f, _sylvester(f, dtype)) for f in reversed(sizes)]
    norm = dtype.type(1.0 / math.sqrt(n))
    if len(factors) == 1:
        h = factors[0][1] * norm
        return lambda x: x @ h

    def apply(x: np.ndarray) -> np.ndarray:
        batch = x.shape[0]
        for f, h in factors:
            x = (x.reshape(-1, f) @ h).reshape(batch, n // f, f).transpose(0, 2, 1)
        return x.reshape(batch, n) * norm

    return apply


def _strided_views(v: np.ndarray, offset: int, row_step: int, col_step: int, rows: int, cols: int) -> List[np.ndarray]:
    low = offset + min(0, row_step * (rows - 1)) + min(0, col_step * (cols - 1))
    high = offset + max(0, row_step * (rows - 1)) + max(0, col_step * (cols - 1))
    if low < 0 or high >= v.shape[1]:
        raise BundleError("a strided op reads outside its parameter vector; re-export the policy")
    v = np.ascontiguousarray(v)
    item = v.itemsize
    views = []
    for k in range(v.shape[0]):
        base = v[k, offset:]
        view = np.lib.stride_tricks.as_strided(
            base, shape=(rows, cols), strides=(row_step * item, col_step * item), writeable=False
        )
        views.append(view)
    return views


def _compile_strided(op: Dict[str, Any], arrays: Dict[str, np.ndarray], dtype: np.dtype, size: int) -> Tuple[Op, int]:
    v = np.atleast_2d(_array(arrays, op.get("v"), "strided parameters")).astype(dtype)
    offset, a, b = int(op["offset"]), int(op["row_step"]), int(op["col_step"])
    rows, cols = int(op["rows"]), int(op["cols"])
    split, total = bool(op.get("split_input")), bool(op.get("sum_output"))
    r = v.shape[0]
    if size != (r * cols if split else cols):
        raise BundleError(f"a strided op expects {r * cols if split else cols} inputs, gets {size}; re-export")
    if abs(a) != 1 or abs(b) != 1:
        raise BundleError("strided ops need steps of +-1; re-export the policy")
    views = _strided_views(v, offset, a, b, rows, cols)
    # Single observations: one correlation / convolution per branch reads the parameters as they
    # are (b = +1: correlate, b = -1: convolve), then every output is one entry of it.
    rows_at = offset + a * np.arange(rows)

    def one(k: int, x: np.ndarray) -> np.ndarray:
        if b == 1:
            full = np.correlate(v[k], x, "valid")  # full[s] = sum_j v[s + j] x[j]
            return full[rows_at]
        full = np.convolve(v[k], x, "full")  # full[s] = sum_j v[s - j] x[j]
        return full[rows_at]

    def apply(x: np.ndarray) -> np.ndarray:
        if x.shape[0] == 1:
            xs = [x[0, k * cols:(k + 1) * cols] for k in range(r)] if split else [x[0]] * r
            parts = [one(k, xs[k]) for k in range(r)]
        else:
            xs = [x[:, k * cols:(k + 1) * cols] for k in range(r)] if split else [x] * r
            parts = [xs[k] @ views[k].T for k in range(r)]
        if total:
            out = parts[0]
            for part in parts[1:]:
                out = out + part
        else:
            out = parts[0] if r == 1 else np.concatenate(parts, axis=-1)
        return out.reshape(x.shape[0], -1)

    return apply, rows if total else r * rows


def _compile_givens(op: Dict[str, Any], arrays: Dict[str, np.ndarray], dtype: np.dtype, size: int) -> Op:
    pairs = np.asarray(_array(arrays, op.get("pairs"), "givens pairs"), dtype=np.int64)
    angles = np.asarray(_array(arrays, op.get("angles"), "givens angles"))
    n = size
    if pairs.ndim != 2 or pairs.shape[1] != n or angles.shape != (pairs.shape[0], n // 2) or n % 2:
        raise BundleError(f"givens op shapes {pairs.shape}, {angles.shape} do not fit size {n}; re-export")
    complex_type = np.complex64 if dtype == np.float32 else np.complex128
    angles = angles.astype(dtype)
    rotations = (np.cos(angles) + 1j * np.sin(angles)).astype(complex_type)[:, None, :]  # rows: no broadcast
    # Stay in each stage's interleaved pair order (p0, q0, p1, q1, ...): pairs are then adjacent
    # complex numbers, a stage is one gather and one complex multiply; the gather composes the
    # inverse of the previous order with the next one.
    order = np.arange(n)
    positions = np.arange(n)
    gathers = []
    for stage in range(pairs.shape[0]):
        perm = pairs[stage]
        if sorted(perm.tolist()) != list(range(n)):
            raise BundleError("a givens stage is not a perfect matching; re-export the policy")
        inverse = np.empty(n, dtype=np.int64)
        inverse[order] = positions
        gathers.append(inverse[perm])
        order = perm
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = positions
    final = inverse

    def apply(x: np.ndarray) -> np.ndarray:
        for index, rotation in zip(gathers, rotations):
            z = np.take(x, index, axis=1).view(complex_type)
            z *= rotation
            x = z.view(dtype)
        return np.take(x, final, axis=1)

    return apply


def _compile_butterfly(op: Dict[str, Any], arrays: Dict[str, np.ndarray], dtype: np.dtype, size: int) -> Op:
    stride = int(op["stride"])
    twiddle = np.asarray(_array(arrays, op.get("twiddle"), "butterfly twiddle"), dtype=dtype)
    n = size
    if twiddle.shape != (4, n // 2) or n % (2 * stride):
        raise BundleError(f"butterfly op shapes {twiddle.shape}, stride {stride} do not fit size {n}; re-export")
    groups = n // (2 * stride)
    # t[g, i, j, s]: row i, column j of the 2x2 matrix of the pair (g, s).
    t = twiddle.reshape(2, 2, groups, stride).transpose(2, 0, 1, 3).copy()

    def apply(x: np.ndarray) -> np.ndarray:
        batch = x.shape[0]
        y = (t * x.reshape(batch, groups, 1, 2, stride)).sum(axis=3)
        return y.reshape(batch, n)

    return apply


def _compile_ops(ops: List[Dict[str, Any]], arrays: Dict[str, np.ndarray], dtype: np.dtype, size: int) -> Tuple[List[Op], int]:
    """Compile a layer's op chain for ``dtype``; returns the functions and the output size."""
    compiled: List[Op] = []
    for op in ops:
        kind = op.get("op")
        if kind == "linear":
            w = np.asarray(_array(arrays, op.get("w"), "linear weight"), dtype=dtype)
            if w.ndim != 2 or w.shape[1] != size:
                raise BundleError(f"linear op weight {w.shape} does not take {size} inputs; re-export")
            wt = np.ascontiguousarray(w.T)
            compiled.append(lambda x, wt=wt: x @ wt)
            size = w.shape[0]
        elif kind == "strided":
            fn, size = _compile_strided(op, arrays, dtype, size)
            compiled.append(fn)
        elif kind == "pad":
            new = int(op["size"])
            if new < size:
                raise BundleError(f"pad op to {new} below the current size {size}; re-export")
            extra = new - size
            if extra:
                compiled.append(lambda x, e=extra: np.concatenate([x, np.zeros((x.shape[0], e), x.dtype)], axis=1))
            size = new
        elif kind == "slice":
            new = int(op["size"])
            if new > size:
                raise BundleError(f"slice op to {new} above the current size {size}; re-export")
            compiled.append(lambda x, m=new: x[:, :m])
            size = new
        elif kind == "mul":
            d = np.asarray(_array(arrays, op.get("d"), "diagonal"), dtype=dtype)
            if d.shape != (size,):
                raise BundleError(f"mul op vector {d.shape} does not fit size {size}; re-export")
            compiled.append(lambda x, d=d.reshape(1, -1): x * d)
        elif kind == "gather":
            index = np.asarray(_array(arrays, op.get("index"), "gather index"), dtype=np.int64)
            if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() >= size)):
                raise BundleError(f"gather op index out of range for size {size}; re-export")
            compiled.append(lambda x, i=index: np.take(x, i, axis=1))
            size = index.shape[0]
        elif kind == "hadamard":
            compiled.append(_compile_hadamard(size, dtype))
        elif kind == "givens":
            compiled.append(_compile_givens(op, arrays, dtype, size))
        elif kind == "butterfly":
            compiled.append(_compile_butterfly(op, arrays, dtype, size))
        else:
            raise BundleError(f"unknown op {kind!r} in the bundle; copy the runtime.py that came with it")
    return compiled, size


def _run(ops: List[Op], x: np.ndarray) -> np.ndarray:
    for fn in ops:
        x = fn(x)
    return x


def fold_dense(layer: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> np.ndarray:
    """A layer's op chain multiplied out (in float64) into its dense ``W`` ``(out, in)``, float32."""
    ops, out = _compile_ops(layer["ops"], arrays, np.dtype(np.float64), int(layer["in"]))
    if out != int(layer["out"]):
        raise BundleError(f"layer {layer.get('name')} maps to {out} outputs, not {layer['out']}; re-export")
    return np.ascontiguousarray(_run(ops, np.eye(int(layer["in"]))).T).astype(np.float32)


def _row(vector: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vector).reshape(1, -1)


# ---------------------------------------------------------------------------------------------
class Policy:
    """A loaded policy: :meth:`act` maps raw observations to deterministic actions.

    Attributes: ``obs_dim``, ``action_dim`` (1 for Discrete), ``discrete``, ``mode``, ``spec``
    (the bundle's ``runtime.json``) and ``nbytes`` (bytes of the arrays this mode keeps).
    """

    def __init__(self, spec: Dict[str, Any], arrays: Dict[str, np.ndarray], mode: str = "dense") -> None:
        if mode not in MODES:
            raise BundleError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        self.spec, self.mode = spec, mode
        self.obs_dim = int(spec["obs_dim"])
        kept: List[np.ndarray] = []
        norm = spec.get("normalization")
        if norm:
            mean = np.asarray(_array(arrays, norm["mean"], "obs mean"), dtype=np.float64)
            var = np.asarray(_array(arrays, norm["var"], "obs var"), dtype=np.float64)
            # VecNormalize computes (obs - mean) / sqrt(var + eps) in float64: same ops here.
            # Row vectors (1, dim): a single observation then runs same-shape ufuncs, ~3x cheaper
            # than broadcasting at these sizes; bounds as arrays, not Python floats, likewise.
            self._mean, self._std = _row(mean), _row(np.sqrt(var + float(norm["epsilon"])))
            clip = float(norm["clip"])
            self._clip_low, self._clip_high = _row(np.full(self.obs_dim, -clip)), _row(np.full(self.obs_dim, clip))
            kept += [self._mean, self._std]
        else:
            self._mean = None
        # Per layer: (W^T or None, op functions, bias, activation). A single dense matrix is
        # applied inline: at RL widths every Python call is a measurable part of an action.
        self._layers: List[Tuple[Optional[np.ndarray], List[Op], Optional[np.ndarray], Optional[Op]]] = []
        size = self.obs_dim
        for layer in spec["layers"]:
            if int(layer["in"]) != size:
                raise BundleError(f"layer {layer.get('name')} takes {layer['in']} inputs, gets {size}; re-export")
            matrix = None
            ops: List[Op] = []
            if mode == "dense" or [op.get("op") for op in layer["ops"]] == ["linear"]:
                matrix = np.ascontiguousarray(fold_dense(layer, arrays).T)
                kept.append(matrix)
            else:
                ops, out = _compile_ops(layer["ops"], arrays, np.dtype(np.float32), size)
                if out != int(layer["out"]):
                    raise BundleError(f"layer {layer.get('name')} maps to {out}, not {layer['out']}; re-export")
                kept += [np.asarray(arrays[v]) for op in layer["ops"] for k, v in op.items()
                         if k in ("w", "v", "d", "index", "pairs", "angles", "twiddle")]
            bias = None
            if layer.get("bias") is not None:
                bias = _row(np.asarray(_array(arrays, layer["bias"], "bias"), dtype=np.float32))
                kept.append(bias)
            self._layers.append((matrix, ops, bias, _activation(layer.get("activation"))))
            size = int(layer["out"])
        action = spec["action"]
        self.discrete = action["kind"] == "discrete"
        if self.discrete:
            if size != int(action["n"]):
                raise BundleError(f"the action head has {size} outputs for {action['n']} actions; re-export")
            self.action_dim = 1
            self._low = self._high = None
        else:
            self.action_dim = size
            self._low = self._high = None
            if action.get("clip"):
                self._low = _row(np.asarray(_array(arrays, action["low"], "action low"), dtype=np.float32))
                self._high = _row(np.asarray(_array(arrays, action["high"], "action high"), dtype=np.float32))
                kept += [self._low, self._high]
        self.nbytes = int(sum(a.nbytes for a in kept))

    def act(self, obs: Any) -> Union[np.ndarray, int]:
        """Deterministic action for one observation ``(obs_dim,)`` or a batch ``(batch, obs_dim)``.

        Returns ``(action_dim,)`` float32 (an ``int`` for Discrete) or ``(batch, action_dim)``
        (``(batch,)`` int64 for Discrete).
        """
        x = np.asarray(obs, dtype=np.float64)
        single = x.ndim == 1
        if single:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise BundleError(
                f"act expects observations of shape ({self.obs_dim},) or (batch, {self.obs_dim}), "
                f"got {np.shape(obs)}; pass the raw environment observation"
            )
        if self._mean is not None:
            # np.clip((obs - mean) / sqrt(var + eps), -clip, clip), as VecNormalize, in fewer calls
            x = x - self._mean
            x /= self._std
            np.maximum(x, self._clip_low, out=x)
            np.minimum(x, self._clip_high, out=x)
        x = x.astype(np.float32)
        for matrix, ops, bias, activation in self._layers:
            if matrix is not None:
                x = x @ matrix
            else:
                for fn in ops:
                    x = fn(x)
            if bias is not None:
                x = x + bias
            if activation is not None:
                x = activation(x)
        if self.discrete:
            index = np.argmax(x, axis=1)
            return int(index[0]) if single else index
        if self._low is not None:
            x = np.maximum(x, self._low)
            np.minimum(x, self._high, out=x)
        return x[0] if single else x

    __call__ = act


def load_policy(folder: Union[str, os.PathLike], mode: str = "dense") -> Policy:
    """Load the runtime bundle in ``folder``; ``mode`` is ``"compact"`` or ``"dense"``."""
    spec, arrays = load_bundle(folder)
    return Policy(spec, arrays, mode)


if __name__ == "__main__":  # python runtime.py DIR: a smoke test on a zero observation
    import sys

    if len(sys.argv) != 2:
        print("usage: python runtime.py BUNDLE_DIR", file=sys.stderr)
        sys.exit(2)
    try:
        loaded = load_policy(sys.argv[1])
    except BundleError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(loaded.act(np.zeros(loaded.obs_dim)))
