"""Run a notebook headless in a Jupyter server's kernel, cell by cell, as a person at
JupyterLab would: through the server's REST API and the kernel's websocket, waiting
before each cell until the kernel runs again after a move or an interruption (what a
person does when the notification says so). Used by test_binder.py on the demo notebook.

nbclient cannot do this: it starts its own kernel, not one on the server, so the server's
moves, interruptions and resumes would never reach it.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import nbformat
import requests
import websocket


class CellFailed(AssertionError):
    """A cell raised: its source and the traceback."""


class NotebookRunner:
    """One notebook session on the server at ``base`` (``http://host:port/``)."""

    def __init__(self, base: str, token: str, path: str) -> None:
        self.base = base
        self.token = token
        self.path = path
        self.kernel_id = ""
        self.session = uuid.uuid4().hex

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def start(self) -> None:
        """Open the notebook as JupyterLab does: a session with a new python3 kernel."""
        response = requests.post(
            f"{self.base}api/sessions",
            json={
                "path": self.path,
                "name": self.path.rsplit("/", 1)[-1],
                "type": "notebook",
                "kernel": {"name": "python3"},
            },
            headers=self.headers,
            timeout=120,
        )
        response.raise_for_status()
        self.kernel_id = response.json()["kernel"]["id"]

    def run(self, notebook: Any, cell_timeout: float = 300, settle_timeout: float = 180) -> Any:
        """Run every code cell of ``notebook`` (an nbformat node) in order, filling in its
        outputs; raise :class:`CellFailed` at the first cell that raises."""
        count = 0
        for cell in notebook.cells:
            if cell.cell_type != "code":
                continue
            self.wait_until_settled(settle_timeout)
            count += 1
            reply, outputs = self.execute(cell.source, cell_timeout)
            cell.outputs = outputs
            cell.execution_count = count
            if reply["status"] != "ok":
                raise CellFailed(
                    f"cell {count} raised:\n{cell.source}\n\n" + "\n".join(reply["traceback"])
                )
        return notebook

    def placement(self) -> dict[str, Any]:
        response = requests.get(
            f"{self.base}lowcost/api/kernels/{self.kernel_id}", headers=self.headers, timeout=30
        )
        response.raise_for_status()
        return response.json()

    def settled(self) -> bool:
        """No move under way, its instance (if any) running, and the kernel answering."""
        model = self.placement()
        instance = model["instance"]
        if model["moving"] or (instance is not None and instance["state"] != "running"):
            return False
        try:
            self._request("kernel_info_request", {}, timeout=5)
        except (OSError, websocket.WebSocketException, TimeoutError):
            return False
        return True

    def wait_until_settled(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not self.settled():
            if time.monotonic() > end:
                raise AssertionError(
                    f"the kernel did not run again within {timeout:.0f} s: {self.placement()}"
                )
            time.sleep(0.25)

    def execute(self, code: str, timeout: float) -> tuple[dict[str, Any], list[Any]]:
        """Run ``code``; its execute_reply content and its outputs (nbformat nodes)."""
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        return self._request("execute_request", content, timeout)

    def _request(
        self, msg_type: str, content: dict[str, Any], timeout: float
    ) -> tuple[dict[str, Any], list[Any]]:
        """Send one shell request on a new websocket; its reply's content and the outputs
        its iopub messages carried, once the kernel is idle again."""
        url = (
            self.base.replace("http", "ws", 1)
            + f"api/kernels/{self.kernel_id}/channels?session_id={self.session}"
        )
        connection = websocket.create_connection(
            url, header=[f"Authorization: token {self.token}"], timeout=timeout
        )
        try:
            msg_id = uuid.uuid4().hex
            connection.send(json.dumps(self._message(msg_id, msg_type, content)))
            outputs: list[Any] = []
            reply: dict[str, Any] | None = None
            idle = False
            end = time.monotonic() + timeout
            while reply is None or not idle:
                connection.settimeout(max(0.1, end - time.monotonic()))
                try:
                    data = connection.recv()
                except websocket.WebSocketTimeoutException:
                    raise TimeoutError(f"no answer to {msg_type} within {timeout:.0f} s") from None
                if not data:
                    # The server closes the websockets when it moves the kernel, maybe before
                    # the "idle" of the cell that asked for the move; JupyterLab, too, takes
                    # the reply as the end of a cell.
                    if reply is not None:
                        break
                    raise ConnectionError(f"the websocket closed before the reply to {msg_type}")
                message = json.loads(data)
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = message["msg_type"]
                if message["channel"] == "shell":
                    reply = message["content"]
                elif kind == "status":
                    idle = message["content"]["execution_state"] == "idle"
                elif kind in ("stream", "display_data", "execute_result", "error"):
                    outputs.append(nbformat.v4.output_from_msg(message))
            return reply, outputs
        finally:
            connection.close()

    def _message(self, msg_id: str, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        return {
            "header": {
                "msg_id": msg_id,
                "msg_type": msg_type,
                "username": "test",
                "session": self.session,
                "date": datetime.now(timezone.utc).isoformat(),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": "shell",
            "buffers": [],
        }


def text_of(cell: Any) -> str:
    """Everything a cell printed or displayed as text, its errors included."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type == "error":
            parts.append("\n".join(output.traceback))
        elif "text/plain" in output.get("data", {}):
            parts.append(output.data["text/plain"])
    return "".join(parts)
