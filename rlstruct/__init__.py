"""rlstruct: reinforcement-learning policies with structured weight matrices."""

__version__ = "0.1.0"

from rlstruct.errors import RLStructError  # noqa: E402

__all__ = ["RLStructError", "__version__"]
