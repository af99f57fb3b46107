"""Files and directories only their owner can read: checkpoints, records, logs.

Called by the record store and the manager (server side), the local backend (launcher
logs), and the checkpoint store (kernel side). Stdlib only. A checkpoint holds a kernel's
variables, a record names the instances whose launch channel a local user might dial, a
log shows what the kernel printed: other users of the machine read none of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and its missing parents as 0700 directories (an existing one of
    ours is made 0700 too); returns it."""
    path = Path(path)
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass
    try:
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            path.chmod(DIR_MODE)
    except OSError:
        pass
    return path


def open_private(
    path: str | os.PathLike[str], mode: str = "wb", exclusive: bool = False
) -> IO[Any]:
    """``open(path, mode)`` for writing (``w``/``a``, text or binary), creating the file
    0600; ``exclusive``: fail if it exists (a temporary name of our own)."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_APPEND if "a" in mode else os.O_TRUNC
    if exclusive:
        flags |= os.O_EXCL
    fd = os.open(path, flags, FILE_MODE)
    try:
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise
