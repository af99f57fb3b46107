"""One job's life: wait for room, start its kernel, run its cells in order, resume after
every interruption at the first cell that did not complete, and end.

Created and run (as a task) by :class:`~.service.Jobs`: for a new job, and for each job a
previous server left unfinished. The runner runs the cells; its pieces do the rest:

- :class:`~.kernel.JobKernel`: the kernel, started in the job's turn for room (or taken
  back after a server restart), a client connected to its current instance, its release;
- :class:`~.interruptions.Interruptions`: an instance lost during a cell or between two,
  the wait for the relaunch, and where the job goes on;
- :class:`~.restore_points.RestorePoints`: after each completed cell, the checkpoint the
  kernel took after it is noted, and is what the kernel restores at its next start;
- :class:`~.progress.JobProgress`: the job's record, events, log and output notebook.

What they know of the kernel's instances they ask the manager (``manager.job_kernels``).
The job's end shuts its kernel down, and stops whatever a relaunch started meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import nbformat
from nbformat.v4.rwbase import rejoin_lines

from ...storage.jobs import JobRecord, JobState, JobStore
from ...storage.records import Placement, iso
from . import notebook as nb
from .admission import Admission
from .execution import CellExecutor, CellFailed, KernelLost
from .interruptions import Interruptions
from .kernel import JobKernel
from .progress import JobFailed, JobProgress
from .restore_points import RestorePoints

if TYPE_CHECKING:
    from ..manager import InstanceManager

__all__ = ["JobFailed", "JobRunner"]


class JobRunner:
    """Runs one job to its end (succeeded, failed or cancelled)."""

    def __init__(
        self,
        manager: InstanceManager,
        store: JobStore,
        contents_manager: Any,
        job: JobRecord,
        emit: Callable[[JobRecord], None],
        admission: Admission,
    ) -> None:
        self.kernels = manager.job_kernels
        self.server_log = manager.log
        self.job = job
        #: The server is stopping: the job stays as it is, to go on after the restart.
        self.server_stopping = False
        # (sources and texts as strings, as ``nbformat.read`` gives them to nbclient)
        self.notebook: Any = rejoin_lines(nbformat.from_dict(store.output(job.id)))
        self.positions = nb.code_cells(self.notebook)
        #: nbclient's executor of the notebook's cells (its outputs, as nbclient's).
        self.executor = CellExecutor(self.notebook, job.kernel_name)
        self.progress = JobProgress(
            manager, store, job, emit, self.notebook, self.executor, contents_manager
        )
        self.executor.on_message = self.progress.log_output
        self.kernel = JobKernel(manager, admission, contents_manager, self.progress, self.executor)
        self.restore_points = RestorePoints(self.kernels, job)
        self.interruptions = Interruptions(
            manager, self.progress, self.kernel, self.restore_points, self.positions
        )
        #: How many times each cell (by number) started, while this runner ran.
        self._attempts: dict[int, int] = {}

    # -- the job's life ------------------------------------------------------------------

    async def run(self) -> None:
        """Run the job from where it is; never raises (its end is in its record). The
        job's kernel is shut down before the job says it has ended, so that its record
        and output notebook hold its instances' final state and cost."""
        job = self.job
        try:
            end = (JobState.SUCCEEDED, await self._run())
        except asyncio.CancelledError:
            self.kernel.disconnect()
            if self.server_stopping:
                self.progress.log("the Jupyter server stops; the job goes on when it starts again")
                self.progress.save()  # (journalled: the next server reads it back)
                self.progress.output.stop()
                raise
            end = (JobState.CANCELLED, job.reason or "cancelled")
        except JobFailed as err:
            end = (JobState.FAILED, str(err))
        except Exception as err:  # a bug or an unexpected refusal: the job says what
            self.server_log.exception("jupyter_lowcost | job %s stopped", job.id)
            end = (JobState.FAILED, f"the job stopped: {err}")
        self.kernel.disconnect()
        try:
            await self.kernel.release()
        finally:
            await self.progress.end(*end)

    async def _run(self) -> str:
        job = self.job
        job.cells_total = len(self.positions)
        if job.started is None:
            job.started = time.time()
            self.progress.log(
                f"{job.name}: {job.cells_total} code cells, on "
                f"{Placement(job.instance_type, job.low_cost).describe()}"
            )
        await self._start_or_take_back_kernel()
        while job.cells_done < len(self.positions):
            await self.interruptions.until_ready_for_a_cell()
            await self._run_next_cell()
        job.current_cell = None
        return f"all {job.cells_total} cells ran"

    async def _start_or_take_back_kernel(self) -> None:
        """Start the job's kernel (waiting for room), or take back the one a restarted
        server put back, or start it again resumed from its last checkpoint."""
        job = self.job
        if self.kernel.exists():
            self.progress.log(f"the Jupyter server restarted; re-attaching kernel {job.kernel_id}")
            await self.interruptions.until_relaunched(None)
            await self.kernel.connect()
            await self.interruptions.settle_after_server_restart()
            return
        resuming = job.kernel_id is not None
        restore = self.restore_points.after_last_completed_cell() if resuming else None
        if resuming:
            job.state = JobState.RESUMING
        await self.kernel.start(restore)
        await self.kernel.connect()
        if resuming:
            await self.interruptions.resume_point(
                "after the server restarted", "before the server restarted"
            )

    async def _run_next_cell(self) -> None:
        """Run the first cell not done; on an instance lost meanwhile, resume."""
        job = self.job
        number = job.cells_done + 1
        position = self.positions[job.cells_done]
        instance_id = self.kernel.instance_id()
        job.current_cell = number
        job.current_source = nb.first_line(nb.source(self.notebook, position))
        self._attempts[number] = self._attempts.get(number, 0) + 1
        self.progress.set(JobState.RUNNING, f"running cell {number} of {job.cells_total}")
        started = time.time()
        self.progress.log(f"cell {number}/{job.cells_total} started on instance {instance_id}")
        failed = None
        try:
            reply = await self.executor.run_cell(position, lambda: self.kernel.lost(instance_id))
        except KernelLost as lost:
            await self.interruptions.resume_after_loss(number, instance_id, str(lost))
            return
        except CellFailed as error:
            reply, failed = error.reply, error
        self._cell_done(number, position, reply, failed is not None, started, instance_id)

    def _cell_done(
        self,
        number: int,
        position: int,
        reply: dict[str, Any],
        failed: bool,
        started: float,
        instance_id: str | None,
    ) -> None:
        """Cell ``number`` ended (its outputs are in the notebook, as nbclient put them):
        note its checkpoint and where it ran, or fail the job (``failed``: it raised, and
        its ``raises-exception`` tag does not allow it)."""
        job = self.job
        self.progress.changed.add(position)
        note = self.interruptions.note_for(number)
        if note is not None:
            self.executor.put_first(position, nb.note_output(note[0]))
        cell_meta = self._cell_metadata(number, started, instance_id)
        if note is not None:
            cell_meta["not_restored"] = note[1]
        if failed:
            nb.mark_cell(self.notebook, position, cell_meta)
            job.error = {
                "cell": number,
                "ename": str(reply.get("ename", "")),
                "evalue": str(reply.get("evalue", "")),
                "traceback": [str(line) for line in reply.get("traceback") or []],
            }
            self.progress.save()
            raise JobFailed(f"cell {number} raised {job.error['ename']}: {job.error['evalue']}")
        checkpoint = self.restore_points.new_checkpoint()
        if checkpoint is not None:
            self.restore_points.completed(checkpoint, number)
            cell_meta["checkpoint"] = checkpoint
        nb.mark_cell(self.notebook, position, cell_meta)
        job.cells_done = number
        self.progress.log(f"cell {number}/{job.cells_total} done in {time.time() - started:.1f} s")
        self.progress.save()

    def _cell_metadata(
        self, number: int, started: float, instance_id: str | None
    ) -> dict[str, Any]:
        """Where and when cell ``number`` ran, and how many times it started."""
        job = self.job
        record = self.kernels.record(instance_id)
        return {
            "instance_id": instance_id,
            "instance_type": record.instance_type if record else job.instance_type,
            "tier": record.tier if record else job.tier,
            "started": iso(started),
            "finished": iso(time.time()),
            "attempts": self._attempts.get(number, 1),
        }
