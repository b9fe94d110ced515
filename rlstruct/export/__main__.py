"""``python -m rlstruct.export SRC --format numpy|onnx|c --out DIR [--mode compact|dense]``.

``SRC`` is a compact policy folder (``policies/NAME``) or a ``train.py`` run folder. Writes

* ``numpy``: ``runtime.py`` (the numpy-only runtime), ``runtime.json`` and ``runtime.npz``;
  ``--mode`` is then a load-time choice (``load_policy(DIR, mode=...)``), the bundle is the same;
* ``onnx``: ``policy.onnx`` (opset 17, input ``obs``, output ``action``);
* ``c``: ``policy.c`` and ``policy.h`` (``void policy_act(const float *obs, float *action)``).

``--check N`` compares the export with the torch policy on ``N`` observations drawn around the
observation statistics (the numpy runtime always; ONNX with onnxruntime; C when a compiler is
found) and fails if an action differs by more than float32 rounding.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from rlstruct.errors import RLStructError
from rlstruct.export import FORMATS, runtime
from rlstruct.export.program import Bundle, bundle_from_path


def export(src: Path, fmt: str, out_dir: Path, mode: str = "compact") -> List[Path]:
    """Export the policy at ``src`` in format ``fmt`` into ``out_dir``; returns the files written."""
    if fmt not in FORMATS:
        raise RLStructError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if mode not in runtime.MODES:
        raise RLStructError(f"unknown mode {mode!r}; choose one of {', '.join(runtime.MODES)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RLStructError(f"--out {out_dir} is a file; pass a folder (it is created if missing)")
    bundle, _, venv = bundle_from_path(Path(src))
    venv.close()
    return write_format(bundle, fmt, out_dir, mode)


def write_format(bundle: Bundle, fmt: str, out_dir: Path, mode: str = "compact") -> List[Path]:
    """Write ``bundle`` in format ``fmt`` into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    if fmt == "numpy":
        bundle.write(out_dir)
        shutil.copyfile(Path(runtime.__file__), out_dir / "runtime.py")
        return [out_dir / runtime.SPEC_FILE, out_dir / runtime.ARRAYS_FILE, out_dir / "runtime.py"]
    if fmt == "onnx":
        from rlstruct.export.onnx_export import write_onnx

        return [write_onnx(bundle, out_dir, mode)]
    if fmt == "c":
        from rlstruct.export.c_export import write_c

        return write_c(bundle, out_dir, mode)
    raise RLStructError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def check_export(bundle: Bundle, policy, fmt: str, out_dir: Path, mode: str, count: int, seed: int = 0) -> float:
    """Largest action difference between the export and ``policy.predict`` on ``count``
    observations around the bundle's statistics; raises if it exceeds float32 rounding."""
    rng = np.random.default_rng(seed)
    spec, arrays = bundle.spec, bundle.arrays
    norm = spec.get("normalization")
    dim = int(spec["obs_dim"])
    if norm:
        mean = arrays[norm["mean"]]
        std = np.sqrt(arrays[norm["var"]] + norm["epsilon"])
        obs = (mean + std * rng.normal(size=(count, dim)) * 2).astype(np.float32).astype(np.float64)
        normed = np.clip((obs - mean) / std, -norm["clip"], norm["clip"])
    else:
        obs = rng.normal(size=(count, dim)).astype(np.float32).astype(np.float64)
        normed = obs
    expected, _ = policy.predict(normed, deterministic=True)
    if fmt == "numpy":
        got = runtime.load_policy(out_dir, mode).act(obs)
    elif fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(out_dir / "policy.onnx"), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {"obs": obs.astype(np.float32)})[0]
    else:
        from rlstruct.export.c_export import find_compiler
        from rlstruct.export.ctypes_policy import CPolicy

        if find_compiler() is None:
            print("no C compiler found: C export not checked", file=sys.stderr)
            return 0.0
        got = CPolicy.build(out_dir / "policy.c").act(obs.astype(np.float32))
    error = float(np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64)).max())
    width = max(max(int(layer["in"]), int(layer["out"])) for layer in spec["layers"])
    bound = 64 * float(np.finfo(np.float32).eps) * width * max(1.0, float(np.abs(expected).max()))
    if not error <= bound:
        raise RLStructError(
            f"the {fmt} export differs from the torch policy by {error:.2e} (> {bound:.1e}); report this as a bug"
        )
    return error


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point."""
    from rlstruct.cli import report_errors

    parser = argparse.ArgumentParser(prog="python -m rlstruct.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="compact policy folder (policies/NAME) or train.py run folder")
    parser.add_argument("--format", required=True, help="numpy, onnx or c")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--mode", default="compact", help="compact (keep the structure, default) or dense")
    parser.add_argument("--check", type=int, default=0, metavar="N",
                        help="compare with the torch policy on N observations")
    args = parser.parse_args(argv)
    with report_errors():
        if args.format not in FORMATS:
            raise RLStructError(f"unknown format {args.format!r}; choose one of {', '.join(FORMATS)}")
        if args.mode not in runtime.MODES:
            raise RLStructError(f"unknown mode {args.mode!r}; choose one of {', '.join(runtime.MODES)}")
        out_dir = Path(args.out)
        if out_dir.exists() and not out_dir.is_dir():
            raise RLStructError(f"--out {out_dir} is a file; pass a folder (it is created if missing)")
        bundle, policy, venv = bundle_from_path(Path(args.src))
        venv.close()
        paths = write_format(bundle, args.format, out_dir, args.mode)
        size = sum(p.stat().st_size for p in paths)
        print(f"wrote {', '.join(str(p) for p in paths)} ({size / 1024:.1f} KiB, {args.mode} mode)")
        if args.format == "c":
            from rlstruct.export.c_export import find_compiler, measure_c

            if find_compiler() is not None:
                ours, dense = measure_c(bundle, args.mode), measure_c(bundle, "dense")
                print(f"C object: flash {ours['flash']} B, RAM {ours['ram']} B "
                      f"(dense mode: flash {dense['flash']} B, RAM {dense['ram']} B)")
        if args.check:
            error = check_export(bundle, policy, args.format, out_dir, args.mode, args.check)
            print(f"check: max |action - torch action| = {error:.2e} over {args.check} observations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
