"""rlstruct: reinforcement-learning policies with structured weight matrices.

``import rlstruct`` makes ``"StructuredMlpPolicy"`` a policy name of SB3's PPO and sb3-contrib's
TRPO, so tools that load a plugin package by name (the RL Zoo's ``--gym-packages rlstruct``)
can train it. The registration waits until Stable-Baselines3 itself is imported: ES workers
import ``rlstruct.algos.backends`` and must not pay for torch or SB3 (see
:mod:`rlstruct.algos`), so this module imports neither.
"""

__version__ = "0.1.0"

import importlib.abc  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

from rlstruct.errors import RLStructError  # noqa: E402

__all__ = ["RLStructError", "__version__"]

#: packages whose import registers the policy (sb3-contrib holds TRPO).
_SB3_PACKAGES = ("stable_baselines3", "sb3_contrib")


def _register_policy() -> None:
    """Register ``StructuredMlpPolicy`` with PPO (and TRPO when sb3-contrib imports)."""
    policies = sys.modules.get("rlstruct.policies")
    try:
        if policies is None:
            import rlstruct.policies  # noqa: F401  (registers at import)
        elif hasattr(policies, "register_policy_aliases"):
            policies.register_policy_aliases()
        # else rlstruct.policies is itself importing SB3 and registers when it finishes.
    except Exception as exc:  # a broken plugin must not break the user's SB3 import
        warnings.warn(f"rlstruct could not register StructuredMlpPolicy: {exc!r}", RuntimeWarning)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for the SB3 packages it returns the spec the other finders give,
    with the loader's ``exec_module`` wrapped to register the policy once the package ran."""

    def __init__(self, names) -> None:
        self.pending = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        # Only a per-module loader instance may be patched (class loaders are shared).
        if loader is None or isinstance(loader, type) or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_then_register(module) -> None:
            run(module)
            self.pending.discard(fullname)
            if not self.pending and self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_policy()

        loader.exec_module = exec_then_register
        return spec


if "stable_baselines3" in sys.modules:  # imported after SB3 (the RL Zoo's --gym-packages)
    _register_policy()
if any(name not in sys.modules for name in _SB3_PACKAGES):
    sys.meta_path.insert(0, _RegisterAfterImport(n for n in _SB3_PACKAGES if n not in sys.modules))
