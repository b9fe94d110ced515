"""The pre-typed CUDA launch path on a GPU (GPU only), in microseconds:

* host overhead per call at width 64, batch 8: plain op vs pre-typed op, forward and fwd+bwd
  (wall time of many calls with one final sync: the host cost when the GPU keeps up);
* forward at width 4096 x batch 8192, pre-typed, against a device memcpy of the same bytes;
* a captured CUDA graph of a KAMA 64-64 policy forward (structured path) vs an eager dense
  ``nn.Linear`` 64-64 MLP, batch 8.

    RLSTRUCT_CUDA_LAUNCH=pretyped python benchmarks/givens_cuda_launch.py --out results/x.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RLSTRUCT_CUDA_LAUNCH", "pretyped")
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlstruct.kernels import givens_cuda_op  # noqa: E402
from rlstruct.kernels.givens_cuda_launch import CapturedForward  # noqa: E402
from rlstruct.layers import make_layer  # noqa: E402
from rlstruct.layers.givens import butterfly_pairs  # noqa: E402

from givens_launch_overhead import wall_us  # noqa: E402  (this folder is on sys.path for its scripts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="results/gpu_checks/givens_cuda_launch.md")
    args = parser.parse_args()
    lines = ["# Pre-typed CUDA launch path", "", f"Device: {torch.cuda.get_device_name()}; "
             f"torch {torch.__version__}. Microseconds.", "", "| measurement | us |", "|---|---:|"]

    def row(name, value):
        lines.append(f"| {name} | {value:.1f} |")
        print(lines[-1], flush=True)

    pairs = butterfly_pairs(64).cuda()
    angles = torch.rand(6, 32, device="cuda", requires_grad=True)
    x = torch.randn(8, 64, device="cuda", requires_grad=True)
    for mode in (False, True):
        givens_cuda_op.PRETYPED = mode
        name = "pre-typed" if mode else "plain"
        with torch.no_grad():
            row(f"{name} op fwd, 64 x 8", wall_us(lambda: givens_cuda_op.givens_cuda(x, pairs, angles)))
        row(f"{name} op fwd+bwd, 64 x 8",
            wall_us(lambda: givens_cuda_op.givens_cuda(x, pairs, angles).sum().backward()))
    givens_cuda_op.PRETYPED = True
    big_pairs = butterfly_pairs(4096).cuda()
    big_angles = torch.rand(big_pairs.shape[0], 2048, device="cuda")
    big = torch.randn(8192, 4096, device="cuda")
    dst = torch.empty_like(big)
    with torch.no_grad():
        row("pre-typed fwd 4096 x 8192", wall_us(lambda: givens_cuda_op.givens_cuda(big, big_pairs, big_angles), 50))
    row("memcpy of the same bytes (roofline)", wall_us(lambda: dst.copy_(big), 50))
    kama = nn.Sequential(make_layer("kama", 64, 64, dense_threshold=0), nn.Tanh(),
                         make_layer("kama", 64, 64, dense_threshold=0), nn.Tanh()).cuda()
    for m in kama:
        if hasattr(m, "inference_dense_threshold"):
            m.inference_dense_threshold = 0  # kernels under no_grad too (what is captured)
    dense = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh()).cuda()
    obs = torch.randn(8, 64, device="cuda")
    captured = CapturedForward(kama, obs)
    with torch.no_grad():
        row("captured KAMA 64-64 forward, batch 8", wall_us(lambda: captured(obs)))
        row("eager KAMA 64-64 forward (kernels), batch 8", wall_us(lambda: kama(obs)))
        row("eager dense nn.Linear 64-64 forward, batch 8", wall_us(lambda: dense(obs)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
