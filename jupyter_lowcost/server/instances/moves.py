"""Moves: a kernel switched to another placement by its user (``PUT kernels/<id>``,
``%lowcost on|off``, the JupyterLab switch).

A move is a restart of the same kernel id on the new placement, resumed from the
checkpoint it takes as it stops; JupyterLab reconnects by itself. Moves and recoveries of
one kernel run one at a time (the kernel's lock in the ledger); a move asked while another
is under way is refused with 409. A move that fails puts the kernel back where it ran,
waiting for room like a recovery if its old slot was taken meanwhile.
"""

from __future__ import annotations

import asyncio

from tornado import web

from ...backends import BackendError
from ...storage.records import InstanceRecord, Placement
from .clients import Clients
from .ledger import Context
from .recovery import Recovery
from .rest_models import check_launchable


class Moves:
    """Validates and runs the moves users ask for."""

    def __init__(self, ctx: Context, recovery: Recovery, clients: Clients) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.recovery = recovery
        self.clients = clients

    async def switch(self, kernel_id: str, placement: Placement, wait: bool) -> None:
        """``PUT kernels/<id>``: move the kernel to ``placement`` (a restart, same id).
        The caller has checked that the kernel exists."""
        entry = self.ledger.kernels.get(kernel_id)
        if entry is not None and entry.busy:
            raise web.HTTPError(
                409,
                f"this kernel is {entry.busy[0]}; move it when that is done and it runs again",
            )
        old = entry.placement if entry is not None else None
        if old == placement:
            raise web.HTTPError(409, f"the kernel already runs on {placement.describe()}")
        kernel = self.ctx.kernel_manager.get_kernel(kernel_id)
        if not getattr(kernel.provisioner, "supports_placement", False):
            raise web.HTTPError(
                409,
                f"this kernel was started by {type(kernel.provisioner).__name__}, which cannot "
                "move it; kernels started with lowcost-provisioner can",
            )
        check_launchable(kernel.kernel_spec)
        current = self.ledger.current(kernel_id)
        live = current if current is not None and current.is_live else None
        self.ctx.backend.check_capacity(placement.low_cost, replacing=live)
        what = f"moving to {placement.describe()}"
        self.ledger.begin(kernel_id, what)
        self.ledger.kernel(kernel_id).placement = placement  # where it goes, from now on
        task = self.ledger.spawn(
            self._move(kernel_id, what, old, placement, live, after_cell=not wait)
        )
        if wait:
            await asyncio.shield(task)

    async def _move(
        self,
        kernel_id: str,
        what: str,
        old: Placement | None,
        placement: Placement,
        live: InstanceRecord | None,
        after_cell: bool,
    ) -> None:
        """A move (``what``, begun by :meth:`switch`), in its turn among the kernel's moves
        and recoveries."""
        try:
            async with self.ledger.lock(kernel_id):
                await self._move_now(kernel_id, old, placement, live, after_cell)
        finally:
            self.ledger.finish(kernel_id, what)

    async def _move_now(
        self,
        kernel_id: str,
        old: Placement | None,
        placement: Placement,
        live: InstanceRecord | None,
        after_cell: bool,
    ) -> None:
        """The move itself (``_move`` holds the kernel's lock): restart on ``placement``."""
        kernels = self.ctx.kernel_manager
        if kernel_id not in kernels:
            return
        if after_cell:
            # Asked from the kernel itself (%lowcost): let the asking cell finish first.
            await self.clients.until_cell_ended(kernel_id)
            # Its last output and "idle" may still wait in the websockets' iopub queue.
            await self.clients.forwarded(kernel_id)
        # What the old kernel prints while it shuts down is noise in the user's cell.
        self.clients.mute(kernel_id)
        if live is not None:
            self.ledger.instances[
                live.id
            ].stop_reason = f"the kernel moved to {placement.describe()}"
        entry = self.ledger.kernel(kernel_id)
        entry.launch_reason = (
            f"moved from {old.describe() if old else 'the server machine'}"
            f" to {placement.describe()}"
        )
        entry.resume = True
        try:
            await kernels.restart_kernel(kernel_id, now=False)
            self.clients.reconnect(kernel_id, died=False)
        except Exception as err:
            # Put the kernel back where it was, so the user keeps a working kernel.
            self.ctx.log.error("jupyter_lowcost | moving kernel %s failed: %s", kernel_id, err)
            entry.placement = old
            entry.launch_reason = f"back on its previous placement: {err}"
            entry.resume = True  # (the old instance was shut down: its variables too)
            if kernel_id in kernels:
                await self._put_back(kernel_id, old)
            message = err.message if isinstance(err, BackendError) else str(err)
            raise web.HTTPError(
                503, f"could not move the kernel ({message}); it runs where it ran before"
            ) from err

    async def _put_back(self, kernel_id: str, old: Placement | None) -> None:
        """Restart a kernel whose move failed where it ran before. Its old instance is gone
        and its slot may be taken meanwhile (a regular request, say): like a recovery, it
        then waits for room, pending, instead of being left without an instance."""
        kernels = self.ctx.kernel_manager
        failed = self.ledger.current(kernel_id)
        if old is None or failed is None:
            await kernels.restart_kernel(kernel_id, now=True)
            self.clients.reconnect(kernel_id, died=False)
            return
        entry = self.ledger.kernel(kernel_id)
        entry.recovering = True
        try:
            if await self.recovery.until_room(kernel_id, old, failed):
                await kernels.restart_kernel(kernel_id, now=True)
                self.clients.reconnect(kernel_id, died=False)
        finally:
            entry.recovering = False
            entry.prepared = None
