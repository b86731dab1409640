"""The one atomic-write helper of ``text_envs`` and ``agents``: no reader ever sees a partial file or folder.

Every file is written to a temporary name in the target's folder, flushed to disk (``fsync``) and
renamed over the target (``os.replace``: atomic on POSIX within one filesystem); the folder entry is
then synced too, so a crash or a ``SIGKILL`` at any moment leaves either the old file or the new one.
Folders (a saved model) are built in a temporary sibling folder and swapped in the same way, the old
one kept until the new one is complete.

>>> write_json_atomic(path, {"score": 1.0})                      # doctest: +SKIP
>>> with atomic_path(run / "model.zip") as tmp:                  # doctest: +SKIP
...     agent.save(tmp)                                          # any writer that takes a path
>>> with atomic_directory(run / "hf") as tmp:                    # doctest: +SKIP
...     model.save_pretrained(tmp)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["PAUSE_ENV_VAR", "TEMP_MARKER", "save_pause", "atomic_directory", "atomic_path", "remove_stale_temporaries", "write_bytes_atomic",
           "write_json_atomic", "write_text_atomic"]

#: Crash tests only: seconds that :func:`save_pause` sleeps in the middle of the saves that call it (a
#: checkpoint, the final ``model.zip``, a reward model), so that a test can kill the process during a save.
PAUSE_ENV_VAR = "TEXTGEN_RL_SAVE_PAUSE_S"


def save_pause() -> None:
    """The crash-test pause of :data:`PAUSE_ENV_VAR` (a no-op unless it is set)."""
    try:
        seconds = float(os.environ.get(PAUSE_ENV_VAR, "0") or 0)
    except ValueError:
        return
    if seconds > 0:
        time.sleep(seconds)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Permissions of the files written here: what ``open`` would give (mkstemp's are private to the owner).
_FILE_MODE = 0o666 & ~_current_umask()
#: Part of every temporary name written here (``.NAME.tmp-XXXX``), so that leftovers of a killed process
#: can be recognised and removed (:func:`remove_stale_temporaries`).
TEMP_MARKER = ".tmp-"


def _sync_folder(folder: Path) -> None:
    """fsync a folder so that a rename inside it survives a crash (no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _sync_tree(path: Path) -> None:
    """fsync every file below ``path`` (or ``path`` itself)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds, sync it and rename it to ``path``.

    :param suffix: extension of the temporary name (some writers, e.g. matplotlib's ``savefig``, pick
        the format from it); default: ``path``'s own.
    If the block raises, the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}{TEMP_MARKER}", suffix=target.suffix if suffix is None
                                    else suffix, dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    os.chmod(temporary, _FILE_MODE)
    try:
        yield temporary
        _sync_tree(temporary)
        os.replace(temporary, target)
        _sync_folder(target.parent)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_bytes_atomic(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(payload)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as JSON (plus a final newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=True) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; when the block succeeds, swap it in as ``path``.

    An existing ``path`` is moved aside first and deleted only once the new folder is in place (if
    the swap fails it is put back). If the block raises, the temporary folder is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}{TEMP_MARKER}", dir=target.parent))
    try:
        temporary.chmod(0o777 & ~_current_umask())  # mkdtemp makes it private; the result should not be
        yield temporary
        _sync_tree(temporary)
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old{TEMP_MARKER}", dir=target.parent))
            os.rmdir(backup)
            os.replace(target, backup)  # rename(2) of a folder: atomic
            try:
                os.replace(temporary, target)
            except BaseException:
                os.replace(backup, target)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(temporary, target)
        _sync_folder(target.parent)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike[str], name: str) -> list[Path]:
    """Delete what a killed writer of ``folder/name`` left behind (``.NAME.tmp-*``, ``.NAME.old.tmp-*``).

    Call it only when no other process may be writing ``name`` at the same time.
    :return: the paths removed.
    """
    removed = []
    leftovers = [*Path(folder).glob(f".{name}{TEMP_MARKER}*"), *Path(folder).glob(f".{name}.old{TEMP_MARKER}*")]
    for leftover in leftovers:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed
