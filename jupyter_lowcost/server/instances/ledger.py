"""The ledger: every kernel and instance entry the manager holds, and the one place where
an instance changes state (saved to the record store, emitted as an event, logged).

Owned by :class:`~..manager.InstanceManager`; every collaborator of the manager reads and
writes entries through the ledger, and reaches the rest of the server through the
:class:`Context` it is given. What waits for an instance or a kernel to change (the
manager's awaitables for the job runners: an instance running, an instance lost, a
kernel's instance holding its room) waits on :meth:`Ledger.next_change`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from jupyter_events import EventLogger

from ...backends import Backend, InstanceType
from ...storage.records import InstanceRecord, InstanceState, Placement, RecordStore
from .. import events
from ..channel import LaunchChannel
from .entries import InstanceEntry, KernelEntry, Settings

#: A wait for the next change looks again after this long at most: a few changes happen
#: outside the ledger (the Jupyter server removing a kernel that was shut down, a kernel
#: put back after a server restart answering).
RECHECK_SECONDS = 1.0


class Ledger:
    """Kernel and instance entries, their persistence, and the tasks run for them."""

    def __init__(
        self,
        settings: Settings,
        store: RecordStore,
        event_logger: EventLogger | None,
        log: logging.Logger,
        forget_channel: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.event_logger = event_logger
        self.log = log
        self._forget_channel = forget_channel
        self.kernels: dict[str, KernelEntry] = {}
        #: Every record this server knows, oldest first.
        self.instances: dict[str, InstanceEntry] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        #: The server is stopping: nothing new starts.
        self.stopped = False
        self._save_failed = False  # the record store could not be written (a full disk)
        # (set, and replaced by a new one, at every change: see changed())
        self._change = asyncio.Event()

    # -- entries -------------------------------------------------------------------------

    def kernel(self, kernel_id: str) -> KernelEntry:
        """The kernel's entry, made if it has none (for writers)."""
        entry = self.kernels.get(kernel_id)
        if entry is None:
            entry = self.kernels[kernel_id] = KernelEntry(kernel_id)
        return entry

    def add(self, record: InstanceRecord) -> InstanceEntry:
        entry = self.instances[record.id] = InstanceEntry(record)
        return entry

    def record(self, instance_id: Any) -> InstanceRecord | None:
        entry = self.instances.get(instance_id) if isinstance(instance_id, str) else None
        return entry.record if entry is not None else None

    def records(self) -> list[InstanceRecord]:
        return [entry.record for entry in self.instances.values()]

    def records_of(self, kernel_id: str) -> list[InstanceRecord]:
        """Every instance the kernel had (live or not), oldest first."""
        return [record for record in self.records() if record.kernel_id == kernel_id]

    def awaiting_room(self) -> list[InstanceRecord]:
        """The pending instances that hold nothing at the backend yet: they wait for room
        (a recovery's, a job's kernel's)."""
        return [
            record
            for record in self.records()
            if record.state == InstanceState.PENDING and not record.backend_state
        ]

    def current(self, kernel_id: str) -> InstanceRecord | None:
        """The kernel's latest instance (live or not), if it ever had one."""
        entry = self.kernels.get(kernel_id)
        return self.record(entry.instance_id) if entry is not None else None

    def placement(self, kernel_id: str) -> Placement | None:
        entry = self.kernels.get(kernel_id)
        return entry.placement if entry is not None else None

    # -- what is under way for a kernel ------------------------------------------------

    def begin(self, kernel_id: str, what: str) -> None:
        """``what`` (a move, a recovery) is under way for the kernel (``GET kernels/<id>``
        says it is moving; a move asked meanwhile is refused with 409)."""
        self.kernel(kernel_id).busy.append(what)
        self.changed()

    def finish(self, kernel_id: str, what: str) -> None:
        entry = self.kernels.get(kernel_id)
        if entry is not None and what in entry.busy:
            entry.busy.remove(what)
        self.changed()

    def settled(self, kernel_id: str) -> bool:
        """Nothing is under way for the kernel: no move, no recovery (waiting or not)."""
        entry = self.kernels.get(kernel_id)
        return entry is not None and not entry.recovering and not entry.busy

    def lock(self, kernel_id: str) -> asyncio.Lock:
        """Moves and recoveries of one kernel run one at a time, in the order asked."""
        return self.kernel(kernel_id).lock

    # -- transitions ---------------------------------------------------------------------

    def transition(self, record: InstanceRecord, state: InstanceState, reason: str) -> None:
        """Move ``record`` to ``state``, then save and emit (the only place that does)."""
        now = time.time()
        record.state = state
        record.reason = reason
        cap = self.settings.lifetime_cap
        if state == InstanceState.RUNNING and record.started_at is None:
            record.started_at = now
            if record.low_cost and cap > 0:
                record.expires_at = now + cap
        if state.is_final:
            record.ended_at = now
            entry = self.instances.get(record.id)
            if entry is not None:
                if entry.cap_timer is not None:
                    entry.cap_timer.cancel()
                    entry.cap_timer = None
                deadline, entry.deadline = entry.deadline, None
                if deadline is not None and deadline is not asyncio.current_task():
                    deadline.cancel()
                entry.ended.set()
            self._forget_channel(record.id)
        self.save()
        events.emit_transition(self.event_logger, record)
        self.log.info(
            "jupyter_lowcost | instance %s (%s %s, kernel %s): %s: %s",
            record.id,
            record.tier,
            record.instance_type,
            record.kernel_id,
            state.value,
            reason,
        )

    def end(self, record: InstanceRecord, state: InstanceState, reason: str) -> None:
        """``transition`` to a final state, if the record is not final already."""
        if record.is_live:
            self.transition(record, state, reason)

    # -- changes -------------------------------------------------------------------------

    def changed(self) -> None:
        """Wake whatever waits in :meth:`next_change`. Called at every transition, save,
        start and end of a move or a recovery."""
        change, self._change = self._change, asyncio.Event()
        change.set()

    async def next_change(self, *also: asyncio.Future[Any]) -> None:
        """Return at the next change of an instance or a kernel entry, once one of
        ``also`` is done (left alone, never cancelled), or after :data:`RECHECK_SECONDS`.
        A waiter looks at what it waits for, then calls this: no change is missed (one
        event loop), and it looks again after every change."""
        change = asyncio.ensure_future(self._change.wait())
        try:
            await asyncio.wait(
                [change, *also], timeout=RECHECK_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            change.cancel()

    # -- persistence ---------------------------------------------------------------------

    def save(self) -> None:
        """Write the records; a failure (a full disk) is logged, and the server goes on
        from what it holds in memory: its deadlines, events and answers do not depend on
        the disk. The next transition tries again."""
        try:
            self.store.save(self.records(), self.kernels_to_save())
        except OSError as err:
            if not self._save_failed:
                self.log.error(
                    "jupyter_lowcost | could not save the instance records in %s: %s; "
                    "going on without (a restarted server will not know these instances)",
                    self.store.folder,
                    err,
                )
            self._save_failed = True
        else:
            if self._save_failed:
                self.log.warning("jupyter_lowcost | instance records saved again")
            self._save_failed = False
        self.changed()

    def kernels_to_save(self) -> dict[str, dict[str, Any]]:
        """What a restarted server needs to re-create each kernel on an instance."""
        saved = {}
        for kernel_id, entry in self.kernels.items():
            if entry.restart_info is None or entry.placement is None or not entry.instance_id:
                continue
            saved[kernel_id] = {
                **entry.restart_info,
                "placement": entry.placement.to_model(),
                "instance_id": entry.instance_id,
                "notebook": entry.notebook,
                "checkpoint_status": entry.checkpoint_status,
                "job_id": entry.job_id,
                "restore_checkpoint": entry.restore_checkpoint,
            }
        return saved

    # -- tasks ---------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the server waits for (or cancels) when it stops."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


@dataclass
class Context:
    """What every collaborator of the manager works with (built by the manager)."""

    settings: Settings
    ledger: Ledger
    backend: Backend
    channel: LaunchChannel
    kernel_manager: Any
    session_manager: Any
    log: logging.Logger
    event_logger: EventLogger | None
    #: The instance types this backend offers (replaced once the backend has started).
    catalog: dict[str, InstanceType]
    server_url: Callable[[], str]
    token: Callable[[], str]
