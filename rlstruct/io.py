"""Files that must never be half-written, and the checks that make bad files fail clearly.

* :func:`atomic_write_bytes` / :func:`atomic_write_text`: write to a temporary file in the same
  folder, ``fsync``, then ``os.replace``: a reader sees the old file or the new one, never a
  torn one, even if the process is killed mid-write.
* :func:`load_sb3_model`: loads an SB3 zip with errors that say which file is bad and why
  (missing, truncated/corrupt, or trained with another structure or shape).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional, Type

from rlstruct.errors import RLStructError


def make_output_dir(path: os.PathLike, what: str) -> Path:
    """Create the folder ``path`` (with parents) for ``what``; any failure is one line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way (FileExistsError, NotADirectoryError) or no permission
        raise RLStructError(
            f"cannot create the {what} folder {path} ({exc.strerror}); pass a writable folder path"
        ) from exc
    return path


def atomic_write_bytes(path: os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (same-folder temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the final file the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (readers see the old or the new file)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically (non-JSON values via ``str``)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_sb3_model(model: Any, path: os.PathLike) -> None:
    """``model.save`` into memory, then an atomic write to ``path``."""
    buffer = io.BytesIO()
    model.save(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_pickle_atomic(obj: Any, path: os.PathLike) -> None:
    """Pickle ``obj`` to ``path`` atomically (e.g. ``VecNormalize`` statistics)."""
    import pickle

    atomic_write_bytes(path, pickle.dumps(obj))


def load_sb3_model(
    algo_class: Type, path: os.PathLike, env: Optional[Any] = None, device: str = "cpu",
    force_reset: bool = True,
) -> Any:
    """``algo_class.load(path, env)`` with one-line errors for every way a file can be bad.

    ``force_reset=False`` keeps the saved last observation (the caller restores the envs).
    """
    path = Path(path)
    _check_zip(path)
    try:
        return algo_class.load(path, env=env, device=device, force_reset=force_reset)
    except RuntimeError as exc:
        if not is_state_dict_mismatch(exc):
            raise  # not a file problem: let the real error through
        first = str(exc).strip().splitlines()[0]
        raise RLStructError(
            f"model file {path} does not match the policy it is loaded into ({first}); "
            "it was trained with another structure or shape: use the config saved with it"
        ) from exc
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError, AssertionError) as exc:
        raise RLStructError(
            f"model file {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
            "re-train, or resume from an earlier checkpoint"
        ) from exc


def is_state_dict_mismatch(exc: BaseException) -> bool:
    """Whether torch raised ``exc`` because saved tensors do not fit a module's keys or shapes."""
    text = str(exc)
    return any(marker in text for marker in (
        "Error(s) in loading state_dict", "size mismatch", "Missing key", "Unexpected key",
    ))


def _check_zip(path: Path) -> None:
    if not path.is_file():
        raise RLStructError(f"model file {path} does not exist; check the run folder path")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # reads every member and checks its CRC
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        damaged, names = f"{type(exc).__name__}: {exc}", []
    if damaged is not None or "data" not in names:
        raise RLStructError(
            f"model file {path} is corrupt or truncated ({damaged or 'no SB3 data entry'}); "
            "re-train, or resume from an earlier checkpoint"
        )


def load_policy_weights(model: Any, path: os.PathLike) -> None:
    """``model.set_parameters(path)`` (weights only, exact keys) with one-line errors."""
    path = Path(path)
    _check_zip(path)
    try:
        model.set_parameters(str(path), exact_match=True, device=model.device)
    except (RuntimeError, ValueError) as exc:
        if isinstance(exc, RuntimeError) and not is_state_dict_mismatch(exc):
            raise
        first = str(exc).strip().splitlines()[0]
        raise RLStructError(
            f"model file {path} does not fit this policy ({first[:200]}); it was trained with "
            "another structure or shape: build the policy from the config saved with it"
        ) from exc


def load_pickle(path: os.PathLike, what: str) -> Any:
    """Unpickle ``path``; a missing or damaged file raises :class:`RLStructError` naming ``what``."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise RLStructError(f"{what} file {path} does not exist")
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except Exception as exc:  # any unpickling failure means a damaged file
        raise RLStructError(
            f"{what} file {path} is corrupt or truncated ({type(exc).__name__}); "
            "re-train, or resume from an earlier checkpoint"
        ) from exc
