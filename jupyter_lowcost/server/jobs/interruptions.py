"""A job's kernel lost and back: wait for the recovery's relaunch, and go on at the first
cell the restored checkpoint did not include.

Owned by :class:`~.runner.JobRunner`, one per job it runs. When the kernel's instance is
lost (an interruption, the cap), during a cell or between two, the manager's recovery
relaunches the kernel under the same id, and the kernel restores exactly the checkpoint
the job noted after its last cell done (``restore_points.py``; nothing when it noted
none). The job waits for that (``manager.job_kernels.instance_running``), asks the
kernel which checkpoint came back (``execution.resume_state``; the kernel's ``restored``
report only when it cannot say), and goes on at the cell after the one it noted that
checkpoint for: no cell done runs twice, and the cell the job goes on at always matches
the state restored. A cell that replied but whose checkpoint was not on disk was not done
(``cell_checkpoints.py``): the job goes on at it, and its outputs are replaced when it
runs again. What did not come back is said in the job's log, its interruption and a
note on the cell it resumed at (``resume.py``). A server restart is the same, and a
kernel re-attached then may have finished the cells that ran meanwhile.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ...storage.jobs import JobState
from ...storage.records import InstanceRecord, InstanceState, iso
from ..instances.notices import INSTANCE_KILLED
from . import notebook as nb
from .cell_checkpoints import CellCheckpoints
from .execution import KernelLost, resume_state, wait_until_idle
from .kernel import JobKernel
from .progress import JobFailed, JobProgress
from .restore_points import RestorePoints
from .resume import LISTED, describe_missing

if TYPE_CHECKING:
    from ..manager import InstanceManager

#: A cell whose kernel's instance is killed (SIGKILL: an instance lost, or a kernel that
#: ran out of memory) this many times in a row fails the job rather than run again.
KILLED_IN_A_ROW = 3

#: What an interrupted instance's state may be (the kernel is relaunched after it).
_TAKEN = (InstanceState.INTERRUPTED, InstanceState.EXPIRED, InstanceState.NOTICE)


class Interruptions:
    """One job's resumes: after an instance lost during a cell, between two cells, or
    after a server restart."""

    def __init__(
        self,
        manager: InstanceManager,
        progress: JobProgress,
        kernel: JobKernel,
        restore_points: RestorePoints,
        cell_checkpoints: CellCheckpoints,
        positions: list[int],
    ) -> None:
        self.kernels = manager.job_kernels
        self.kernel_manager = manager.kernel_manager
        self.recovery_policy = manager.settings.recovery_policy
        self.progress = progress
        self.job = progress.job
        self.notebook = progress.notebook
        self.kernel = kernel
        self.restore_points = restore_points
        self.cell_checkpoints = cell_checkpoints
        self.positions = positions
        #: The cell whose kernel was last killed (SIGKILL), and how many times in a row.
        self._killed: tuple[int, int] = (0, 0)
        #: The note the cell the job resumed at gets (by number): what did not come back.
        self._resume_note: tuple[int, str, list[dict[str, Any]]] | None = None

    def note_for(self, number: int) -> tuple[str, list[dict[str, Any]]] | None:
        """What cell ``number`` says, if the job resumed at it: the note's text (its first
        output) and the variables that did not come back (its metadata)."""
        note = self._resume_note
        if note is None or note[0] != number:
            return None
        return note[1], note[2]

    # -- lost during a cell --------------------------------------------------------------

    async def resume_after_loss(self, number: int, instance_id: str | None, why: str) -> None:
        """The kernel's instance was lost during cell ``number``: wait for the recovery's
        relaunch, then go on at the first cell the restored checkpoint did not include."""
        self.kernel.disconnect()
        record = self.kernels.record(instance_id)
        self._fail_if_crashed_or_killed(number, record)
        self._note_interruption(number, instance_id, record, why)
        taken = record is not None and record.state in _TAKEN
        if self.job.kernel_id not in self.kernel_manager and not taken:
            raise JobFailed(f"the job's kernel was shut down (not by the job) during cell {number}")
        self.kernels.expect_restore(self.job.kernel_id or "")
        self.progress.set(JobState.RESUMING, f"cell {number} was interrupted: {why}")
        await self._back_on_the_next_instance(
            instance_id, f"after the interruption in cell {number}"
        )

    def _fail_if_crashed_or_killed(self, number: int, record: InstanceRecord | None) -> None:
        """A kernel that crashed (no interruption), or whose instance was killed during
        the same cell :data:`KILLED_IN_A_ROW` times in a row, fails the job."""
        if record is not None and record.state == InstanceState.FAILED:
            self.progress.track_instances()
            raise JobFailed(f"the kernel crashed while running cell {number}: {record.reason}")
        if record is not None and record.reason.startswith(INSTANCE_KILLED):
            cell, killed = self._killed
            killed = killed + 1 if cell == number else 1
            self._killed = (number, killed)
            if killed >= KILLED_IN_A_ROW:
                self.progress.track_instances()
                raise JobFailed(
                    f"the kernel's instance was killed {killed} times in a row while running "
                    f"cell {number} (the system kills a kernel that runs out of memory so): "
                    f"{record.reason}"
                )

    def _note_interruption(
        self, number: int, instance_id: str | None, record: InstanceRecord | None, why: str
    ) -> None:
        job = self.job
        job.interruptions.append(
            {
                "cell": number,
                "instance_id": instance_id,
                "state": record.state.value if record else "lost",
                "reason": why,
                "at": iso(time.time()),
            }
        )
        job.current_cell = None
        self.progress.track_instances()

    # -- lost between cells --------------------------------------------------------------

    async def until_ready_for_a_cell(self) -> None:
        """A cell starts only on the instance the runner is connected to, running: an
        instance under notice, or one lost between two cells (its kernel relaunched on a
        new one), first gives way to the next, and the job resumes there."""
        if self.kernel.ready_for_a_cell():
            return
        connected = self.kernel.connected_instance
        lost = self.kernels.record(connected)
        if lost is not None and lost.state == InstanceState.NOTICE:
            # (the last cell's checkpoint, while the instance lasts: it need not run again)
            await self.cell_checkpoints.until_written(lambda: self.kernel.lost(connected))
        self.kernel.disconnect()
        self.job.current_cell = None  # (no cell runs while the job waits)
        what = f"instance {connected}"
        if lost is not None and lost.state == InstanceState.NOTICE:
            what = f"instance {connected} has a notice: {lost.reason}"
        self.progress.set(
            JobState.RESUMING, f"{what}; the next cell waits for the kernel's next one"
        )
        self.kernels.expect_restore(self.job.kernel_id or "")
        await self.kernels.instance_lost(self.job.kernel_id or "", connected)
        if lost is not None and not lost.is_live:
            if lost.state == InstanceState.FAILED:
                raise JobFailed(f"the kernel crashed between cells: {lost.reason}")
            self.job.interruptions.append(
                {
                    "cell": self.job.cells_done + 1,
                    "instance_id": lost.id,
                    "state": lost.state.value,
                    "reason": f"before the cell started: {lost.reason}",
                    "at": iso(time.time()),
                }
            )
        self.progress.track_instances()
        await self._back_on_the_next_instance(connected, "after losing the instance between cells")

    # -- back ----------------------------------------------------------------------------

    async def _back_on_the_next_instance(self, lost: str | None, when: str) -> None:
        """Wait for the kernel on its next instance, connect, and find where to go on."""
        await self.until_relaunched(lost)
        self.progress.track_instances()
        await self.kernel.connect()
        await self.resume_point(when, "before the interruption", True)

    async def until_relaunched(self, lost: str | None) -> None:
        """Wait until the manager has the kernel running on another instance than
        ``lost`` (None: any)."""
        job = self.job

        def pending(current: InstanceRecord) -> None:
            self.progress.set(JobState.RESUMING, f"waiting for an instance: {current.reason}")

        running = await self.kernels.instance_running(job.kernel_id or "", lost, pending)
        if running is not None:
            return
        lost_record = self.kernels.record(lost)
        if lost_record is not None and lost_record.state in (
            InstanceState.INTERRUPTED,
            InstanceState.EXPIRED,
        ):
            raise JobFailed(
                f"instance {lost} {lost_record.state.value} and the kernel was not "
                f"relaunched (recovery policy {self.recovery_policy!r})"
            )
        raise JobFailed("the job's kernel was shut down (not by the job)")

    async def resume_point(self, when: str, before: str, interrupted: bool = False) -> None:
        """Go on after the cell whose checkpoint the relaunched kernel restored (from the
        first cell when it restored none), and say what did not come back.

        The kernel restores exactly the checkpoint this job noted after its last
        completed cell (``restore_checkpoint``, see ``launches.py``); it says itself which
        one came back, over its connection (``resume_state``). Only when it cannot say:
        its ``restored`` report, then the checkpoint asked for. ``before``: what the cells
        that ran ran before ("the interruption"); ``interrupted``: the job's last
        interruption is the one this resume follows (it gets what did not come back)."""
        job = self.job
        state = await self._restored_state()
        checkpoint = str(state.get("checkpoint_id") or "") or None
        done = job.checkpoints.get(checkpoint, 0) if checkpoint else 0
        if done:
            self.progress.log(
                f"resumed {when} from checkpoint {checkpoint}: cells 1-{done} are done"
            )
        elif checkpoint:
            self.progress.log(
                f"{when}: the kernel restored checkpoint {checkpoint}, which this job did not "
                "note after any cell; the job starts again at cell 1"
            )
        else:
            self.progress.log(
                f"{when}: no checkpoint to resume from; the job starts again at cell 1"
            )
        job.cells_done = done
        self.cell_checkpoints.new_kernel()  # (the cells after ``done`` run again)
        # (the next relaunch restores the same state, until the next cell is done)
        self.restore_points.restore_next(checkpoint if done else None)
        self._say_what_did_not_come_back(state, checkpoint if done else None, before, interrupted)

    async def _restored_state(self) -> dict[str, Any]:
        """What the kernel restored at its start: as it says it, else as its report said,
        else the checkpoint it was asked to restore."""
        kernel_id = self.job.kernel_id or ""
        asked = self.kernels.restore_asked(kernel_id)
        instance_id = self.kernel.instance_id()
        state = None
        if self.kernel.client is not None:
            state = await resume_state(self.kernel.client, lambda: self.kernel.lost(instance_id))
        if state is None:
            state = self.kernels.restored_from(kernel_id)  # (its list of variables is bounded)
        if state is None:
            self.progress.log(
                "the kernel did not say which checkpoint it restored: the one asked for"
            )
            state = {"checkpoint_id": asked}
        return state

    def _say_what_did_not_come_back(
        self,
        state: dict[str, Any],
        checkpoint: str | None,
        before: str,
        interrupted: bool,
    ) -> None:
        """The variables the resume did not bring back, with the cell that defines each:
        in the job's log, its last interruption (the CLI prints it) and, once that cell
        has run, a note on the cell the job resumed at."""
        job = self.job
        self._resume_note = None
        missing = [m for m in state.get("not_restored") or [] if isinstance(m, dict)]
        count = state.get("not_restored_count")
        count = count if isinstance(count, int) and count >= len(missing) else len(missing)
        if checkpoint is None or not count:
            return
        done = job.cells_done
        sources = [nb.source(self.notebook, position) for position in self.positions]
        lines = describe_missing(missing, count, sources, done, before)
        head = (
            f"{count:,} variable{'s' if count != 1 else ''} did not come back from checkpoint "
            f"{checkpoint} (after cell {done})"
        )
        self.progress.log(f"{head}:")
        for line in lines:
            self.progress.log(f"  {line}")
        note = f"jupyter-lowcost: the job resumed here; {head}:\n" + "".join(
            f"  {line}\n" for line in lines
        )
        listed = [
            {"name": str(m.get("name")), "type": str(m.get("type")), "why": str(m.get("why"))}
            for m in missing[:LISTED]
        ]
        self._resume_note = (done + 1, note, listed)
        if interrupted and job.interruptions:
            job.interruptions[-1].update(
                {
                    "resumed_from": checkpoint,
                    "not_restored": listed,
                    "not_restored_count": count,
                    "note": f"{head}: " + "; ".join(lines),
                }
            )
        self.progress.save()

    # -- after a server restart ----------------------------------------------------------

    async def settle_after_server_restart(self) -> None:
        """A kernel re-attached after a server restart may have finished the cells that
        ran when the server went away (the one running, and the one before it if its
        checkpoint was not on disk yet): the execution count of the last says. Its
        reply comes once the write of the last one's checkpoint has ended (the kernel's
        cell end waits for it, ``kernel/job_cells.py``)."""
        job = self.job
        instance_id = self.kernel.instance_id()
        try:
            # (An empty cell: it waits for the one still running, and answers the number
            # of the last cell that ran, without taking a number of its own.)
            reply = await wait_until_idle(self.kernel.client, lambda: self.kernel.lost(instance_id))
        except KernelLost as lost:
            await self.resume_after_loss(job.cells_done + 1, instance_id, str(lost))
            return
        count = reply.get("execution_count")
        while job.cells_done < len(self.positions) and isinstance(count, int):
            expected = self._next_execution_count()
            if expected is None or count < expected:
                return
            self._completed_meanwhile(self.positions[job.cells_done], expected)

    def _completed_meanwhile(self, position: int, execution_count: int) -> None:
        """The cell at ``position`` completed while the server was away: it counts as
        done (with the checkpoint the kernel took after it). Its outputs are lost, unless
        it had replied before (its metadata says where it ran: set at its reply)."""
        job = self.job
        checkpoint = self.cell_checkpoints.find(execution_count)
        cell = self.notebook["cells"][position]
        replied = cell.get("execution_count") == execution_count and "finished" in (
            cell.get("metadata", {}).get("lowcost") or {}
        )
        if not replied:
            cell["outputs"] = [
                nb.note_output(
                    "(the outputs of this cell were lost: the Jupyter server restarted while "
                    "it ran)\n"
                )
            ]
        cell["execution_count"] = execution_count
        self.progress.changed.add(position)
        if checkpoint is not None:
            self.restore_points.completed(checkpoint, job.cells_done + 1)
        job.cells_done += 1
        self.progress.log(f"cell {job.cells_done} completed while the server restarted")
        self.progress.save()

    def _next_execution_count(self) -> int | None:
        """The execution count the next cell gets (from the last completed one)."""
        if self.job.cells_done == 0:
            return 1
        last = self.notebook["cells"][self.positions[self.job.cells_done - 1]]
        count = last.get("execution_count")
        return count + 1 if isinstance(count, int) else None
