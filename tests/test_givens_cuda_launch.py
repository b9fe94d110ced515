"""The pre-typed CUDA launch path against the plain launchers and the reference.

Without a GPU it runs in numba's CUDA simulator in a subprocess (as ``test_givens_cuda.py``
does, so this process never imports the simulated ``numba.cuda``). The GPU test (op through
the pre-typed path, and a captured CUDA graph of a KAMA forward) skips without one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("numba")

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import numpy as np
from rlstruct.kernels import givens_cuda as gc, givens_cuda_launch as fast
from rlstruct.kernels.givens_cuda_shapes import backward_blocks
from rlstruct.kernels.reference import givens_reference
from rlstruct.layers.givens import butterfly_pairs, random_pairs
import torch
assert fast.SIMULATED
eps = np.finfo(np.float32).eps
for n, batch, layout in [(2, 1, "b"), (8, 33, "b"), (64, 3, "b"), (10, 5, "r"), (256, 2, "b")]:
    g = torch.Generator().manual_seed(n + batch)
    pairs = (butterfly_pairs(n) if layout == "b" else random_pairs(n, 4, g)).numpy()
    angles = (torch.rand(pairs.shape[0], n // 2, generator=g) * 6.3).numpy()
    x = torch.randn(batch, n, generator=g).numpy()
    scale = torch.randn(n, generator=g).numpy()
    grad = torch.randn(batch, n, generator=g).numpy()
    for s in (np.zeros(0, np.float32), scale):
        y = np.empty_like(x)
        fast.launch_forward(x, pairs, angles, s, y, fast.current_stream())
        old = gc.forward_numpy(x, pairs, angles, s if s.size else None)
        assert np.array_equal(y, old), (n, batch)  # same kernel, same geometry: bit-equal
        ref = givens_reference(torch.from_numpy(x).double(), torch.from_numpy(pairs),
                               torch.from_numpy(angles).double()).numpy()
        ref = ref * s if s.size else ref
        assert np.abs(y - ref).max() <= 8 * (pairs.shape[0] + 1) * eps * (np.abs(ref).max() + 1)
    # backward (no scale): bit-equal to the plain launcher with the same geometry
    y = gc.forward_numpy(x, pairs, angles)
    config = fast.cached_launch_config(n, batch, backward=True)
    blocks = backward_blocks(n, pairs.shape[0], config, 1024)
    gx = np.zeros_like(x)
    ap = np.zeros((blocks * config.row_threads, pairs.shape[0], n // 2), np.float32)
    fast.launch_backward(y, grad, pairs, angles, np.zeros(0, np.float32), False, gx, ap,
                         np.zeros((0, 0), np.float32), config, blocks, 0)
    gx_old, ga_old, _ = gc.backward_numpy(y, grad, pairs, angles)
    assert np.array_equal(gx, gx_old) and np.array_equal(ap.sum(0), ga_old), (n, batch)
print("ok")
"""


def test_pretyped_launch_in_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_launch_config_is_cached_and_equal():
    pytest.importorskip("numba.cuda")
    from rlstruct.kernels.givens_cuda_shapes import launch_config

    try:
        from rlstruct.kernels import givens_cuda_launch as fast
    except Exception as err:  # numba-cuda missing or unusable: the path is optional
        pytest.skip(f"numba-cuda unavailable: {err}")
    assert fast.cached_launch_config(64, 33, True) == launch_config(64, 33, backward=True)
    assert fast.cached_launch_config(64, 33, True) is fast.cached_launch_config(64, 33, True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pretyped_op_and_captured_forward_on_gpu(monkeypatch):
    from rlstruct.kernels import givens_cuda_op
    from rlstruct.kernels.givens_cuda_launch import CapturedForward
    from rlstruct.kernels.reference import givens_reference
    from rlstruct.layers import make_layer
    from rlstruct.layers.givens import butterfly_pairs

    monkeypatch.setattr(givens_cuda_op, "PRETYPED", True)
    pairs = butterfly_pairs(256).cuda()
    angles = torch.rand(pairs.shape[0], 128, device="cuda", requires_grad=True)
    x = torch.randn(33, 256, device="cuda", requires_grad=True)
    y = givens_cuda_op.givens_cuda(x, pairs, angles)
    ref = givens_reference(x.double(), pairs, angles.double())
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, angles), g)
    want = torch.autograd.grad(ref, (x, angles), g.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3)
    layer = make_layer("kama", 64, 64, dense_threshold=0).cuda()
    layer.inference_dense_threshold = 0  # the structured (kernel) path under no_grad too
    obs = torch.randn(8, 64, device="cuda")
    captured = CapturedForward(layer, obs)
    with torch.no_grad():
        torch.testing.assert_close(captured(obs), layer(obs))
