"""The server finds a kernel's websockets (to make JupyterLab reconnect after a move or a
recovery) through the connection class it installs, not jupyter_server's private list."""

from __future__ import annotations

import json
from typing import Any

from conftest import wait_until

from jupyter_lowcost.server import jupyter_adapters


async def test_a_kernels_open_websockets_are_tracked(
    jp_serverapp: Any, jp_fetch: Any, jp_ws_fetch: Any
) -> None:
    settings = jp_serverapp.web_app.settings
    assert settings["kernel_websocket_connection_class"] is jupyter_adapters.TrackedConnection
    response = await jp_fetch("api", "kernels", method="POST", body=json.dumps({}))
    kernel_id = json.loads(response.body)["id"]
    assert jupyter_adapters.kernel_connections(kernel_id) == []

    websocket = await jp_ws_fetch("api", "kernels", kernel_id, "channels")
    await wait_until(lambda: len(jupyter_adapters.kernel_connections(kernel_id)) == 1)
    (connection,) = jupyter_adapters.kernel_connections(kernel_id)
    assert isinstance(connection, jupyter_adapters.TrackedConnection)
    assert connection.kernel_id == kernel_id

    websocket.close()
    await wait_until(lambda: jupyter_adapters.kernel_connections(kernel_id) == [])


async def test_a_websocket_takes_the_kernel_info_the_server_set(
    jp_serverapp: Any, jp_fetch: Any, jp_ws_fetch: Any
) -> None:
    """``set_kernel_info`` (a kernel taken back after a restart, whose shell may be busy)
    leans on jupyter_server's private ``_kernel_info_future``, which changed in 2.20
    (jupyter_server #1632: a connection closed before the kernel answers drops its own
    pending future). A websocket still opens with the info the server set, asking the
    kernel nothing, and keeps it after it closes: fails if a release renames the cache."""
    response = await jp_fetch("api", "kernels", method="POST", body=json.dumps({}))
    kernel_id = json.loads(response.body)["id"]
    kernel_manager = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    known = {"status": "ok", "protocol_version": "5.3", "set_by": "jupyter-lowcost"}
    jupyter_adapters.set_kernel_info(kernel_manager, known)

    websocket = await jp_ws_fetch("api", "kernels", kernel_id, "channels")
    await wait_until(lambda: len(jupyter_adapters.kernel_connections(kernel_id)) == 1)
    (connection,) = jupyter_adapters.kernel_connections(kernel_id)
    await wait_until(lambda: connection._kernel_info_future.done())
    assert connection._kernel_info_future.result() == known
    assert connection.kernel_info_channel is None  # no kernel_info_request was sent

    websocket.close()
    await wait_until(lambda: jupyter_adapters.kernel_connections(kernel_id) == [])
    assert kernel_manager._kernel_info_future.result() == known
