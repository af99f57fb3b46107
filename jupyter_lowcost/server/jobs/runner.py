"""One job's life: wait for room, start its kernel, run its cells in order, come back after
every interruption at the first cell that did not complete, and end.

Created and run (as a task) by :class:`~.service.Jobs`: for a new job, and for each job a
previous server left unfinished. After each completed cell the runner notes the
checkpoint the kernel took after it (a job's kernel checkpoints after every cell and only
there, see ``kernel/checkpointing.py``), and tells the kernel's entry to restore that one
at its next start. When the kernel's instance is lost (an interruption, the cap) the
manager's recovery relaunches the kernel under the same id, and the kernel restores
exactly the checkpoint the runner noted (nothing when it noted none); the runner waits
for it, asks the kernel which checkpoint came back (``execution.resume_state``; the
kernel's ``restored`` report only when it cannot say), and goes on at the cell after the
one it noted that checkpoint for: no completed cell runs twice, and the cell the job goes
on at always matches the state restored. What did not come back is said in the job's log,
its interruption and a note on the cell it resumed at (``resume.py``). The executed
notebook so far is on disk after every cell, with the job's metadata, at a cost that
does not grow with the notebook (``output.py``: the changed cells journalled at once, the
whole notebook written off the event loop). The job's
end shuts its kernel down, and stops whatever a relaunch started meanwhile.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Any

import nbformat
from jupyter_core.utils import ensure_async
from nbformat.v4.rwbase import rejoin_lines

from ...backends import BackendError
from ...storage import checkpoint_dirs
from ...storage.jobs import JobRecord, JobState, JobStore
from ...storage.records import InstanceState, Placement, iso
from ..instances.launches import Launches
from ..instances.ledger import Context
from ..instances.notices import INSTANCE_KILLED
from . import notebook as nb
from .admission import Admission
from .execution import (
    CellExecutor,
    CellFailed,
    KernelLost,
    connect,
    language_info,
    resume_state,
    wait_until_idle,
)
from .output import OutputWriter
from .resume import LISTED, describe_missing

#: How often the runner looks at the manager's ledger while it waits for its kernel.
WAIT_SECONDS = 0.1
#: How many of the checkpoints taken after its cells a job's record keeps (the latest).
CHECKPOINTS_NOTED = 16
#: A cell whose kernel's instance is killed (SIGKILL: an instance lost, or a kernel that
#: ran out of memory) this many times in a row fails the job rather than run again.
KILLED_IN_A_ROW = 3


def _refused_for_room(start: asyncio.Future[str]) -> bool:
    """The kernel's start was refused at once for want of room (another kernel took it
    between the check and the start): nothing started, the job waits again."""
    if not start.done() or start.cancelled():
        return False
    error = start.exception()
    return isinstance(error, BackendError) and error.reason == "no-capacity"


class JobFailed(Exception):
    """The job cannot go on (a cell's error, a kernel that cannot start): the message."""


class JobRunner:
    """Runs one job to its end (succeeded, failed or cancelled)."""

    def __init__(
        self,
        ctx: Context,
        launches: Launches,
        store: JobStore,
        contents_manager: Any,
        job: JobRecord,
        emit: Callable[[JobRecord], None],
        admission: Admission,
    ) -> None:
        self.ctx = ctx
        #: The line of jobs waiting for room (the server's, see ``admission.py``).
        self.admission = admission
        self.launches = launches
        self.store = store
        self.contents_manager = contents_manager
        self.job = job
        self.emit = emit
        #: The server is stopping: the job stays as it is, to go on after the restart.
        self.server_stopping = False
        # (sources and texts as strings, as ``nbformat.read`` gives them to nbclient)
        self.notebook: Any = rejoin_lines(nbformat.from_dict(store.output(job.id)))
        self.positions = nb.code_cells(self.notebook)
        #: nbclient's executor of the notebook's cells (its outputs, as nbclient's).
        self.executor = CellExecutor(self.notebook, job.kernel_name)
        self.executor.on_message = self._log_output
        self._client: Any = None
        #: The instance the client is connected to.
        self._connected_instance: str | None = None
        #: How many times each cell (by number) started, while this runner ran.
        self._attempts: dict[int, int] = {}
        #: The cell whose kernel was last killed (SIGKILL), and how many times in a row.
        self._killed: tuple[int, int] = (0, 0)
        #: The note the cell the job resumed at gets (by number): what did not come back.
        self._resume_note: tuple[int, str, list[dict[str, Any]]] | None = None
        #: The output notebook's writer (journal at once, full writes off the event loop).
        self.output = OutputWriter(
            store, job.id, contents_manager, job.output_path, self._output_path_failed
        )
        #: Cells whose outputs or metadata the runner changed since the last save.
        self._changed: set[int] = set()

    # -- the job's life ------------------------------------------------------------------

    async def run(self) -> None:
        """Run the job from where it is; never raises (its end is in its record). The
        job's kernel is shut down before the job says it has ended, so that its record
        and output notebook hold its instances' final state and cost."""
        job = self.job
        try:
            end = (JobState.SUCCEEDED, await self._run())
        except asyncio.CancelledError:
            self._disconnect()
            if self.server_stopping:
                self._log("the Jupyter server stops; the job goes on when it starts again")
                self._save()  # (journalled: the next server reads it back)
                self.output.stop()
                raise
            end = (JobState.CANCELLED, job.reason or "cancelled")
        except JobFailed as err:
            end = (JobState.FAILED, str(err))
        except Exception as err:  # a bug or an unexpected refusal: the job says what
            self.ctx.log.exception("jupyter_lowcost | job %s stopped", job.id)
            end = (JobState.FAILED, f"the job stopped: {err}")
        self._disconnect()
        try:
            await self._release_kernel()
        finally:
            await self._end(*end)

    async def _run(self) -> str:
        job = self.job
        job.cells_total = len(self.positions)
        if job.started is None:
            job.started = time.time()
            self._log(
                f"{job.name}: {job.cells_total} code cells, on "
                f"{Placement(job.instance_type, job.low_cost).describe()}"
            )
        await self._start_or_take_back_kernel()
        while job.cells_done < len(self.positions):
            await self._until_ready_for_a_cell()
            number = job.cells_done + 1
            position = self.positions[job.cells_done]
            instance_id = self._instance_id()
            job.current_cell = number
            job.current_source = nb.first_line(nb.source(self.notebook, position))
            self._attempts[number] = self._attempts.get(number, 0) + 1
            self._set(JobState.RUNNING, f"running cell {number} of {job.cells_total}")
            started = time.time()
            self._log(f"cell {number}/{job.cells_total} started on instance {instance_id}")
            failed = None
            try:
                reply = await self.executor.run_cell(position, lambda: self._lost(instance_id))
            except KernelLost as lost:
                await self._come_back(number, instance_id, str(lost))
                continue
            except CellFailed as error:
                reply, failed = error.reply, error
            self._cell_done(number, position, reply, failed is not None, started, instance_id)
        job.current_cell = None
        return f"all {job.cells_total} cells ran"

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
        self._changed.add(position)
        note = self._resume_note
        if note is not None and note[0] == number:
            self.executor.put_first(position, nb.note_output(note[1]))
        record = self.ctx.ledger.record(instance_id)
        attempts = self._attempts.get(number, 1)
        cell_meta: dict[str, Any] = {
            "instance_id": instance_id,
            "instance_type": record.instance_type if record else job.instance_type,
            "tier": record.tier if record else job.tier,
            "started": iso(started),
            "finished": iso(time.time()),
            "attempts": attempts,
        }
        if note is not None and note[0] == number:
            cell_meta["not_restored"] = note[2]
        if failed:
            nb.mark_cell(self.notebook, position, cell_meta)
            job.error = {
                "cell": number,
                "ename": str(reply.get("ename", "")),
                "evalue": str(reply.get("evalue", "")),
                "traceback": [str(line) for line in reply.get("traceback") or []],
            }
            self._save()
            raise JobFailed(f"cell {number} raised {job.error['ename']}: {job.error['evalue']}")
        checkpoint = self._new_checkpoint()
        if checkpoint is not None:
            self._note_checkpoint(checkpoint, number)
            cell_meta["checkpoint"] = checkpoint
            self._restore_next(checkpoint)
        nb.mark_cell(self.notebook, position, cell_meta)
        job.cells_done = number
        self._log(f"cell {number}/{job.cells_total} done in {time.time() - started:.1f} s")
        self._save()

    # -- the kernel ----------------------------------------------------------------------

    async def _start_or_take_back_kernel(self) -> None:
        """Start the job's kernel (waiting for room), or take back the one a restarted
        server put back, or start it again resumed from its last checkpoint."""
        job = self.job
        kernels = self.ctx.kernel_manager
        if job.kernel_id is not None and job.kernel_id in kernels:
            self._log(f"the Jupyter server restarted; re-attaching kernel {job.kernel_id}")
            await self._until_relaunched(None)
            await self._connect()
            await self._settle_after_server_restart()
            return
        restore = None
        resuming = job.kernel_id is not None
        if resuming:
            restore = self._restore_point_checkpoint()
            job.state = JobState.RESUMING
        placement = Placement(job.instance_type, job.low_cost)
        backend = self.ctx.backend
        cwd = await self._kernel_cwd()
        ahead = self.admission.waiting()
        if ahead and job.state != JobState.RESUMING:
            self._set(JobState.QUEUED, f"queued: {ahead} job(s) before it start first")
        start: asyncio.Future[str] | None = None

        def say_waiting() -> None:
            if job.state != JobState.RESUMING:
                self._set(JobState.QUEUED, backend.room_message(job.low_cost, queued_job=True))

        try:
            # One job at a time, in the order they came, asks for room, and only when
            # there is some: a full backend makes jobs wait, never fail.
            async with self.admission.turn(job.id):
                while True:
                    await self.admission.until_room(job.low_cost, say_waiting)
                    if job.state != JobState.RESUMING:
                        self._set(JobState.QUEUED, f"starting on {placement.describe()}")
                    job.kernel_id = job.kernel_id or str(uuid.uuid4())
                    start = asyncio.ensure_future(
                        self.launches.start_kernel(
                            job.kernel_name,
                            placement,
                            cwd,
                            job.name,
                            job_id=job.id,
                            kernel_id=job.kernel_id,
                            restore_checkpoint=restore,
                        )
                    )
                    await self.admission.until_holding_room(start, job.kernel_id)
                    if not _refused_for_room(start):
                        break
                    # (another kernel took the room first, before anything started)
            assert start is not None
            await self._start_settled(start)
        except asyncio.CancelledError:
            if start is not None:
                await self._start_settled(start, cancelled=True)
            raise
        except BackendError as err:
            raise JobFailed(f"the kernel could not start: {err.message}") from err
        self._track_instances()
        await self._connect()
        if resuming:
            await self._resume_point("after the server restarted", "before the server restarted")

    async def _start_settled(self, start: asyncio.Future[str], cancelled: bool = False) -> None:
        """Wait for the kernel's start to end, through any cancel of the job (``cancelled``:
        one came already): :meth:`run` then shuts the kernel down whole, never half
        started. A cancelled job's instance that still waits for room stops waiting. The
        cancel is raised once the start has ended; else the start's error, if any."""
        while not start.done():
            if cancelled:
                self._stop_waiting_for_room()
            try:
                # (leaves ``start`` alone when cancelled; looks again soon once cancelled:
                # its instance may come to wait for room only later)
                await asyncio.wait([start], timeout=WAIT_SECONDS if cancelled else None)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            if not start.cancelled():
                start.exception()  # (retrieved: the job was cancelled anyway)
            raise asyncio.CancelledError
        start.result()

    def _stop_waiting_for_room(self) -> None:
        """The job was cancelled while its kernel's instance waits for room: that wait
        ends (the start fails; nothing of it is left)."""
        record = self.ctx.ledger.current(self.job.kernel_id or "")
        if record is None or record.state != InstanceState.PENDING or record.backend_state:
            return
        self.ctx.ledger.end(record, InstanceState.TERMINATED, "its job was cancelled")
        self.ctx.ledger.spawn(self.ctx.backend.terminate(record, now=True))

    async def _come_back(self, number: int, instance_id: str | None, why: str) -> None:
        """The kernel's instance was lost during cell ``number``: wait for the recovery's
        relaunch, then go on at the first cell the restored checkpoint did not include."""
        job = self.job
        self._disconnect()
        record = self.ctx.ledger.record(instance_id)
        if record is not None and record.state == InstanceState.FAILED:  # (no interruption)
            self._track_instances()
            raise JobFailed(f"the kernel crashed while running cell {number}: {record.reason}")
        if record is not None and record.reason.startswith(INSTANCE_KILLED):
            cell, killed = self._killed
            killed = killed + 1 if cell == number else 1
            self._killed = (number, killed)
            if killed >= KILLED_IN_A_ROW:
                self._track_instances()
                raise JobFailed(
                    f"the kernel's instance was killed {killed} times in a row while running "
                    f"cell {number} (the system kills a kernel that runs out of memory so): "
                    f"{record.reason}"
                )
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
        self._track_instances()
        taken = record is not None and record.state in (
            InstanceState.INTERRUPTED,
            InstanceState.EXPIRED,
            InstanceState.NOTICE,
        )
        if job.kernel_id not in self.ctx.kernel_manager and not taken:
            raise JobFailed(f"the job's kernel was shut down (not by the job) during cell {number}")
        entry = self.ctx.ledger.kernels.get(job.kernel_id or "")
        if entry is not None:
            entry.restored = None
        self._set(JobState.RESUMING, f"cell {number} was interrupted: {why}")
        await self._until_relaunched(instance_id)
        self._track_instances()
        await self._connect()
        await self._resume_point(
            f"after the interruption in cell {number}", "before the interruption", True
        )

    async def _until_relaunched(self, lost: str | None) -> None:
        """Wait until the manager has the kernel running on another instance."""
        job = self.job
        kernels = self.ctx.kernel_manager
        while True:
            if job.kernel_id not in kernels:
                lost_record = self.ctx.ledger.record(lost)
                if lost_record is not None and lost_record.state in (
                    InstanceState.INTERRUPTED,
                    InstanceState.EXPIRED,
                ):
                    raise JobFailed(
                        f"instance {lost} {lost_record.state.value} and the kernel was not "
                        f"relaunched (recovery policy {self.ctx.settings.recovery_policy!r})"
                    )
                raise JobFailed("the job's kernel was shut down (not by the job)")
            entry = self.ctx.ledger.kernels.get(job.kernel_id or "")
            current = self.ctx.ledger.current(job.kernel_id or "")
            if (
                entry is not None
                and not entry.recovering
                and not entry.busy
                and current is not None
                and current.id != lost
                and current.state == InstanceState.RUNNING
            ):
                return
            if (
                current is not None
                and current.id != lost
                and current.state == InstanceState.PENDING
            ):
                self._set(JobState.RESUMING, f"waiting for an instance: {current.reason}")
            await asyncio.sleep(WAIT_SECONDS)

    async def _until_ready_for_a_cell(self) -> None:
        """A cell starts only on the instance the runner is connected to, running: an
        instance under notice, or one lost between two cells (its kernel relaunched on a
        new one), first gives way to the next, and the job resumes there."""
        current = self.ctx.ledger.current(self.job.kernel_id or "")
        connected = self._connected_instance
        if (
            current is not None
            and current.id == connected
            and current.state == InstanceState.RUNNING
            and self._client is not None
        ):
            return
        self._disconnect()
        self.job.current_cell = None  # (no cell runs while the job waits)
        lost = self.ctx.ledger.record(connected)
        what = f"instance {connected}"
        if lost is not None and lost.state == InstanceState.NOTICE:
            what = f"instance {connected} has a notice: {lost.reason}"
        self._set(JobState.RESUMING, f"{what}; the next cell waits for the kernel's next one")
        entry = self.ctx.ledger.kernels.get(self.job.kernel_id or "")
        if entry is not None:
            entry.restored = None
        while (
            lost is not None
            and lost.is_live
            and self.ctx.ledger.current(self.job.kernel_id or "") is lost
        ):
            await asyncio.sleep(WAIT_SECONDS)
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
        self._track_instances()
        await self._until_relaunched(connected)
        self._track_instances()
        await self._connect()
        await self._resume_point(
            "after losing the instance between cells", "before the interruption", True
        )

    async def _resume_point(self, when: str, before: str, interrupted: bool = False) -> None:
        """Go on after the cell whose checkpoint the relaunched kernel restored (from the
        first cell when it restored none), and say what did not come back.

        The kernel restores exactly the checkpoint this runner noted after the job's last
        completed cell (``restore_checkpoint``, see ``launches.py``); it says itself which
        one came back, over its connection (``resume_state``). Only when it cannot say:
        its ``restored`` report, then the checkpoint asked for. ``before``: what the cells
        that ran ran before ("the interruption"); ``interrupted``: the job's last
        interruption is the one this resume follows (it gets what did not come back)."""
        job = self.job
        entry = self.ctx.ledger.kernels.get(job.kernel_id or "")
        asked = entry.restore_checkpoint if entry is not None else None
        instance_id = self._instance_id()
        state = None
        if self._client is not None:
            state = await resume_state(self._client, lambda: self._lost(instance_id))
        if state is None and entry is not None and entry.restored is not None:
            state = entry.restored  # (the report: its list of variables is bounded)
        if state is None:
            self._log("the kernel did not say which checkpoint it restored: the one asked for")
            state = {"checkpoint_id": asked}
        checkpoint = str(state.get("checkpoint_id") or "") or None
        done = job.checkpoints.get(checkpoint, 0) if checkpoint else 0
        if done:
            self._log(f"resumed {when} from checkpoint {checkpoint}: cells 1-{done} are done")
        elif checkpoint:
            self._log(
                f"{when}: the kernel restored checkpoint {checkpoint}, which this job did not "
                "note after any cell; the job starts again at cell 1"
            )
        else:
            self._log(f"{when}: no checkpoint to resume from; the job starts again at cell 1")
        job.cells_done = done
        # (the next relaunch restores the same state, until the next cell completes)
        self._restore_next(checkpoint if done else None)
        self._say_what_did_not_come_back(state, checkpoint if done else None, before, interrupted)

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
        self._log(f"{head}:")
        for line in lines:
            self._log(f"  {line}")
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
        self._save()

    def _restore_next(self, checkpoint: str | None) -> None:
        """The checkpoint the kernel's next start restores (None: none): the one after the
        job's last completed cell. Saved with the manager's records at once: a server
        killed now puts the kernel back with it (``comeback.py``), and a kernel that
        cannot be re-attached then resumes from the state the job's record says."""
        entry = self.ctx.ledger.kernels.get(self.job.kernel_id or "")
        if entry is not None and entry.restore_checkpoint != checkpoint:
            entry.restore_checkpoint = checkpoint
            self.ctx.ledger.save()

    def _note_checkpoint(self, checkpoint: str, cells_done: int) -> None:
        """Note the checkpoint taken once ``cells_done`` cells had completed. The record
        keeps the last :data:`CHECKPOINTS_NOTED` (the kernel keeps fewer on disk), so that
        it stays small however many cells the job has: it is saved at every cell."""
        checkpoints = self.job.checkpoints
        checkpoints[checkpoint] = cells_done
        while len(checkpoints) > CHECKPOINTS_NOTED:
            del checkpoints[next(iter(checkpoints))]

    def _restore_point_checkpoint(self) -> str | None:
        """The checkpoint after the job's last completed cell, else after the latest
        cell before it that has one (None: none was taken)."""
        noted = [(n, c) for c, n in self.job.checkpoints.items() if n <= self.job.cells_done]
        return max(noted)[1] if noted else None

    async def _settle_after_server_restart(self) -> None:
        """A kernel re-attached after a server restart may have finished the cell that
        ran when the server went away (its outputs are lost): its execution count says."""
        job = self.job
        instance_id = self._instance_id()
        try:
            # (An empty cell: it waits for the one still running, and answers the number
            # of the last cell that ran, without taking a number of its own.)
            reply = await wait_until_idle(self._client, lambda: self._lost(instance_id))
        except KernelLost as lost:
            await self._come_back(job.cells_done + 1, instance_id, str(lost))
            return
        count = reply.get("execution_count")
        position = self.positions[job.cells_done] if job.cells_done < len(self.positions) else None
        if position is None or not isinstance(count, int):
            return
        expected = self._next_execution_count()
        if expected is not None and count >= expected:
            checkpoint = self._new_checkpoint()
            self.notebook["cells"][position]["outputs"] = [
                nb.note_output(
                    "(the outputs of this cell were lost: the Jupyter server "
                    "restarted while it ran)\n"
                )
            ]
            self.notebook["cells"][position]["execution_count"] = expected
            self._changed.add(position)
            if checkpoint is not None:
                self._note_checkpoint(checkpoint, job.cells_done + 1)
                self._restore_next(checkpoint)
            job.cells_done += 1
            self._log(f"cell {job.cells_done} completed while the server restarted")
            self._save()

    def _next_execution_count(self) -> int | None:
        """The execution count the next cell gets (from the last completed one)."""
        if self.job.cells_done == 0:
            return 1
        last = self.notebook["cells"][self.positions[self.job.cells_done - 1]]
        count = last.get("execution_count")
        return count + 1 if isinstance(count, int) else None

    def _instance_id(self) -> str | None:
        current = self.ctx.ledger.current(self.job.kernel_id or "")
        return current.id if current is not None else None

    def _lost(self, instance_id: str | None) -> str | None:
        """Why the kernel running the cell is gone (None while it runs)."""
        kernel_id = self.job.kernel_id or ""
        if kernel_id not in self.ctx.kernel_manager:
            return "the kernel was shut down"
        running = self.ctx.ledger.record(instance_id)
        if running is not None and not running.is_live:
            return f"instance {running.id} {running.state.value}: {running.reason}"
        current = self.ctx.ledger.current(kernel_id)
        if current is None or current.id != instance_id:
            return "the kernel was moved to another instance"
        return None

    def _new_checkpoint(self) -> str | None:
        """The checkpoint the kernel took after the cell that just completed (None: it
        took none; checkpoints off, or its write failed)."""
        if self.ctx.settings.checkpoints == "off" or self.job.kernel_id is None:
            return None
        latest = checkpoint_dirs.read(self.ctx.settings.checkpoint_dir / self.job.kernel_id).latest
        if latest is None or latest in self.job.checkpoints:
            return None
        return latest

    async def _connect(self) -> None:
        """A client of the job's kernel on its current instance (noted: a cell starts
        only there)."""
        self._disconnect()
        timeout = self.ctx.settings.launch_timeout + 60
        instance_id = self._instance_id()
        try:
            self._client = await connect(self.ctx.kernel_manager, self.job.kernel_id, timeout)
        except (RuntimeError, TimeoutError) as err:
            if self._lost(instance_id) is None:
                raise JobFailed(f"the job's kernel does not answer: {err}") from err
            # Lost while it started: the next cell's check waits for its next instance.
        self._connected_instance = instance_id
        if self._client is not None:
            self.executor.use(self._client)
            # (what the kernel runs, in the notebook's metadata, as nbclient writes it)
            info = await language_info(self._client, lambda: self._lost(instance_id))
            if info is not None:
                self.notebook.metadata["language_info"] = nbformat.from_dict(info)

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.stop_channels()
            self._client = None

    async def _release_kernel(self) -> None:
        """The job has ended: shut its kernel down, and stop whatever a relaunch started
        meanwhile; its checkpoints go with it. Called by :meth:`run`, before the job says
        it has ended.

        From here on no recovery relaunches the kernel (``job_ended``); one under way
        (it holds the kernel's lock) finishes first, and what it started is then shut
        down with the kernel. A job that has ended owns no kernel and no instance."""
        kernel_id = self.job.kernel_id
        if kernel_id is None:
            return
        entry = self.ctx.ledger.kernels.get(kernel_id)
        if entry is not None:
            entry.keep_checkpoints = False
            entry.job_ended.set()
            async with entry.lock:
                await self._shut_down_kernel(kernel_id)
        else:
            await self._shut_down_kernel(kernel_id)
        await self._stop_live_instances(kernel_id)
        shutil.rmtree(self.ctx.settings.checkpoint_dir / kernel_id, ignore_errors=True)
        current = self.ctx.ledger.current(kernel_id)
        instance = self.ctx.ledger.instances.get(current.id) if current is not None else None
        if instance is not None:  # (its final state and cost, for the output's metadata)
            try:
                await asyncio.wait_for(instance.ended.wait(), timeout=10)
            except asyncio.TimeoutError:
                pass

    async def _shut_down_kernel(self, kernel_id: str) -> None:
        kernels = self.ctx.kernel_manager
        if kernel_id not in kernels:
            return
        try:
            await ensure_async(kernels.shutdown_kernel(kernel_id, now=True))
        except Exception as err:  # noqa: BLE001 (whatever it is, the job still ends)
            self.ctx.log.warning("jupyter_lowcost | job %s: kernel shutdown: %s", self.job.id, err)

    async def _stop_live_instances(self, kernel_id: str) -> None:
        """Stop any instance of the job's kernel still live after its shutdown (one a
        relaunch started as the job ended): it would run, cost and hold a slot."""
        for record in self.ctx.ledger.records():
            if record.kernel_id != kernel_id or not record.is_live:
                continue
            self._log(f"stopping instance {record.id}: the job has ended")
            try:
                await self.ctx.backend.terminate(record, now=True)
            except Exception as err:  # noqa: BLE001 (the next one is stopped all the same)
                self.ctx.log.warning(
                    "jupyter_lowcost | job %s: stopping %s: %s", self.job.id, record.id, err
                )
            if record.is_live:
                self.ctx.ledger.end(record, InstanceState.TERMINATED, "its job has ended")

    async def _kernel_cwd(self) -> str:
        """The kernel's working directory: the notebook's folder (as for a notebook
        opened in JupyterLab), the server's root when the notebook is not under it."""
        path = self.job.path or ""
        try:
            return str(await ensure_async(self.contents_manager.get_kernel_path(path)))
        except Exception:
            return ""

    # -- records, events, the output notebook --------------------------------------------

    def _track_instances(self) -> None:
        """The job's instances, with their cost and savings so far."""
        job = self.job
        for record in self.ctx.ledger.records():
            if record.kernel_id == job.kernel_id and record.kernel_id is not None:
                if record.state == InstanceState.PENDING and record.id not in job.instances:
                    continue
                job.instances[record.id] = {
                    "instance_type": record.instance_type,
                    "tier": record.tier,
                    "state": record.state.value,
                    "cost": round(record.cost(), 6),
                    "saved": round(record.savings(), 6),
                }

    def _set(self, state: JobState, reason: str) -> None:
        job = self.job
        changed = (job.state, job.reason) != (state, reason)
        job.state, job.reason = state, reason
        if changed:
            self._log(f"{state.value}: {reason}")
            self._save()

    async def _end(self, state: JobState, reason: str) -> None:
        """The job's end: its output notebook (at its output path too) is written whole,
        with the final state, before the job says it has ended."""
        job = self.job
        if job.state.is_final:
            return
        job.finished = time.time()
        job.current_cell = None if state == JobState.SUCCEEDED else job.current_cell
        job.state, job.reason = state, reason
        self._save(emit=False)
        await self.output.flush()
        error = self.output.contents_error
        if job.output_path and error is not None and state == JobState.SUCCEEDED:
            # (its cells ran, but what the user asked for is not there)
            job.state = JobState.FAILED
            job.reason = (
                f"all {job.cells_total} cells ran, but the output notebook could not be "
                f"written at {job.output_path}: {error} (the server keeps it: jupyter "
                f"lowcost show {job.id} --output FILE)"
            )
            self._save(emit=False)
            await self.output.flush()
        self.output.stop()
        self._log(f"{job.state.value}: {job.reason}")
        self.emit(job)

    def _save(self, emit: bool = True) -> None:
        """The job's record, the changes to its output notebook (journalled at once,
        written whole soon, off the event loop: ``output.py``), and its event. Costs what
        changed, whatever the notebook's size."""
        job = self.job
        self._track_instances()
        self.executor.set_widgets_metadata()  # (the widgets' state, as nbclient saves it)
        nb.job_metadata(self.notebook, self._metadata())
        changed, self._changed = self._changed | self.executor.changed_cells(), set()
        try:
            self.output.note(self.notebook, changed)
            self.store.save(job)
        except OSError as err:
            self.ctx.log.error("jupyter_lowcost | job %s could not be saved: %s", job.id, err)
        if emit:
            self.emit(job)

    def _output_path_failed(self, error: str) -> None:
        self.ctx.log.error(
            "jupyter_lowcost | job %s: could not save %s: %s",
            self.job.id,
            self.job.output_path,
            error,
        )

    def _metadata(self) -> dict[str, Any]:
        model = self.job.to_model()
        keys = (
            "id",
            "name",
            "state",
            "reason",
            "instance_type",
            "tier",
            "parameters",
            "started",
            "finished",
            "elapsed_seconds",
            "cost",
            "saved",
            "interruptions",
        )
        return {
            **{k: model[k] for k in keys},
            "instances": [{"id": i, **info} for i, info in self.job.instances.items()],
        }

    def _log(self, line: str) -> None:
        try:
            self.store.append_log(self.job.id, line)
        except OSError:
            pass
        self.ctx.log.info("jupyter_lowcost | job %s: %s", self.job.id, line)

    def _log_output(self, msg_type: str, content: dict[str, Any]) -> None:
        """A cell's stream output and errors also go to the job's log."""
        if msg_type == "stream":
            for line in str(content.get("text", "")).splitlines():
                self._log(f"  {line}")
        elif msg_type == "error":
            self._log(f"  {content.get('ename')}: {content.get('evalue')}")
