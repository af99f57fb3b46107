"""A manual checkpoint is durable: a kernel whose instance is killed (SIGKILL of its whole
process group, no notice, no shutdown) right after ``%lowcost checkpoint`` returns resumes
from that checkpoint, whole (issue 33).

The kernels checkpoint at ``interval:3600`` only: no automatic checkpoint is taken during
a test, so what comes back can only come from the ``%lowcost checkpoint`` cells the test
ran (each test checks that the checkpoint directory holds only those, all manual).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from typing import Any

import numpy as np
import pytest
from conftest import (
    EventRecorder,
    execute,
    manager_of,
    moved,
    process_alive,
    start_lowcost_kernel,
    wait_until,
)

from jupyter_lowcost.server.events import RESTORED_SCHEMA_ID

pytestmark = pytest.mark.lowcost(LowCostApp={"checkpoints": "interval:3600"})

#: The array: 64 MiB of int64.
LENGTH = 8 * 1024 * 1024
#: How many small variables (ints, strings and floats) the notebook has in its globals.
SMALL = 2000


def state_code(version: int) -> str:
    """A cell that makes (or, for ``version`` 2, changes) the notebook's variables."""
    if version == 1:
        return (
            "import numpy as np\n"
            f"a = np.arange({LENGTH}, dtype=np.int64)\n"
            f"a[[0, 12345, {LENGTH - 1}]] = [-7, 424242, 99]\n"
            f"globals().update({{f'v{{i}}': small(i, 1) for i in range({SMALL})}})\n"
            "d = {'a': a, 'tag': 'first'}\n"
            "def f(x):\n"
            "    return x * 3 + int(d['a'][12345])\n"
        )
    return (
        "a[[1, 777, 4096]] = [-1, -777, -4096]\n"
        f"globals().update({{f'v{{i}}': small(i, 2) for i in range({SMALL})}})\n"
        "d['tag'] = 'second'\n"
        "def f(x):\n"
        "    return x * 5 + int(d['a'][777])\n"
    )


def small(i: int, version: int) -> Any:
    """The value of small variable ``v<i>`` in state ``version``: an int, a str or a float."""
    kind = i % 3
    if kind == 0:
        return i * 7 + version
    if kind == 1:
        return f"s{i}-{version}" * (1 + i % 5)
    return i / 8 + version


SMALL_SOURCE = (
    "def small(i, version):\n"
    "    kind = i % 3\n"
    "    if kind == 0:\n"
    "        return i * 7 + version\n"
    "    if kind == 1:\n"
    "        return f's{i}-{version}' * (1 + i % 5)\n"
    "    return i / 8 + version\n"
)


def expected_array(version: int) -> np.ndarray:
    a = np.arange(LENGTH, dtype=np.int64)
    a[[0, 12345, LENGTH - 1]] = [-7, 424242, 99]
    if version == 2:
        a[[1, 777, 4096]] = [-1, -777, -4096]
    return a


#: What the resumed kernel prints about its variables (one JSON line); nothing it defines
#: is a variable of the notebook (a later checkpoint would hold it).
REPORT = (
    "print(__import__('json').dumps({"
    "'sha256': __import__('hashlib').sha256(a.tobytes()).hexdigest(),"
    "'dtype': str(a.dtype), 'shape': list(a.shape),"
    "'smalls': [[type(globals()[f'v{i}']).__name__, repr(globals()[f'v{i}'])]"
    f" for i in range({SMALL})],"
    "'shared': d['a'] is a, 'tag': d['tag'],"
    "'f': f(10), 'small_is_function': callable(small),"
    "}))\n"
)


def expected_report(version: int) -> dict[str, Any]:
    array = expected_array(version)
    return {
        "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
        "dtype": "int64",
        "shape": [LENGTH],
        "smalls": [
            [type(small(i, version)).__name__, repr(small(i, version))] for i in range(SMALL)
        ],
        "shared": True,
        "tag": "first" if version == 1 else "second",
        "f": 10 * 3 + 424242 if version == 1 else 10 * 5 - 777,
        "small_is_function": True,
    }


@pytest.fixture
def restored_events(jp_serverapp: Any) -> EventRecorder:
    recorder = EventRecorder()
    jp_serverapp.event_logger.add_listener(schema_id=RESTORED_SCHEMA_ID, listener=recorder.listener)
    return recorder


async def make_state(serverapp: Any, kernel_id: str, version: int) -> None:
    code = (SMALL_SOURCE if version == 1 else "") + state_code(version)
    await execute(serverapp, kernel_id, code, timeout=120)


async def checkpoint(serverapp: Any, kernel_id: str) -> str:
    """Run ``%lowcost checkpoint`` as a cell; the id it says it wrote."""
    said = await execute(serverapp, kernel_id, "%lowcost checkpoint")
    assert said.startswith("Checkpoint ") and "Not saved" not in said, said
    return said.split()[1].rstrip(":")


def kill_instance(serverapp: Any, kernel_id: str) -> tuple[str, int]:
    """SIGKILL the whole process group of the kernel's instance (its launcher, the kernel
    and whatever they started), as when the machine is lost: no notice, no shutdown.
    Returns the instance's id and its launcher's pid."""
    record = manager_of(serverapp).current_instance(kernel_id)
    os.killpg(record.backend_state["pgid"], signal.SIGKILL)
    return record.id, record.backend_state["pid"]


async def back_on_a_new_instance(api: Any, kernel_id: str, lost: str) -> None:
    """Wait until the kernel runs again, on an instance other than ``lost``."""

    async def relaunched() -> bool:
        status, model = await api("GET", f"kernels/{kernel_id}")
        instance = (model or {}).get("instance")
        return (
            status == 200
            and instance is not None
            and instance["id"] != lost
            and instance["state"] == "running"
        )

    await wait_until(relaunched, timeout=90)
    await wait_until(lambda: moved(api, kernel_id), timeout=30)


def manifests(serverapp: Any, kernel_id: str) -> dict[str, bool]:
    """The kernel's checkpoints on disk: id -> whether it was a manual one."""
    folder = manager_of(serverapp).settings.checkpoint_dir / kernel_id / "manifests"
    return {
        path.stem: bool(json.loads(path.read_text()).get("manual"))
        for path in sorted(folder.glob("*.json"))
    }


async def assert_state(serverapp: Any, kernel_id: str, version: int) -> None:
    """Every variable of state ``version`` is in the kernel, with exactly its value."""
    report = json.loads(await execute(serverapp, kernel_id, REPORT, timeout=120))
    expected = expected_report(version)
    assert report.keys() == expected.keys()
    for key, value in expected.items():
        assert report[key] == value, key


async def kill_and_resume(
    api: Any,
    serverapp: Any,
    restored_events: EventRecorder,
    kernel_id: str,
    checkpoint_id: str,
    version: int,
) -> None:
    """Kill the kernel's instance at once; check that the kernel resumes from
    ``checkpoint_id`` with every variable of state ``version``."""
    lost, launcher = kill_instance(serverapp, kernel_id)  # no cell, no wait in between
    await wait_until(lambda: not process_alive(launcher), timeout=10)
    await back_on_a_new_instance(api, kernel_id, lost)
    # (a resumed kernel restores before it answers: what %lowcost says is final)
    status = await execute(serverapp, kernel_id, "%lowcost")
    assert f"Resumed from checkpoint {checkpoint_id}: " in status, status
    await assert_state(serverapp, kernel_id, version)
    event = await restored_events.wait_for(kernel_id=kernel_id, timeout=30)
    assert event["checkpoint_id"] == checkpoint_id
    # a, d, f, small and np (a module is saved as a reference to it), and the 2,000
    assert event["variables"] == SMALL + 5
    assert event["not_restored_count"] == 0 and event["not_restored"] == []
    _, model = await api("GET", f"kernels/{kernel_id}")
    assert model["restored"]["checkpoint_id"] == checkpoint_id


async def test_a_kernel_killed_right_after_a_manual_checkpoint_resumes_from_it_whole(
    api: Any, jp_serverapp: Any, restored_events: EventRecorder
) -> None:
    kernel_id = (await start_lowcost_kernel(api, "T4"))["kernel"]["id"]
    await make_state(jp_serverapp, kernel_id, 1)
    checkpoint_id = await checkpoint(jp_serverapp, kernel_id)
    # Only the manual checkpoint can hold the variables: no other was ever written.
    try:
        await kill_and_resume(api, jp_serverapp, restored_events, kernel_id, checkpoint_id, 1)
    finally:
        assert manifests(jp_serverapp, kernel_id) == {checkpoint_id: True}


async def test_a_kernel_killed_right_after_a_second_manual_checkpoint_resumes_from_it(
    api: Any, jp_serverapp: Any, restored_events: EventRecorder
) -> None:
    kernel_id = (await start_lowcost_kernel(api, "T4"))["kernel"]["id"]
    await make_state(jp_serverapp, kernel_id, 1)
    first = await checkpoint(jp_serverapp, kernel_id)
    await make_state(jp_serverapp, kernel_id, 2)
    second = await checkpoint(jp_serverapp, kernel_id)
    assert second > first
    try:
        await kill_and_resume(api, jp_serverapp, restored_events, kernel_id, second, 2)
    finally:
        assert manifests(jp_serverapp, kernel_id) == {first: True, second: True}
