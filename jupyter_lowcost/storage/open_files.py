"""Open files in checkpoints: saved as their path, mode and position, reopened there.

The checkpoint picklers (:mod:`jupyter_lowcost.storage.checkpoints`) save a file object
``open()`` made as :func:`reduce_file` says, and a restore calls :func:`reopen_file`
(named in the pickle stream) inside :func:`noting_reopened`, which collects the files that
did not come back as they were, for the restore's report.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The file objects ``open()`` makes: saved as what reopens them (:func:`reduce_file`).
FILE_TYPES = frozenset(
    (io.TextIOWrapper, io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.FileIO)
)

#: While :meth:`~jupyter_lowcost.storage.checkpoints.CheckpointStore.load` runs: id of each file it reopened other than as it
#: was -> (the file, what to tell the user) (:func:`reopen_file` adds to it).
_reopened: dict[int, tuple[Any, str]] | None = None


def reduce_file(file: Any) -> tuple[Any, tuple[Any, ...]]:
    """An open file as what reopens it on restore (:func:`reopen_file`): its absolute
    path, mode and position, not its contents. Called by the picklers'
    ``reducer_override``. What is waiting in a file's write buffer is flushed first, so
    that the file on disk holds everything up to the position saved. A file with no path
    (opened from a descriptor), or whose position cannot be told (``next(file)`` on a
    text file), raises PicklingError: the variable is reported as not saved."""
    path = file.name
    if not isinstance(path, str):
        raise pickle.PicklingError(f"a file opened from descriptor {path!r} cannot be reopened")
    position = None
    if not file.closed:
        if file.writable():
            try:
                file.flush()
            except (OSError, ValueError):
                pass
        try:
            position = file.tell()
        except (OSError, ValueError) as err:
            raise pickle.PicklingError(f"its position in {path} cannot be told: {err}") from None
    if isinstance(file, io.TextIOWrapper):
        kind, encoding, errors = "text", file.encoding, file.errors
    else:
        kind, encoding, errors = ("raw" if type(file) is io.FileIO else "binary"), None, None
    return (
        reopen_file,
        (os.path.abspath(path), file.mode, position, kind, encoding, errors),
    )


def reopen_file(
    path: str,
    mode: str,
    position: int | None,
    kind: str,
    encoding: str | None,
    errors: str | None,
) -> Any:
    """A file saved by :func:`reduce_file`, open again at its path and position, in its
    mode, or for reading only when its mode would empty it (``w``) or fail (``x``): that
    one is reported with the restore's variables that did not come back as they were. A
    file opened for appending is at its end. A closed file comes back closed. A file that
    no longer exists raises FileNotFoundError: the variable is not restored."""
    options: dict[str, Any] = {"buffering": 0} if kind == "raw" else {}
    if kind == "text":
        options.update(encoding=encoding, errors=errors)
    binary = kind != "text"
    if position is None:  # closed: one of the same kind, closed, with the same name
        file = open(os.devnull, "rb" if binary else "r", **options)  # noqa: SIM115
        raw = file if kind == "raw" else file.buffer.raw if kind == "text" else file.raw
        raw.name = path
        file.close()
        return file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the file it had open no longer exists: {path}")
    reopen = mode
    if "w" in mode or "x" in mode:
        reopen = "rb" if binary else "r"
    file = open(path, reopen, **options)  # noqa: SIM115
    if "a" not in mode:
        file.seek(position)
    if reopen != mode and _reopened is not None:
        would = "empty it" if "w" in mode else "fail"
        _reopened[id(file)] = (
            file,
            f"reopened for reading only, at its position: reopening it {mode!r} would {would}",
        )
    return file


@contextmanager
def noting_reopened() -> Iterator[dict[int, tuple[Any, str]]]:
    """While a restore runs: id of each file :func:`reopen_file` reopened other than as it
    was -> (the file, what to tell the user)."""
    global _reopened
    _reopened = {}
    try:
        yield _reopened
    finally:
        _reopened = None
