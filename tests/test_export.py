"""rlstruct.export: the numpy runtime, ONNX and C reproduce the torch/SB3 deterministic actions.

Every registered family is exported at odd, rectangular sizes with tanh and relu (Box actions
with bounds that clip, and Discrete actions), and every shipped policy in ``policies/`` is
checked against ``evaluate.py``'s path (VecNormalize then ``predict``). Tolerances are float32
rounding: ``16 eps * width * scale`` with ``scale`` the largest pre-activation magnitude.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

from rlstruct.errors import RLStructError
from rlstruct.export import bundle_from_path, bundle_from_policy, load_policy, runtime
from rlstruct.export.c_export import find_compiler, generate_c, measure_c, write_c
from rlstruct.layers import available_structures

# A compact form that silently fell back to dense would still pass the numeric checks.
pytestmark = pytest.mark.filterwarnings("error::rlstruct.export.program.CompactFormWarning")

ROOT = Path(__file__).resolve().parents[1]
EPS = float(np.finfo(np.float32).eps)
SHIPPED = sorted(p.name for p in (ROOT / "policies").iterdir() if (p / "meta.json").is_file())
HAS_CC = find_compiler() is not None
needs_cc = pytest.mark.skipif(not HAS_CC, reason="no C compiler (cc/gcc/clang) found")

#: extra layer options per family, so non-default code paths are exported too.
VARIANTS: Dict[str, List[dict]] = {
    "kama": [{"layout": "random", "n_blocks": 2}],
    "kaleidoscope": [{"n_blocks": 2, "mode": "random"}],
    "hd3": [{"mode": "random"}],
    "fastfood": [{"mode": "random"}],
    "hankel": [{"mode": "random"}],
    "circulant": [{"mode": "random"}],
    "ldr": [{"rank": 3}],
    "lowrank": [{"rank": 3}],
    "snnk": [{"n_features": 5}],
}
CASES = [(family, {}, "tanh", "box") for family in available_structures()]
CASES += [(family, {}, "relu", "discrete") for family in available_structures()]
CASES += [(family, kw, "relu", "box") for family, kws in VARIANTS.items() for kw in kws]


def _case_id(case) -> str:
    family, kw, act, space = case
    extra = "-".join(f"{k}={v}" for k, v in kw.items())
    return f"{family}-{act}-{space}" + (f"-{extra}" if extra else "")


def _make_policy(family: str, kw: dict, activation: str, space: str, seed: int):
    import gymnasium as gym

    from rlstruct.policies import StructuredActorCriticPolicy

    torch.manual_seed(seed)
    if space == "box":
        obs_dim, hidden = 7, [19, 5]  # working sizes 32: two Hadamard factors, 5 butterfly strides
        action_space = gym.spaces.Box(np.array([-1.0, -0.5, 0.0], np.float32), np.array([1.0, 2.0, 0.5], np.float32))
    else:
        obs_dim, hidden = 10, [6, 9]
        action_space = gym.spaces.Discrete(4)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    policy = StructuredActorCriticPolicy(
        obs_space, action_space, lambda _: 0.0, structure=family, net_arch=dict(pi=hidden, vf=[4]),
        activation_fn=activation, layer_kwargs=kw,
    )
    with torch.no_grad():  # move away from the init (equal scales, zero biases, tiny head)
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    policy.set_training_mode(False)
    return policy


def _reference(policy, normed: np.ndarray) -> Tuple[np.ndarray, float, np.ndarray]:
    """``(predict actions, largest |pre-activation|, head outputs)`` of the torch policy."""
    sizes: List[float] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(float(out.abs().max())))
             for m in list(policy.mlp_extractor.policy_net) + [policy.action_net]
             if hasattr(m, "in_features")]
    with torch.no_grad():
        x = torch.as_tensor(normed, dtype=torch.float32)
        head = policy.action_net(policy.mlp_extractor.forward_actor(x)).numpy()
    for h in hooks:
        h.remove()
    actions, _ = policy.predict(normed, deterministic=True)
    return actions, max([1.0] + sizes), head


def _assert_close(got, expected, head, scale: float, width: int, discrete: bool, what: str) -> None:
    tol = 16 * EPS * width * scale
    if discrete:
        top2 = np.sort(head, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 4 * tol  # near-ties may round either way
        assert clear.sum() > len(clear) // 2, "too many near-ties to test"
        np.testing.assert_array_equal(np.asarray(got)[clear], np.asarray(expected)[clear], err_msg=what)
    else:
        error = float(np.abs(np.asarray(got, np.float64) - expected).max())
        assert error <= tol, f"{what}: max error {error:.2e} > tolerance {tol:.2e}"


def _onnx_session(model_bytes: bytes):
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _c_actions(bundle, mode: str, obs32: np.ndarray, tmp: Path):
    from rlstruct.export.ctypes_policy import CPolicy

    paths = write_c(bundle, tmp / mode, mode)
    return CPolicy.build(paths[0]).act(obs32)


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def families_done():
    return set()


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_family_exports_match_torch(case, tmp_path, families_done):
    family, kw, activation, space = case
    policy = _make_policy(family, kw, activation, space, seed=len(family))
    rng = np.random.default_rng(1)
    dim = policy.observation_space.shape[0]
    mean, var = rng.normal(size=dim), rng.uniform(0.05, 4.0, size=dim)
    bundle = bundle_from_policy(policy, mean, var, clip_obs=5.0, epsilon=1e-8)
    layers = bundle.spec["layers"]
    if family in ("toeplitz", "kama", "hd3", "fastfood", "kaleidoscope", "ldr", "hankel", "circulant",
                  "skew_circulant", "toeplitz_spinner"):
        for layer in layers[:-1]:
            assert "note" not in layer and all(op["op"] != "linear" for op in layer["ops"]), f"{family}: dense"
    # raw observations exactly representable in float32 (what ONNX and C receive), some clipped
    obs = (mean + np.sqrt(var) * rng.normal(size=(24, dim)) * 3).astype(np.float32).astype(np.float64)
    normed = np.clip((obs - mean) / np.sqrt(var + 1e-8), -5.0, 5.0)
    expected, scale, head = _reference(policy, normed)
    width = max(max(l["in"], l["out"]) for l in layers) + 8
    discrete = space == "discrete"
    if not discrete:
        assert (expected == policy.action_space.high).any() or (expected == policy.action_space.low).any(), \
            "no action was clipped: the bounds are not exercised"
    for mode in runtime.MODES:
        loaded = runtime.Policy(bundle.spec, bundle.arrays, mode)
        _assert_close(loaded.act(obs), expected, head, scale, width, discrete, f"numpy {mode} batch")
        single = np.stack([np.atleast_1d(loaded.act(o)) for o in obs[:6]])
        _assert_close(single.reshape(np.shape(expected[:6])), expected[:6], head[:6], scale, width, discrete,
                      f"numpy {mode} single")
    pytest.importorskip("onnx")
    from rlstruct.export.onnx_export import build_onnx

    for mode in runtime.MODES:
        session = _onnx_session(build_onnx(bundle, mode).SerializeToString())
        got = session.run(None, {"obs": obs.astype(np.float32)})[0]
        _assert_close(got, expected, head, scale, width, discrete, f"onnx {mode}")
    if HAS_CC:
        for mode in runtime.MODES:
            got = _c_actions(bundle, mode, obs.astype(np.float32), tmp_path)
            _assert_close(got, expected, head, scale, width, discrete, f"C {mode}")
    families_done.add(family)


def test_every_family_is_covered():
    assert {case[0] for case in CASES} == set(available_structures())


def test_other_activations_match_torch(tmp_path):
    """elu, silu, gelu and leaky_relu through every backend (one family, compact)."""
    from torch import nn

    for name, module in [("elu", nn.ELU), ("silu", nn.SiLU), ("gelu", nn.GELU), ("leaky_relu", nn.LeakyReLU)]:
        policy = _make_policy("toeplitz", {}, name, "box", seed=3)
        assert isinstance(policy.mlp_extractor.policy_net[1], module)
        bundle = bundle_from_policy(policy)
        obs = np.random.default_rng(2).normal(size=(16, 7)).astype(np.float32).astype(np.float64) * 2
        expected, scale, head = _reference(policy, obs)
        width = 27
        got = runtime.Policy(bundle.spec, bundle.arrays, "compact").act(obs)
        _assert_close(got, expected, head, scale, width, False, f"numpy {name}")
        if pytest.importorskip("onnx"):
            from rlstruct.export.onnx_export import build_onnx

            session = _onnx_session(build_onnx(bundle).SerializeToString())
            _assert_close(session.run(None, {"obs": obs.astype(np.float32)})[0], expected, head, scale, width,
                          False, f"onnx {name}")
        if HAS_CC:
            _assert_close(_c_actions(bundle, "compact", obs.astype(np.float32), tmp_path / name), expected, head,
                          scale, width, False, f"C {name}")


# ---------------------------------------------------------------------------------------------
def _rollout_observations(venv, steps: int = 12) -> np.ndarray:
    """Raw observations of a short random rollout, rounded to float32 values."""
    venv.seed(0)
    venv.reset()
    raw = [venv.get_original_obs()[0].copy()]
    rng = np.random.default_rng(0)
    space = venv.action_space
    for _ in range(steps - 1):
        venv.step(np.array([rng.uniform(space.low, space.high).astype(np.float32)]))
        raw.append(venv.get_original_obs()[0].copy())
    return np.stack(raw).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_exports_reproduce_evaluate(name, tmp_path):
    from rlstruct.export.__main__ import write_format

    bundle, policy, venv = bundle_from_path(ROOT / "policies" / name)
    try:
        obs = _rollout_observations(venv)
        normed = venv.normalize_obs(obs)  # evaluate.py: VecNormalize, then predict
    finally:
        venv.close()
    expected, scale, head = _reference(policy, normed)
    width = max(max(l["in"], l["out"]) for l in bundle.spec["layers"]) * 2
    paths = write_format(bundle, "numpy", tmp_path / "numpy")
    for mode in runtime.MODES:
        loaded = load_policy(tmp_path / "numpy", mode)
        _assert_close(loaded.act(obs), expected, head, scale, width, False, f"{name} numpy {mode}")
        _assert_close(loaded.act(obs[3]), expected[3], head[3:4], scale, width, False, f"{name} numpy {mode} single")
    assert (tmp_path / "numpy" / "runtime.py").read_bytes() == Path(runtime.__file__).read_bytes()
    assert {p.name for p in paths} == {"runtime.py", "runtime.json", "runtime.npz"}
    pytest.importorskip("onnx")
    write_format(bundle, "onnx", tmp_path / "onnx")
    session = _onnx_session(str(tmp_path / "onnx" / "policy.onnx"))
    _assert_close(session.run(None, {"obs": obs.astype(np.float32)})[0], expected, head, scale, width, False,
                  f"{name} onnx")
    if HAS_CC:
        _assert_close(_c_actions(bundle, "compact", obs.astype(np.float32), tmp_path), expected, head, scale,
                      width, False, f"{name} C")


@pytest.mark.skipif(not (ROOT / "policies" / "hopper-toeplitz").is_dir(), reason="no shipped hopper-toeplitz")
def test_onnx_keeps_compact_initializers():
    onnx = pytest.importorskip("onnx")
    from rlstruct.export.onnx_export import build_onnx, initializer_bytes

    bundle, policy, venv = bundle_from_path(ROOT / "policies" / "hopper-toeplitz")
    venv.close()
    compact, dense = build_onnx(bundle, "compact"), build_onnx(bundle, "dense")
    shapes = {t.name: tuple(t.dims) for t in compact.graph.initializer}
    # the hidden layers' diagonals, never a (64, 64) or (11, 64) matrix
    assert shapes["policy_net.0.diagonals"] == (74,) and shapes["policy_net.1.diagonals"] == (127,)
    assert not any(s in shapes.values() for s in [(64, 64), (11, 64), (64, 11)])
    assert "Gather" in {n.op_type for n in compact.graph.node}
    assert initializer_bytes(compact) < initializer_bytes(dense) / 3
    assert compact.opset_import[0].version == 17
    assert [i.name for i in compact.graph.input] == ["obs"] and [o.name for o in compact.graph.output] == ["action"]


@needs_cc
def test_c_is_self_contained_and_smaller(tmp_path):
    bundle, _, venv = bundle_from_path(ROOT / "policies" / "hopper-kama")
    venv.close()
    sources = generate_c(bundle, "compact")
    assert "malloc(" not in sources["policy.c"] and "static const float" in sources["policy.c"]
    assert "void policy_act(const float *obs, float *action);" in sources["policy.h"]
    paths = write_c(bundle, tmp_path, "compact")
    result = subprocess.run([find_compiler(), "-O2", "-std=c99", "-Wall", "-Werror", "-pedantic", "-c", str(paths[0]),
                             "-o", str(tmp_path / "policy.o")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    compact, dense = measure_c(bundle, "compact"), measure_c(bundle, "dense")
    assert compact["flash"] < dense["flash"] / 2
    assert compact["ram"] <= 2 * 64 * 4 + 64


def test_run_folder_exports_like_its_compact_policy():
    run = ROOT / "results" / "study" / "hopper-trpo-kama-h64-64-s0"
    meta = json.loads((ROOT / "policies" / "hopper-kama" / "meta.json").read_text())
    if not (run / "model.zip").is_file() or meta.get("source_run") != "results/study/hopper-trpo-kama-h64-64-s0":
        pytest.skip("the source run of policies/hopper-kama is not in this checkout")
    from_run, _, venv = bundle_from_path(run)
    venv.close()
    from_compact, _, venv = bundle_from_path(ROOT / "policies" / "hopper-kama")
    venv.close()
    assert from_run.arrays.keys() == from_compact.arrays.keys()
    for key, value in from_compact.arrays.items():
        np.testing.assert_array_equal(from_run.arrays[key], value, err_msg=key)


# ---------------------------------------------------------------------------------------------
def test_runtime_imports_only_numpy_and_stdlib(tmp_path):
    source = Path(runtime.__file__).read_text()
    assert len(source.encode()) < 40 * 1024, "runtime.py should stay a few tens of KiB"
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "runtime.py must not use relative imports"
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"numpy"}
    # and at run time, alone in a folder: nothing beyond numpy and the standard library is loaded
    (tmp_path / "runtime.py").write_text(source)
    code = (
        "import sys; before = set(sys.modules); import runtime; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "extra = sorted(new - set(sys.stdlib_module_names) - {'numpy', 'runtime'}); "
        "print(extra); sys.exit(1 if extra else 0)"
    )
    result = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {[str(tmp_path)] + _numpy_path()!r}; {code}"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_runtime_loads_no_torch():
    code = ("import sys, rlstruct.export.runtime, rlstruct.export\n"
            "heavy = [m for m in ('torch', 'stable_baselines3', 'gymnasium', 'onnx') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _numpy_path() -> List[str]:
    return [str(Path(np.__file__).resolve().parents[1])]


def test_errors_name_the_problem_and_fix(tmp_path):
    from rlstruct.export.__main__ import main

    with pytest.raises(RLStructError, match="not a runtime bundle"):
        load_policy(tmp_path)
    with pytest.raises(RLStructError, match="neither a compact policy"):
        bundle_from_path(tmp_path)
    for argv, message in [([str(tmp_path), "--format", "tflite", "--out", str(tmp_path / "o")], "unknown format"),
                          ([str(tmp_path), "--format", "numpy", "--out", str(tmp_path / "o")], "neither a compact")]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    policy = _make_policy("toeplitz", {}, "tanh", "box", seed=0)
    bundle = bundle_from_policy(policy)
    loaded = runtime.Policy(bundle.spec, bundle.arrays)
    with pytest.raises(runtime.BundleError, match="act expects observations of shape"):
        loaded.act(np.zeros(3))
    with pytest.raises(runtime.BundleError, match="unknown mode"):
        runtime.Policy(bundle.spec, bundle.arrays, "fast")
    bundle.write(tmp_path / "b")
    (tmp_path / "b" / runtime.SPEC_FILE).write_text("{not json")
    with pytest.raises(RLStructError, match="corrupt"):
        load_policy(tmp_path / "b")


def test_cli_writes_and_checks(tmp_path, capsys):
    from rlstruct.export.__main__ import main

    assert main([str(ROOT / "policies" / "hopper-toeplitz-es"), "--format", "numpy", "--out", str(tmp_path / "np"), "--check", "20"]) == 0
    out = capsys.readouterr().out
    assert "check: max |action - torch action|" in out
    loaded = load_policy(tmp_path / "np", "dense")
    assert loaded.obs_dim == 11 and loaded.action_dim == 3
    assert loaded.act(np.zeros(11)).shape == (3,)
