"""A server killed hard and started again takes its kernels back, or resumes them.

These tests run ``jupyter server`` as a real separate process (pytest-jupyter's
in-process server cannot be SIGKILLed), with its own data directory kept across the runs.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from conftest import process_alive
from jupyter_process import LowCostServer
from notebook_runner import NotebookRunner

from jupyter_lowcost.storage import checkpoint_dirs

TOKEN = "restart-test-token"


def poll_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def launchers() -> dict[str, int]:
    """instance id -> pid of every launcher process on this machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"jupyter_lowcost.launcher" not in cmdline:
            continue
        for variable in environ:
            if variable.startswith(b"JUPYTER_LOWCOST_INSTANCE_ID="):
                found[variable.split(b"=", 1)[1].decode()] = int(entry.name)
    return found


class Server(LowCostServer):
    """``jupyter server`` on the local backend, on a data directory kept across runs."""

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(home, TOKEN, extra_env)

    def api(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(
            method, f"{self.base}api/{path}", json=body, headers=self.headers, timeout=60
        )

    def saved(self) -> dict[str, Any]:
        """What this server saved for a restarted one (its records file)."""
        files = sorted((self.home / "data" / "lowcost").glob("server-*.json"))
        return json.loads(files[-1].read_text()) if files else {}


class Notebook:
    """A notebook open on a low-cost kernel: its session, and cells run on a websocket
    the way JupyterLab runs them (one client session id, kept across reconnections)."""

    def __init__(self, server: Server, path: str, instance_type: str = "T4") -> None:
        self.server = server
        response = server.post("kernels", {"instance_type": instance_type, "low_cost": True})
        assert response.status_code == 201, response.text
        self.kernel_id = response.json()["kernel"]["id"]
        response = server.api(
            "POST",
            "sessions",
            {"path": path, "name": path, "type": "notebook", "kernel": {"id": self.kernel_id}},
        )
        assert response.status_code == 201, response.text
        self.session_id = response.json()["id"]
        self.runner = NotebookRunner(server.base, TOKEN, path)
        self.runner.kernel_id = self.kernel_id

    def run(self, code: str, timeout: float = 60) -> tuple[dict[str, Any], str]:
        reply, outputs = self.runner.execute(code, timeout)
        assert reply["status"] == "ok", reply
        text = "".join(
            o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in outputs
        )
        return reply, text

    def instance(self) -> dict[str, Any]:
        return self.server.get(f"kernels/{self.kernel_id}").json()["instance"]

    def websocket(self) -> websocket.WebSocket:
        url = self.server.base.replace("http", "ws", 1) + (
            f"api/kernels/{self.kernel_id}/channels?session_id={self.runner.session}"
        )
        return websocket.create_connection(
            url, header=[f"Authorization: token {TOKEN}"], timeout=60
        )

    def send(self, connection: websocket.WebSocket, code: str) -> str:
        """Start running ``code`` without waiting for it; its message id."""
        msg_id = uuid.uuid4().hex
        content = {"code": code, "silent": False, "store_history": True, "allow_stdin": False}
        message = {
            "header": {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "username": "test",
                "session": self.runner.session,
                "date": datetime.now(timezone.utc).isoformat(),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": {**content, "user_expressions": {}, "stop_on_error": True},
            "channel": "shell",
            "buffers": [],
        }
        connection.send(json.dumps(message))
        return msg_id


def wait_for_message(
    connection: websocket.WebSocket, matches: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        connection.settimeout(max(0.1, end - time.monotonic()))
        try:
            message = json.loads(connection.recv())
        except websocket.WebSocketTimeoutException:
            break
        if matches(message):
            return message
    raise AssertionError(f"no such message within {timeout:.0f} s")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Make servers that share one data directory; all are stopped at the end."""
    made: list[Server] = []

    def make(extra_env: dict[str, str] | None = None) -> Server:
        made.append(Server(tmp_path, extra_env))
        return made[-1]

    yield make
    for srv in made:
        srv.stop()


def test_a_restarted_server_takes_its_kernels_back_and_resumes_the_lost_one(
    servers: Callable[..., Server],
) -> None:
    server = servers()
    server.start()
    idle = Notebook(server, "idle.ipynb")
    busy = Notebook(server, "busy.ipynb", "A100-80G")
    lost = Notebook(server, "lost.ipynb")
    _, idle_pid = idle.run("import os\nx = 41\nprint(os.getpid())")
    busy.run("y = 'before'")
    lost.run("z = [1, 2, 3]")
    lost.run("z.append(4)")
    before = {nb.kernel_id: nb.instance() for nb in (idle, busy, lost)}
    # The sessions have been saved for the next server (once a second).
    poll_until(
        lambda: all(
            (server.saved().get("kernels", {}).get(nb.kernel_id) or {}).get("session")
            for nb in (idle, busy, lost)
        ),
        10,
        "the sessions to be saved",
    )
    # The busy notebook runs a long cell when the server dies.
    running = busy.websocket()
    msg_id = busy.send(
        running,
        "import time\nprint('the long cell starts', flush=True)\n"
        "for i in range(40):\n    time.sleep(0.5)\n"
        "y = 'after'\nprint('the long cell is done', flush=True)",
    )
    wait_for_message(
        running,
        lambda m: m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == msg_id,
        30,
    )
    server.kill_hard()
    running.close()

    # While no server runs, the instances run on; one of them is lost meanwhile.
    pids = launchers()
    assert {before[nb.kernel_id]["id"] for nb in (idle, busy, lost)} <= set(pids)
    os.kill(pids[before[lost.kernel_id]["id"]], signal.SIGKILL)
    poll_until(lambda: before[lost.kernel_id]["id"] not in launchers(), 10, "the lost one")

    server.start()
    # Listed at once, under the same ids, with their notebooks' sessions.
    kernels = {k["id"] for k in server.api("GET", "kernels").json()}
    assert kernels == {idle.kernel_id, busy.kernel_id, lost.kernel_id}
    sessions = {
        s["id"]: (s["path"], s["kernel"]["id"]) for s in server.api("GET", "sessions").json()
    }
    assert sessions == {
        nb.session_id: (path, nb.kernel_id)
        for nb, path in ((idle, "idle.ipynb"), (busy, "busy.ipynb"), (lost, "lost.ipynb"))
    }

    # The cell that was running completes, and a client that connects now sees its output.
    watcher = busy.websocket()
    wait_for_message(
        watcher,
        lambda m: m["msg_type"] == "stream" and "the long cell is done" in m["content"]["text"],
        60,
    )
    watcher.close()
    _, text = busy.run("print(y)")
    assert text == "after\n"

    # The idle one: the same process, its variables there without a restore.
    reply, text = idle.run("print(os.getpid(), x + 1)")
    assert text == f"{idle_pid.strip()} 42\n"
    assert reply["execution_count"] == 2  # it counts on
    model = server.get(f"kernels/{idle.kernel_id}").json()
    assert model["restored"] is None
    instance = model["instance"]
    old = before[idle.kernel_id]
    assert instance["id"] == old["id"] and instance["state"] == "running"
    assert "re-attached after the Jupyter server restarted" in instance["reason"]
    # The cost clock did not stop, nor did the cap move.
    assert (instance["started"], instance["expires"]) == (old["started"], old["expires"])
    assert instance["cost"] > old["cost"]
    assert model["placement"] == {"instance_type": "T4", "low_cost": True, "tier": "low-cost"}
    _, text = idle.run("%lowcost")  # what the kernel itself is told, through the new server
    assert "runs on a low-cost T4 instance (running" in text
    assert "Time left before the lifetime cap: 23 h 59 min" in text

    # The lost one comes back from its checkpoint on a new instance, and counts on.
    def resumed() -> dict[str, Any] | None:
        model = server.get(f"kernels/{lost.kernel_id}").json()
        instance = model["instance"]
        if model["restored"] and instance["state"] == "running":
            return model
        return None

    model = poll_until(resumed, 60, "the lost kernel to resume")
    history = {i["id"]: i for i in model["history"]}
    lost_record = history[before[lost.kernel_id]["id"]]
    assert lost_record["state"] == "interrupted"
    assert lost_record["reason"] == (
        "the Jupyter server restarted; the instance was lost: it had ended while the "
        "Jupyter server was away"
    )
    assert lost_record["recovery"] == "relaunch"
    assert model["instance"]["id"] != lost_record["id"]
    assert "resumed from the checkpoint" in model["restored"]["message"]
    reply, text = lost.run("print(z, In[1], Out.get(2))")
    assert text == "[1, 2, 3, 4] z = [1, 2, 3] None\n"
    assert reply["execution_count"] == 3

    # Nothing runs that the server does not know about; a normal stop stops it all.
    records = server.get("instances").json()
    live = {i["id"] for i in records if i["state"] == "running"}
    assert set(launchers()) & {i["id"] for i in records} == live
    server.stop()
    poll_until(lambda: not (set(launchers()) & live), 30, "the instances to stop")


def test_servers_sharing_a_data_directory_leave_each_other_alone(
    servers: Callable[..., Server],
) -> None:
    first = servers()
    first.start()
    assert first.post("kernels", {"instance_type": "T4"}).status_code == 201
    [instance] = first.get("instances").json()
    pid = launchers()[instance["id"]]

    second = servers()
    second.start()
    # The second server neither adopts nor stops what the first one runs.
    assert second.get("instances").json() == []
    assert second.api("GET", "kernels").json() == []
    assert process_alive(pid)

    first.kill_hard()
    third = servers()
    third.start()
    # The third takes the dead server's kernel back, not the second.
    kernels = third.api("GET", "kernels").json()
    assert [k["id"] for k in kernels] == [instance["kernel_id"]]
    poll_until(
        lambda: (
            [(i["id"], i["state"]) for i in third.get("instances").json()]
            == [(instance["id"], "running")]
            and "re-attached" in third.get("instances").json()[0]["reason"]
        ),
        30,
        "the third server to take the instance back",
    )
    assert process_alive(pid) and launchers()[instance["id"]] == pid
    assert second.get("instances").json() == []


def test_a_starting_server_deletes_nothing_of_a_live_servers_idle_kernel(
    servers: Callable[..., Server], tmp_path: Path
) -> None:
    """The second server on a data directory prunes what no server holds, and nothing of
    the first one's kernel: its process and variables, its launcher's log, the channel
    file its launcher finds a server by, its checkpoints (even past the second server's
    age for orphaned checkpoints)."""
    first = servers()
    first.start()
    notebook = Notebook(first, "first.ipynb")
    _, pid = notebook.run("import os\nx = 41\nprint(os.getpid())")
    instance_id = notebook.instance()["id"]
    data = tmp_path / "data" / "lowcost"
    log = data / "logs" / f"{instance_id}.log"
    channel = data / "channels" / f"{instance_id}.json"
    kernel_checkpoints = data / "checkpoints" / notebook.kernel_id
    prune_after = 0.5  # seconds: the second server's orphaned_checkpoints_days
    poll_until(
        lambda: (checkpoint_dirs.read(kernel_checkpoints).age() or 0) > prune_after,
        30,
        "the idle kernel's checkpoint to be older than the second server keeps orphans",
    )
    assert log.exists() and channel.exists()
    # What no server holds: an ended instance's files, a gone kernel's old checkpoints.
    leftovers = [data / "logs" / "0123456789ab.log", data / "channels" / "0123456789ab.json"]
    leftovers.append(data / "checkpoints" / "a-kernel-no-server-runs")
    for path in leftovers:
        if path.suffix:
            path.write_text("{}")
        else:
            path.mkdir()
        os.utime(path, (time.time() - 3600, time.time() - 3600))

    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"LowCostApp": {"orphaned_checkpoints_days": prune_after / 86400}})
    )
    second = servers({"JUPYTER_CONFIG_DIR": str(config)})
    second.start()  # (answers once its start, pruning included, is done)
    assert second.api("GET", "kernels").json() == []
    assert not [path for path in leftovers if path.exists()]  # it did prune
    assert log.exists() and channel.exists()
    assert list((kernel_checkpoints / "manifests").glob("*.json"))
    reply, text = notebook.run("print(os.getpid(), x + 1)")
    assert text == f"{pid.strip()} 42\n"
    assert reply["execution_count"] == 2
    assert notebook.instance()["state"] == "running"


def test_two_servers_starting_at_once_after_a_kill_take_the_kernel_back_once(
    servers: Callable[..., Server],
) -> None:
    """A server is killed; two start at once on its data directory: one of them takes its
    kernel back (the same process, its variables), the other leaves it alone."""
    first = servers()
    first.start()
    notebook = Notebook(first, "once.ipynb")
    _, pid = notebook.run("import os\nx = 41\nprint(os.getpid())")
    instance_id = notebook.instance()["id"]
    poll_until(
        lambda: (first.saved().get("kernels", {}).get(notebook.kernel_id) or {}).get("session"),
        10,
        "the session to be saved",
    )
    first.kill_hard()

    pair = [servers(), servers()]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(Server.start, pair))
    [owner] = [srv for srv in pair if srv.api("GET", "kernels").json()]
    [other] = [srv for srv in pair if srv is not owner]
    notebook.server = owner
    notebook.runner.base = owner.base
    poll_until(lambda: "re-attached" in notebook.instance()["reason"], 60, "the take-back")
    reply, text = notebook.run("print(os.getpid(), x + 1)")
    assert text == f"{pid.strip()} 42\n"
    assert reply["execution_count"] == 2
    assert owner.get(f"kernels/{notebook.kernel_id}").json()["restored"] is None
    assert other.get("instances").json() == [] and other.api("GET", "kernels").json() == []
    assert notebook.instance()["id"] == instance_id


def test_an_instance_whose_server_never_comes_back_stops_its_kernel(
    servers: Callable[..., Server],
) -> None:
    server = servers({"JUPYTER_LOWCOST_ORPHAN_TIMEOUT": "3"})
    server.start()
    assert server.post("kernels", {"instance_type": "T4"}).status_code == 201
    [instance] = server.get("instances").json()
    pid = launchers()[instance["id"]]
    server.kill_hard()
    time.sleep(1)  # (within the orphan timeout: it waits for a server)
    assert process_alive(pid)
    poll_until(lambda: not process_alive(pid), 30, "the orphaned launcher to stop its kernel")


def test_two_kills_in_a_row_lose_nothing(servers: Callable[..., Server]) -> None:
    """The second server dies as it takes the kernel back; the third still does (with the
    reconnect secret the second saved, not the spent one)."""
    server = servers()
    server.start()
    notebook = Notebook(server, "twice.ipynb")
    _, pid = notebook.run("import os\nx = 41\nprint(os.getpid())")
    server.kill_hard()
    server.start()
    poll_until(lambda: "re-attached" in notebook.instance()["reason"], 30, "the first take-back")
    server.kill_hard()
    server.start()
    reply, text = notebook.run("print(os.getpid(), x + 1)")
    assert text == f"{pid.strip()} 42\n"
    assert reply["execution_count"] == 2
    assert notebook.server.get(f"kernels/{notebook.kernel_id}").json()["restored"] is None


def test_with_recovery_policy_none_a_lost_kernel_is_not_resumed_and_keeps_its_checkpoints(
    servers: Callable[..., Server], tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"LowCostApp": {"recovery_policy": "none"}})
    )
    server = servers({"JUPYTER_CONFIG_DIR": str(config)})
    server.start()
    notebook = Notebook(server, "none.ipynb")
    notebook.run("z = 'kept'")
    [instance] = server.get("instances").json()
    poll_until(
        lambda: (server.saved().get("kernels", {}).get(notebook.kernel_id) or {}).get("session"),
        10,
        "the session to be saved",
    )
    server.kill_hard()
    os.kill(launchers()[instance["id"]], signal.SIGKILL)
    poll_until(lambda: instance["id"] not in launchers(), 10, "the launcher to die")

    server.start()
    poll_until(lambda: not server.api("GET", "kernels").json(), 30, "the lost kernel to be removed")
    assert server.api("GET", "sessions").json() == []
    [record] = server.get("instances").json()
    assert record["state"] == "interrupted" and record["recovery"] == "none"
    checkpoints = tmp_path / "data" / "lowcost" / "checkpoints" / notebook.kernel_id
    assert list((checkpoints / "manifests").glob("*.json"))  # for %lowcost restore
    assert not launchers().keys() & {record["id"]}
