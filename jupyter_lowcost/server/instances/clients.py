"""The kernel's websocket clients (JupyterLab) across a move or a recovery.

A kernel on a new instance listens on new ports, and jupyter_server re-reads a kernel's
ports only when a websocket (re)connects. Called by :class:`~.moves.Moves` and
:class:`~.recovery.Recovery` around the restarts they make. Everything it touches of
jupyter_server goes through :mod:`..jupyter_adapters`.
"""

from __future__ import annotations

import asyncio

import zmq

from .. import jupyter_adapters as jupyter
from .ledger import Context


class Clients:
    """Quiets, drains and reconnects the websockets of one kernel."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def reconnect(self, kernel_id: str, *, died: bool) -> None:
        """Make the kernel's websocket clients reconnect to its new instance. Called
        after each successful restart made by the manager:

        - ``died`` (a recovery): each websocket sends the "restarting" status, as after a
          crash that jupyter_client's restarter handled, on which JupyterLab clears the
          dead kernel's pending cells and reconnects (and says the kernel died and
          restarted);
        - a move the user asked for: the websockets are closed, so JupyterLab reconnects
          quietly (no "kernel died" dialog; the switch shows the move's progress).
        """
        for connection in jupyter.kernel_connections(kernel_id):
            if died:
                jupyter.announce_restart(connection)
                continue
            iopub = jupyter.open_iopub(connection)
            if iopub is not None:
                iopub.flush()  # what the old kernel sent last is dropped, not replayed
            jupyter.close_websocket(connection)

    def mute(self, kernel_id: str) -> None:
        """Drop the kernel's output instead of forwarding it to its websockets (before a
        move: the old kernel's last words as it stops are noise; the websockets are closed
        after the move and reconnect to the kernel's new instance)."""
        for connection in jupyter.kernel_connections(kernel_id):
            jupyter.discard_iopub(connection)

    async def forwarded(self, kernel_id: str, timeout: float = 1.0) -> None:
        """Wait (1 s at most) until the kernel's websockets have no iopub message received
        and not yet forwarded: the kernel published its last outputs and "idle" before the
        reply that ended the wait above, but they come over another socket."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            await asyncio.sleep(0)  # let the loop hand on what has arrived
            pending = [
                iopub
                for connection in jupyter.kernel_connections(kernel_id)
                if (iopub := jupyter.open_iopub(connection)) is not None
                and iopub.socket.get(zmq.EVENTS) & zmq.POLLIN
            ]
            if not pending:
                return
            await asyncio.sleep(0.01)

    async def until_cell_ended(self, kernel_id: str) -> None:
        """Wait until the cell that asked for a move (``%lowcost on``) has ended and its
        reply has been sent, however long it runs ("the kernel restarts on the new instance
        when this cell ends"), or until the kernel is gone. A request on the kernel's shell
        channel is answered only after the requests before it, since a kernel handles them
        one at a time. (The server's ``execution_state`` cannot tell: the kernel's "busy"
        for the cell can reach the server after the cell's own request, and moving then
        would stop the kernel before it sent the cell's reply.)"""
        kernels = self.ctx.kernel_manager
        kernel = kernels.get_kernel(kernel_id)
        answered = asyncio.get_running_loop().create_future()
        channel = kernel.connect_shell()
        channel.on_recv(lambda _msg: answered.done() or answered.set_result(None))
        kernel.session.send(channel, "kernel_info_request")
        try:
            while not answered.done():
                try:
                    await asyncio.wait_for(asyncio.shield(answered), 1.0)
                except asyncio.TimeoutError:
                    if kernel_id not in kernels or not await kernel.is_alive():
                        return
        finally:
            channel.close()
