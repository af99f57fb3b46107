"""Fixtures: a real Jupyter server with the extension (pytest-jupyter), real kernels.

``@pytest.mark.lowcost(LowCostApp={...}, LocalBackend={...})`` adds configuration to the
server of one test. :class:`EventRecorder` collects the instance events the server emits;
:func:`execute` runs code in a kernel through a kernel client, as JupyterLab's websocket
does, and returns what it printed.

Nothing the tests run may send anything beyond loopback: ``pytest_configure`` installs
the network guard (tests/network_guard) before any fixture starts a process, and
:func:`nothing_beyond_loopback` fails a test during which an attempt was refused.
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from cloud_metadata import AwsMetadata, AzureMetadata, GcpMetadata
from network_guard import Checker, describe, install, network_attempts
from traitlets.config import Config

from jupyter_lowcost.server.events import SCHEMA_ID

#: (kubernetes_fixture: the Kubernetes cluster of tests/k8s/ and tests/test_kubernetes_cluster.py,
#: started only by the tests that ask for it)
pytest_plugins = ["pytest_jupyter.jupyter_server", "kubernetes_fixture"]

BASE_CONFIG: dict[str, Any] = {
    "ServerApp": {"jpserver_extensions": {"jupyter_lowcost": True}},
    "LowCostApp": {"launch_timeout": 60.0},
    "LocalBackend": {"slots": 4, "gpus": 0},
}


#: The session's network guard folder (its library and log) and the log's checker.
_GUARD: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Guard this process and every process the tests start (tests/network_guard)."""
    folder = Path(tempfile.mkdtemp(prefix="jupyter-lowcost-network-guard-"))
    _GUARD.update(folder=folder, checker=Checker(install(folder)))


@pytest.fixture(autouse=True)
def nothing_beyond_loopback() -> Iterator[None]:
    """Fail the test when something tried to reach beyond loopback while it ran (or, at
    its set-up, since the previous test: a shared fixture, a process still running)."""
    checker: Checker = _GUARD["checker"]
    checker.fail_on_new("before this test (a shared fixture's set-up or an earlier process)")
    yield
    checker.fail_on_new("during this test")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary() -> Iterator[None]:
    """No garbage collection while the summary runs. Plugins import modules there (the
    hypothesis plugin imports hypothesis when no test did), and pytest parses them: on
    CPython 3.11 a collection during ``ast.parse`` whose finalizers parse too (or another
    thread's parse) corrupts the parser's shared recursion counter, and the import fails
    with "SystemError: AST constructor recursion depth mismatch" after every test passed
    (CPython gh-106905; 3.12 keeps the counter per call). The session's garbage is
    collected first."""
    gc.collect()
    gc.disable()
    try:
        return (yield)
    finally:
        gc.enable()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Attempts after the last test (shared fixtures' tear-down) fail the session; the
    guard's folder is removed when the session recorded none."""
    if "checker" not in _GUARD:
        return
    checker: Checker = _GUARD["checker"]
    late = checker.new()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if late:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_sep("=", "network guard", red=True)
            reporter.write_line(describe(late, "after the last test"), red=True)
    if not network_attempts():
        shutil.rmtree(_GUARD["folder"], ignore_errors=True)
    elif reporter is not None:
        reporter.write_line(f"network attempts recorded in {checker.log}")


@pytest.fixture
def aws() -> Iterator[AwsMetadata]:
    """An emulator of AWS's instance metadata (tests/cloud_metadata.py), on loopback."""
    emulator = AwsMetadata()
    yield emulator
    emulator.close()


@pytest.fixture
def gcp() -> Iterator[GcpMetadata]:
    """An emulator of Google Cloud's instance metadata, on loopback."""
    emulator = GcpMetadata()
    yield emulator
    emulator.close()


@pytest.fixture
def azure() -> Iterator[AzureMetadata]:
    """An emulator of Azure's instance metadata (Scheduled Events), on loopback."""
    emulator = AzureMetadata()
    yield emulator
    emulator.close()


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {key: dict(value) for key, value in base.items()}
    for section, values in extra.items():
        merged.setdefault(section, {}).update(values)
    return merged


@pytest.fixture
def jp_server_config(request: pytest.FixtureRequest) -> Config:
    marker = request.node.get_closest_marker("lowcost")
    return Config(_merge(BASE_CONFIG, marker.kwargs if marker else {}))


class EventRecorder:
    """Every instance event the server emits, in order, and a way to wait for one."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()

    async def listener(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        async with self._changed:
            self.events.append(dict(data))
            self._changed.notify_all()

    def matching(
        self, where: Callable[[dict[str, Any]], bool] | None = None, **fields: Any
    ) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if all(e.get(k) == v for k, v in fields.items()) and (where is None or where(e))
        ]

    async def wait_for(
        self,
        timeout: float = 60,
        where: Callable[[dict[str, Any]], bool] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """The first event with all ``fields`` for which ``where`` holds (waits for it)."""

        def found() -> list[dict[str, Any]]:
            return self.matching(where, **fields)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(found), timeout)
        return found()[0]

    def states(self, kernel_id: str) -> list[tuple[str, str]]:
        """``(instance_id, state)`` of every event of ``kernel_id``, in order."""
        return [(e["instance_id"], e["state"]) for e in self.events if e["kernel_id"] == kernel_id]


@pytest.fixture
def instance_events(jp_serverapp: Any) -> EventRecorder:
    recorder = EventRecorder()
    jp_serverapp.event_logger.add_listener(schema_id=SCHEMA_ID, listener=recorder.listener)
    return recorder


@pytest.fixture
def api(jp_fetch: Any) -> Callable[..., Any]:
    """``await api("GET", "instances")``: (status, decoded JSON) of a lowcost API call."""

    async def call(method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        if body is not None:
            kwargs["body"] = body if isinstance(body, str) else json.dumps(body)
        elif method in ("POST", "PUT"):
            kwargs["body"] = ""
        path, _, query = path.partition("?")
        if query:
            kwargs["params"] = dict(parse_qsl(query))
        response = await jp_fetch(
            "lowcost", "api", *path.split("/"), method=method, raise_error=False, **kwargs
        )
        text = response.body.decode() if response.body else ""
        return response.code, (json.loads(text) if text else None)

    return call


async def execute(
    serverapp: Any, kernel_id: str, code: str, timeout: float = 60, silent: bool = False
) -> str:
    """Run ``code`` in the kernel; return its stdout; fail with its traceback on error.
    ``silent``: not a cell of the notebook (no execution count, no checkpoint after it)."""
    out, _ = await execute_cell(serverapp, kernel_id, code, timeout, silent)
    return out


async def execute_cell(
    serverapp: Any, kernel_id: str, code: str, timeout: float = 60, silent: bool = False
) -> tuple[str, int]:
    """:func:`execute`, and the cell's execution count (from the kernel's reply)."""
    kernel = serverapp.kernel_manager.get_kernel(kernel_id)
    client = kernel.client()
    client.start_channels()
    out: list[str] = []

    def collect(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    try:
        await client.wait_for_ready(timeout=timeout)
        reply = await client.execute_interactive(
            code, silent=silent, timeout=timeout, output_hook=collect
        )
    finally:
        client.stop_channels()
    assert reply["content"]["status"] == "ok", "".join(out)
    return "".join(out), int(reply["content"].get("execution_count") or 0)


async def start_lowcost_kernel(
    api: Any, instance_type: str = "A100-80G", low_cost: bool = True
) -> dict[str, Any]:
    status, body = await api(
        "POST", "kernels", {"instance_type": instance_type, "low_cost": low_cost}
    )
    assert status == 201, body
    return body


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie no longer counts)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def manager_of(serverapp: Any) -> Any:
    """The server's InstanceManager (what the REST API does not show: records, pids)."""
    return serverapp.web_app.settings["jupyter_lowcost_manager"]


async def wait_until(condition: Callable[[], Any], timeout: float = 30) -> None:
    """Wait until ``condition()`` (sync or async) is true, checking every 50 ms."""
    end = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.05)


async def checkpointed(serverapp: Any, kernel_id: str) -> None:
    """Wait until the checkpoint after the kernel's last cell is on disk (a kernel writes
    its checkpoints in the background, after the cell's reply)."""
    # (the reply's count: inside the cell, IPython 9 already counts the next one, 8 not)
    _, count = await execute_cell(serverapp, kernel_id, "pass")
    manager = serverapp.web_app.settings["jupyter_lowcost_manager"]
    manifests = manager.settings.checkpoint_dir / kernel_id / "manifests"

    def written() -> bool:
        found = sorted(manifests.glob("*.json"))
        if not found:
            return False
        history = json.loads(found[-1].read_text()).get("history") or {}
        # (the count saved is the next cell's: IPython counts on before post_run_cell)
        return int(history.get("execution_count", 0)) > count

    await wait_until(written, timeout=60)


async def settled(serverapp: Any, kernel_id: str) -> None:
    """Wait until the kernel has no checkpoint in flight or pending: the last cell's is
    written, or its write failed (nothing the kernel does next frees or takes disk)."""
    await execute(
        serverapp,
        kernel_id,
        # (no name assigned: it would be a variable of the notebook)
        "assert __import__('jupyter_lowcost.kernel.checkpointing', fromlist=['_'])"
        ".installed().settle(60), 'a checkpoint was still being written'\n",
        timeout=90,
        silent=True,
    )


async def moved(api: Any, kernel_id: str) -> bool:
    """True once no move of the kernel is under way."""
    status, model = await api("GET", f"kernels/{kernel_id}")
    return status == 200 and not model["moving"]
