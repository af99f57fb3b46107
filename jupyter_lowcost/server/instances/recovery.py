"""Recovery: what happens to a kernel whose instance was taken away.

Called by :class:`~.notices.Notices` once an interrupted or expired instance has ended
(holding the kernel's lock), and by :class:`~.moves.Moves` to wait for room when a failed
move puts a kernel back. Its :meth:`Recovery.wait_for_room` is the one wait for room:
a recovery's, and (through the manager) a job's before it starts its kernel. The policy
(``LowCostApp.recovery_policy``):

- ``relaunch``: restart the kernel (same id) on a new instance of its placement, resumed
  from its checkpoint, waiting as long as it takes for room;
- ``fallback``: the same, but on a regular instance once ``fallback_after`` low-cost
  relaunches failed (at once when 0);
- ``none``: shut the kernel down; its checkpoints stay, for ``%lowcost restore``.

The kernel of a job that has ended or is ending (``KernelEntry.job_ended``, set by the
job's runner before it shuts the kernel down) is never relaunched: the job's end stops it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ...backends import BackendError
from ...storage.records import InstanceRecord, InstanceState, Placement
from .clients import Clients
from .ledger import Context

#: How soon a wait for room looks again while the room there is goes first to an instance
#: already waiting for it (no change of room is announced then).
ROOM_SECONDS = 0.5
#: How long a wait for room waits for the backend to say room changed, before it looks.
ROOM_CHANGED_SECONDS = 30


class Recovery:
    """Relaunches kernels by the recovery policy; never drops one for lack of room."""

    def __init__(self, ctx: Context, clients: Clients) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.clients = clients

    async def recover(self, kernel_id: str, lost: InstanceRecord) -> None:
        """Apply the recovery policy to a kernel whose instance was taken away."""
        entry = self.ledger.kernels.get(kernel_id)
        kernels = self.ctx.kernel_manager
        policy = self.ctx.settings.recovery_policy
        if entry is None or entry.placement is None or kernel_id not in kernels:
            return
        if entry.job_ended.is_set():
            self.ctx.log.info(
                "jupyter_lowcost | kernel %s is not relaunched: its job has ended", kernel_id
            )
            return
        placement = entry.placement
        what = f"{lost.state.value} instance {lost.id}"
        if policy == "none":
            self.ctx.log.warning(
                "jupyter_lowcost | %s: recovery policy 'none' stops kernel %s", what, kernel_id
            )
            entry.keep_checkpoints = True
            await kernels.shutdown_kernel(kernel_id, now=True)
            return
        if policy == "fallback":
            why = "the policy falls back at once"
            for attempt in range(1, self.ctx.settings.fallback_after + 1):
                if entry.job_ended.is_set():
                    return
                try:
                    self.ctx.backend.check_capacity(True, replacing=None)
                except BackendError as err:
                    why = f"no low-cost capacity ({err.message})"
                    break
                if await self.relaunch(kernel_id, placement, what, f"attempt {attempt}") is None:
                    return
                why = f"{attempt} low-cost relaunch(es) failed"
            placement = Placement(placement.instance_type, low_cost=False)
            entry.placement = placement
            what = f"{what}; {why}"
        # Never thrown away for lack of room: this launch waits for capacity, as long as it
        # takes (pending, with events saying what it waits for).
        entry.recovering = True
        try:
            attempt, tries = "", 1
            while await self.until_room(kernel_id, placement, lost):
                if entry.job_ended.is_set():
                    return
                failure = await self.relaunch(kernel_id, placement, what, attempt)
                if failure is None:
                    return
                if entry.job_ended.is_set():
                    return  # (its job's end shuts the kernel down)
                if self.ledger.stopped or kernel_id not in kernels or failure != "preempted":
                    break  # it cannot start (not for lack of room)
                # Preempted while it started (a regular request took the slot): again.
                tries += 1
                attempt = f"attempt {tries}: the previous one was preempted while starting"
            else:
                return  # shut down by its user while it waited, or the server stops
        finally:
            entry.recovering = False
            entry.prepared = None
            self.ledger.changed()
        if kernel_id in kernels and not self.ledger.stopped:
            # The kernel cannot start anywhere: its checkpoints stay, for %lowcost restore.
            entry.keep_checkpoints = True
            await kernels.shutdown_kernel(kernel_id, now=True)

    async def until_room(self, kernel_id: str, placement: Placement, lost: InstanceRecord) -> bool:
        """Wait until the backend has room for the kernel's new instance, as long as it
        takes: its pending record says so (events) meanwhile. The kernel's restart starts
        only then, so that the kernel can be shut down as usual while it waits. False when
        the kernel was shut down meanwhile, or the server stops."""
        backend = self.ctx.backend
        entry = self.ledger.kernel(kernel_id)
        record: InstanceRecord | None = None  # (pending, made when it first waits)

        def still_waiting() -> bool:
            nonlocal record
            if (
                self.ledger.stopped
                or kernel_id not in self.ctx.kernel_manager
                or entry.job_ended.is_set()
            ):
                return False
            if record is None:
                itype = self.ctx.catalog[placement.instance_type]
                record = InstanceRecord.for_placement(kernel_id, placement, itype, backend.name)
                self.ledger.add(record)
                entry.instance_id = record.id
                entry.prepared = record
                self.ledger.transition(
                    record, InstanceState.PENDING, backend.room_message(placement.low_cost)
                )
                return True
            return record.is_live

        # (a job that ends meanwhile ends the wait at once: its end waits for this)
        if not await self.wait_for_room(placement.low_cost, still_waiting, entry.job_ended):
            return False
        if entry.job_ended.is_set():
            return False
        if record is None:
            return True
        if not record.is_live or self.ledger.stopped:
            return False
        # The restart stops the kernel's current instance first: that is the lost one (the
        # waiting record goes on as the new instance, in launch()).
        entry.instance_id = lost.id
        return True

    def has_room(self, low_cost: bool, behind_those_waiting: bool = False) -> bool:
        """The backend has room for a new instance of the tier; ``behind_those_waiting``:
        room that no instance already waiting for it (a recovery's, say) takes first."""
        if not self.ctx.backend.has_room(low_cost):
            return False
        if not behind_those_waiting:
            return True
        kernels = self.ctx.kernel_manager
        return not any(
            record.kernel_id in self.ledger.kernels and record.kernel_id in kernels
            for record in self.ledger.awaiting_room()
        )

    async def wait_for_room(
        self,
        low_cost: bool,
        still_waiting: Callable[[], bool],
        ends: asyncio.Event | None = None,
        behind_those_waiting: bool = False,
    ) -> bool:
        """Wait until :meth:`has_room`, as long as it takes: True then. Each time there is
        none, ``still_waiting()`` is asked first (it says what the wait is for, in an
        event or a job's state): False ends the wait, and this returns False. ``ends``,
        once set, ends the current wait at once (the caller then looks why). Used by a
        recovery (:meth:`until_room`) and by a job before it starts its kernel."""
        backend = self.ctx.backend
        while not self.has_room(low_cost, behind_those_waiting):
            if not still_waiting():
                return False
            # (room an instance waiting before takes is no change of room: look again soon)
            timeout = ROOM_SECONDS if backend.has_room(low_cost) else ROOM_CHANGED_SECONDS
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(backend.room_changed())]
            if ends is not None:
                waits.append(asyncio.ensure_future(ends.wait()))
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        return True

    async def relaunch(
        self, kernel_id: str, placement: Placement, what: str, attempt: str
    ) -> str | None:
        """Restart the kernel on a new instance of ``placement``: None when it runs there,
        else why not (a ``BackendError.reason`` such as ``preempted``, or ``error``)."""
        entry = self.ledger.kernel(kernel_id)
        entry.launch_reason = (
            f"recovery ({self.ctx.settings.recovery_policy}) after the {what}: relaunched on "
            f"{placement.describe()}" + (f" ({attempt})" if attempt else "")
        )
        entry.placement = placement
        entry.resume = True
        try:
            await self.ctx.kernel_manager.restart_kernel(kernel_id, now=True)
        except Exception as err:  # the restart's own failure: report it to the caller
            self.ctx.log.error(
                "jupyter_lowcost | relaunch of kernel %s on %s failed: %s",
                kernel_id,
                placement.describe(),
                err,
            )
            return err.reason if isinstance(err, BackendError) else "error"
        self.clients.reconnect(kernel_id, died=True)
        return None
