"""Namespace checkpoints: a kernel's variables saved one by one, incrementally, atomically.

Called in the kernel by :mod:`jupyter_lowcost.kernel.checkpointing` (after cells, at a notice, from
``%lowcost checkpoint``) and by the tests and the benchmark directly.

Each variable is pickled on its own (protocol 5), so that one object that cannot be saved
is reported (name, type, why) while the others are saved. Large buffers (numpy arrays,
and the arrays inside pandas objects) leave the pickle stream out of band, without a
copy, and are written in chunks of :data:`CHUNK_SIZE`; a chunk that has not changed since
the previous checkpoint of the same variable is not written again, so ``big[0] = 1`` on a
large array rewrites one chunk. Which chunks changed: for large buffers, the pages written
since the last checkpoint, from :mod:`jupyter_lowcost.storage.write_watch` (the memory is not
read); otherwise, or where Linux cannot say, a CRC32 of each chunk against the last one.
Variables that are the same object (``b = a``), or objects that hold another variable's
object, are restored as one object; one that cannot be restored costs only the variables
that hold its objects (:mod:`jupyter_lowcost.storage.shared_memo`). Open files are saved
as their path, mode and position (:mod:`jupyter_lowcost.storage.open_files`).

A checkpoint directory holds::

    chunks/<id>           immutable blobs: buffer chunks, large pickle streams
    chunks/p<id>          packs: the small pickle streams (:mod:`jupyter_lowcost.storage.packs`)
    manifests/<seq>.json  one per checkpoint, written last, by an atomic rename

A process killed while writing leaves, at worst, chunk files that no manifest names; the
previous manifest and every chunk it names are untouched, so it loads whole. A machine
that goes (its page cache with it) cannot leave a manifest naming chunks that are not on
the disk either: every file is synced (``fdatasync``, by a syncer thread while the writer
goes on), then the chunks folder, before the manifest is written; the manifest is synced
before its rename, and the manifests folder after it. Only then does the write return:
the checkpoint counts (``%lowcost checkpoint``, the kernel's writer, a job's cell). A write that
fails (a full disk) fails the whole checkpoint with :class:`CheckpointWriteFailed`: the
files it wrote are deleted again and the previous checkpoint stays the latest. Every file
and directory is its owner's only (0600, 0700).

This module is the store's facade: :class:`CheckpointStore` hands each job to its module,
one role each: :mod:`~jupyter_lowcost.storage.snapshots` (pickling a namespace, with
:mod:`~jupyter_lowcost.storage.pickling` and :mod:`~jupyter_lowcost.storage.staging`),
:mod:`~jupyter_lowcost.storage.writing` (a checkpoint's files, with
:mod:`~jupyter_lowcost.storage.chunks` and :mod:`~jupyter_lowcost.storage.durable_writes`),
:mod:`~jupyter_lowcost.storage.manifests` (the manifests and their cleanup),
:mod:`~jupyter_lowcost.storage.restore` and :mod:`~jupyter_lowcost.storage.reports`;
IPython's variable filter is in :mod:`~jupyter_lowcost.storage.user_namespace`. The names
the other layers take from here are re-exported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import env
from .chunks import BufferChunks
from .durable_writes import CheckpointWriteFailed, DurableWrites
from .format import CHUNK_SIZE, KEEP, WATCHED_CHUNKS, type_name
from .manifests import Manifests
from .manifests import chunks_of as _chunks_of
from .namespace_reader import NamespaceReader, VariableSplit
from .notebook_functions import restore_notebook_function as _restore_notebook_function
from .pickling import restore_tensor as _restore_tensor
from .private import private_dir
from .reports import RestoreReport, SaveReport, Skipped
from .restore import restore
from .snapshots import Snapshot, take_snapshot
from .staging import Staging, StagingTooLarge
from .staging import memory_available as _memory_available
from .user_namespace import sys_path_additions, user_variables
from .writing import CheckpointWriter

__all__ = [
    "CHUNK_SIZE",
    "KEEP",
    "WATCHED_CHUNKS",
    "CheckpointStore",
    "CheckpointWriteFailed",
    "NamespaceReader",
    "RestoreReport",
    "SaveReport",
    "Skipped",
    "Snapshot",
    "VariableSplit",
    "StagingTooLarge",
    "sys_path_additions",
    "type_name",
    "user_variables",
]
#: Kept importable by these names: checkpoints written before the store was split name
#: the restorers of tensors and notebook functions here (the streams say where a
#: restorer is), and tests read the chunks a manifest names and replace the memory
#: available.
_OLD_NAMES = (_restore_tensor, _restore_notebook_function, _chunks_of, _memory_available)


class CheckpointStore:
    """One checkpoint directory: write checkpoints of a namespace, list them, load them.

    ``watch_writes=False`` finds changed chunks by their CRC32 only (tests compare both).
    ``watch_first_save=False`` (a kernel's store) watches the writes to a buffer only once
    a checkpoint found it little changed (:class:`~jupyter_lowcost.storage.chunks.BufferChunks`)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        chunk_size: int = CHUNK_SIZE,
        watch_writes: bool = True,
        watch_first_save: bool = True,
    ) -> None:
        self.root = Path(root)
        self.chunks = self.root / "chunks"
        self.manifests = self.root / "manifests"
        private_dir(self.chunks)
        private_dir(self.manifests)
        self._pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
        self._files = DurableWrites(self.root)
        self._buffers = BufferChunks(
            self.chunks, chunk_size, self._files, self._pool, watch_writes, watch_first_save
        )
        self._manifests = Manifests(self.manifests, self.chunks)
        self._writer = CheckpointWriter(self.chunks, self._files, self._buffers, self._manifests)
        self._stagings = Staging(chunk_size, _memory_available_now)

    @property
    def chunk_size(self) -> int:
        """Buffers are written in chunks of this many bytes (settable: tests make it small)."""
        return self._buffers.chunk_size

    @chunk_size.setter
    def chunk_size(self, size: int) -> None:
        self._buffers.chunk_size = size
        self._stagings.chunk_size = size

    @property
    def write_tracking(self) -> str:
        """How a staged snapshot finds what changed, in words (``%lowcost`` says it)."""
        if self._buffers.watching:
            return (
                "Snapshots after cells copy only the memory written since the last "
                "checkpoint (Linux's write tracking: userfaultfd write-protect) in the "
                "arrays cells change little; arrays rewritten whole and GPU tensors are "
                "copied whole."
            )
        why = (
            "write tracking is off (JUPYTER_LOWCOST_WATCH_WRITES=0)"
            if os.environ.get(env.WATCH_WRITES) == "0"
            else "this system cannot say which memory was written (Linux 6.7 or later can)"
        )
        return f"Snapshots after cells copy every large array whole: {why}."

    @property
    def _staging(self) -> dict[tuple[str, int], memoryview]:
        """Per variable and buffer, the memory its last snapshot copied it into."""
        return self._stagings.copies

    # -- writing -------------------------------------------------------------------------

    def save(
        self,
        namespace: Mapping[str, Any],
        kernel_id: str | None = None,
        manual: bool = False,
        notebook: str | None = None,
        history: dict[str, Any] | None = None,
        sys_path: dict[str, list[str]] | None = None,
        split: VariableSplit | None = None,
    ) -> SaveReport:
        """Checkpoint ``namespace`` (name -> object) now; returns what was saved. ``history``
        (JSON) is kept with it as it is: the kernel's execution count and inputs.
        ``sys_path``: the folders the notebook added to ``sys.path``
        (:func:`sys_path_additions`), which ``load`` puts back. ``split``: as
        :meth:`snapshot`'s.

        The last :data:`KEEP` automatic checkpoints are kept, and beside them the last
        :data:`KEEP` ``manual`` ones (``%lowcost checkpoint``), so that checkpoints taken
        after each cell do not push out the ones a person asked for."""
        return self.write(
            self.snapshot(
                namespace, kernel_id, manual, notebook, history, sys_path=sys_path, split=split
            )
        )

    def snapshot(
        self,
        namespace: Mapping[str, Any],
        kernel_id: str | None = None,
        manual: bool = False,
        notebook: str | None = None,
        history: dict[str, Any] | None = None,
        stage: bool = False,
        sys_path: dict[str, list[str]] | None = None,
        split: VariableSplit | None = None,
        copy_later: bool = False,
    ) -> Snapshot:
        """The namespace as it is now, for :meth:`write`: each variable pickled (those of
        immutable values that are the same objects as at the last checkpoint are not
        pickled again), and with ``stage`` each out-of-band buffer copied, so that the
        write may run in another thread while the namespace changes (a kernel's next
        cell). Without ``stage`` the buffers are the variables' own memory: write at once.

        ``copy_later`` (with ``stage``): the large buffers are copied by background
        threads, and :meth:`wait_for_copies` must be called before the namespace changes
        (a kernel's next request: its reply goes out meanwhile); :meth:`write` waits too.

        :class:`StagingTooLarge` when a copy would not fit in the memory available."""
        started = time.perf_counter()
        taken_at = time.time()
        fields = {
            "kernel_id": kernel_id,
            "notebook": notebook,
            "taken_at": taken_at,
            "manual": manual,
            "history": history,
        }
        self._buffers.start_save()
        self._stagings.begin(later=copy_later)  # (the last one's copies made: memory reused)
        try:
            snapshot = take_snapshot(
                namespace, fields, self._stagings if stage else None, started, self._buffers, split
            )
        except BaseException:
            self._stagings.wait_for_copies()  # (none may go on writing into freed memory)
            raise
        finally:
            self._stagings.later = False
        snapshot.manifest["sys_path"] = sys_path
        return snapshot

    def write(self, snapshot: Snapshot, pause: Callable[[], None] | None = None) -> SaveReport:
        """Write a :meth:`snapshot` (in any thread, one write at a time, in the order the
        snapshots were taken): its streams, the chunks of its buffers that changed, then
        its manifest. A failure (:class:`CheckpointWriteFailed`) deletes what it wrote;
        the previous checkpoint stays the latest. ``pause`` is called between two pieces
        of the work (a kernel's writer waits there while a cell runs)."""
        self._stagings.wait_for_copies()
        return self._writer.write(snapshot, pause)

    def wait_for_copies(self) -> None:
        """Wait until the copies of the last snapshot taken with ``copy_later`` are made
        (at once when there are none): the namespace may change from then on."""
        self._stagings.wait_for_copies()

    # -- reading -------------------------------------------------------------------------

    def checkpoint_ids(self) -> list[str]:
        """Complete checkpoints, oldest first."""
        return self._manifests.checkpoint_ids()

    def latest(self) -> str | None:
        return self._manifests.latest()

    def manifest(self, checkpoint_id: str) -> dict[str, Any]:
        return self._manifests.manifest(checkpoint_id)

    def load(
        self,
        checkpoint_id: str | None = None,
        into: dict[str, Any] | None = None,
        adopt: bool = False,
    ) -> RestoreReport:
        """Restore a checkpoint (the latest by default) into ``into`` (a new dict if None).

        ``adopt``: ``into`` is the namespace this store checkpoints next (a kernel's
        restore, a resume): the next checkpoint reuses the files restored from for what
        did not change since, instead of writing everything again.

        The folders the notebook had added to ``sys.path`` (``save``'s ``sys_path``) are
        put back first, so that its modules import. Each variable comes back on its own:
        one that cannot be restored costs only the variables that hold its objects
        (:class:`~jupyter_lowcost.storage.shared_memo.SharedMemo`)."""
        checkpoint_id = checkpoint_id or self.latest()
        if checkpoint_id is None:
            raise FileNotFoundError(f"no checkpoint in {self.root}")
        return restore(self._manifests, self._buffers, self._writer, checkpoint_id, into, adopt)

    def settle(self) -> float:
        """Wait for the background fingerprints of the last checkpoints; the seconds it
        took (the benchmark calls it; a kernel has the time between cells for them)."""
        started = time.perf_counter()
        self._buffers.settle()
        return time.perf_counter() - started

    def close(self) -> None:
        self._buffers.close()
        self._stagings.clear()
        self._pool.shutdown(wait=False)
        self._files.close()


def _memory_available_now() -> int:
    """:func:`~jupyter_lowcost.storage.staging.memory_available`, looked up here at each
    call (a test replaces this module's ``_memory_available``)."""
    return _memory_available()
