"""The numba-cuda Givens kernels against the pure-torch reference, without a GPU.

* The kernels run in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) in one subprocess, so
  this pytest process never imports the simulated ``numba.cuda`` (which would replace the real
  one for every other test); the results are compared here with a float64 reference.
* The torch custom op is checked through its fake/meta implementations (shapes, autograd,
  ``torch.compile``), the dispatch branch through fake CUDA tensors.
* PTX for sm_80/sm_90 is compiled and assembled with ``ptxas``.
* Tests marked ``gpu`` run the real op on a GPU and are skipped without one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rlstruct.errors import RLStructError
from rlstruct.kernels import givens_cuda_op, givens_product
from rlstruct.kernels.givens_cuda_shapes import (
    BACKWARD_SMEM_BYTES,
    FORWARD_SMEM_BYTES,
    check_inputs,
    launch_config,
)
from rlstruct.kernels.reference import givens_reference
from rlstruct.layers.givens import butterfly_pairs, random_pairs

ROOT = Path(__file__).resolve().parents[1]
EPS32 = float(np.finfo(np.float32).eps)

# (n, layout, batch, threads per block, max tile rows, max backward blocks): small threads and
# rows force many tiles, padded last tiles and the backward's grid-stride loop over tiles.
CASES = [
    (2, "butterfly", 1, 4, 64, 1024),
    (2, "butterfly", 33, 64, 8, 2),
    (4, "butterfly", 3, 4, 2, 1),
    (8, "butterfly", 1, 64, 64, 1024),
    (8, "butterfly", 33, 4, 64, 1024),
    (64, "butterfly", 3, 64, 64, 1024),
    (64, "butterfly", 33, 4, 8, 3),
    (64, "butterfly", 33, 64, 64, 1024),
    (256, "butterfly", 1, 64, 64, 1024),
    (256, "butterfly", 33, 64, 16, 2),
    (6, "random", 1, 4, 64, 1024),
    (6, "random", 33, 64, 4, 2),
    (10, "random", 3, 4, 64, 1024),
    (10, "random", 33, 64, 64, 1024),
]

_SIMULATOR_SCRIPT = """
import json, sys
import numpy as np
from rlstruct.kernels import givens_cuda as gc
cases = json.loads(sys.argv[1])
data = np.load(sys.argv[2])
out = {}
for key, threads, max_rows, max_blocks in cases:
    x, pairs, angles, scale, g = (data[f"{key}/{name}"] for name in ("x", "pairs", "angles", "scale", "g"))
    geometry = dict(threads=threads, max_rows=max_rows)
    y = gc.forward_numpy(x, pairs, angles, **geometry)
    out[f"{key}/y"] = y
    out[f"{key}/ys"] = gc.forward_numpy(x, pairs, angles, scale, **geometry)
    gx, ga, _ = gc.backward_numpy(y, g, pairs, angles, max_blocks=max_blocks, **geometry)
    out[f"{key}/gx"], out[f"{key}/ga"] = gx, ga
    gx, ga, gs = gc.backward_numpy(x, g, pairs, angles, scale, recompute=True,
                                   max_blocks=max_blocks, **geometry)
    out[f"{key}/gxs"], out[f"{key}/gas"], out[f"{key}/gss"] = gx, ga, gs
np.savez(sys.argv[3], **out)
"""


def _case_key(case) -> str:
    return "_".join(str(v) for v in case)


def _inputs(case):
    n, layout, batch = case[:3]
    gen = torch.Generator().manual_seed(n * 1000 + batch)
    pairs = butterfly_pairs(n) if layout == "butterfly" else random_pairs(n, 5, gen)
    angles = torch.rand(pairs.shape[0], n // 2, generator=gen) * (2 * torch.pi)
    x = torch.randn(batch, n, generator=gen)
    scale = torch.randn(n, generator=gen)
    g = torch.randn(batch, n, generator=gen)
    return x, pairs, angles, scale, g


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """Run every case through the simulated kernels in one subprocess; return its outputs."""
    tmp = tmp_path_factory.mktemp("cudasim")
    arrays = {}
    for case in CASES:
        for name, value in zip(("x", "pairs", "angles", "scale", "g"), _inputs(case)):
            arrays[f"{_case_key(case)}/{name}"] = value.numpy()
    np.savez(tmp / "in.npz", **arrays)
    spec = json.dumps([[_case_key(c), c[3], c[4], c[5]] for c in CASES])
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", _SIMULATOR_SCRIPT, spec, str(tmp / "in.npz"), str(tmp / "out.npz")],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(tmp / "out.npz"))


def _reference64(case):
    """Float64 outputs and gradients of ``sum(g * y)`` from the same float32 inputs."""
    x, pairs, angles, scale, g = (t.double() if t.is_floating_point() else t for t in _inputs(case))
    x.requires_grad_(True)
    angles.requires_grad_(True)
    scale.requires_grad_(True)
    y = givens_reference(x, pairs, angles)
    gx, ga = torch.autograd.grad((y * g).sum(), (x, angles), retain_graph=True)
    ys = y * scale
    gxs, gas, gss = torch.autograd.grad((ys * g).sum(), (x, angles, scale))
    ref = dict(y=y, gx=gx, ga=ga, ys=ys, gxs=gxs, gas=gas, gss=gss)
    return {k: v.detach().numpy() for k, v in ref.items()}, x.detach().numpy(), g.numpy(), scale.detach().numpy(), pairs.shape[0]


@pytest.mark.parametrize("case", CASES, ids=_case_key)
def test_simulated_kernels_match_reference(simulated, case):
    ref, x, g, scale, n_stages = _reference64(case)
    got = {k: simulated[f"{_case_key(case)}/{k}"] for k in ref}
    # Rounding bounds: each stage adds a few float32 ulps relative to the row norm (rotations
    # keep norms); angle/scale gradients sum |g| |x|-sized terms over the batch.
    rounding = 4 * (n_stages + 1) * EPS32
    row_x = np.linalg.norm(x, axis=1, keepdims=True)
    row_g = np.linalg.norm(g, axis=1, keepdims=True)
    smax = np.abs(scale).max()
    bounds = {
        "y": rounding * row_x,
        "ys": rounding * row_x * smax,
        "gx": rounding * row_g,
        "gxs": rounding * row_g * smax,
        "ga": rounding * float((row_x * row_g).sum()),
        "gas": rounding * float((row_x * row_g).sum()) * smax,
        "gss": rounding * float((row_x * row_g).sum()),
    }
    for name, bound in bounds.items():
        assert got[name].shape == ref[name].shape, name
        err = np.abs(got[name] - ref[name])
        assert np.all(err <= bound), f"{name}: max error {err.max():.3g} over its rounding bound"


def test_launch_config_respects_shared_memory_and_threads():
    for n in (2, 6, 64, 1000, 4096):
        for batch in (1, 7, 8192):
            fwd = launch_config(n, batch)
            bwd = launch_config(n, batch, backward=True)
            assert fwd.shared_bytes <= FORWARD_SMEM_BYTES and bwd.shared_bytes <= BACKWARD_SMEM_BYTES
            for cfg in (fwd, bwd):
                assert 1 <= cfg.rows <= batch and cfg.tiles * cfg.rows >= batch
                assert cfg.pair_threads * cfg.row_threads <= 256
                assert cfg.row_threads <= cfg.rows and cfg.pair_threads <= n // 2


@pytest.mark.parametrize(
    "shapes",
    [((4, 7), (2, 7), (2, 3), None), ((4, 8), (2, 6), (2, 4), None), ((4, 8), (2, 8), (3, 4), None),
     ((4, 8), (2, 8), (2, 4), 6), ((4, 8192), (2, 8192), (2, 4096), None), ((8,), (2, 8), (2, 4), None)],
)
def test_bad_shapes_raise(shapes):
    with pytest.raises(RLStructError):
        check_inputs(*shapes)


def _meta_inputs(n=8, batch=5):
    pairs = butterfly_pairs(n).to("meta")
    x = torch.empty(batch, n, device="meta", requires_grad=True)
    angles = torch.empty(pairs.shape[0], n // 2, device="meta", requires_grad=True)
    scale = torch.empty(n, device="meta", requires_grad=True)
    return x, pairs, angles, scale


@pytest.mark.parametrize("with_scale", [False, True])
def test_op_fake_shapes_and_autograd_under_compile(with_scale):
    x, pairs, angles, scale = _meta_inputs()

    def loss(x, angles, scale):
        return givens_cuda_op.givens_cuda(x, pairs, angles, scale if with_scale else None).square().sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    compiled(x, angles, scale).backward()
    assert x.grad.shape == x.shape and angles.grad.shape == angles.shape
    assert (scale.grad is not None) == with_scale


@pytest.fixture
def fake_cuda_dispatch(monkeypatch):
    """Fresh availability state; the reference replaced by a stub that records its calls
    (it indexes by value, which fake CUDA tensors cannot do on a CPU-only torch)."""
    from rlstruct.kernels import dispatch

    monkeypatch.setattr(givens_cuda_op, "_STATE", {})
    reference_calls = []
    monkeypatch.setattr(dispatch, "givens_reference", lambda x, *a: reference_calls.append(x) or x + 1)
    return reference_calls


def test_dispatch_on_cuda_without_numba_warns_once_and_uses_reference(fake_cuda_dispatch, monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ImportError
    monkeypatch.setattr(givens_cuda_op, "givens_cuda", lambda *a: pytest.fail("op called"))
    with FakeTensorMode():  # fake CUDA tensors: no GPU needed
        x = torch.empty(3, 8, device="cuda")
        p, a = torch.empty(3, 8, dtype=torch.long, device="cuda"), torch.empty(3, 4, device="cuda")
        with pytest.warns(RuntimeWarning, match="numba-cuda is not installed"):
            y = givens_product(x, p, a)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            givens_product(x, p, a)
    assert y.shape == (3, 8) and y.device.type == "cuda" and len(fake_cuda_dispatch) == 2


def test_dispatch_on_cuda_calls_the_op_with_the_scale(fake_cuda_dispatch, monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    calls = []
    real_op = givens_cuda_op.givens_cuda
    monkeypatch.setitem(givens_cuda_op._STATE, "available", True)
    monkeypatch.setattr(givens_cuda_op, "givens_cuda", lambda *a: calls.append(a) or real_op(*a))
    with FakeTensorMode():
        x, scale = torch.empty(3, 8, device="cuda"), torch.empty(8, device="cuda")
        pairs = torch.empty(3, 8, dtype=torch.long, device="cuda")
        y = givens_product(x, pairs, torch.empty(3, 4, device="cuda"), scale)
        givens_product(x.double(), pairs, torch.empty(3, 4, device="cuda", dtype=torch.float64))
    assert len(calls) == 1 and calls[0][3] is scale
    assert len(fake_cuda_dispatch) == 1  # float64 is not the kernel's: the reference ran
    assert y.shape == (3, 8)


def test_dispatch_scale_on_cpu_matches_reference_times_scale():
    gen = torch.Generator().manual_seed(0)
    pairs = random_pairs(6, 3, gen)
    x, angles, scale = torch.randn(4, 6, generator=gen), torch.randn(3, 3, generator=gen), torch.randn(6, generator=gen)
    torch.testing.assert_close(givens_product(x, pairs, angles, scale), givens_reference(x, pairs, angles) * scale)


# ----------------------------------------------------------------------------------------------
# PTX: the kernels compile for Ampere and Hopper and assemble without spills.


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
def test_ptx_compiles_and_assembles_without_spills(cc):
    gc = pytest.importorskip("rlstruct.kernels.givens_cuda", reason="numba-cuda not installed")
    if gc.find_ptxas() is None:
        pytest.skip("ptxas not found on PATH or in /usr/local/cuda*/bin")
    for kernel in ("forward", "backward"):
        report = gc.ptxas_report(kernel, cc)
        assert report.arch == f"sm_{cc[0]}{cc[1]}"
        assert 0 < report.registers <= 255
        assert report.spill_stores == 0 and report.spill_loads == 0, report


# ----------------------------------------------------------------------------------------------
# GPU: the real op (skipped without a GPU and numba-cuda).


def _gpu_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from numba import cuda
    except ImportError:
        return False
    return cuda.is_available()


@pytest.mark.parametrize("n,batch", [(2, 1), (64, 8192), (1000, 33), (4096, 8192)])
@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs a CUDA GPU and numba-cuda")
def test_gpu_op_matches_reference(n, batch, with_scale):
    gen = torch.Generator().manual_seed(n)
    pairs = butterfly_pairs(n) if n & (n - 1) == 0 else random_pairs(n, 10, gen)
    angles = torch.rand(pairs.shape[0], n // 2, generator=gen) * 6.3
    x, g, scale = torch.randn(batch, n, generator=gen), torch.randn(batch, n, generator=gen), torch.randn(n, generator=gen)
    results = []
    for device in ("cpu", "cuda"):
        # copy=True: a leaf per device, never the shared CPU tensor itself
        xs = x.to(device, copy=True).requires_grad_()
        angs = angles.to(device, copy=True).requires_grad_()
        scl = scale.to(device, copy=True).requires_grad_() if with_scale else None
        if device == "cuda":
            y = givens_cuda_op.givens_cuda(xs, pairs.to(device), angs, scl)
        else:
            y = givens_reference(xs.double(), pairs, angs.double())
            y = y * scl.double() if with_scale else y
        (y * g.to(device, y.dtype)).sum().backward()
        grads = [xs.grad, angs.grad] + ([scl.grad] if with_scale else [])
        results.append([t.detach().double().cpu() for t in [y] + grads])
    tol = 8 * (pairs.shape[0] + 1) * EPS32
    for ref, got in zip(*results):
        assert torch.allclose(got, ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs a CUDA GPU and numba-cuda")
def test_gpu_kama_layer_and_compile_match_cpu():
    from rlstruct.layers.givens import KamaLinear

    torch.manual_seed(0)
    layer = KamaLinear(48, 64, seed=0, dense_threshold=0)
    x = torch.randn(256, 48)
    expected = layer(x)
    gpu_layer = layer.cuda()
    torch.testing.assert_close(gpu_layer(x.cuda()).cpu(), expected, rtol=1e-5, atol=1e-5)
    compiled = torch.compile(gpu_layer.apply_structured, fullgraph=True)
    torch.testing.assert_close(compiled(x.cuda()).cpu() + layer.bias.detach().cpu(), expected, rtol=1e-5, atol=1e-5)
    # the op itself works on the padded width n of the pairs, not the layer's in_features
    x_n = torch.randn(256, layer.pairs.shape[1], device="cuda", requires_grad=True)
    torch.library.opcheck(givens_cuda_op.givens_cuda, (x_n, layer.pairs, layer.angles.detach().cuda(), None))
