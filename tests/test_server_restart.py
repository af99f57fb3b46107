"""A server killed hard and started again leaves no instance running unaccounted for.

This test runs ``jupyter server`` as a real separate process (pytest-jupyter's in-process
server cannot be SIGKILLed), with its own data directory kept across the two runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import process_alive
from jupyter_process import LowCostServer

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


def launcher_children(server_pid: int) -> list[int]:
    """Launcher processes whose parent is ``server_pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server_pid and b"jupyter_lowcost.launcher" in cmdline:
            found.append(int(entry.name))
    return found


class Server(LowCostServer):
    """``jupyter server`` on the local backend, on a data directory kept across runs."""

    def __init__(self, home: Path) -> None:
        super().__init__(home, TOKEN)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[[], Server]]:
    """Make servers that share one data directory; all are stopped at the end."""
    made: list[Server] = []

    def make() -> Server:
        made.append(Server(tmp_path))
        return made[-1]

    yield make
    for srv in made:
        srv.stop()


@pytest.fixture
def server(servers: Callable[[], Server]) -> Server:
    return servers()


def test_hard_killed_server_leaves_no_instance_running(server: Server) -> None:
    server.start()
    for instance_type in ("T4", "A100-80G"):
        response = server.post("kernels", {"instance_type": instance_type, "low_cost": True})
        assert response.status_code == 201, response.text
    assert server.process is not None
    launchers = launcher_children(server.process.pid)
    assert len(launchers) == 2
    instances = {i["id"] for i in server.get("instances").json()}

    server.kill_hard()
    # Without a server the launchers live on: this is what the restart must clean up.
    assert all(process_alive(pid) for pid in launchers)

    server.start()
    poll_until(
        lambda: not any(process_alive(pid) for pid in launchers),
        30,
        "the restarted server to stop the orphaned instances",
    )
    records = {i["id"]: i for i in server.get("instances").json()}
    assert set(records) == instances
    for record in records.values():
        assert record["state"] == "terminated"
        assert "the Jupyter server restarted" in record["reason"]
    assert server.get("status").json()["live_instances"] == 0


def test_servers_sharing_a_data_directory_leave_each_other_alone(
    servers: Callable[[], Server],
) -> None:
    first = servers()
    first.start()
    assert first.post("kernels", {"instance_type": "T4"}).status_code == 201
    assert first.process is not None
    launchers = launcher_children(first.process.pid)
    assert len(launchers) == 1

    second = servers()
    second.start()
    # The second server neither adopts nor stops what the first one runs.
    assert second.get("instances").json() == []
    assert [i["state"] for i in first.get("instances").json()] == ["running"]
    assert process_alive(launchers[0])

    first.kill_hard()
    third = servers()
    third.start()
    # The third adopts the dead server's records and stops its instance, not the second's.
    poll_until(lambda: not process_alive(launchers[0]), 30, "the orphan to be stopped")
    assert [i["state"] for i in third.get("instances").json()] == ["terminated"]
    assert second.get("instances").json() == []
