"""Which of a job's cells are done: a cell is done once the checkpoint its kernel took
after it is on disk; the next cell does not wait for that.

Owned by :class:`~.runner.JobRunner` (one per job it runs), and used by
:class:`~.interruptions.Interruptions`. A job's kernel snapshots its namespace at each
cell's end, before the reply, and writes it while the next cell runs
(``kernel/job_cells.py``); the runner sends the next cell at the reply, and notes here
the cell that replied (:meth:`CellCheckpoints.replied`). Which checkpoint is whose: each
manifest's ``history.cell`` is the execution count of the cell it was taken after
(``kernel/cell_history.py``), the reply says the cell's execution count, and only the
checkpoints newer than the latest on disk when the kernel (re)started are the current
kernel's (checkpoint ids grow in a kernel's directory; an older one with the same count
is from an instance lost since). The manager reads the manifests
(``manager.job_kernels``).

A cell that replied is done (the runner's ``done`` callback: its checkpoint noted and
restored by the kernel's next start, ``job.cells_done``, its metadata) when its
checkpoint is found, looked for while the next cell runs (:meth:`CellCheckpoints.watch`)
and at each reply; or once a later cell has replied, when none is found: the kernel's
cell end waits for the write in flight, so that write has ended, and failed (a full
disk: the cell is done without a checkpoint, as before). Cells that nbclient runs
nothing for (an empty cell, ``skip-execution``) have no execution count and are done
once the cells before them are.

An interruption forgets the cells that replied but are not done: the relaunched kernel
restores the checkpoint after the last cell done, and the job goes on at the first cell
whose checkpoint was not on disk (their outputs are replaced when they run again).

The job's end does not wait for its last cell's checkpoint: a job has succeeded once
every cell has replied (its output notebook complete), and no cell follows that would
resume from it; its checkpoints are deleted with its kernel. The last cell, and any
before it whose checkpoint is not found, are then done without one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...storage.jobs import JobRecord
from ..instances.job_kernels import JobKernels

#: How often the checkpoint of the cell that replied last is looked for while the next
#: cell runs (a directory listing; a manifest is read once).
POLL_SECONDS = 0.05


@dataclass
class RepliedCell:
    """A cell that replied, not done yet."""

    number: int
    position: int
    #: Its execution count (None: nbclient ran nothing for it).
    execution_count: int | None
    started: float
    #: Its ``lowcost`` metadata as at the reply (where and when it ran).
    metadata: dict[str, Any]
    replied: float = field(default_factory=time.time)


class CellCheckpoints:
    """The cells of one job that replied and wait for their checkpoint, in order."""

    def __init__(
        self,
        kernels: JobKernels,
        job: JobRecord,
        done: Callable[[RepliedCell, str | None], None],
    ) -> None:
        self.kernels = kernels
        self.job = job
        #: Called for each cell done, in order, with its checkpoint (None: none).
        self.done = done
        self.waiting: list[RepliedCell] = []
        #: Only checkpoints newer than this are the current kernel's.
        self._floor: str | None = None
        #: After which cell (execution count) each checkpoint read so far was taken.
        self._cells: dict[str, int | None] = {}

    def next_number(self) -> int:
        """The number of the next cell to run: after those done and those that replied."""
        return self.job.cells_done + len(self.waiting) + 1

    # -- the kernel ----------------------------------------------------------------------

    def new_kernel(self) -> None:
        """The job's kernel started, or started again (a relaunch, a resume): the cells
        that replied on the one before and are not done run again, and the checkpoints on
        disk now are not the new kernel's. Called before its first cell."""
        self.waiting.clear()
        self._cells.clear()
        kernel_id = self.job.kernel_id
        self._floor = self.kernels.latest_checkpoint(kernel_id) if kernel_id else None

    def reattached(self) -> None:
        """The kernel a restarted server took back goes on: its checkpoints are those
        newer than the last one the job noted (the cells that replied before the server
        went away are found again by ``completed_meanwhile``)."""
        self.waiting.clear()
        self._cells.clear()
        noted = [c for c in self.job.checkpoints if c.isdigit()]
        self._floor = max(noted, key=int) if noted else None

    # -- the cells -----------------------------------------------------------------------

    def replied(self, cell: RepliedCell, last: bool = False) -> None:
        """``cell`` replied (the next one may start): the cells before it are done, and
        it too once its checkpoint is on disk; all of them if it is the ``last``."""
        self.waiting.append(cell)
        self.look(settled=cell.execution_count, final=last)

    def look(self, settled: int | None = None, final: bool = False) -> None:
        """Mark done, in order, the cells whose checkpoint is on disk. ``settled``: a cell
        of that execution count replied, so every write of a cell before it has ended
        (not found: failed). ``final``: the job ends, every cell that replied is done."""
        while self.waiting:
            cell = self.waiting[0]
            checkpoint = None
            count = cell.execution_count
            if count is not None:
                checkpoint = self.find(count)
                if checkpoint is None:
                    ended = settled is not None and count < settled
                    if not (ended or final or self._off()):
                        return
            self.waiting.pop(0)
            if checkpoint is not None:  # (the next cells' are newer)
                self._floor = checkpoint
                self._cells = {c: n for c, n in self._cells.items() if int(c) > int(checkpoint)}
            self.done(cell, checkpoint)

    def find(self, execution_count: int) -> str | None:
        """The current kernel's checkpoint taken after the cell of ``execution_count``,
        if it is on disk (the oldest: the one taken at that cell's end)."""
        kernel_id = self.job.kernel_id
        ids = self.kernels.checkpoints_newer_than(kernel_id, self._floor) if kernel_id else None
        for checkpoint in ids or ():
            cell = self._cells.get(checkpoint)
            if cell is None:
                cell = self.kernels.checkpoint_cell(kernel_id or "", checkpoint)
                if cell is not None:  # (one that cannot be read now is read again)
                    self._cells[checkpoint] = cell
            if cell == execution_count:
                return checkpoint
        return None

    def _off(self) -> bool:
        """Checkpoints are off: a cell is done at its reply."""
        kernel_id = self.job.kernel_id
        return kernel_id is None or self.kernels.checkpoints_newer_than(kernel_id, None) is None

    # -- waits ---------------------------------------------------------------------------

    async def watch(self) -> None:
        """While a cell runs (a task the runner cancels at its reply): mark the cells
        before it done as their checkpoints land."""
        while True:
            if self.waiting:
                self.look()
            await asyncio.sleep(POLL_SECONDS)

    async def until_written(self, lost: Callable[[], str | None]) -> None:
        """Wait until every cell that replied is done, or ``lost()`` says the kernel's
        instance is gone (a notice's instance, between two cells, finishes the write in
        flight first when it can)."""
        while self.waiting and lost() is None:
            self.look()
            if self.waiting:
                await asyncio.sleep(POLL_SECONDS)
