"""Call a generated ``policy.c`` from Python (tests and benchmarks) through ctypes."""

from __future__ import annotations

import ctypes
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from rlstruct.errors import RLStructError
from rlstruct.export.c_export import compile_c, find_compiler

_FLOAT_P = ctypes.POINTER(ctypes.c_float)


class CPolicy:
    """A compiled C policy: :meth:`act` like the numpy runtime's (float32 observations)."""

    def __init__(self, library: Path, prefix: str, obs_dim: int, action_dim: int, discrete: bool) -> None:
        self._lib = ctypes.CDLL(str(library))
        self.function = getattr(self._lib, f"{prefix}_act")
        self.function.argtypes = [_FLOAT_P, _FLOAT_P]
        self.function.restype = None
        self.obs_dim, self.action_dim, self.discrete = obs_dim, action_dim, discrete
        self._out = np.zeros(action_dim, np.float32)
        self._out_p = self._out.ctypes.data_as(_FLOAT_P)

    @classmethod
    def build(cls, c_file: Path, out_dir: Optional[Path] = None) -> "CPolicy":
        """Compile ``c_file`` (with its header next to it) into a shared library and load it."""
        c_file = Path(c_file)
        header = c_file.with_suffix(".h").read_text()
        prefix = c_file.stem
        dims = {k: int(v) for k, v in re.findall(r"#define \w+?_(OBS_DIM|ACTION_DIM|DISCRETE) (\d+)", header)}
        out_dir = Path(out_dir or tempfile.mkdtemp(prefix="rlstruct_c_"))
        library = compile_c(c_file, out_dir / f"lib{prefix}.so", shared=True)
        return cls(library, prefix, dims["OBS_DIM"], dims["ACTION_DIM"], bool(dims["DISCRETE"]))

    def act_pointer(self, obs_pointer) -> np.ndarray:
        """The action for an observation already in C memory (a ``float*``): no conversion."""
        self.function(obs_pointer, self._out_p)
        return self._out

    def act(self, obs: np.ndarray):
        """Action(s) for ``(obs_dim,)`` or ``(batch, obs_dim)`` observations (cast to float32)."""
        x = np.ascontiguousarray(obs, dtype=np.float32)
        single = x.ndim == 1
        x = x.reshape(-1, self.obs_dim)
        out = np.zeros((x.shape[0], self.action_dim), np.float32)
        for i in range(x.shape[0]):
            self.function(x[i].ctypes.data_as(_FLOAT_P), out[i].ctypes.data_as(_FLOAT_P))
        if self.discrete:
            index = out[:, 0].astype(np.int64)
            return int(index[0]) if single else index
        return out[0] if single else out


def c_loop_nanoseconds(c_file: Path, calls: int = 200000, rounds: int = 5) -> float:
    """Median nanoseconds per ``policy_act`` call, timed by a C loop (``clock_gettime``) on a
    fixed observation; ``c_file`` is a generated ``policy.c``."""
    if find_compiler() is None:
        raise RLStructError("no C compiler found (cc, gcc or clang); install one to time the C policy")
    c_file = Path(c_file)
    prefix = c_file.stem
    main = f"""#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <time.h>
#include "{prefix}.h"
int main(void) {{
    static float obs[{prefix.upper()}_OBS_DIM], action[{prefix.upper()}_ACTION_DIM + 1];
    volatile float sink = 0.0f; int r, i;
    for (i = 0; i < {prefix.upper()}_OBS_DIM; ++i) obs[i] = 0.1f * (float)(i % 7) - 0.3f;
    for (r = 0; r < {rounds}; ++r) {{
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (i = 0; i < {calls}; ++i) {{ obs[0] += 1e-7f; {prefix}_act(obs, action); sink += action[0]; }}
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("%.3f\\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / {calls}.0);
    }}
    return sink == 12345.0f;
}}
"""
    with tempfile.TemporaryDirectory() as tmp:
        bench = Path(tmp) / "bench.c"
        bench.write_text(main)
        exe = Path(tmp) / "bench"
        cmd = [find_compiler(), "-O2", "-std=c99", f"-I{c_file.parent}", str(bench), str(c_file), "-o", str(exe), "-lm"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RLStructError(f"compiling the C timing loop failed: {result.stderr.strip()[:200]}")
        times = [float(v) for v in subprocess.run([str(exe)], capture_output=True, text=True).stdout.split()]
    return float(np.median(times))
