"""Ship compact policies without torch: a numpy runtime, ONNX graphs and C sources.

Three lines to deploy (see ``docs/export.md``)::

    python -m rlstruct.export policies/hopper-kama --format numpy --out deploy/
    # copy deploy/ (runtime.py, runtime.json, runtime.npz) to the target, then:
    from runtime import load_policy; action = load_policy("deploy").act(obs)

* :mod:`rlstruct.export.runtime`: the dependency-free numpy runtime (a single file).
* :mod:`rlstruct.export.program`: torch policy -> runtime bundle (the op chains).
* :mod:`rlstruct.export.onnx_export`, :mod:`rlstruct.export.c_export`: the same chains as an
  ONNX graph or as C99 sources.
"""

from __future__ import annotations

import os
from typing import Any, Union

from rlstruct.errors import RLStructError
from rlstruct.export import runtime

FORMATS = ("numpy", "onnx", "c")
_PROGRAM_NAMES = ("Bundle", "bundle_from_path", "bundle_from_policy")


def __getattr__(name: str) -> Any:
    # The exporter needs torch; the runtime must not: import it only when asked for.
    if name in _PROGRAM_NAMES:
        from rlstruct.export import program

        return getattr(program, name)
    raise AttributeError(f"module 'rlstruct.export' has no attribute {name!r}")


def load_policy(folder: Union[str, os.PathLike], mode: str = "compact") -> runtime.Policy:
    """:func:`rlstruct.export.runtime.load_policy`, with its errors as :class:`RLStructError`."""
    try:
        return runtime.load_policy(folder, mode)
    except runtime.BundleError as exc:
        raise RLStructError(str(exc)) from None


__all__ = ["Bundle", "FORMATS", "bundle_from_path", "bundle_from_policy", "load_policy", "runtime"]
