"""A runtime bundle as an ONNX graph (opset 17) that keeps the layers' structure.

Input ``obs`` ``(batch, obs_dim)`` float32 (raw observations), output ``action``
``(batch, action_dim)`` float32 (Box, clipped to the bounds) or ``(batch,)`` int64 (Discrete,
argmax). The graph is built node by node with :mod:`onnx.helper` from the bundle's op chains,
so in ``mode="compact"`` the initializers are the compact parameters:

* Toeplitz / Hankel / circulant / LDR (``strided`` ops): the diagonals; the index matrix
  ``offset + row_step i + col_step j`` is made in-graph by two ``Range`` nodes and one ``Add``,
  then a ``Gather`` expands the diagonals into ``W^T`` and a ``MatMul`` applies it;
* KAMA (``givens``): per stage one ``Gather`` of the coordinates into ``(p..., q...)`` order, a
  ``Split``, the rotation by ``Cos``/``Sin`` of the stored angles, and a ``Concat``;
* spinners (``hadamard``): Kronecker factors of at most 16 (``Reshape``, ``MatMul`` by a +-1
  matrix, ``Transpose``), then the ``1/sqrt(n)`` normalization;
* Kaleidoscope (``butterfly``): ``Reshape`` to ``(batch, groups, 2, stride)``, ``Split``, four
  twiddle-plane ``Mul`` s, ``Concat``.

``mode="dense"`` folds every layer into one ``MatMul`` by its dense ``W^T``.
Observation normalization runs in float64 in-graph (``Cast``, ``Sub``, ``Div``, ``Clip``), as
VecNormalize does, before the float32 network.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from rlstruct.errors import RLStructError
from rlstruct.export import runtime
from rlstruct.export.program import Bundle

OPSET = 17
IR_VERSION = 8
ONNX_FILE = "policy.onnx"


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise RLStructError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    return onnx, helper, numpy_helper


class _GraphBuilder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.onnx, self.helper, self.numpy_helper = _onnx()
        self.nodes: List[Any] = []
        self.initializers: Dict[str, Any] = {}
        self._count = 0

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        if name not in self.initializers:
            array = np.array(value, dtype=dtype, order="C")  # keeps 0-d scalars 0-d
            self.initializers[name] = self.numpy_helper.from_array(array, name)
        return name

    def scalar(self, value: Any, dtype: Any = np.int64) -> str:
        name = f"c.{np.dtype(dtype).name}.{value!r}".replace("-", "m")
        return self.const(name, np.asarray(value, dtype=dtype), dtype)

    def ints(self, values: List[int]) -> str:
        return self.const("c.i64." + "_".join(str(v).replace("-", "m") for v in values), np.asarray(values, np.int64), np.int64)

    def node(self, op: str, inputs: List[str], outputs: int = 1, name: Optional[str] = None, **attrs: Any) -> Any:
        self._count += 1
        # Short tensor names and no node names: at RL widths they would otherwise weigh as
        # much as the compact parameters in the file.
        outs = [f"t{self._count}" + ("" if k == 0 else f"_{k}") for k in range(outputs)] if name is None else [name]
        self.nodes.append(self.helper.make_node(op, inputs, outs, **attrs))
        return outs[0] if outputs == 1 else outs


def _strided(g: _GraphBuilder, x: str, op: Dict[str, Any], arrays: Dict[str, np.ndarray], size: int):
    v = np.atleast_2d(arrays[op["v"]]).astype(np.float32)
    r, rows, cols = v.shape[0], int(op["rows"]), int(op["cols"])
    off, a, b = int(op["offset"]), int(op["row_step"]), int(op["col_step"])
    row_index = g.node("Range", [g.scalar(off), g.scalar(off + a * rows), g.scalar(a)])
    col_index = g.node("Range", [g.scalar(0), g.scalar(b * cols), g.scalar(b)])
    index = g.node("Add", [g.node("Unsqueeze", [col_index, g.ints([1])]),
                           g.node("Unsqueeze", [row_index, g.ints([0])])])  # (cols, rows)
    if r == 1:
        wt = g.node("Gather", [g.const(op["v"], v[0]), index], axis=0)  # (cols, rows)
        return g.node("MatMul", [x, wt]), rows
    wt = g.node("Gather", [g.const(op["v"], v), index], axis=1)  # (r, cols, rows)
    if op.get("split_input"):
        x = g.node("Transpose", [g.node("Reshape", [x, g.ints([-1, r, cols])])], perm=[1, 0, 2])
    y = g.node("MatMul", [x, wt])  # (r, batch, rows)
    if op.get("sum_output"):
        return g.node("ReduceSum", [y, g.ints([0])], keepdims=0), rows
    y = g.node("Transpose", [y], perm=[1, 0, 2])
    return g.node("Reshape", [y, g.ints([-1, r * rows])]), r * rows


def _hadamard(g: _GraphBuilder, x: str, n: int) -> str:
    for f in reversed(runtime._hadamard_sizes(n)):
        h = g.const(f"c.hadamard{f}", runtime._sylvester(f, np.dtype(np.float32)))
        if f == n:
            x = g.node("MatMul", [x, h])
            break
        y = g.node("MatMul", [g.node("Reshape", [x, g.ints([-1, f])]), h])
        y = g.node("Transpose", [g.node("Reshape", [y, g.ints([-1, n // f, f])])], perm=[0, 2, 1])
        x = g.node("Reshape", [y, g.ints([-1, n])])
    return g.node("Mul", [x, g.scalar(1.0 / math.sqrt(n), np.float32)])


def _givens(g: _GraphBuilder, x: str, op: Dict[str, Any], arrays: Dict[str, np.ndarray], n: int) -> str:
    pairs = np.asarray(arrays[op["pairs"]], dtype=np.int64)
    angles = np.asarray(arrays[op["angles"]], dtype=np.float32)
    half = n // 2
    split = g.ints([half, half])
    order = np.arange(n)
    for stage in range(pairs.shape[0]):
        target = np.concatenate([pairs[stage, 0::2], pairs[stage, 1::2]])  # (p..., q...)
        inverse = np.empty(n, np.int64)
        inverse[order] = np.arange(n)
        index = g.const(f"{op['pairs']}.gather{stage}", inverse[target], np.int32)
        xp, xq = g.node("Split", [g.node("Gather", [x, index], axis=1), split], outputs=2, axis=1)
        theta = g.const(f"{op['angles']}.{stage}", angles[stage])
        c, s = g.node("Cos", [theta]), g.node("Sin", [theta])
        yp = g.node("Sub", [g.node("Mul", [xp, c]), g.node("Mul", [xq, s])])
        yq = g.node("Add", [g.node("Mul", [xp, s]), g.node("Mul", [xq, c])])
        x = g.node("Concat", [yp, yq], axis=1)
        order = target
    inverse = np.empty(n, np.int64)
    inverse[order] = np.arange(n)
    return g.node("Gather", [x, g.const(f"{op['pairs']}.restore", inverse, np.int32)], axis=1)


def _butterfly(g: _GraphBuilder, x: str, op: Dict[str, Any], arrays: Dict[str, np.ndarray], n: int) -> str:
    stride = int(op["stride"])
    groups = n // (2 * stride)
    planes = np.asarray(arrays[op["twiddle"]], dtype=np.float32).reshape(4, groups, 1, stride)
    a, b, c, d = (g.const(f"{op['twiddle']}.{k}", planes[i]) for i, k in enumerate("abcd"))
    first, second = g.node("Split", [g.node("Reshape", [x, g.ints([-1, groups, 2, stride])]), g.ints([1, 1])],
                           outputs=2, axis=2)
    top = g.node("Add", [g.node("Mul", [first, a]), g.node("Mul", [second, b])])
    bottom = g.node("Add", [g.node("Mul", [first, c]), g.node("Mul", [second, d])])
    return g.node("Reshape", [g.node("Concat", [top, bottom], axis=2), g.ints([-1, n])])


def _ops(g: _GraphBuilder, x: str, ops: List[Dict[str, Any]], arrays: Dict[str, np.ndarray], size: int):
    for op in ops:
        kind = op["op"]
        if kind == "linear":
            w = np.asarray(arrays[op["w"]], dtype=np.float32)
            x, size = g.node("MatMul", [x, g.const(op["w"] + ".T", w.T)]), w.shape[0]
        elif kind == "strided":
            x, size = _strided(g, x, op, arrays, size)
        elif kind == "pad":
            if int(op["size"]) > size:
                x = g.node("Pad", [x, g.ints([0, 0, 0, int(op["size"]) - size])], mode="constant")
            size = int(op["size"])
        elif kind == "slice":
            x = g.node("Slice", [x, g.ints([0]), g.ints([int(op["size"])]), g.ints([1])])
            size = int(op["size"])
        elif kind == "mul":
            x = g.node("Mul", [x, g.const(op["d"], arrays[op["d"]])])
        elif kind == "gather":
            index = np.asarray(arrays[op["index"]], dtype=np.int32)
            x, size = g.node("Gather", [x, g.const(op["index"], index, np.int32)], axis=1), index.shape[0]
        elif kind == "hadamard":
            x = _hadamard(g, x, size)
        elif kind == "givens":
            x = _givens(g, x, op, arrays, size)
        elif kind == "butterfly":
            x = _butterfly(g, x, op, arrays, size)
        else:
            raise RLStructError(f"the ONNX exporter does not know op {kind!r}; update rlstruct")
    return x, size


def _activation(g: _GraphBuilder, x: str, spec: Optional[Dict[str, Any]]) -> str:
    if spec is None or spec["name"] == "identity":
        return x
    name = spec["name"]
    if name == "tanh":
        return g.node("Tanh", [x])
    if name == "relu":
        return g.node("Relu", [x])
    if name == "leaky_relu":
        return g.node("LeakyRelu", [x], alpha=float(spec["alpha"]))
    if name == "elu":
        return g.node("Elu", [x], alpha=float(spec["alpha"]))
    if name == "silu":
        return g.node("Mul", [x, g.node("Sigmoid", [x])])
    if name == "gelu":
        half = g.scalar(0.5, np.float32)
        one = g.scalar(1.0, np.float32)
        if spec.get("approximate", "none") == "tanh":
            cube = g.node("Mul", [g.node("Mul", [x, x]), x])
            inner = g.node("Add", [x, g.node("Mul", [cube, g.scalar(0.044715, np.float32)])])
            t = g.node("Tanh", [g.node("Mul", [inner, g.scalar(math.sqrt(2 / math.pi), np.float32)])])
        else:
            t = g.node("Erf", [g.node("Mul", [x, g.scalar(1 / math.sqrt(2.0), np.float32)])])
        return g.node("Mul", [g.node("Mul", [x, half]), g.node("Add", [t, one])])
    raise RLStructError(f"the ONNX exporter does not know activation {name!r}; update rlstruct")


def build_onnx(bundle: Bundle, mode: str = "compact") -> Any:
    """The ONNX ``ModelProto`` of ``bundle``; ``mode`` ``"compact"`` keeps the structure,
    ``"dense"`` folds each layer into one matmul."""
    if mode not in runtime.MODES:
        raise RLStructError(f"unknown mode {mode!r}; choose one of {', '.join(runtime.MODES)}")
    g = _GraphBuilder()
    helper, onnx = g.helper, g.onnx
    spec, arrays = bundle.spec, bundle.arrays
    obs_dim = int(spec["obs_dim"])
    x = "obs"
    norm = spec.get("normalization")
    if norm:
        mean = g.const("obs.mean", arrays[norm["mean"]], np.float64)
        var = g.const("obs.var", arrays[norm["var"]], np.float64)
        std = g.node("Sqrt", [g.node("Add", [var, g.scalar(float(norm["epsilon"]), np.float64)])])
        z = g.node("Div", [g.node("Sub", [g.node("Cast", [x], to=onnx.TensorProto.DOUBLE), mean]), std])
        clip = float(norm["clip"])
        z = g.node("Clip", [z, g.scalar(-clip, np.float64), g.scalar(clip, np.float64)])
        x = g.node("Cast", [z], to=onnx.TensorProto.FLOAT)
    size = obs_dim
    for layer in spec["layers"]:
        if mode == "dense":
            w = runtime.fold_dense(layer, arrays)
            x, size = g.node("MatMul", [x, g.const(layer["name"] + ".dense.T", w.T)]), w.shape[0]
        else:
            x, size = _ops(g, x, layer["ops"], arrays, size)
        if layer.get("bias") is not None:
            x = g.node("Add", [x, g.const(layer["bias"], arrays[layer["bias"]])])
        x = _activation(g, x, layer.get("activation"))
    action = spec["action"]
    if action["kind"] == "discrete":
        g.node("ArgMax", [x], name="action", axis=1, keepdims=0)
        out = helper.make_tensor_value_info("action", onnx.TensorProto.INT64, ["batch"])
    else:
        if action.get("clip"):
            x = g.node("Min", [x, g.const(action["high"], arrays[action["high"]])])
            g.node("Max", [x, g.const(action["low"], arrays[action["low"]])], name="action")
        else:
            g.node("Identity", [x], name="action")
        out = helper.make_tensor_value_info("action", onnx.TensorProto.FLOAT, ["batch", size])
    inp = helper.make_tensor_value_info("obs", onnx.TensorProto.FLOAT, ["batch", obs_dim])
    graph = helper.make_graph(g.nodes, "rlstruct_policy", [inp], [out], list(g.initializers.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="rlstruct.export")
    model.ir_version = IR_VERSION
    source = spec.get("source") or {}
    helper.set_model_props(model, {"mode": mode, "structure": str(source.get("structure")),
                                   "env_id": str(source.get("env_id")), "source": str(source.get("path"))})
    onnx.checker.check_model(model)
    return model


def initializer_bytes(model: Any) -> int:
    """Bytes of the model's initializers (its stored parameters and constants)."""
    _, _, numpy_helper = _onnx()
    return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer))


def write_onnx(bundle: Bundle, out_dir: Path, mode: str = "compact") -> Path:
    """Write ``policy.onnx`` of ``bundle`` into ``out_dir``; returns its path."""
    onnx, _, _ = _onnx()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ONNX_FILE
    onnx.save(build_onnx(bundle, mode), str(path))
    return path
