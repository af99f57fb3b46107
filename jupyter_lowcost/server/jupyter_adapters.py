"""Where the server side leans on jupyter_server and jupyter_client beyond their public
API: every such use is here, with why, so that an upgrade of either is checked in one file.

Public hooks are used where they exist:

- jupyter_server's ``kernel_websocket_connection_class`` setting: :func:`track_connections`
  puts in a subclass of its websocket connection that keeps a list of the open ones per
  kernel (jupyter_server's own list is the private ``_open_sockets``, used only when a
  user configured another connection class);
- a connection's ``on_kernel_restarted``: what jupyter_client's restarter would call after
  a crash (through the callbacks that ``add_restart_callback`` registered), called here for
  the connections of a kernel that a recovery restarted.

And, with no public way to do it:

- :func:`discard_iopub`: the iopub stream's receive handler of a connection, swapped for one
  that drops (a kernel's last words before a move);
- :func:`set_kernel_info`: a kernel manager's cached kernel info (``_kernel_info_future``),
  which a websocket awaits before it forwards anything;
- :func:`set_execution_state`: a kernel manager's ``execution_state``, which jupyter_server
  otherwise sets only from the kernel's own status messages;
- :func:`forget_cached_ports` and :func:`without_local_ports`: ``LocalProvisioner``'s
  ``ports_cached``, so that a kernel on an instance reserves no port on this machine;
- :func:`start_listed_at_once` and :func:`forget_failed_start`: jupyter_client's pending
  kernels (``use_pending_kernels`` for one start, and ``_pending_kernels`` after a start that
  failed).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

#: Open connections per kernel id, kept by :class:`TrackedConnection`.
_connections: dict[str, list[Any]] = {}
#: The server uses :class:`TrackedConnection` (else jupyter_server's private list is read).
_tracking = False


class TrackedConnection(ZMQChannelsWebsocketConnection):  # type: ignore[misc]
    """jupyter_server's websocket connection, listed per kernel while it is open."""

    def connect(self) -> Any:
        connected = super().connect()
        if connected is not None:  # (None: it failed, and is disconnected already)
            _connections.setdefault(self.kernel_id, []).append(self)
        return connected

    def disconnect(self) -> Any:
        listed = _connections.get(self.kernel_id, [])
        if self in listed:
            listed.remove(self)
        if not listed:
            _connections.pop(self.kernel_id, None)
        return super().disconnect()


def track_connections(settings: dict[str, Any]) -> bool:
    """Make the server use :class:`TrackedConnection`, unless a user configured a
    connection class of their own; True when it does. Called by ``LowCostApp`` with its
    extension settings, which jupyter_server copies into the web application's after
    ``initialize_settings`` (a change made to the web application's own settings there
    would be overwritten by that copy)."""
    global _tracking
    configured = settings.get("kernel_websocket_connection_class")
    if configured in (None, ZMQChannelsWebsocketConnection):
        settings["kernel_websocket_connection_class"] = TrackedConnection
        configured = TrackedConnection
    _tracking = isinstance(configured, type) and issubclass(configured, TrackedConnection)
    return _tracking


def kernel_connections(kernel_id: str) -> list[Any]:
    """The server's open websocket connections to the kernel."""
    if _tracking:
        return list(_connections.get(kernel_id, ()))
    return [
        connection
        for connection in list(getattr(ZMQChannelsWebsocketConnection, "_open_sockets", ()))
        if getattr(connection, "kernel_id", None) == kernel_id
    ]


def announce_restart(connection: Any) -> None:
    """Tell the connection's client that its kernel restarted (the "restarting" status on
    which JupyterLab clears the dead kernel's pending cells and reconnects)."""
    connection.on_kernel_restarted()


def open_iopub(connection: Any) -> Any | None:
    """The connection's iopub stream (a ``ZMQStream``), if it is open."""
    iopub = getattr(connection, "channels", {}).get("iopub")
    return iopub if iopub is not None and not iopub.closed() else None


def discard_iopub(connection: Any) -> None:
    """Drop what the kernel publishes instead of forwarding it to this connection."""
    iopub = open_iopub(connection)
    if iopub is not None:
        iopub.on_recv(_drop)


def close_websocket(connection: Any) -> None:
    connection.websocket_handler.close()


def set_execution_state(kernel_manager: Any, state: str) -> None:
    """Say a kernel is ``busy`` or ``idle`` without a status message from it: jupyter_server
    sets its kernel manager's ``execution_state`` only from the kernel's iopub status, and
    holds a kernel that was taken back "starting" until then (for a kernel running a long
    cell: until the cell ends). Called when a launcher comes back to a restarted server."""
    kernel_manager.execution_state = state


def set_kernel_info(kernel_manager: Any, kernel_info: dict[str, Any]) -> None:
    """Give a kernel manager the kernel info a websocket asks first (jupyter_server keeps
    the answer per kernel manager). The shell of a kernel running a cell answers only when
    the cell ends, and every client would wait for it.

    The cache is the same attribute from jupyter_server 2.4 to 2.21 (the range pyproject
    allows). Since 2.20 (jupyter_server #1632) a connection that closes before the kernel
    answers deletes the cache when it is that connection's own pending future; the one set
    here is no connection's, so it stays. ``tests/test_websockets.py`` checks both."""
    known: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    known.set_result(kernel_info)
    kernel_manager._kernel_info_future = known


async def start_listed_at_once(
    kernel_manager: Any, kernel_id: str, kernel_name: str, cwd: Any
) -> None:
    """Start a kernel under ``kernel_id`` without waiting for it: it is listed at once,
    and a client that connects waits until it answers. These are jupyter_client's pending
    kernels, for this one start: with them ``start_kernel`` returns without awaiting
    anything, so no other start sees the setting."""
    pending = kernel_manager.use_pending_kernels
    kernel_manager.use_pending_kernels = True
    try:
        await kernel_manager.start_kernel(
            kernel_id=kernel_id,
            kernel_name=kernel_name,
            **({"cwd": cwd} if isinstance(cwd, str) and os.path.isdir(cwd) else {}),
        )
    finally:
        kernel_manager.use_pending_kernels = pending


def forget_failed_start(kernel_manager: Any, kernel_id: str) -> None:
    """jupyter_client keeps a kernel whose start failed among its pending kernels (listed
    by GET /api/kernels, then 404 on every call): drop it."""
    getattr(kernel_manager, "_pending_kernels", {}).pop(kernel_id, None)


def cancel_unsettled_start(kernel_manager: Any) -> None:
    """A restart cancelled at server stop leaves its kernel's ``ready`` future pending
    (jupyter_client settles it only on success or an Exception): the server's shutdown of
    that kernel would then fail on it (InvalidStateError)."""
    for kernel_id in list(kernel_manager.list_kernel_ids()):
        ready = kernel_manager.get_kernel(kernel_id).ready
        if not ready.done():
            ready.cancel()


def forget_cached_ports(provisioner: Any) -> None:
    """Let ``LocalProvisioner.pre_launch`` choose new local ports at the next launch (it
    keeps them in ``ports_cached`` across restarts)."""
    provisioner.ports_cached = False


@contextmanager
def without_local_ports(provisioner: Any) -> Iterator[None]:
    """Run ``LocalProvisioner.pre_launch`` without reserving local ports (a kernel on an
    instance binds its own there): it reserves them unless ``ports_cached`` says it did."""
    provisioner.ports_cached = True
    try:
        yield
    finally:
        provisioner.ports_cached = False


def _drop(msg_parts: Any) -> None:
    """An iopub handler that discards (see :func:`discard_iopub`)."""
