"""The files one checkpoint writes: each atomically, synced to the disk by a syncer thread
while the writer goes on, and deleted again if the checkpoint fails.

One :class:`DurableWrites` per checkpoint directory
(:class:`~jupyter_lowcost.storage.checkpoints.CheckpointStore`); the write of a checkpoint
(:mod:`~jupyter_lowcost.storage.writing`, and :mod:`~jupyter_lowcost.storage.chunks` for
its buffers) writes every file through it, between :meth:`DurableWrites.begin` and
:meth:`DurableWrites.end`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any

from .atomic import sync_directory, sync_file, write_private


class CheckpointWriteFailed(OSError):
    """A checkpoint could not be written (a full disk, say): nothing of it was kept, and
    the previous checkpoint is still the latest."""


def no_pause() -> None:
    pass


class DurableWrites:
    """The files the checkpoint being written has added, and their syncs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: Called between two pieces of the work (a kernel's writer waits there while a
        #: cell runs).
        self.pause: Callable[[], None] = no_pause
        self._new_files: list[Path] = []
        self._syncs: list[Any] = []
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lowcost-sync")

    @property
    def wrote_files(self) -> bool:
        return bool(self._new_files)

    def begin(self, pause: Callable[[], None] | None) -> None:
        """A checkpoint's write starts (``pause``: see :attr:`pause`)."""
        self._new_files = []
        self._syncs = []
        self.pause = pause or no_pause

    def discard(self) -> None:
        """The checkpoint failed: delete every file it wrote (once none is being synced)."""
        futures_wait(self._syncs)
        for path in self._new_files:
            path.unlink(missing_ok=True)

    def end(self) -> None:
        self._new_files = []
        self._syncs = []
        self.pause = no_pause

    def write(self, path: Path, data: Any, sync_first: bool = False) -> None:
        """Write to a temporary name beside ``path`` and rename: never a half file. A
        failure leaves nothing behind and raises :class:`CheckpointWriteFailed`.

        The file is synced to the disk by the syncer thread meanwhile (the next files are
        written while this one goes to the disk; :meth:`wait_for_syncs` waits for them),
        or, with ``sync_first``, before its rename (the manifest: once it is in place,
        the checkpoint counts)."""
        try:
            write_private(path, data, sync=sync_first)
        except OSError as err:
            raise self.failed(err) from err
        self._new_files.append(path)
        if not sync_first:
            self._syncs.append(self._syncer.submit(sync_file, path))

    def wait_for_syncs(self) -> None:
        """Every file written so far is on the disk (:class:`CheckpointWriteFailed` if
        one cannot be)."""
        futures_wait(self._syncs)
        for job in self._syncs:
            error = job.exception()
            if isinstance(error, OSError):
                raise self.failed(error) from error
            if error is not None:
                raise error

    def sync_directory(self, path: Path) -> None:
        """The names of the files written in ``path`` on the disk
        (:class:`CheckpointWriteFailed` if they cannot be)."""
        try:
            sync_directory(path)
        except OSError as err:
            raise self.failed(err) from err

    def failed(self, err: OSError) -> CheckpointWriteFailed:
        return CheckpointWriteFailed(
            err.errno, f"could not write the checkpoint in {self.root}: {err.strerror or err}"
        )

    def close(self) -> None:
        self._syncer.shutdown(wait=False)
