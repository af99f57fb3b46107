"""Atomic writes: a file is either its old content or its new one, never half of either.

Everything that replaces a file that someone reads back goes through here: the records
(``storage/records.py``), the checkpoint store's chunks and manifests
(``storage/checkpoints.py``), the launch channel's address file (the server's restart
support) and ``save_on_notice`` (kernel side). A failure removes the temporary file and
re-raises. Stdlib only.
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
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write (with whatever
    writes files: ``torch.save``, ``open``); when the block ends without an error, rename
    it over ``path``; otherwise remove it."""
    temporary = temporary_beside(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_private(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace ``path`` with ``data``, atomically, as a file only its owner can read."""
    with replacing(path) as temporary:
        with open_private(temporary, "wb", exclusive=True) as file:
            file.write(data.encode() if isinstance(data, str) else data)
