"""Jobs wait for room in the order they came: one at a time asks for an instance, and only
once there is room for it.

One :class:`Admission` per server, made by :class:`~.service.Jobs` and handed to every
:class:`~.runner.JobRunner`, which takes its :meth:`Admission.turn` before it starts its
job's kernel and gives it back as soon as that kernel's instance holds its room (a slot
of the local backend). A job never races the others for a slot, so a full backend makes
it wait (``queued``), never fail; and its place in the line is kept while it waits. An
instance already waiting for room (the relaunch of an interrupted job's kernel, a kernel
a user started) goes before the line; a job's kernel that still finds no room when it
starts waits for it at the backend (``launches.py``), as a relaunch does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ...storage.records import InstanceState
from ..instances.ledger import Context

#: How often a start is looked at while the next job waits for it to hold its room.
POLL_SECONDS = 0.1
#: How often the next job looks again while an instance waiting before it takes the room.
ROOM_SECONDS = 0.5


class Admission:
    """The line of jobs waiting to start their kernels (first come, first started)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # (asyncio's lock wakes its waiters in the order they came)
        self._lock = asyncio.Lock()
        self._line: list[str] = []

    @asynccontextmanager
    async def turn(self, job_id: str) -> AsyncIterator[None]:
        """Wait until every job that came before has started (or left the line), then
        hold the turn while the block runs. Called by the job's runner."""
        self._line.append(job_id)
        try:
            async with self._lock:
                yield
        finally:
            self._line.remove(job_id)

    def waiting(self) -> int:
        """How many jobs are in the line (the one whose turn it is included)."""
        return len(self._line)

    def has_room(self, low_cost: bool) -> bool:
        """Room for a new instance of the tier, which no instance already waiting for
        room (a relaunch of an interrupted kernel, say) will take first."""
        if not self.ctx.backend.has_room(low_cost):
            return False
        kernels = self.ctx.kernel_manager
        return not any(
            record.state == InstanceState.PENDING
            and not record.backend_state
            and record.kernel_id in self.ctx.ledger.kernels
            and record.kernel_id in kernels
            for record in self.ctx.ledger.records()
        )

    async def until_room(self, low_cost: bool, waiting: Callable[[], None]) -> None:
        """Return once :meth:`has_room`; ``waiting`` is called first when it has not (the
        job says so)."""
        while not self.has_room(low_cost):
            waiting()
            # (room an instance waiting before takes is no change of room: look again soon)
            timeout = ROOM_SECONDS if self.ctx.backend.has_room(low_cost) else 30
            try:
                await asyncio.wait_for(self.ctx.backend.room_changed(), timeout=timeout)
            except asyncio.TimeoutError:
                pass

    async def until_holding_room(self, start: asyncio.Future[str], kernel_id: str) -> None:
        """Return once the kernel's new instance holds its room (the next job may then ask
        for room), or once its start has ended (started, or failed)."""
        ledger = self.ctx.ledger
        while not start.done():
            record = ledger.current(kernel_id)
            if record is not None and record.is_live and record.backend_state:
                return  # (what the backend keeps of it: its reserved slot, its process)
            # (asyncio.wait leaves ``start`` alone when this wait is cancelled)
            await asyncio.wait([start], timeout=POLL_SECONDS)
