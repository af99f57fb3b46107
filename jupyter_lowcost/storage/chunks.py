"""The chunk files of a checkpoint directory: the out-of-band buffers of its variables,
written in chunks of which only those that changed are written again.

One :class:`BufferChunks` per checkpoint directory
(:class:`~jupyter_lowcost.storage.checkpoints.CheckpointStore`): the write of a checkpoint
(:mod:`~jupyter_lowcost.storage.writing`) saves each buffer with
:meth:`BufferChunks.save_buffer`, a restore (:mod:`~jupyter_lowcost.storage.restore`)
reads them back with :meth:`BufferChunks.read_buffer` and, into the namespace the store
checkpoints, hands their chunks over with :meth:`BufferChunks.adopt`. Which chunks
changed: for large buffers, the pages written since the last checkpoint
(:mod:`~jupyter_lowcost.storage.write_watch`); otherwise a CRC32 of each chunk against
the last one.
"""

from __future__ import annotations

import uuid
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any

from . import write_watch
from .durable_writes import CheckpointWriteFailed, DurableWrites
from .format import WATCHED_CHUNKS
from .saved_buffers import (
    Chunk,
    SavedBuffer,
    StagingPlan,
    buffer_address,
    lower_thread_priority,
    memory_owner,
    no_owner,
)
from .staging import StagedChunks, uninitialized

__all__ = ["BufferChunks", "Chunk", "SavedBuffer", "StagingPlan", "memory_owner"]


class BufferChunks:
    """The chunks of each variable's buffers in the last checkpoint, and the writes to
    them since (``watch_writes=False``: CRC32s only).

    Watching costs the user's code a page fault at the first write to each page after
    each checkpoint (``a += 1`` on 1 GiB: about ten times its time), and spares reading
    and copying what did not change. ``watch_first_save=False`` (a kernel's store) watches
    a buffer from its first checkpoint, stops as soon as a checkpoint finds more than half
    of it rewritten, and watches it again once a checkpoint (comparing CRC32s) finds at
    most half rewritten: an array rewritten by every cell faults once (the second cell),
    then is copied and compared, its transparent huge pages (which the faults split)
    collapsed again; one that cells change little costs what they change."""

    def __init__(
        self,
        chunks: Path,
        chunk_size: int,
        files: DurableWrites,
        pool: ThreadPoolExecutor,
        watch_writes: bool,
        watch_first_save: bool = True,
    ) -> None:
        self.chunks = chunks
        self.chunk_size = chunk_size
        self._files = files
        self._pool = pool
        # Per variable and buffer: its chunks in the last checkpoint, to write only the
        # chunks that changed.
        self.previous: dict[tuple[str, int], SavedBuffer] = {}
        self._watch = write_watch.shared() if watch_writes else None
        self._watch_first_save = watch_first_save
        # Pages written since the last checkpoint, per watched buffer (None: unknown).
        self._written: dict[tuple[str, int], list[tuple[int, int]] | None] = {}
        self._seen: set[tuple[str, int]] = set()
        self._committed = True
        #: The watches the save under way started, with their owners (weak).
        self._planned_watches: list[tuple[tuple[int, int], Any]] = []
        #: Bytes of memory read by the checkpoint under way to find what changed.
        self.compared = 0
        self._background: list[Any] = []
        self._fingerprinter = ThreadPoolExecutor(max_workers=1)
        #: The chunks of the buffers a restore handed over (:meth:`adopt`).
        self._to_fingerprint: list[list[Chunk]] = []

    @property
    def watching(self) -> bool:
        """Whether the writes to large buffers are watched (else compared by CRC32)."""
        return self._watch is not None

    # -- a checkpoint's buffers ----------------------------------------------------------

    def start_save(self) -> None:
        """Read (and clear) the written pages of every watched buffer, before any of the
        namespace is read: a write from now on is seen by the next checkpoint."""
        self._seen = set()
        self.compared = 0
        self._written = {}
        if not self._committed:
            # The last save stopped half way (or its snapshot was never written): the
            # pages it cleared were not all saved, and the watches it started are unused.
            for saved in self.previous.values():
                self.unwatch(saved)
            if self._watch is not None:
                for watched, owner in self._planned_watches:
                    self._watch.unwatch(*watched, owner())
        self._planned_watches = []
        self._committed = False
        for key, saved in self.previous.items():
            if saved.watched is not None and self._watch is not None:
                self._written[key] = self._watch.written(*saved.watched)

    def finish_save(self) -> None:
        """The checkpoint is written: forget the buffers it did not save."""
        for key in [k for k in self.previous if k not in self._seen]:
            self.unwatch(self.previous.pop(key))
        self._committed = True

    def unwatch(self, saved: SavedBuffer) -> None:
        if saved.watched is not None and self._watch is not None:
            self._watch.unwatch(*saved.watched, saved.owner() if saved.owner else None)
        saved.watched = None

    def save_buffer(
        self, key: tuple[str, int], view: memoryview, owner: Any, stable: bool = False
    ) -> tuple[list[str], int]:
        """Write the chunks of ``view`` that changed since this buffer's last checkpoint;
        returns its chunk ids and the bytes written.

        A buffer seen for the first time is written whole, without fingerprints (a full
        checkpoint costs what writing costs). A large one is then watched: the next
        checkpoint rewrites the chunks whose pages were written, and the first or last
        one when the bytes beside the watched pages changed. Others get the CRC32 of each
        chunk, computed in the background from the file just written (exactly what the
        chunk holds); the next checkpoint compares the memory with it. A ``stable`` buffer
        (a snapshot's copy, which nothing writes to) gets its CRC32s from memory at once."""
        plan = self.plan(key, view, owner)
        spans = self._spans(view.nbytes)
        results = self._unchanged_watched_chunks(plan.previous, plan.changed, len(spans))
        parts = {
            index: view[offset : offset + length] for index, (offset, length) in enumerate(spans)
        }
        return self._finish_buffer(plan, results, parts, spans, stable)

    def plan(self, key: tuple[str, int], view: memoryview, owner: Any) -> StagingPlan:
        """What the next write of buffer ``key`` (``view``, the memory of ``owner``) must
        do, found before its memory is read: which chunks changed since its last
        checkpoint (None: unknown, compare each), and its watch from now on. Called by
        :meth:`save_buffer`, and by a staged snapshot (in the kernel's main thread, before
        it copies what changed: :meth:`save_staged` then writes the copies)."""
        self._seen.add(key)
        address = buffer_address(view)
        previous = self._previous_of_same_length(key, len(self._spans(view.nbytes)))
        trusted = self._written_pages_trusted(key, previous, view, address, owner)
        if previous is not None and not trusted:
            self.unwatch(previous)
        if trusted and previous is not None:
            watched = previous.watched
        elif self._watch_first_save or previous is None or previous.calm:
            watched = self._start_watching(view, address, owner)
            if watched is not None:
                self._planned_watches.append((watched, weakref.ref(owner)))
        else:
            watched = None
        # Before the memory is read: a write during this checkpoint is also seen next time.
        edges = self._edge_fingerprints(view, address, watched) if watched else (0, 0)
        changed = None
        if trusted:
            assert previous is not None
            changed = self._changed_chunks(previous, self._written[key] or [], edges, view)
        elif previous is not None:
            self.compared += view.nbytes
        # (Weakly: a snapshot waiting for its write must not keep ``del big`` from
        # freeing big's memory.)
        owner_ref = weakref.ref(owner) if watched is not None else no_owner
        return StagingPlan(key, changed, previous, owner_ref, address, watched, edges)

    def save_staged(self, staged: StagedChunks) -> tuple[list[str], int]:
        """Write a buffer a staged snapshot copied (:meth:`plan`, then the copies of the
        chunks it found changed, or of all of them): its chunk ids and the bytes written.
        The chunks it did not copy are the last checkpoint's; one of those whose file is
        gone fails the checkpoint (the memory may have changed since: nothing else holds
        it as it was), and the next snapshot copies the buffer whole."""
        plan = staged.plan
        spans = self._spans(staged.nbytes)
        results = self._unchanged_watched_chunks(plan.previous, plan.changed, len(spans))
        missing = [i for i, r in enumerate(results) if r is None and i not in staged.parts]
        if missing:
            if plan.previous is not None:
                self.unwatch(plan.previous)
            raise CheckpointWriteFailed(
                f"chunk {missing[0]} of {plan.key[0]!r} in the last checkpoint is gone"
            )
        return self._finish_buffer(plan, results, staged.parts, spans, stable=True)

    def _finish_buffer(
        self,
        plan: StagingPlan,
        results: list[Any],
        parts: dict[int, memoryview],
        spans: list[tuple[int, int]],
        stable: bool,
    ) -> tuple[list[str], int]:
        """Write the chunks ``results`` does not know yet from ``parts``, and remember
        the buffer as saved."""
        self._write_changed_chunks(results, parts, plan.previous, plan.changed is None, stable)
        chunks = [[c, f, spans[i][1]] for i, (c, f, _) in enumerate(results)]
        owner, watched = plan.owner(), plan.watched
        rewritten = sum(1 for _, _, n in results if n)
        calm = plan.previous is not None and 2 * rewritten <= len(results)
        gone = owner is None  # (since the snapshot)
        rewritten_much = plan.previous is not None and not calm
        if watched is not None and (gone or (rewritten_much and not self._watch_first_save)):
            # Mostly rewritten: watching it would fault every page of the next rewrite,
            # and the faults split its huge pages, which the user's code then pays for.
            if self._watch is not None:
                self._watch.unwatch(*watched, owner, restore_huge_pages=True)
            watched = None
        self._remember(plan.key, chunks, owner, plan.address, watched, plan.edges)
        self.previous[plan.key].calm = calm
        return [c for c, _, _ in results], sum(n for _, _, n in results)

    def _spans(self, nbytes: int) -> list[tuple[int, int]]:
        """(offset, length) of each chunk of a buffer of ``nbytes``."""
        step = self.chunk_size
        return [(offset, min(step, nbytes - offset)) for offset in range(0, nbytes, step)]

    def _previous_of_same_length(self, key: tuple[str, int], count: int) -> SavedBuffer | None:
        """The buffer as the last checkpoint saved it, if it had as many chunks."""
        previous = self.previous.get(key)
        if previous is not None and len(previous.chunks) != count:
            self.unwatch(previous)
            return None
        return previous

    def _written_pages_trusted(
        self,
        key: tuple[str, int],
        previous: SavedBuffer | None,
        view: memoryview,
        address: int | None,
        owner: Any,
    ) -> bool:
        """The written pages can be trusted for the same memory of the same owner,
        watched all along."""
        return (
            previous is not None
            and self._written.get(key) is not None
            and address == previous.address
            and view.nbytes == sum(chunk[2] for chunk in previous.chunks)
            and owner is not None
            and previous.owner is not None
            and previous.owner() is owner
        )

    def _unchanged_watched_chunks(
        self, previous: SavedBuffer | None, changed: set[int] | None, count: int
    ) -> list[Any]:
        """Per chunk, (id, CRC32, 0) for the chunks of a watched buffer with no write
        (kept as they are), None for the others."""
        results: list[Any] = [None] * count
        if changed is not None and previous is not None:
            for index, (chunk_id, fingerprint, _) in enumerate(previous.chunks):
                if index not in changed and (self.chunks / chunk_id).exists():
                    results[index] = (chunk_id, fingerprint, 0)
        return results

    def _write_changed_chunks(
        self,
        results: list[Any],
        parts: dict[int, memoryview],
        previous: SavedBuffer | None,
        compare: bool,
        stable: bool,
    ) -> None:
        """Fill in ``results`` for each chunk not known yet (its bytes: ``parts``): kept
        when its CRC32 is the last one's (``compare``), else written; ``(id, CRC32, bytes
        written)``."""
        pending = [index for index, result in enumerate(results) if result is None]

        def one(index: int) -> tuple[str, int | None, int]:
            old = previous.chunks[index] if previous is not None else None
            return self._save_chunk(parts[index], old, compare, stable)

        if stable:
            # A snapshot's copy is written in the background while the user's cells run:
            # by this one thread, which leaves the other cores to them.
            for index in pending:
                self._files.pause()
                results[index] = one(index)
            return
        jobs = [self._pool.submit(one, index) for index in pending]
        # Every write has ended before a failure is raised: a failed checkpoint then
        # deletes every file it wrote, none is still being written.
        futures_wait(jobs)
        for index, job in zip(pending, jobs):
            results[index] = job.result()

    def _save_chunk(
        self, part: memoryview, old: Chunk | None, compare: bool, stable: bool
    ) -> tuple[str, int | None, int]:
        """One chunk (its bytes: ``part``): the ``old`` one when its CRC32 is the same
        (``compare``), else a new chunk file."""
        length = part.nbytes
        fingerprint = None
        if old is not None:
            chunk_id, old_fingerprint, old_length = old
            path = self.chunks / chunk_id
            if compare and old_length == length and path.exists():
                fingerprint = zlib.crc32(part)
                if old_fingerprint is None:  # its background CRC did not run yet
                    old_fingerprint = zlib.crc32(path.read_bytes())
                if old_fingerprint == fingerprint:
                    return chunk_id, fingerprint, 0
        if stable and fingerprint is None:
            fingerprint = zlib.crc32(part)
        chunk_id = uuid.uuid4().hex
        self._files.write(self.chunks / chunk_id, part)
        # (Live memory may have changed since its CRC32: the file's is computed later.)
        return chunk_id, fingerprint if stable else None, length

    def _remember(
        self,
        key: tuple[str, int],
        chunks: list[Chunk],
        owner: Any,
        address: int | None,
        watched: tuple[int, int] | None,
        edges: tuple[int, int],
    ) -> None:
        """The buffer as this checkpoint saved it, for the next one; the CRC32s of its
        new chunks in the background (unless it is watched)."""
        self.previous[key] = SavedBuffer(
            chunks=chunks,
            owner=weakref.ref(owner) if watched else None,
            address=address or 0,
            watched=watched,
            edges=edges,
        )
        if watched is None and any(f is None for _, f, _ in chunks):
            self._background.append(self._fingerprinter.submit(self._fingerprint_files, chunks))

    def _start_watching(
        self, view: memoryview, address: int | None, owner: Any
    ) -> tuple[int, int] | None:
        """Watch the writes to a large buffer whose memory has an owner that can be
        followed (weakly) from one checkpoint to the next; None when it is not watched."""
        if self._watch is None or address is None or owner is None:
            return None
        if view.nbytes < WATCHED_CHUNKS * self.chunk_size:
            return None
        try:
            weakref.ref(owner)
        except TypeError:
            return None
        start, end = write_watch.page_span(address, view.nbytes)
        return (start, end) if self._watch.watch(start, end, owner) else None

    def _edge_fingerprints(
        self, view: memoryview, address: int | None, watched: tuple[int, int]
    ) -> tuple[int, int]:
        """CRC32 of the buffer's bytes before and after its watched pages."""
        head = watched[0] - (address or 0)
        tail = watched[1] - (address or 0)
        self.compared += head + (view.nbytes - tail)
        return zlib.crc32(view[:head]), zlib.crc32(view[tail:])

    def _changed_chunks(
        self,
        previous: SavedBuffer,
        pages: list[tuple[int, int]],
        edges: tuple[int, int],
        view: memoryview,
    ) -> set[int]:
        """The chunks of a watched buffer with a written page, or changed edge bytes."""
        step = self.chunk_size
        last = (view.nbytes - 1) // step
        changed: set[int] = set()
        for start, end in pages:
            first_byte = max(0, start - previous.address)
            last_byte = min(view.nbytes, end - previous.address) - 1
            if last_byte >= first_byte:
                changed.update(range(first_byte // step, last_byte // step + 1))
        assert previous.watched is not None
        head = previous.watched[0] - previous.address  # bytes before the watched pages
        tail = previous.watched[1] - previous.address  # where the bytes after them start
        if edges[0] != previous.edges[0]:
            changed.update(range(max(0, head - 1) // step + 1))
        if edges[1] != previous.edges[1]:
            changed.update(range(min(tail, view.nbytes - 1) // step, last + 1))
        return changed

    def _fingerprint_files(self, chunks: list[Chunk], gently: bool = False) -> None:
        """CRC32 of written chunk files (a background job of ``save_buffer``, and of a
        restore: ``gently``, below the kernel's other threads)."""
        if gently:
            lower_thread_priority()
        for entry in chunks:
            if entry[1] is None:
                try:
                    entry[1] = zlib.crc32((self.chunks / entry[0]).read_bytes())
                except OSError:
                    return  # collected meanwhile: the next checkpoint rewrites it

    # -- restoring -----------------------------------------------------------------------

    def read_buffer(self, saved: dict[str, Any]) -> tuple[memoryview, list[Chunk]]:
        """A buffer read back from its chunks, in parallel, into memory that is not
        zero-filled first (the arrays of the restored objects live in it); and its
        chunks as the next checkpoint compares them ([id, CRC32 (None: not computed
        yet), length])."""
        size = saved["size"]
        view = uninitialized(size)
        offsets = []
        offset = 0
        for chunk_id in saved["chunks"]:
            length = (self.chunks / chunk_id).stat().st_size
            offsets.append((chunk_id, offset, length))
            offset += length
        if offset != size:
            raise OSError(f"a buffer's chunks hold {offset} bytes instead of {size}")

        def read(job: tuple[str, int, int]) -> Chunk:
            chunk_id, start, length = job
            with open(self.chunks / chunk_id, "rb", buffering=0) as file:
                done = 0
                while done < length:
                    n = file.readinto(view[start + done : start + length])
                    if not n:
                        raise OSError(f"chunk {chunk_id} is shorter than {length} bytes")
                    done += n
            return [chunk_id, None, length]

        return view, list(self._pool.map(read, offsets))

    def adopt(self, key: tuple[str, int], chunks: list[Chunk]) -> None:
        """A restored buffer's chunks are what the last checkpoint saved of it: the next
        checkpoint writes only the chunks that change after the restore."""
        old = self.previous.get(key)
        if old is not None:
            self.unwatch(old)
        self.previous[key] = SavedBuffer(chunks=chunks)
        self._to_fingerprint.append(chunks)

    def fingerprint_adopted(self) -> None:
        """The CRC32s of the chunks restored from, from the files, once the restore is
        done (it does not wait for them; the next checkpoint compares with them)."""
        for chunks in self._to_fingerprint:
            self._background.append(
                self._fingerprinter.submit(self._fingerprint_files, chunks, True)
            )
        self._to_fingerprint = []

    def settle(self) -> None:
        """Wait for the background fingerprints."""
        for job in self._background:
            job.result()
        self._background.clear()

    def close(self) -> None:
        for saved in self.previous.values():
            self.unwatch(saved)
        self._fingerprinter.shutdown(wait=False)
