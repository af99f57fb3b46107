"""Jobs wait for room in the order they came: one at a time asks for an instance, and only
once there is room for it.

One :class:`Admission` per server, made by :class:`~.service.Jobs` and handed to every
:class:`~.runner.JobRunner`, which takes its :meth:`Admission.turn` before it starts its
job's kernel and gives it back as soon as that kernel's instance holds its room (a slot
of the local backend). A job never races the others for a slot, so a full backend makes
it wait (``queued``), never fail; and its place in the line is kept while it waits. An
instance already waiting for room (the relaunch of an interrupted job's kernel, a kernel
a user started) goes before the line; a job's kernel that still finds no room when it
starts waits for it at the backend (``launches.py``), as a relaunch does. The waits are
the manager's (``manager.job_kernels``): the wait for room is a recovery's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ..instances.job_kernels import JobKernels


class Admission:
    """The line of jobs waiting to start their kernels (first come, first started)."""

    def __init__(self, kernels: JobKernels) -> None:
        self.kernels = kernels
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

    async def until_room(self, low_cost: bool, waiting: Callable[[], None]) -> None:
        """Return once there is room for a new instance of the tier, which no instance
        already waiting for room (a relaunch of an interrupted kernel, say) will take
        first; ``waiting`` is called first when there is none (the job says so)."""
        await self.kernels.wait_for_room(low_cost, waiting)

    async def until_holding_room(self, start: asyncio.Future[str], kernel_id: str) -> None:
        """Return once the kernel's new instance holds its room (the next job may then ask
        for room), or once its start has ended (started, or failed)."""
        await self.kernels.holding_room(kernel_id, start)
