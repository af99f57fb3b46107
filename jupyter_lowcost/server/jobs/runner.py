"""One job's life: wait for room, start its kernel, run its cells in order, resume after
every interruption at the first cell that did not complete, and end.

Created and run (as a task) by :class:`~.service.Jobs`: for a new job, and for each job a
previous server left unfinished. The runner runs the cells; its pieces do the rest:

- :class:`~.kernel.JobKernel`: the kernel, started in the job's turn for room (or taken
  back after a server restart), a client connected to its current instance, its release;
- :class:`~.interruptions.Interruptions`: an instance lost during a cell or between two,
  the wait for the relaunch, and where the job goes on;
- :class:`~.cell_checkpoints.CellCheckpoints`: the next cell starts at a cell's reply;
  the cell is done once the checkpoint the kernel took after it is on disk;
- :class:`~.restore_points.RestorePoints`: after each cell done, the checkpoint the
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
from .cell_checkpoints import CellCheckpoints, RepliedCell
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
        self.cell_checkpoints = CellCheckpoints(self.kernels, job, self._cell_done)
        self.interruptions = Interruptions(
            manager,
            self.progress,
            self.kernel,
            self.restore_points,
            self.cell_checkpoints,
            self.positions,
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
        # The job ends: the cells that replied ran, their checkpoints landed or not (no
        # cell will resume from them; they go with the kernel).
        self.cell_checkpoints.look(final=True)
        self.kernel.disconnect()
        try:
            await self.kernel.release()
        finally:
            await self.progress.end(*end)

    async def _run(self) -> str:
        """The cells, each sent at the previous one's reply. The job has succeeded once
        its last cell has replied: it does not wait for that cell's checkpoint (no cell
        would resume from it; ``cell_checkpoints.py``)."""
        job = self.job
        job.cells_total = len(self.positions)
        if job.started is None:
            job.started = time.time()
            self.progress.log(
                f"{job.name}: {job.cells_total} code cells, on "
                f"{Placement(job.instance_type, job.low_cost).describe()}"
            )
        await self._start_or_take_back_kernel()
        while self.cell_checkpoints.next_number() <= len(self.positions):
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
            self.cell_checkpoints.reattached()
            await self.interruptions.settle_after_server_restart()
            return
        resuming = job.kernel_id is not None
        restore = self.restore_points.after_last_completed_cell() if resuming else None
        if resuming:
            job.state = JobState.RESUMING
        await self.kernel.start(restore)
        await self.kernel.connect()
        self.cell_checkpoints.new_kernel()
        if resuming:
            await self.interruptions.resume_point(
                "after the server restarted", "before the server restarted"
            )

    async def _run_next_cell(self) -> None:
        """Run the first cell that has not replied (the cells before it that wait for
        their checkpoint are done as it lands); on an instance lost meanwhile, resume."""
        job = self.job
        number = self.cell_checkpoints.next_number()
        position = self.positions[number - 1]
        instance_id = self.kernel.instance_id()
        job.current_cell = number
        job.current_source = nb.first_line(nb.source(self.notebook, position))
        self._attempts[number] = self._attempts.get(number, 0) + 1
        # (what it says of an earlier run goes, saved before it starts: set again at its
        # reply, which a restarted server tells by it, ``interruptions.py``)
        self.notebook["cells"][position].get("metadata", {}).pop("lowcost", None)
        self.progress.changed.add(position)
        self.progress.set(JobState.RUNNING, f"running cell {number} of {job.cells_total}")
        started = time.time()
        self.progress.log(f"cell {number}/{job.cells_total} started on instance {instance_id}")
        failed = None
        watch = asyncio.ensure_future(self.cell_checkpoints.watch())
        try:
            try:
                reply = await self.executor.run_cell(
                    position, lambda: self.kernel.lost(instance_id)
                )
            finally:
                watch.cancel()
        except KernelLost as lost:
            await self.interruptions.resume_after_loss(number, instance_id, str(lost))
            return
        except CellFailed as error:
            reply, failed = error.reply, error
        self._cell_replied(number, position, reply, failed is not None, started, instance_id)

    def _cell_replied(
        self,
        number: int,
        position: int,
        reply: dict[str, Any],
        failed: bool,
        started: float,
        instance_id: str | None,
    ) -> None:
        """Cell ``number`` replied (its outputs are in the notebook, as nbclient put
        them): note where it ran; it is done once its checkpoint is on disk
        (``cell_checkpoints.py``). Or fail the job (``failed``: it raised, and its
        ``raises-exception`` tag does not allow it; the cells before it are done)."""
        job = self.job
        self.progress.changed.add(position)
        note = self.interruptions.note_for(number)
        if note is not None:
            self.executor.put_first(position, nb.note_output(note[0]))
        cell_meta = self._cell_metadata(number, started, instance_id)
        if note is not None:
            cell_meta["not_restored"] = note[1]
        nb.mark_cell(self.notebook, position, cell_meta)
        count = reply.get("execution_count")
        count = count if isinstance(count, int) and not isinstance(count, bool) else None
        if failed:  # (the cells before it are done at the job's end, ``run``)
            job.error = {
                "cell": number,
                "ename": str(reply.get("ename", "")),
                "evalue": str(reply.get("evalue", "")),
                "traceback": [str(line) for line in reply.get("traceback") or []],
            }
            self.progress.save()
            raise JobFailed(f"cell {number} raised {job.error['ename']}: {job.error['evalue']}")
        replied = RepliedCell(number, position, count, started, cell_meta)
        self.cell_checkpoints.replied(replied, last=number == len(self.positions))
        self.progress.save()  # (its outputs, done or not)

    def _cell_done(self, cell: RepliedCell, checkpoint: str | None) -> None:
        """``cell`` is done: the checkpoint taken after it (None: none, it failed, or the
        job ends first) is noted, and restored by the kernel's next start
        (``cell_checkpoints.py`` calls this)."""
        job = self.job
        if checkpoint is not None:
            self.restore_points.completed(checkpoint, cell.number)
            cell.metadata["checkpoint"] = checkpoint
        nb.mark_cell(self.notebook, cell.position, cell.metadata)
        self.progress.changed.add(cell.position)
        job.cells_done = cell.number
        self.progress.log(
            f"cell {cell.number}/{job.cells_total} done in {cell.replied - cell.started:.1f} s"
            + (f" (checkpoint {checkpoint})" if checkpoint else "")
        )
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
