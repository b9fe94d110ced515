"""Speed of every structured family against ``nn.Linear``, same run, one torch thread.

For each family, square width ``w`` and batch ``b`` it times, in float32 on the CPU:

* ``fwd``: a forward pass with gradients on (what a training minibatch pays; dense-path
  families build ``W`` here),
* ``fwd+bwd``: forward plus backward w.r.t. the input and every parameter,
* ``infer``: a forward pass under ``torch.no_grad()`` (rollouts; dense-path families reuse
  their cached ``W``),

and reports each as a ratio to ``nn.Linear(w, w)`` timed in the same run (ratio < 1: faster
than dense). ``path`` says whether ``forward`` built ``W`` (``dense``) or used the fast
transform (``fast``) at that width. Each time is the median of repeated calls (at least 3 and
at least ``--min-time`` seconds); a call slower than ``--max-call`` seconds is timed once only,
and such rows are flagged.

    python benchmarks/layers.py                    # full grid, results/layers_benchmark.{md,csv}
    python benchmarks/layers.py --quick            # widths 64, 256; batches 1, 64
    python benchmarks/layers.py --families kama,hd3 --widths 1024 --batches 64
"""

from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlstruct.layers import available_structures, make_layer  # noqa: E402


def measure(fn: Callable[[], None], min_time: float, max_call: float) -> Tuple[float, int]:
    """Median seconds per call of ``fn`` and the number of timed calls (after one warm-up)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if first > max_call:
        return first, 1
    times: List[float] = []
    while (sum(times) < min_time or len(times) < 3) and len(times) < 2000:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def time_layer(layer: nn.Module, width: int, batch: int, min_time: float,
               max_call: float) -> Dict[str, Tuple[float, int]]:
    x = torch.randn(batch, width)
    x_grad = x.clone().requires_grad_(True)
    grad_out = torch.randn(batch, width)

    def forward() -> None:
        layer(x)

    def forward_backward() -> None:
        layer.zero_grad(set_to_none=True)
        x_grad.grad = None
        layer(x_grad).backward(grad_out)

    def infer() -> None:
        with torch.no_grad():
            layer(x)

    return {
        "fwd": measure(forward, min_time, max_call),
        "fwd+bwd": measure(forward_backward, min_time, max_call),
        "infer": measure(infer, min_time, max_call),
    }


KINDS = ("fwd", "fwd+bwd", "infer")


def run(args: argparse.Namespace) -> List[Dict[str, object]]:
    rows = []
    for width in args.widths:
        for batch in args.batches:
            torch.manual_seed(0)
            base = time_layer(nn.Linear(width, width), width, batch, args.min_time, args.max_call)
            for family in args.families:
                torch.manual_seed(0)
                layer = make_layer(family, width, width)
                timing = time_layer(layer, width, batch, args.min_time, args.max_call)
                row: Dict[str, object] = {
                    "family": family, "width": width, "batch": batch,
                    "path": "dense" if layer.uses_dense_path() else "fast",
                    "params": layer.num_parameters(),
                    "linear_params": width * width + width,
                }
                once = False
                for kind in KINDS:
                    seconds, calls = timing[kind]
                    row[f"{kind}_us"] = round(seconds * 1e6, 1)
                    row[f"linear_{kind}_us"] = round(base[kind][0] * 1e6, 1)
                    row[f"{kind}_ratio"] = float(f"{seconds / base[kind][0]:.3g}")
                    once |= calls == 1 or base[kind][1] == 1
                row["timed_once"] = once
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


def format_ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"  # keep 2 digits when tiny


def format_row(row: Dict[str, object]) -> str:
    ratios = " | ".join(format_ratio(float(row[f"{k}_ratio"])) for k in KINDS)
    flag = " (timed once)" if row["timed_once"] else ""
    return (f"| {row['family']} | {row['width']} | {row['batch']} | {row['path']} | "
            f"{row['params']} | {ratios} | {float(row['linear_fwd+bwd_us']):.0f}{flag} |")


def write(rows: List[Dict[str, object]], out: Path, command: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Structured layers vs nn.Linear (CPU, float32, one torch thread)",
        "",
        f"Command: `{command}`",
        "",
        f"torch {torch.__version__}. Ratios are family time / nn.Linear time in the same run "
        "(< 1: faster than dense). `fwd`: forward with gradients on; `fwd+bwd`: forward and "
        "backward; `infer`: forward under no_grad (dense-path layers reuse their cached W). "
        "`path`: dense = build W then matmul, fast = structured transform. Square layers "
        "width x width; last column: nn.Linear fwd+bwd time in microseconds. The `dense` rows "
        "are a control (the same computation as nn.Linear): their distance from 1.00x is the "
        "timing noise of the run.",
        "",
        "| family | width | batch | path | params | fwd | fwd+bwd | infer | linear fwd+bwd us |",
        "|---|---|---|---|---|---|---|---|---|",
        *[format_row(r) for r in rows],
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))


def parse(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="widths 64 256, batches 1 64, shorter timing")
    parser.add_argument("--families", default=None,
                        help="comma-separated structure names (default: all registered)")
    parser.add_argument("--widths", type=int, nargs="+", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--min-time", type=float, default=None,
                        help="seconds of timed calls per measurement (default 0.1, quick 0.05)")
    parser.add_argument("--max-call", type=float, default=3.0,
                        help="calls slower than this many seconds are timed once")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "layers_benchmark")
    args = parser.parse_args(argv)
    known = available_structures()
    args.families = known if args.families is None else args.families.split(",")
    unknown = [f for f in args.families if f not in known]
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {known}")
    args.widths = args.widths or ([64, 256] if args.quick else [64, 256, 1024, 4096])
    args.batches = args.batches or ([1, 64] if args.quick else [1, 64, 2048])
    args.min_time = args.min_time or (0.05 if args.quick else 0.1)
    return args


def main(argv: List[str]) -> None:
    args = parse(argv)
    torch.set_num_threads(1)
    print("| family | width | batch | path | params | fwd | fwd+bwd | infer | linear fwd+bwd us |")
    rows = run(args)
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/layers.py", *argv])
    write(rows, args.out, command)
    print(f"wrote {args.out.with_suffix('.md')} and .csv")


if __name__ == "__main__":
    main(sys.argv[1:])
