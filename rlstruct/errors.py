"""User-facing errors.

Every mistake a user can make (a typo in a structure name, an impossible size, a checkpoint from
another run) raises :class:`RLStructError` with a one-line message that names the problem and the
fix. The CLI scripts print that line and exit with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class RLStructError(ValueError):
    """A problem with the user's input, explained in one line (what is wrong, what to do)."""
