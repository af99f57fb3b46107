"""Which checkpoint a job's kernel restores when it comes back: the one it took after the
job's last completed cell.

Used by :class:`~.runner.JobRunner` after each cell done (its checkpoint on disk,
``cell_checkpoints.py``), and by :class:`~.interruptions.Interruptions` at each resume. A
job's kernel checkpoints after every cell and only there (``kernel/job_cells.py``); the
job's record notes which checkpoint followed which cell, and the manager
(``manager.job_kernels``) is told which one the kernel's next start restores: the kernel
restores exactly that one (nothing when none was noted), so that the cell the job goes on
at always matches the state restored.
"""

from __future__ import annotations

from ...storage.jobs import JobRecord
from ..instances.job_kernels import JobKernels

#: How many of the checkpoints taken after its cells a job's record keeps (the latest).
CHECKPOINTS_NOTED = 16


class RestorePoints:
    """The checkpoints one job noted after its cells, and the one its kernel restores."""

    def __init__(self, kernels: JobKernels, job: JobRecord) -> None:
        self.kernels = kernels
        self.job = job

    def completed(self, checkpoint: str, cells_done: int) -> None:
        """``checkpoint`` was taken once ``cells_done`` cells had completed: noted, and
        restored by the kernel's next start."""
        self.note(checkpoint, cells_done)
        self.restore_next(checkpoint)

    def note(self, checkpoint: str, cells_done: int) -> None:
        """Note the checkpoint taken once ``cells_done`` cells had completed. The record
        keeps the last :data:`CHECKPOINTS_NOTED` (the kernel keeps fewer on disk), so that
        it stays small however many cells the job has: it is saved at every cell."""
        checkpoints = self.job.checkpoints
        checkpoints[checkpoint] = cells_done
        while len(checkpoints) > CHECKPOINTS_NOTED:
            del checkpoints[next(iter(checkpoints))]

    def restore_next(self, checkpoint: str | None) -> None:
        """The checkpoint the kernel's next start restores (None: none): the one after the
        job's last completed cell. Saved with the manager's records at once: a server
        killed now puts the kernel back with it, and a kernel that cannot be re-attached
        then resumes from the state the job's record says."""
        if self.job.kernel_id is not None:
            self.kernels.restore_next(self.job.kernel_id, checkpoint)

    def after_last_completed_cell(self) -> str | None:
        """The checkpoint after the job's last completed cell, else after the latest
        cell before it that has one (None: none was taken)."""
        noted = [(n, c) for c, n in self.job.checkpoints.items() if n <= self.job.cells_done]
        return max(noted)[1] if noted else None
