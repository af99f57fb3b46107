"""A snapshot's copies of the buffers it holds, so that the write may run while the
namespace changes (a kernel's next cell).

:class:`Staging` is used by :mod:`~jupyter_lowcost.storage.snapshots` when a snapshot is
taken with ``stage``; the store keeps one per checkpoint directory
(:class:`~jupyter_lowcost.storage.checkpoints.CheckpointStore`). A buffer whose writes
are watched (:mod:`~jupyter_lowcost.storage.write_watch`) has only the chunks written
since its last checkpoint copied (:meth:`Staging.stage_chunks`): the rest of it is in the
chunk files of that checkpoint already. Other buffers are copied whole (all their chunks,
:meth:`Staging.stage_chunks` too). The memory of a buffer's copies is kept from one snapshot
to the next while the next needs about as much (memory new to the process costs a fault per page
the first time); it is let go when much less is needed, so that what checkpoints keep is
about what changed between two snapshots, not a standing copy of every large array.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..words import human_bytes


class StagingTooLarge(MemoryError):
    """A snapshot's copy of a buffer would not fit in the memory available: the caller
    writes the checkpoint from the variables themselves instead
    (:meth:`~jupyter_lowcost.storage.checkpoints.CheckpointStore.save`)."""


@dataclass
class StagedChunks:
    """The chunks of one buffer a snapshot copied (chunk index -> its bytes as they were),
    and the write's plan for it (:class:`~jupyter_lowcost.storage.chunks.StagingPlan`):
    the chunks not here are the last checkpoint's."""

    nbytes: int
    parts: dict[int, memoryview]
    plan: Any


class Staging:
    """Per variable and buffer, the memory its last snapshot copied it into.

    ``memory_available`` says how many bytes new allocations may take (a copy larger than
    half of it is refused, :class:`StagingTooLarge`)."""

    def __init__(self, chunk_size: int, memory_available: Callable[[], int]) -> None:
        self.copies: dict[tuple[str, int], memoryview] = {}
        self.chunk_size = chunk_size
        self._memory_available = memory_available
        #: Copy large buffers in the background (:meth:`wait_for_copies`); else at once.
        self.later = False
        self._copier = ThreadPoolExecutor(
            max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="lowcost-copy"
        )
        self._copying: list[Future[None]] = []

    def stage_chunks(
        self,
        key: tuple[str, int],
        view: memoryview,
        indexes: list[int],
        keep: bool,
        staged: set[tuple[str, int]],
    ) -> dict[int, memoryview]:
        """Copies of the chunks ``indexes`` of ``view`` (chunk index -> copy), in memory
        kept for this buffer while the next snapshots need about as much (``keep``; else
        the copy lives only as long as the snapshot: the first copy of a buffer whose
        next snapshots copy what changed). ``key`` is added to ``staged``."""
        step = self.chunk_size
        spans = [(i, i * step, min(step, view.nbytes - i * step)) for i in indexes]
        needed = sum(length for _, _, length in spans)
        copy = self.copies.get(key) if keep else None
        if copy is None or not needed <= copy.nbytes <= 2 * needed + step:
            self.copies.pop(key, None)
            if needed > self._memory_available() // 2:
                raise StagingTooLarge(f"a copy of {human_bytes(needed)} would not fit in memory")
            copy = uninitialized(needed)
            if keep:
                self.copies[key] = copy
        staged.add(key)
        parts: dict[int, memoryview] = {}
        at = 0
        runs: list[tuple[int, int, int]] = []  # (offset in view, offset in copy, length)
        for index, offset, length in spans:
            parts[index] = copy[at : at + length]
            if runs and runs[-1][0] + runs[-1][2] == offset:
                runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + length)
            else:
                runs.append((offset, at, length))
            at += length
        for offset, into, length in runs:
            self._copy(view[offset : offset + length], copy[into : into + length])
        return parts

    def wait_for_copies(self) -> None:
        """Wait until the copies started in the background are made: the snapshot is then
        whole, and the namespace may change. Called before any of the user's code runs
        again (the kernel's next request) and before the write reads the copies."""
        for job in list(self._copying):  # (any thread: the list is cleared by begin)
            job.result()

    def begin(self, later: bool) -> None:
        """A snapshot starts (in the thread that takes them): the last one's copies are
        made; this one's are made in the background with ``later``."""
        self.wait_for_copies()
        self._copying = []
        self.later = later

    def keep_only(self, staged: set[tuple[str, int]]) -> None:
        """Let the memory of the copies a snapshot did not use go (buffers gone or moved)."""
        for key in [k for k in self.copies if k not in staged]:
            del self.copies[key]

    def clear(self) -> None:
        self.wait_for_copies()
        self.copies.clear()
        self._copier.shutdown(wait=False)

    def _copy(self, view: memoryview, copy: memoryview) -> None:
        step = max(self.chunk_size, view.nbytes // (os.cpu_count() or 1) + 1)
        try:
            import numpy
        except ImportError:
            numpy = None
        if numpy is None or (view.nbytes < 16 * self.chunk_size and not self.later):
            copy[:] = view
            return
        # (numpy copies without the GIL: several threads copy faster than one, and the
        # cell's reply goes out while they copy)
        target = numpy.frombuffer(copy, dtype=numpy.uint8)
        source = numpy.frombuffer(view, dtype=numpy.uint8)

        def part(offset: int) -> None:
            numpy.copyto(target[offset : offset + step], source[offset : offset + step])

        jobs = [self._copier.submit(part, offset) for offset in range(0, view.nbytes, step)]
        if self.later:
            self._copying.extend(jobs)
        else:
            for job in jobs:
                job.result()


def uninitialized(size: int) -> memoryview:
    """``size`` writable bytes, not zero-filled (numpy's ``empty`` when numpy is there)."""
    try:
        import numpy
    except ImportError:
        return memoryview(bytearray(size))
    return numpy.empty(size, dtype=numpy.uint8).data


def memory_available() -> int:
    """Bytes of memory available to new allocations (Linux's MemAvailable)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62  # unknown: assume it fits
