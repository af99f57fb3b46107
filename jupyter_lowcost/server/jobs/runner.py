"""One job's life: wait for room, start its kernel, run its cells in order, come back after
every interruption at the first cell that did not complete, and end.

Created and run (as a task) by :class:`~.service.Jobs`: for a new job, and for each job a
previous server left unfinished. After each completed cell the runner notes the
checkpoint the kernel took after it (a job's kernel checkpoints after every cell and only
there, see ``kernel/checkpointing.py``), and tells the kernel's entry to restore that one
at its next start. When the kernel's instance is lost (an interruption, the cap) the
manager's recovery relaunches the kernel under the same id; the runner waits for it,
reads which checkpoint came back, and goes on at the cell after it: no completed cell
runs twice. The executed notebook so far is saved (atomically) after every cell, with the
job's metadata.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Any

from jupyter_core.utils import ensure_async

from ...backends import BackendError
from ...storage import checkpoint_dirs
from ...storage.jobs import JobRecord, JobState, JobStore
from ...storage.records import InstanceState, Placement, iso
from ..instances.launches import Launches
from ..instances.ledger import Context
from . import notebook as nb
from .execution import KernelLost, connect, run_cell

#: How often the runner looks at the manager's ledger while it waits for its kernel.
WAIT_SECONDS = 0.1


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
    ) -> None:
        self.ctx = ctx
        self.launches = launches
        self.store = store
        self.contents_manager = contents_manager
        self.job = job
        self.emit = emit
        #: The server is stopping: the job stays as it is, to go on after the restart.
        self.server_stopping = False
        self.notebook: dict[str, Any] = store.output(job.id)
        self.positions = nb.code_cells(self.notebook)
        self._client: Any = None
        #: The instance the client is connected to.
        self._connected_instance: str | None = None
        #: How many times each cell (by number) started, while this runner ran.
        self._attempts: dict[int, int] = {}
        #: Writes of the output notebook at its output path: one at a time, the latest.
        self._contents_lock = asyncio.Lock()
        self._contents_dirty = False
        self._contents_writer: asyncio.Task[None] | None = None

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
                self._save()
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
            outputs = nb.CellOutputs()
            self._log(f"cell {number}/{job.cells_total} started on instance {instance_id}")
            try:
                reply = await run_cell(
                    self._client,
                    nb.source(self.notebook, position),
                    outputs,
                    lambda: self._lost(instance_id),
                    self._log_output,
                )
            except KernelLost as lost:
                await self._come_back(number, instance_id, str(lost))
                continue
            self._cell_done(number, position, outputs, reply, started, instance_id)
        job.current_cell = None
        return f"all {job.cells_total} cells ran"

    def _cell_done(
        self,
        number: int,
        position: int,
        outputs: nb.CellOutputs,
        reply: dict[str, Any],
        started: float,
        instance_id: str | None,
    ) -> None:
        job = self.job
        count = reply.get("execution_count") or outputs.execution_count
        nb.set_outputs(self.notebook, position, outputs, count)
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
        if reply.get("status") == "error":
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
            job.checkpoints[checkpoint] = number
            cell_meta["checkpoint"] = checkpoint
            entry = self.ctx.ledger.kernels.get(job.kernel_id or "")
            if entry is not None:
                entry.restore_checkpoint = checkpoint
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
        if job.kernel_id is not None:
            restore = self._restore_point_checkpoint()
            job.state = JobState.RESUMING
        placement = Placement(job.instance_type, job.low_cost)
        backend = self.ctx.backend
        while True:
            while not backend.has_room(job.low_cost):
                if job.state != JobState.RESUMING:
                    self._set(JobState.QUEUED, backend.room_message(job.low_cost))
                try:
                    await asyncio.wait_for(backend.room_changed(), timeout=30)
                except asyncio.TimeoutError:
                    pass
            job.kernel_id = job.kernel_id or str(uuid.uuid4())
            start = asyncio.ensure_future(
                self.launches.start_kernel(
                    job.kernel_name,
                    placement,
                    await self._kernel_cwd(),
                    job.name,
                    job_id=job.id,
                    kernel_id=job.kernel_id,
                    restore_checkpoint=restore,
                )
            )
            try:
                # (A cancel waits for the start to settle: the kernel is then shut down
                # whole, not left half started.)
                await asyncio.shield(start)
            except asyncio.CancelledError:
                await asyncio.gather(start, return_exceptions=True)
                raise
            except BackendError as err:
                if err.status in (409, 503) and not backend.has_room(job.low_cost):
                    continue  # the room went to another launch meanwhile: wait again
                raise JobFailed(f"the kernel could not start: {err.message}") from err
            break
        self._track_instances()
        await self._connect()
        if restore is not None:
            self._resume_point(f"the server restarted; checkpoint {restore}")

    async def _come_back(self, number: int, instance_id: str | None, why: str) -> None:
        """The kernel's instance was lost during cell ``number``: wait for the recovery's
        relaunch, then go on at the first cell the restored checkpoint did not include."""
        job = self.job
        self._disconnect()
        record = self.ctx.ledger.record(instance_id)
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
        if record is not None and record.state == InstanceState.FAILED:
            raise JobFailed(f"the kernel died while running cell {number}: {record.reason}")
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
        self._resume_point(f"after the interruption in cell {number}")

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
                raise JobFailed(f"the kernel died between cells: {lost.reason}")
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
        self._resume_point("after losing the instance between cells")

    def _resume_point(self, when: str) -> None:
        """Go on after the cell whose checkpoint the kernel restored (from the first cell
        when nothing was restored)."""
        job = self.job
        entry = self.ctx.ledger.kernels.get(job.kernel_id or "")
        restored = (entry.restored if entry is not None else None) or {}
        checkpoint = restored.get("checkpoint_id")
        done = job.checkpoints.get(str(checkpoint), 0) if checkpoint else 0
        if done:
            self._log(f"resumed {when} from checkpoint {checkpoint}: cells 1-{done} are done")
        else:
            self._log(f"{when}: no checkpoint to resume from; the job starts again at cell 1")
        job.cells_done = done

    def _restore_point_checkpoint(self) -> str | None:
        """The checkpoint after the job's last completed cell (None: none was taken)."""
        done = {n: c for c, n in self.job.checkpoints.items()}
        return done.get(self.job.cells_done) or (max(done.items())[1] if done else None)

    async def _settle_after_server_restart(self) -> None:
        """A kernel re-attached after a server restart may have finished the cell that
        ran when the server went away (its outputs are lost): its execution count says."""
        job = self.job
        instance_id = self._instance_id()
        try:
            # (An empty cell: it waits for the one still running, and answers the number
            # of the last cell that ran, without taking a number of its own.)
            reply = await run_cell(
                self._client, "", nb.CellOutputs(), lambda: self._lost(instance_id)
            )
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
            if checkpoint is not None:
                job.checkpoints[checkpoint] = job.cells_done + 1
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

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.stop_channels()
            self._client = None

    async def _release_kernel(self) -> None:
        """The job has ended: shut its kernel down; its checkpoints go with it."""
        kernel_id = self.job.kernel_id
        if kernel_id is None:
            return
        kernels = self.ctx.kernel_manager
        entry = self.ctx.ledger.kernels.get(kernel_id)
        if entry is not None:
            entry.keep_checkpoints = False
        if kernel_id in kernels:
            try:
                await ensure_async(kernels.shutdown_kernel(kernel_id, now=True))
            except Exception as err:
                self.ctx.log.warning(
                    "jupyter_lowcost | job %s: kernel shutdown: %s", self.job.id, err
                )
        shutil.rmtree(self.ctx.settings.checkpoint_dir / kernel_id, ignore_errors=True)
        current = self.ctx.ledger.current(kernel_id)
        instance = self.ctx.ledger.instances.get(current.id) if current is not None else None
        if instance is not None:  # (its final state and cost, for the output's metadata)
            try:
                await asyncio.wait_for(instance.ended.wait(), timeout=10)
            except asyncio.TimeoutError:
                pass

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
        """The job's end: its output notebook at its output path is written (with the
        final state) before the job says it has ended."""
        job = self.job
        if job.state.is_final:
            return
        job.finished = time.time()
        job.current_cell = None if state == JobState.SUCCEEDED else job.current_cell
        job.state, job.reason = state, reason
        self._log(f"{state.value}: {reason}")
        self._track_instances()
        nb.job_metadata(self.notebook, self._metadata())
        if job.output_path:
            self._contents_dirty = True
            await self._save_to_contents()
        self._save(contents=False)

    def _save(self, contents: bool = True) -> None:
        """The job's record, its output notebook (also at its output path), its event."""
        job = self.job
        self._track_instances()
        nb.job_metadata(self.notebook, self._metadata())
        try:
            self.store.save_output(job.id, self.notebook)
            self.store.save(job)
        except OSError as err:
            self.ctx.log.error("jupyter_lowcost | job %s could not be saved: %s", job.id, err)
        if job.output_path and contents:
            self._contents_dirty = True
            if self._contents_writer is None or self._contents_writer.done():
                self._contents_writer = self.ctx.ledger.spawn(self._save_to_contents())
        self.emit(job)

    async def _save_to_contents(self) -> None:
        """Write the notebook at its output path (through the server's contents manager),
        one write at a time, the latest notebook each time."""
        job = self.job
        async with self._contents_lock:
            while self._contents_dirty:
                self._contents_dirty = False
                model = {
                    "type": "notebook",
                    "format": "json",
                    "content": copy.deepcopy(self.notebook),
                }
                try:
                    await ensure_async(self.contents_manager.save(model, job.output_path))
                except Exception as err:
                    self.ctx.log.error(
                        "jupyter_lowcost | job %s: could not save %s: %s",
                        job.id,
                        job.output_path,
                        err,
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
