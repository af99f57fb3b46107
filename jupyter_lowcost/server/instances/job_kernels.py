"""What a job's runner asks of the manager about its kernel and the kernel's instances.

Who calls it: :class:`~..jobs.runner.JobRunner` and the pieces it is made of (through
``manager.job_kernels``), and the jobs' line for room (``jobs/admission.py``). Nothing in
``server/jobs`` reads or writes the manager's entries, calls the backend, or reads a
kernel's checkpoint folder: it asks here. Waits are awaitables woken by the ledger's
changes (:meth:`~.ledger.Ledger.next_change`), not polls:

- :meth:`JobKernels.instance_running`: the kernel runs on an instance (after a relaunch);
- :meth:`JobKernels.instance_lost`: the instance a job's cells ran on is gone;
- :meth:`JobKernels.holding_room` and :meth:`JobKernels.wait_for_room` (the recovery's
  own wait for room): a job's start waits its turn;
- :meth:`JobKernels.restored_from`: which checkpoint the kernel said it restored;
- :meth:`JobKernels.checkpoints_newer_than` and :meth:`JobKernels.checkpoint_cell`: the
  checkpoints on disk and after which cell each was taken (``jobs/cell_checkpoints.py``);
- :meth:`JobKernels.end_job_kernel`: the job's end stops its kernel and instances.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from typing import Any

from jupyter_core.utils import ensure_async

from ...storage import checkpoint_dirs
from ...storage.records import InstanceRecord, InstanceState
from .ledger import Context
from .recovery import Recovery

#: How long a job's end waits for its last instance's final state (its final cost).
ENDED_SECONDS = 10


class JobKernels:
    """The kernel of a job, as its runner sees it: instances, waits, checkpoints, its end."""

    def __init__(self, ctx: Context, recovery: Recovery) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.recovery = recovery

    # -- instances -----------------------------------------------------------------------

    def current_instance(self, kernel_id: str) -> InstanceRecord | None:
        """The kernel's latest instance (live or not), if it ever had one."""
        return self.ledger.current(kernel_id)

    def record(self, instance_id: str | None) -> InstanceRecord | None:
        """The record of ``instance_id``, if this server knows it."""
        return self.ledger.record(instance_id)

    def instances_of(self, kernel_id: str) -> list[InstanceRecord]:
        """Every instance the kernel had (live or not), oldest first."""
        return self.ledger.records_of(kernel_id)

    def lost_reason(self, kernel_id: str, instance_id: str | None) -> str | None:
        """Why the kernel no longer runs on ``instance_id`` (None while it does)."""
        if kernel_id not in self.ctx.kernel_manager:
            return "the kernel was shut down"
        running = self.ledger.record(instance_id)
        if running is not None and not running.is_live:
            return f"instance {running.id} {running.state.value}: {running.reason}"
        current = self.ledger.current(kernel_id)
        if current is None or current.id != instance_id:
            return "the kernel was moved to another instance"
        return None

    async def instance_running(
        self,
        kernel_id: str,
        other_than: str | None,
        pending: Callable[[InstanceRecord], None],
    ) -> InstanceRecord | None:
        """Wait until the kernel runs on an instance other than ``other_than`` (the one it
        lost; None: any), with no move or recovery of it under way: that instance. None
        once the kernel was shut down. ``pending`` is told of each look that finds its
        next instance pending (what it waits for is in its reason)."""
        while kernel_id in self.ctx.kernel_manager:
            current = self.ledger.current(kernel_id)
            if current is not None and current.id != other_than:
                if current.state == InstanceState.RUNNING and self.ledger.settled(kernel_id):
                    return current
                if current.state == InstanceState.PENDING:
                    pending(current)
            await self.ledger.next_change()
        return None

    async def instance_lost(self, kernel_id: str, instance_id: str | None) -> None:
        """Return once ``instance_id`` has ended, or is no longer the kernel's instance
        (a notice's instance is taken away, or the kernel moved off it)."""
        record = self.ledger.record(instance_id)
        while record is not None and record.is_live and self.ledger.current(kernel_id) is record:
            await self.ledger.next_change()

    async def changed(self, *also: asyncio.Future[Any]) -> None:
        """Return at the next change of an instance or a kernel, or once one of ``also``
        is done (see :meth:`~.ledger.Ledger.next_change`)."""
        await self.ledger.next_change(*also)

    # -- room ----------------------------------------------------------------------------

    async def wait_for_room(self, low_cost: bool, waiting: Callable[[], None]) -> None:
        """Return once there is room for a new instance of the tier that no instance
        already waiting for room (a relaunch of an interrupted kernel, say) takes first;
        ``waiting`` is called each time there is none. The recovery's wait
        (:meth:`~.recovery.Recovery.wait_for_room`)."""

        def still_waiting() -> bool:
            waiting()
            return True

        await self.recovery.wait_for_room(low_cost, still_waiting, behind_those_waiting=True)

    def room_message(self, low_cost: bool) -> str:
        """What a queued job (its kernel not started yet) says it waits for."""
        return self.ctx.backend.room_message(low_cost, queued_job=True)

    async def holding_room(self, kernel_id: str, start: asyncio.Future[Any]) -> None:
        """Return once the kernel's new instance holds its room (what the backend keeps of
        it: a reserved slot, a process, a queued job), or once ``start`` has ended."""
        while not start.done():
            record = self.ledger.current(kernel_id)
            if record is not None and record.is_live and record.backend_state:
                return
            await self.ledger.next_change(start)

    def stop_waiting_for_room(self, kernel_id: str, reason: str) -> None:
        """The kernel's instance still waits for room: that wait ends, for ``reason`` (its
        start fails; nothing of it is left)."""
        record = self.ledger.current(kernel_id)
        if record is None or record.state != InstanceState.PENDING or record.backend_state:
            return
        self.ledger.end(record, InstanceState.TERMINATED, reason)
        self.ledger.spawn(self.ctx.backend.terminate(record, now=True))

    # -- checkpoints ---------------------------------------------------------------------

    def latest_checkpoint(self, kernel_id: str) -> str | None:
        """The kernel's latest checkpoint (None: none, or checkpoints are off)."""
        settings = self.ctx.settings
        if settings.checkpoints == "off":
            return None
        return checkpoint_dirs.read(settings.checkpoint_dir / kernel_id).latest

    def checkpoints_newer_than(self, kernel_id: str, newer_than: str | None) -> list[str] | None:
        """The ids of the kernel's complete checkpoints (their manifest is on disk) newer
        than ``newer_than`` (None: all), oldest first; None when checkpoints are off."""
        settings = self.ctx.settings
        if settings.checkpoints == "off":
            return None
        manifests = settings.checkpoint_dir / kernel_id / "manifests"
        floor = int(newer_than) if newer_than and newer_than.isdigit() else 0
        try:
            ids = checkpoint_dirs.checkpoint_ids(manifests)
        except OSError:
            return []
        return [i for i in ids if int(i) > floor]

    def checkpoint_cell(self, kernel_id: str, checkpoint: str) -> int | None:
        """The execution count of the cell after which the kernel took ``checkpoint``
        (its manifest's ``history.cell``, ``kernel/cell_history.py``); None when it cannot
        be read (deleted meanwhile, or taken without a history)."""
        path = self.ctx.settings.checkpoint_dir / kernel_id / "manifests" / f"{checkpoint}.json"
        try:
            history = json.loads(path.read_text()).get("history") or {}
        except (OSError, ValueError, AttributeError):
            return None
        cell = history.get("cell") if isinstance(history, dict) else None
        return cell if isinstance(cell, int) else None

    def restore_next(self, kernel_id: str, checkpoint: str | None) -> None:
        """The checkpoint the kernel's next start restores (None: none). Saved with the
        manager's records at once: a server killed now puts the kernel back with it."""
        entry = self.ledger.kernels.get(kernel_id)
        if entry is not None and entry.restore_checkpoint != checkpoint:
            entry.restore_checkpoint = checkpoint
            self.ledger.save()

    def restore_asked(self, kernel_id: str) -> str | None:
        """The checkpoint the kernel's last start was asked to restore."""
        entry = self.ledger.kernels.get(kernel_id)
        return entry.restore_checkpoint if entry is not None else None

    def expect_restore(self, kernel_id: str) -> None:
        """The kernel is coming back: its last ``restored`` report is from before."""
        entry = self.ledger.kernels.get(kernel_id)
        if entry is not None:
            entry.restored = None

    def restored_from(self, kernel_id: str) -> dict[str, Any] | None:
        """The kernel's ``restored`` report since :meth:`expect_restore` (the checkpoint
        it restored, what did not come back), if it made one."""
        entry = self.ledger.kernels.get(kernel_id)
        return entry.restored if entry is not None else None

    # -- the job's end -------------------------------------------------------------------

    async def end_job_kernel(
        self, kernel_id: str, job_id: str, stopping: Callable[[str], None]
    ) -> None:
        """The job has ended: shut its kernel down, and stop whatever a relaunch started
        meanwhile (``stopping`` is told each instance id first); its checkpoints go with
        it. Returns once its last instance is final (its final cost), or after
        :data:`ENDED_SECONDS`.

        From here on no recovery relaunches the kernel (``job_ended``); one under way
        (it holds the kernel's lock) finishes first, and what it started is then shut
        down with the kernel. A job that has ended owns no kernel and no instance."""
        entry = self.ledger.kernels.get(kernel_id)
        if entry is not None:
            entry.keep_checkpoints = False
            entry.job_ended.set()
            async with entry.lock:
                await self._shut_down_kernel(kernel_id, job_id)
        else:
            await self._shut_down_kernel(kernel_id, job_id)
        await self._stop_live_instances(kernel_id, job_id, stopping)
        shutil.rmtree(self.ctx.settings.checkpoint_dir / kernel_id, ignore_errors=True)
        current = self.ledger.current(kernel_id)
        instance = self.ledger.instances.get(current.id) if current is not None else None
        if instance is not None:
            try:
                await asyncio.wait_for(instance.ended.wait(), timeout=ENDED_SECONDS)
            except asyncio.TimeoutError:
                pass

    async def _shut_down_kernel(self, kernel_id: str, job_id: str) -> None:
        kernels = self.ctx.kernel_manager
        if kernel_id not in kernels:
            return
        try:
            await ensure_async(kernels.shutdown_kernel(kernel_id, now=True))
        except Exception as err:  # noqa: BLE001 (whatever it is, the job still ends)
            self.ctx.log.warning("jupyter_lowcost | job %s: kernel shutdown: %s", job_id, err)

    async def _stop_live_instances(
        self, kernel_id: str, job_id: str, stopping: Callable[[str], None]
    ) -> None:
        """Stop any instance of the job's kernel still live after its shutdown (one a
        relaunch started as the job ended): it would run, cost and hold a slot."""
        for record in self.ledger.records_of(kernel_id):
            if not record.is_live:
                continue
            stopping(record.id)
            try:
                await self.ctx.backend.terminate(record, now=True)
            except Exception as err:  # noqa: BLE001 (the next one is stopped all the same)
                self.ctx.log.warning(
                    "jupyter_lowcost | job %s: stopping %s: %s", job_id, record.id, err
                )
            self.ledger.end(record, InstanceState.TERMINATED, "its job has ended")
