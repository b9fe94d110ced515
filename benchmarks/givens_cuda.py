"""Speed of the fused CUDA Givens kernel against the pure-torch paths, on one GPU.

For each width ``n`` (butterfly layout, ``log2 n`` stages) and batch it times, in float32:

* ``kernel``: ``torch.ops.rlstruct.givens_cuda`` (the numba-cuda kernel),
* ``eager``: the pure-torch reference (one gather + complex multiply per stage),
* ``compiled``: the reference under ``torch.compile`` (default mode),
* ``linear``: a dense ``nn.Linear(n, n, bias=False)`` (cuBLAS),
* ``memcpy``: ``y.copy_(x)`` of the same tensor: the roofline of a fused kernel, which reads
  ``x`` and writes ``y`` once (the backward reads two tensors and writes one: 1.5x memcpy),

each forward-only (``fwd``, under ``no_grad``) and forward+backward (``fwd+bwd``, gradients of
the input and the angles/weights). Times are medians of CUDA-event timings after warm-up;
ratios are against the kernel in the same run.

    python benchmarks/givens_cuda.py                  # writes results/givens_cuda.md
    python benchmarks/givens_cuda.py --widths 64 --batches 256
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlstruct.kernels import givens_cuda_op  # noqa: E402
from rlstruct.kernels.reference import givens_reference  # noqa: E402
from rlstruct.layers.givens import butterfly_pairs  # noqa: E402

METHODS = ("kernel", "eager", "compiled", "linear", "memcpy")


def gpu_time(fn: Callable[[], None], repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` CUDA-event timings (after warm-up)."""
    for _ in range(3):
        fn()
    times: List[float] = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def products(n: int) -> Dict[str, Callable[[torch.Tensor, bool], torch.Tensor]]:
    """Each method as ``f(x) -> y`` with its parameters on the GPU."""
    pairs = butterfly_pairs(n).cuda()
    angles = (torch.rand(pairs.shape[0], n // 2, device="cuda") * 6.3).requires_grad_()
    linear = nn.Linear(n, n, bias=False).cuda()
    compiled = torch.compile(givens_reference)
    return {
        "kernel": lambda x: givens_cuda_op.givens_cuda(x, pairs, angles),
        "eager": lambda x: givens_reference(x, pairs, angles),
        "compiled": lambda x: compiled(x, pairs, angles),
        "linear": linear,
        "memcpy": lambda x: torch.empty_like(x).copy_(x),
    }


def measure(n: int, batch: int, repeats: int) -> Dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(batch, n, device="cuda")
    x_grad = x.clone().requires_grad_(True)
    grad_out = torch.randn(batch, n, device="cuda")
    out: Dict[str, float] = {}
    for name, fn in products(n).items():

        def forward() -> None:
            with torch.no_grad():
                fn(x)

        def forward_backward() -> None:
            x_grad.grad = None
            y = fn(x_grad)
            torch.autograd.backward(y, grad_out)

        out[f"{name}_fwd"] = gpu_time(forward, repeats)
        out[f"{name}_fwd+bwd"] = gpu_time(forward_backward, repeats)
    return out


def format_row(n: int, batch: int, t: Dict[str, float], kind: str) -> str:
    kernel = t[f"kernel_{kind}"]
    cells = [f"{kernel * 1e3:.1f}"] + [f"{t[f'{m}_{kind}'] / kernel:.2f}x" for m in METHODS[1:]]
    return f"| {kind} | {n} | {batch} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 8192])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "givens_cuda.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("givens_cuda benchmark: no CUDA GPU visible to torch; run it on a GPU machine "
                 "with `pip install rlstruct[cuda]` (results/givens_ptx.md covers the no-GPU checks)")
    if not givens_cuda_op.available():
        sys.exit("givens_cuda benchmark: numba-cuda cannot run kernels here; `pip install rlstruct[cuda]`")
    header = ("| pass | width | batch | kernel us | eager / kernel | compiled / kernel | "
              "linear / kernel | memcpy / kernel |")
    rows = [header, "|---|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    for n in args.widths:
        for batch in args.batches:
            timings = measure(n, batch, args.repeats)
            for kind in ("fwd", "fwd+bwd"):
                rows.append(format_row(n, batch, timings, kind))
                print(rows[-1], flush=True)
    command = shlex.join(["python", "benchmarks/givens_cuda.py", *sys.argv[1:]])
    text = "\n".join([
        "# Fused CUDA Givens kernel vs torch paths",
        "",
        f"Command: `{command}`",
        "",
        f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}. Butterfly layout "
        "(log2 n stages), float32. `kernel us`: median time of the numba-cuda op; other "
        "columns: that method's time / the kernel's (> 1: the kernel is faster). memcpy is the "
        "roofline (same bytes as the forward), so memcpy / kernel near 1 means bandwidth-bound.",
        "",
        *rows,
    ]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
