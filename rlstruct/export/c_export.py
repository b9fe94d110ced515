"""A runtime bundle as self-contained C99: ``policy.c`` + ``policy.h``.

::

    #include "policy.h"
    float action[POLICY_ACTION_DIM];
    policy_act(obs, action);     /* obs: POLICY_OBS_DIM raw observations */

No malloc and no globals but ``static const`` parameter tables (flash) and two static scratch
buffers (RAM); ``libm`` only for activations (``tanhf``, ``expf``, ...). Compiles with
``cc -O2 -std=c99 -c policy.c``. Observation normalization runs in double (as VecNormalize),
the network in float. Discrete policies write the argmax index to ``action[0]`` (as a float)
and define ``POLICY_DISCRETE 1``.

``mode="compact"`` writes each op of the bundle as a loop over the compact parameters
(Givens stages in place, the Walsh-Hadamard butterflies in place, Toeplitz-type matrices read
from their diagonals, ...); ``mode="dense"`` folds every layer into one dense matrix-vector
product. :func:`measure_c` compiles the file and reports flash (code + constant tables) and RAM
(scratch buffers) with ``size``.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from rlstruct.errors import RLStructError
from rlstruct.export import runtime
from rlstruct.export.program import Bundle

C_FILE = "policy.c"
H_FILE = "policy.h"
_IDENT = re.compile(r"[^0-9a-zA-Z_]")


def _cname(name: str) -> str:
    return "p_" + _IDENT.sub("_", name)


def _float_literal(v: float) -> str:
    v = float(np.float32(v))
    if math.isinf(v):
        return "HUGE_VALF" if v > 0 else "-HUGE_VALF"
    text = f"{v:.9g}"
    if "e" not in text and "." not in text and "n" not in text:
        text += ".0"
    return text + "f"


def _double_literal(v: float) -> str:
    text = repr(float(v))
    return text if ("e" in text or "." in text) else text + ".0"


def _index_type(values: np.ndarray) -> str:
    top = int(values.max()) if values.size else 0
    return "uint8_t" if top < 256 else "uint16_t" if top < 65536 else "uint32_t"


class _CWriter:
    """Collects the constant tables and the body of ``policy_act``."""

    def __init__(self) -> None:
        self.tables: List[str] = []
        self.names: Dict[str, str] = {}
        self.body: List[str] = []
        self.max_size = 1

    def table(self, name: str, values: Any, kind: str = "float") -> str:
        cname = _cname(name)
        if cname in self.names.values():
            return cname
        flat = np.asarray(values).reshape(-1)
        if kind == "float":
            ctype, items = "float", [_float_literal(v) for v in flat]
        elif kind == "double":
            ctype, items = "double", [_double_literal(v) for v in flat]
        else:
            ctype, items = _index_type(flat), [str(int(v)) for v in flat]
        lines = [", ".join(items[i:i + 8]) for i in range(0, len(items), 8)] or ["0"]
        self.tables.append(f"static const {ctype} {cname}[{max(1, len(items))}] = {{\n    " + ",\n    ".join(lines) + "\n};")
        self.names[name] = cname
        return cname

    def emit(self, line: str) -> None:
        self.body.append("    " + line)

    def need(self, size: int) -> None:
        self.max_size = max(self.max_size, int(size))


def _linear(w: _CWriter, table: str, rows: int, cols: int) -> None:
    w.emit(f"for (i = 0; i < {rows}; ++i) {{")
    w.emit(f"    const float *row = {table} + i * {cols}; float acc = 0.0f;")
    w.emit(f"    for (j = 0; j < {cols}; ++j) acc += row[j] * x[j];")
    w.emit("    y[i] = acc;")
    w.emit("}")
    w.emit("t = x; x = y; y = t;")


def _strided(w: _CWriter, op: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> int:
    v = np.atleast_2d(arrays[op["v"]])
    table = w.table(op["v"], v)
    r, length = v.shape
    rows, cols = int(op["rows"]), int(op["cols"])
    off, a, b = int(op["offset"]), int(op["row_step"]), int(op["col_step"])
    split, total = bool(op.get("split_input")), bool(op.get("sum_output"))
    out = rows if total else r * rows
    w.emit(f"for (i = 0; i < {out}; ++i) y[i] = 0.0f;" if total and r > 1 else "/* strided */")
    w.emit(f"for (k = 0; k < {r}; ++k) {{")
    w.emit(f"    const float *v = {table} + k * {length} + {off};")
    w.emit(f"    const float *xin = x + {'k * ' + str(cols) if split else '0'};")
    w.emit(f"    for (i = 0; i < {rows}; ++i) {{")
    w.emit("        float acc = 0.0f;")
    w.emit(f"        for (j = 0; j < {cols}; ++j) acc += v[({a}) * i + ({b}) * j] * xin[j];")
    if total and r > 1:
        w.emit("        y[i] += acc;")
    elif total:
        w.emit("        y[i] = acc;")
    else:
        w.emit(f"        y[k * {rows} + i] = acc;")
    w.emit("    }")
    w.emit("}")
    w.emit("t = x; x = y; y = t;")
    w.need(out)
    return out


def _hadamard(w: _CWriter, n: int) -> None:
    w.emit(f"for (s = 1; s < {n}; s <<= 1) {{  /* Walsh-Hadamard, in place */")
    w.emit(f"    for (i = 0; i < {n}; i += s << 1) {{")
    w.emit("        for (j = i; j < i + s; ++j) { float a = x[j], b = x[j + s]; x[j] = a + b; x[j + s] = a - b; }")
    w.emit("    }")
    w.emit("}")
    w.emit(f"for (i = 0; i < {n}; ++i) x[i] *= {_float_literal(1.0 / math.sqrt(n))};")


def _givens(w: _CWriter, op: Dict[str, Any], arrays: Dict[str, np.ndarray], n: int) -> None:
    pairs = np.asarray(arrays[op["pairs"]], dtype=np.int64)
    angles = np.asarray(arrays[op["angles"]], dtype=np.float32)
    stages, half = angles.shape
    p = w.table(op["pairs"] + ".p", pairs[:, 0::2], "index")
    q = w.table(op["pairs"] + ".q", pairs[:, 1::2], "index")
    c = w.table(op["angles"] + ".cos", np.cos(angles), "float")
    s = w.table(op["angles"] + ".sin", np.sin(angles), "float")
    w.emit(f"for (k = 0; k < {stages * half}; ++k) {{  /* {stages} Givens stages, in place */")
    w.emit(f"    float a = x[{p}[k]], b = x[{q}[k]];")
    w.emit(f"    x[{p}[k]] = {c}[k] * a - {s}[k] * b;")
    w.emit(f"    x[{q}[k]] = {s}[k] * a + {c}[k] * b;")
    w.emit("}")


def _butterfly(w: _CWriter, op: Dict[str, Any], arrays: Dict[str, np.ndarray], n: int) -> None:
    stride = int(op["stride"])
    planes = np.asarray(arrays[op["twiddle"]], dtype=np.float32)
    table = w.table(op["twiddle"], planes)
    half = n // 2
    w.emit(f"for (k = 0; k < {half}; ++k) {{  /* butterfly, stride {stride} */")
    w.emit(f"    int p = (k / {stride}) * {2 * stride} + k % {stride};")
    w.emit(f"    float a = x[p], b = x[p + {stride}];")
    w.emit(f"    x[p] = {table}[k] * a + {table}[{half} + k] * b;")
    w.emit(f"    x[p + {stride}] = {table}[{2 * half} + k] * a + {table}[{3 * half} + k] * b;")
    w.emit("}")


def _ops(w: _CWriter, ops: List[Dict[str, Any]], arrays: Dict[str, np.ndarray], size: int) -> int:
    for op in ops:
        kind = op["op"]
        if kind == "linear":
            weight = np.asarray(arrays[op["w"]], dtype=np.float32)
            _linear(w, w.table(op["w"], weight), weight.shape[0], weight.shape[1])
            size = weight.shape[0]
        elif kind == "strided":
            size = _strided(w, op, arrays)
        elif kind == "pad":
            new = int(op["size"])
            w.emit(f"for (i = {size}; i < {new}; ++i) x[i] = 0.0f;")
            size = new
        elif kind == "slice":
            size = int(op["size"])
        elif kind == "mul":
            w.emit(f"for (i = 0; i < {size}; ++i) x[i] *= {w.table(op['d'], arrays[op['d']])}[i];")
        elif kind == "gather":
            index = np.asarray(arrays[op["index"]])
            table = w.table(op["index"], index, "index")
            w.emit(f"for (i = 0; i < {index.shape[0]}; ++i) y[i] = x[{table}[i]];")
            w.emit("t = x; x = y; y = t;")
            size = index.shape[0]
        elif kind == "hadamard":
            _hadamard(w, size)
        elif kind == "givens":
            _givens(w, op, arrays, size)
        elif kind == "butterfly":
            _butterfly(w, op, arrays, size)
        else:
            raise RLStructError(f"the C exporter does not know op {kind!r}; update rlstruct")
        w.need(size)
    return size


def _activation(w: _CWriter, spec: Optional[Dict[str, Any]], size: int) -> None:
    if spec is None or spec["name"] == "identity":
        return
    name = spec["name"]
    alpha = _float_literal(spec.get("alpha", 0.0))
    expr = {
        "tanh": "tanhf(v)",
        "relu": "v > 0.0f ? v : 0.0f",
        "leaky_relu": f"v >= 0.0f ? v : v * {alpha}",
        "elu": f"v > 0.0f ? v : {alpha} * expm1f(v)",
        "silu": "v / (1.0f + expf(-v))",
        "gelu": ("0.5f * v * (1.0f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v)))"
                 if spec.get("approximate", "none") == "tanh" else "0.5f * v * (1.0f + erff(v * 0.70710678118f))"),
    }.get(name)
    if expr is None:
        raise RLStructError(f"the C exporter does not know activation {name!r}; update rlstruct")
    w.emit(f"for (i = 0; i < {size}; ++i) {{ float v = x[i]; x[i] = {expr}; }}")


def generate_c(bundle: Bundle, mode: str = "compact", prefix: str = "policy") -> Dict[str, str]:
    """``{"policy.c": source, "policy.h": header}`` of ``bundle``.

    ``prefix`` names the function (``<prefix>_act``) and the header macros, so several policies
    can be linked into one program.
    """
    if mode not in runtime.MODES:
        raise RLStructError(f"unknown mode {mode!r}; choose one of {', '.join(runtime.MODES)}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise RLStructError(f"C prefix {prefix!r} is not a C identifier; use letters, digits and _")
    spec, arrays = bundle.spec, bundle.arrays
    w = _CWriter()
    obs_dim = int(spec["obs_dim"])
    w.need(obs_dim)
    norm = spec.get("normalization")
    w.emit(f"for (i = 0; i < {obs_dim}; ++i) {{")
    if norm:
        mean = w.table("obs.mean", arrays[norm["mean"]], "double")
        std = np.sqrt(np.asarray(arrays[norm["var"]], np.float64) + float(norm["epsilon"]))
        std_name = w.table("obs.std", std, "double")
        clip = _double_literal(float(norm["clip"]))
        w.emit(f"    double v = ((double)obs[i] - {mean}[i]) / {std_name}[i];")
        w.emit(f"    x[i] = (float)(v < -{clip} ? -{clip} : v > {clip} ? {clip} : v);")
    else:
        w.emit("    x[i] = obs[i];")
    w.emit("}")
    size = obs_dim
    for layer in spec["layers"]:
        w.emit(f"/* {layer['name']}: {layer['structure']} {layer['in']} -> {layer['out']} */")
        if mode == "dense":
            weight = runtime.fold_dense(layer, arrays)
            _linear(w, w.table(layer["name"] + ".dense", weight), weight.shape[0], weight.shape[1])
            size = weight.shape[0]
            w.need(size)
        else:
            size = _ops(w, layer["ops"], arrays, size)
        if layer.get("bias") is not None:
            w.emit(f"for (i = 0; i < {size}; ++i) x[i] += {w.table(layer['bias'], arrays[layer['bias']])}[i];")
        _activation(w, layer.get("activation"), size)
    action = spec["action"]
    discrete = action["kind"] == "discrete"
    if discrete:
        w.emit("{ int best = 0; for (i = 1; i < %d; ++i) if (x[i] > x[best]) best = i; action[0] = (float)best; }" % size)
        action_dim = 1
    elif action.get("clip"):
        low = w.table(action["low"], arrays[action["low"]])
        high = w.table(action["high"], arrays[action["high"]])
        w.emit(f"for (i = 0; i < {size}; ++i) {{ float v = x[i]; "
               f"action[i] = v < {low}[i] ? {low}[i] : v > {high}[i] ? {high}[i] : v; }}")
        action_dim = size
    else:
        w.emit(f"for (i = 0; i < {size}; ++i) action[i] = x[i];")
        action_dim = size
    upper = prefix.upper()
    source = spec.get("source") or {}
    header = f"""/* {prefix}.h: generated by rlstruct.export ({mode} mode) from {source.get('path', 'a policy')}. */
#ifndef {upper}_H
#define {upper}_H

#define {upper}_OBS_DIM {obs_dim}
#define {upper}_ACTION_DIM {action_dim}
#define {upper}_DISCRETE {1 if discrete else 0}
#define {upper}_SCRATCH_FLOATS {w.max_size}

/* Deterministic action for one raw observation: obs[{upper}_OBS_DIM] -> action[{upper}_ACTION_DIM].
   Discrete policies write the chosen index to action[0]. Not reentrant (static scratch). */
void {prefix}_act(const float *obs, float *action);

#endif
"""
    body = "\n".join(w.body)
    code = f"""/* {prefix}.c: generated by rlstruct.export ({mode} mode); C99, no malloc.
   structure: {source.get('structure')}, env: {source.get('env_id')} */
#include <math.h>
#include <stdint.h>
#include "{prefix}.h"

{chr(10).join(w.tables)}

static float {prefix}_scratch_a[{w.max_size}];
static float {prefix}_scratch_b[{w.max_size}];

void {prefix}_act(const float *obs, float *action)
{{
    float *x = {prefix}_scratch_a, *y = {prefix}_scratch_b, *t;
    int i, j, k, s;
    (void)y; (void)t; (void)j; (void)k; (void)s;
{body}
}}
"""
    return {f"{prefix}.c": code, f"{prefix}.h": header}


def write_c(bundle: Bundle, out_dir: Path, mode: str = "compact", prefix: str = "policy") -> List[Path]:
    """Write ``<prefix>.c`` and ``<prefix>.h`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in generate_c(bundle, mode, prefix).items():
        (out_dir / name).write_text(text)
        paths.append(out_dir / name)
    return paths


def find_compiler() -> Optional[str]:
    """The C compiler on PATH (``cc``, ``gcc`` or ``clang``), or ``None``."""
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def compile_c(c_file: Path, out: Path, shared: bool = False, extra: Optional[List[str]] = None) -> Path:
    """Compile ``c_file`` with ``cc -O2 -std=c99`` into an object file (or a shared library)."""
    compiler = find_compiler()
    if compiler is None:
        raise RLStructError("no C compiler found (cc, gcc or clang); install one to build the C policy")
    cmd = [compiler, "-O2", "-std=c99", "-Wall"]
    cmd += ["-shared", "-fPIC", str(c_file), "-o", str(out), "-lm"] if shared else ["-c", str(c_file), "-o", str(out)]
    cmd += extra or []
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RLStructError(f"compiling {c_file} failed: {result.stderr.strip().splitlines()[:1]}; report this as a bug")
    return Path(out)


def object_sizes(obj: Path) -> Dict[str, int]:
    """``text``, ``data`` and ``bss`` bytes of an object file (Berkeley ``size``)."""
    tool = shutil.which("size")
    if tool is None:
        raise RLStructError("the size tool (binutils) is missing; install binutils to measure flash/RAM")
    lines = subprocess.run([tool, str(obj)], capture_output=True, text=True, check=True).stdout.splitlines()
    text, data, bss = (int(v) for v in lines[1].split()[:3])
    return dict(text=text, data=data, bss=bss)


def measure_c(bundle: Bundle, mode: str = "compact") -> Dict[str, int]:
    """Compile the C export of ``bundle`` and return ``flash`` (code + constants: text + data)
    and ``ram`` (static scratch: data + bss) bytes, with the raw ``text``/``data``/``bss``."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_c(bundle, Path(tmp), mode)
        sizes = object_sizes(compile_c(paths[0], Path(tmp) / "policy.o"))
    return dict(flash=sizes["text"] + sizes["data"], ram=sizes["data"] + sizes["bss"], **sizes)
