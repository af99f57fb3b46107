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
