"""Turn a torch actor into a runtime bundle: the op chains of :mod:`rlstruct.export.runtime`.

:func:`bundle_from_policy` reads an SB3 ``ActorCriticPolicy`` (a :class:`StructuredActorCriticPolicy`
or a plain ``MlpPolicy``) layer by layer; :func:`bundle_from_path` does it for a compact policy
folder (``policies/NAME``) or a ``train.py`` run folder. Every structured layer is written in its
compact form (the family's parameters and one op per step of its transform); the exporter then
multiplies the chain out and checks it against the layer's own ``to_dense()``, so a family whose
definition changed is caught at export time. A family with no compact form here (``dense``,
``orthogonal`` or one registered later) is written as one ``linear`` op of ``to_dense()``.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from rlstruct.errors import RLStructError
from rlstruct.export import runtime

#: families written in compact form; the others become one dense ``linear`` op.
COMPACT_FAMILIES = (
    "toeplitz", "hankel", "circulant", "skew_circulant", "ldr", "lowrank", "snnk", "kama",
    "kaleidoscope", "hd3", "fastfood", "toeplitz_spinner",
)
#: why a family has no compact form in the runtime.
DENSE_NOTES = {
    "dense": "dense weights: already the compact form",
    "orthogonal": "a dense orthogonal matrix (n^2 parameters): no cheaper form than its W",
}


#: files of which one marks a train.py run folder (it is then read through compact.export_run).
RUN_MARKERS = ("config.yaml", "metrics.json", "model.zip")


class CompactFormWarning(UserWarning):
    """A layer's compact form did not reproduce its ``to_dense()``: it was exported dense."""


@dataclass
class Bundle:
    """A runtime bundle in memory: the ``runtime.json`` spec and the named arrays."""

    spec: Dict[str, Any]
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        """Store ``value`` as array ``name`` (cast to ``dtype``); returns the name."""
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        self.arrays[name] = np.ascontiguousarray(np.asarray(value).astype(dtype))
        return name

    def write(self, out_dir: Path) -> Path:
        """Write ``runtime.json`` and ``runtime.npz`` into ``out_dir`` (created if needed)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez(out_dir / runtime.ARRAYS_FILE, **self.arrays)
        (out_dir / runtime.SPEC_FILE).write_text(json.dumps(self.spec, indent=1) + "\n")
        return out_dir

    def parameter_bytes(self) -> int:
        """Bytes of every stored array (the bundle's parameters and layout indices)."""
        return int(sum(a.nbytes for a in self.arrays.values()))


# ---------------------------------------------------------------------------------------------
# activations
def activation_spec(module: nn.Module) -> Optional[Dict[str, Any]]:
    """The bundle's description of an activation module (``None`` for identity)."""
    if isinstance(module, nn.Identity):
        return None
    if isinstance(module, nn.Tanh):
        return {"name": "tanh"}
    if isinstance(module, nn.ReLU):
        return {"name": "relu"}
    if isinstance(module, nn.LeakyReLU):
        return {"name": "leaky_relu", "alpha": float(module.negative_slope)}
    if isinstance(module, nn.ELU):
        return {"name": "elu", "alpha": float(module.alpha)}
    if isinstance(module, nn.SiLU):
        return {"name": "silu"}
    if isinstance(module, nn.GELU):
        return {"name": "gelu", "approximate": module.approximate}
    raise RLStructError(
        f"cannot export activation {type(module).__name__}; use tanh, relu, leaky_relu, elu, silu or gelu"
    )


# ---------------------------------------------------------------------------------------------
# layers -> ops
def _strided(bundle: Bundle, name: str, v: Any, offset: int, row_step: int, col_step: int,
             rows: int, cols: int, split_input: bool = False, sum_output: bool = False) -> Dict[str, Any]:
    v = np.atleast_2d(np.asarray(v, dtype=np.float64))
    return dict(op="strided", v=bundle.add(name, v), offset=offset, row_step=row_step,
                col_step=col_step, rows=rows, cols=cols, split_input=split_input, sum_output=sum_output)


def _f_circulant_ext(c: np.ndarray, f: float) -> np.ndarray:
    """``[rev(c), f rev(c)]``: ``Z_f(c)[i, j] = ext[n - 1 - i + j]``."""
    rev = c[..., ::-1]
    return np.concatenate([rev, f * rev], axis=-1)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _scale_op(bundle: Bundle, prefix: str, layer: nn.Module) -> List[Dict[str, Any]]:
    scale = getattr(layer, "scale", None)
    if scale is None:
        return []
    return [dict(op="mul", d=bundle.add(f"{prefix}.scale", _np(scale)))]


def compact_ops(bundle: Bundle, prefix: str, layer: nn.Module) -> Optional[List[Dict[str, Any]]]:
    """The op chain of a structured layer in compact form, or ``None`` if it has none here."""
    family = getattr(layer, "structure", None)
    n_in, n_out = layer.in_features, layer.out_features
    if family == "toeplitz":
        return [_strided(bundle, f"{prefix}.diagonals", _np(layer.diagonals), n_in - 1, 1, -1, n_out, n_in)]
    if family == "hankel":
        return [_strided(bundle, f"{prefix}.h", _np(layer.h), 0, 1, 1, n_out, n_in)] + _scale_op(bundle, prefix, layer)
    if family in ("circulant", "skew_circulant"):
        ext = _f_circulant_ext(_np(layer.c), float(layer.wrap))
        return [_strided(bundle, f"{prefix}.ext", ext, layer.n - 1, -1, 1, n_out, n_in)] + _scale_op(bundle, prefix, layer)
    if family == "ldr":
        n = layer.n
        return [
            _strided(bundle, f"{prefix}.h_ext", _f_circulant_ext(_np(layer.h), -1.0), n - 1, -1, 1, n, n_in),
            _strided(bundle, f"{prefix}.g_ext", _f_circulant_ext(_np(layer.g), 1.0), n - 1, -1, 1, n_out, n,
                     split_input=True, sum_output=True),
        ] + _scale_op(bundle, prefix, layer)
    if family == "lowrank":
        return [
            dict(op="linear", w=bundle.add(f"{prefix}.v_t", _np(layer.v).T)),
            dict(op="linear", w=bundle.add(f"{prefix}.u", _np(layer.u))),
        ] + _scale_op(bundle, prefix, layer)
    if family == "snnk":
        features = _np(layer.features) / math.sqrt(layer.n_features)
        return [
            dict(op="linear", w=bundle.add(f"{prefix}.features", features)),
            dict(op="linear", w=bundle.add(f"{prefix}.psi", _np(layer.psi))),
        ] + _scale_op(bundle, prefix, layer)
    if family == "kama":
        n = layer.n
        ops: List[Dict[str, Any]] = [dict(op="pad", size=n)] if n_in < n else []
        ops.append(dict(op="givens", pairs=bundle.add(f"{prefix}.pairs", layer.pairs.cpu().numpy(), np.int32),
                        angles=bundle.add(f"{prefix}.angles", _np(layer.angles))))
        ops.append(dict(op="mul", d=bundle.add(f"{prefix}.scale", _np(layer.scale))))
        if n_out < n:
            ops.append(dict(op="slice", size=n_out))
        return ops
    if family == "kaleidoscope":
        n = layer.n
        ops = [dict(op="pad", size=n)] if n_in < n else []
        twiddles = _np(layer.twiddles)  # (stages, 2, 2, n / 2)
        for stage, stride in enumerate(layer.strides):
            ops.append(dict(op="butterfly", stride=int(stride),
                            twiddle=bundle.add(f"{prefix}.twiddle{stage}", twiddles[stage].reshape(4, n // 2))))
        if n_out < n:
            ops.append(dict(op="slice", size=n_out))
        return ops + _scale_op(bundle, prefix, layer)
    if family == "hd3":
        n = layer.n
        ops = [dict(op="mul", d=bundle.add(f"{prefix}.d1", _np(layer.d1)))]
        ops += [dict(op="pad", size=n)] if n_in < n else []
        ops += [dict(op="hadamard"), dict(op="mul", d=bundle.add(f"{prefix}.d2", _np(layer.d2))),
                dict(op="hadamard"), dict(op="mul", d=bundle.add(f"{prefix}.d3", _np(layer.d3))),
                dict(op="hadamard")]
        ops += [dict(op="slice", size=n_out)] if n_out < n else []
        return ops + _scale_op(bundle, prefix, layer)
    if family == "fastfood":
        n = layer.n
        ops = [dict(op="mul", d=bundle.add(f"{prefix}.b", _np(layer.b)))]
        ops += [dict(op="pad", size=n)] if n_in < n else []
        ops += [dict(op="hadamard"),
                dict(op="gather", index=bundle.add(f"{prefix}.perm", layer.perm.cpu().numpy(), np.int32)),
                dict(op="mul", d=bundle.add(f"{prefix}.g", _np(layer.g))),
                dict(op="hadamard")]
        ops += [dict(op="slice", size=n_out)] if n_out < n else []
        ops.append(dict(op="mul", d=bundle.add(f"{prefix}.s", _np(layer.s))))
        return ops + _scale_op(bundle, prefix, layer)
    if family == "toeplitz_spinner":
        n = layer.n
        ops = [dict(op="mul", d=bundle.add(f"{prefix}.d1", _np(layer.d1)))]
        ops += [dict(op="pad", size=n)] if n_in < n else []
        ops += [dict(op="hadamard"), dict(op="mul", d=bundle.add(f"{prefix}.d2", _np(layer.d2))),
                _strided(bundle, f"{prefix}.t", _np(layer.t), n - 1, 1, -1, n_out, n)]
        return ops + _scale_op(bundle, prefix, layer)
    return None


def _drop_arrays(bundle: Bundle, prefix: str) -> None:
    for name in [k for k in bundle.arrays if k.startswith(prefix + ".")]:
        del bundle.arrays[name]


def layer_entry(bundle: Bundle, prefix: str, layer: nn.Module, activation: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The bundle entry of one linear layer (``nn.Linear`` or a ``StructuredLinear``)."""
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            family, dense = "linear", layer.weight.detach().double()
        else:
            family, dense = getattr(layer, "structure", type(layer).__name__), layer.to_dense().detach().double()
    entry: Dict[str, Any] = dict(name=prefix, structure=family, **{"in": int(layer.in_features)},
                                 out=int(layer.out_features))
    ops = None if isinstance(layer, nn.Linear) else compact_ops(bundle, prefix, layer)
    if ops is not None:
        entry["ops"] = ops
        folded = runtime.fold_dense(entry, bundle.arrays).astype(np.float64)
        reference = dense.numpy()
        error = float(np.abs(folded - reference).max()) if reference.size else 0.0
        bound = 1e-5 * max(1.0, float(np.abs(reference).max()))
        if not error <= bound:
            warnings.warn(
                f"{prefix} ({family}): the compact form differs from to_dense() by {error:.2e}; "
                "exporting its dense W instead (the rlstruct.export compact form is out of date)",
                CompactFormWarning,
                stacklevel=2,
            )
            _drop_arrays(bundle, prefix)
            ops = None
    if ops is None:
        entry["ops"] = [dict(op="linear", w=bundle.add(f"{prefix}.w", dense.numpy()))]
        entry["note"] = DENSE_NOTES.get(family, "no compact form in the runtime: dense W")
    bias = getattr(layer, "bias", None)
    entry["bias"] = bundle.add(f"{prefix}.bias", _np(bias)) if bias is not None else None
    entry["activation"] = activation
    return entry


def _actor_layers(policy: nn.Module) -> List[Tuple[nn.Module, Optional[Dict[str, Any]]]]:
    """``[(linear layer, activation spec)]`` of the actor: hidden layers, then the action head."""
    net = policy.mlp_extractor.policy_net
    modules = list(net) if isinstance(net, nn.Sequential) else [net]
    layers: List[Tuple[nn.Module, Optional[Dict[str, Any]]]] = []
    for module in modules:
        if hasattr(module, "in_features") and hasattr(module, "out_features"):
            layers.append((module, None))
        elif layers and layers[-1][1] is None:
            spec = activation_spec(module)
            layers[-1] = (layers[-1][0], spec if spec is not None else {"name": "identity"})
        elif isinstance(module, nn.Identity):
            continue
        else:
            raise RLStructError(
                f"cannot export actor module {type(module).__name__} (expected linear layers and "
                "activations); export an MLP policy"
            )
    layers = [(layer, None if act == {"name": "identity"} else act) for layer, act in layers]
    layers.append((policy.action_net, None))
    return layers


def bundle_from_policy(
    policy: nn.Module,
    obs_mean: Optional[np.ndarray] = None,
    obs_var: Optional[np.ndarray] = None,
    clip_obs: float = 10.0,
    epsilon: float = 1e-8,
    source: Optional[Dict[str, Any]] = None,
) -> Bundle:
    """The runtime bundle of an SB3 actor-critic ``policy`` (its deterministic actor).

    ``obs_mean``/``obs_var`` are VecNormalize's running statistics (``None``: no normalization);
    ``clip_obs`` and ``epsilon`` its settings. ``source`` is recorded as provenance.
    """
    from gymnasium import spaces
    from stable_baselines3.common.torch_layers import FlattenExtractor

    obs_space, action_space = policy.observation_space, policy.action_space
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise RLStructError(
            f"can only export policies of flat Box observations, got {obs_space}; flatten the observations"
        )
    extractor = getattr(policy, "pi_features_extractor", policy.features_extractor)
    if not isinstance(extractor, FlattenExtractor):
        raise RLStructError(
            f"cannot export features extractor {type(extractor).__name__}; export an MLP policy"
        )
    if getattr(policy, "squash_output", False):
        raise RLStructError("cannot export a squashed-output (gSDE) policy; export one with use_sde=False")
    obs_dim = int(obs_space.shape[0])
    bundle = Bundle(spec=dict(format=runtime.BUNDLE_FORMAT, version=runtime.BUNDLE_VERSION, obs_dim=obs_dim))
    if obs_mean is not None:
        if np.shape(obs_mean) != (obs_dim,) or np.shape(obs_var) != (obs_dim,):
            raise RLStructError(
                f"observation statistics of shapes {np.shape(obs_mean)}, {np.shape(obs_var)} do not "
                f"fit {obs_dim} observations; pass the run's own obs_rms"
            )
        bundle.spec["normalization"] = dict(
            mean=bundle.add("obs.mean", obs_mean, np.float64), var=bundle.add("obs.var", obs_var, np.float64),
            clip=float(clip_obs), epsilon=float(epsilon),
        )
    else:
        bundle.spec["normalization"] = None
    layers = []
    with torch.no_grad():
        for index, (layer, activation) in enumerate(_actor_layers(policy)):
            prefix = "action_net" if layer is policy.action_net else f"policy_net.{index}"
            layers.append(layer_entry(bundle, prefix, layer, activation))
    bundle.spec["layers"] = layers
    if isinstance(action_space, spaces.Box):
        if len(action_space.shape) != 1:
            raise RLStructError(f"can only export flat Box actions, got shape {action_space.shape}")
        bundle.spec["action"] = dict(
            kind="box", dim=int(action_space.shape[0]), clip=True,
            low=bundle.add("action.low", action_space.low), high=bundle.add("action.high", action_space.high),
        )
    elif isinstance(action_space, spaces.Discrete):
        if int(getattr(action_space, "start", 0)) != 0:
            raise RLStructError("cannot export a Discrete action space with start != 0; use start=0")
        bundle.spec["action"] = dict(kind="discrete", n=int(action_space.n))
    else:
        raise RLStructError(
            f"cannot export action space {type(action_space).__name__}; Box and Discrete are supported"
        )
    bundle.spec["source"] = source or {}
    return bundle


# ---------------------------------------------------------------------------------------------
def load_source(path: Path) -> Tuple[Any, Any, Dict[str, Any]]:
    """``(policy, eval_env, meta)`` of a compact policy folder, or of a run folder (exported to a
    compact policy in a temporary folder first)."""
    from rlstruct import compact

    path = Path(path)
    if compact.is_compact_policy(path):
        return compact.load_compact_policy(path)
    if any((path / marker).is_file() for marker in RUN_MARKERS):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "compact"
            compact.export_run(path, out)
            return compact.load_compact_policy(out)
    raise RLStructError(
        f"{path} is neither a compact policy (meta.json + policy.safetensors) nor a run folder "
        "(config.yaml); pass policies/NAME or a folder written by train.py"
    )


def bundle_from_path(path: Path) -> Tuple[Bundle, Any, Any]:
    """``(bundle, policy, eval_env)`` for a compact policy or run folder (the torch policy and
    its normalizing eval env are returned for checks; close the env when done)."""
    from stable_baselines3.common.vec_env import VecNormalize

    policy, venv, meta = load_source(Path(path))
    if isinstance(venv, VecNormalize) and venv.norm_obs:
        mean, var = venv.obs_rms.mean, venv.obs_rms.var
        clip, eps = float(venv.clip_obs), float(venv.epsilon)
    else:
        mean = var = None
        clip, eps = 10.0, 1e-8
    source = dict(path=str(path), env_id=meta.get("env_id"), structure=meta.get("structure"),
                  params=meta.get("params"), reward=(meta.get("reward") or {}).get("mean"))
    return bundle_from_policy(policy, mean, var, clip, eps, source), policy, venv
