"""Structure names -> layer classes.

A family registers itself with the :func:`register` decorator; configs and policies refer to it
by that name. Unknown names fail with the list of known ones.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Type

from rlstruct.errors import RLStructError
from rlstruct.layers.base import StructuredLinear

_REGISTRY: Dict[str, Type[StructuredLinear]] = {}


def register(name: str) -> Callable[[Type[StructuredLinear]], Type[StructuredLinear]]:
    """Class decorator: make a :class:`StructuredLinear` subclass available under ``name``."""

    def decorator(cls: Type[StructuredLinear]) -> Type[StructuredLinear]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise RuntimeError(f"structure {name!r} is registered twice")
        cls.structure = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_structures() -> List[str]:
    """Sorted list of registered structure names."""
    return sorted(_REGISTRY)


def get_structure(name: str) -> Type[StructuredLinear]:
    """The class registered under ``name``; a clear error lists the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(available_structures())
        raise RLStructError(
            f"unknown structure {name!r}; choose one of: {known}"
        ) from None


def make_layer(
    structure: str, in_features: int, out_features: int, bias: bool = True, **kwargs: Any
) -> StructuredLinear:
    """Build a layer of the named family, e.g. ``make_layer("kama", 11, 64)``.

    Extra keyword arguments go to the family's constructor; unknown ones are reported with the
    family's accepted options.
    """
    cls = get_structure(structure)
    try:
        return cls(in_features, out_features, bias=bias, **kwargs)
    except TypeError as exc:
        import inspect

        params = [
            p for p in inspect.signature(cls.__init__).parameters
            if p not in ("self", "in_features", "out_features", "bias")
        ]
        raise RLStructError(
            f"bad option for structure {structure!r} ({exc}); accepted options: "
            f"{', '.join(params) or 'none'}"
        ) from None
