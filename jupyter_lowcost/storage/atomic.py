"""Atomic writes: a file is either its old content or its new one, never half of either.

Everything that replaces a file that someone reads back goes through here: the records
(``storage/records.py``), the checkpoint store's chunks and manifests
(``storage/durable_writes.py``), the launch channel's address file (the server's restart
support) and ``save_on_notice`` (kernel side). A failure removes the temporary file and
re-raises. Stdlib only.

``sync=True`` makes a write durable before its rename (the data reach the disk, not only
the page cache, which a machine that dies takes with it); :func:`sync_directory` then
makes the renames in a folder durable. The checkpoint store uses both: a checkpoint
counts only once its files and their folder entries are on the disk.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .private import open_private


def temporary_beside(path: str | os.PathLike[str]) -> Path:
    """A name beside ``path`` that no other writer (process or thread) uses."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def replacing(path: str | os.PathLike[str], sync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write (with whatever
    writes files: ``torch.save``, ``open``); when the block ends without an error, rename
    it over ``path``; otherwise remove it. ``sync``: the file is on the disk before the
    rename, and the rename after it."""
    temporary = temporary_beside(path)
    try:
        yield temporary
        if sync:
            sync_file(temporary)
        os.replace(temporary, path)
        if sync:
            sync_directory(Path(path).parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_private(
    path: str | os.PathLike[str], data: bytes | str | memoryview, sync: bool = False
) -> None:
    """Replace ``path`` with ``data``, atomically, as a file only its owner can read;
    with ``sync``, the data are on the disk before the rename."""
    with replacing(path) as temporary:
        with open_private(temporary, "wb", exclusive=True) as file:
            file.write(data.encode() if isinstance(data, str) else data)
            if sync:
                file.flush()
                datasync(file.fileno())


def datasync(fd: int) -> None:
    """The file's data (and what reading them needs: its size) on the disk:
    ``fdatasync``, or ``fsync`` where there is none (macOS)."""
    sync = getattr(os, "fdatasync", None) or os.fsync
    sync(fd)


def sync_file(path: str | os.PathLike[str]) -> None:
    """A file written and closed (by whatever wrote it) on the disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        datasync(fd)
    finally:
        os.close(fd)


def sync_directory(path: str | os.PathLike[str]) -> None:
    """The entries of a folder (files created, renamed, deleted in it) on the disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
