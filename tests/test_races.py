"""Interruptions, moves and recoveries that come in a row, or at once: nothing is lost.

Each test reproduces a way a kernel lost its variables, or got stuck, when events came
closer together than the happy path has them.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

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

STATE = "weights = [0.5, 0.25]\nstep = 41\nstep += 1\n"
CHECK = "print(weights, step)"
EXPECTED = "[0.5, 0.25] 42\n"


async def resumed(api: Any, kernel_id: str, old: str) -> str:
    """Wait until the kernel runs on an instance other than ``old``; its id."""

    async def relaunched() -> bool:
        _, model = await api("GET", f"kernels/{kernel_id}")
        instance = model["instance"]
        return (
            instance is not None
            and instance["id"] != old
            and instance["state"] == "running"
            and not model["moving"]
        )

    await wait_until(relaunched, timeout=90)
    return (await api("GET", f"kernels/{kernel_id}"))[1]["instance"]["id"]


async def test_interruptions_and_moves_in_a_row_without_a_cell_keep_the_variables(
    api: Any, jp_serverapp: Any
) -> None:
    """A second interruption before the first cell after a resume: it resumed from
    "0 variables" (the restored ones were hidden from the notice checkpoint)."""
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, instance = body["kernel"]["id"], body["instance"]["id"]
    await execute(jp_serverapp, kernel_id, STATE)
    for step in ("interrupt", "interrupt", "move", "interrupt", "move", "interrupt"):
        if step == "interrupt":
            status, _ = await api("POST", f"instances/{instance}/interrupt", {"notice_seconds": 1})
            assert status == 202
        else:
            _, model = await api("GET", f"kernels/{kernel_id}")
            low_cost = not model["placement"]["low_cost"]
            status, model = await api(
                "PUT", f"kernels/{kernel_id}", {"low_cost": low_cost, "instance_type": "T4"}
            )
            assert status == 200, model
        instance = await resumed(api, kernel_id, instance)
        if (
            step == "move"
            and not (await api("GET", f"kernels/{kernel_id}"))[1]["placement"]["low_cost"]
        ):
            # (regular instances are not interrupted: back to low-cost, still no cell)
            status, model = await api("PUT", f"kernels/{kernel_id}", {"low_cost": True})
            assert status == 200, model
            instance = await resumed(api, kernel_id, instance)
    assert await execute(jp_serverapp, kernel_id, CHECK) == EXPECTED
    _, model = await api("GET", f"kernels/{kernel_id}")
    assert "2 variables" in model["restored"]["message"]


def slow_python(tmp_path: Path, seconds: float) -> Path:
    """A Python that takes ``seconds`` to start: an instance slow to boot."""
    import sys

    wrapper = tmp_path / "slow-python"
    wrapper.write_text(f'#!/bin/sh\nsleep {seconds}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.lowcost(LocalBackend={"slots": 1, "preemption_notice": 30.0, "queue_timeout": 60.0})
async def test_a_regular_request_preempts_a_low_cost_instance_that_is_still_starting(
    api: Any, jp_data_dir: Path, tmp_path: Path, instance_events: EventRecorder
) -> None:
    """It waited up to queue_timeout: a pending instance never got its notice."""
    spec_dir = jp_data_dir / "kernels" / "slow"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    str(slow_python(tmp_path, 5)),
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                ],
                "display_name": "slow",
                "language": "python",
            }
        )
    )
    starting = asyncio.ensure_future(
        api("POST", "kernels", {"name": "slow", "instance_type": "T4", "low_cost": True})
    )
    victim = await instance_events.wait_for(
        state="pending", reason="starting the kernel on the instance", instance_type="T4"
    )
    began = time.monotonic()
    regular = await start_lowcost_kernel(api, "A100-80G", low_cost=False)
    assert regular["instance"]["state"] == "running"
    assert time.monotonic() - began < 30  # not the victim's notice, not queue_timeout
    status, answer = await starting
    assert status == 503, answer
    assert "preempted: a regular A100-80G instance needs its slot" in answer["message"]
    ended = instance_events.matching(instance_id=victim["instance_id"], state="interrupted")
    assert ended and "before it started" in ended[0]["reason"]


async def test_a_move_asked_during_a_notice_and_the_recovery_do_not_run_at_once(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    """A move asked (from the notebook, ?wait=0) while a cell runs waits for the cell; the
    notice's deadline passed meanwhile, and the recovery restarted the kernel while the
    move did too (two instances for one kernel, 503 "invalid state")."""
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    await execute(jp_serverapp, kernel_id, STATE)
    client = jp_serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        client.execute("import time\ntime.sleep(30)")
        await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 1})
        status, model = await api("PUT", f"kernels/{kernel_id}?wait=0", {"low_cost": False})
        assert status == 202, model
        await instance_events.wait_for(instance_id=first, state="interrupted")
    finally:
        client.stop_channels()

    async def settled() -> bool:
        _, model = await api("GET", f"kernels/{kernel_id}")
        return not model["moving"] and model["instance"]["state"] == "running"

    await wait_until(settled, timeout=90)
    _, model = await api("GET", f"kernels/{kernel_id}")
    live = [i for i in model["history"] if i["state"] in ("pending", "running", "notice")]
    assert len(live) == 1, model["history"]
    assert model["placement"]["low_cost"] is False  # the move the user asked for
    assert live[0]["tier"] == "regular"
    assert await execute(jp_serverapp, kernel_id, CHECK) == EXPECTED


async def test_a_move_during_a_recovery_is_refused_with_409(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 0})
    await instance_events.wait_for(instance_id=first, state="interrupted")
    status, answer = await api("PUT", f"kernels/{kernel_id}", {"low_cost": False})
    if status == 409:
        assert "resuming after the interrupted instance" in answer["message"]
    else:  # the recovery had already finished: the move ran after it
        assert status == 200, answer
    await wait_until(lambda: moved(api, kernel_id), timeout=90)
    _, model = await api("GET", f"kernels/{kernel_id}")
    live = [i for i in model["history"] if i["state"] in ("pending", "running", "notice")]
    assert len(live) == 1, model["history"]


def launcher_pids() -> set[int]:
    """Every ``python -m jupyter_lowcost.launcher`` process on this machine."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"jupyter_lowcost.launcher" in argv and process_alive(int(entry.name)):
            pids.add(int(entry.name))
    return pids


def instance_of(pid: int) -> str:
    """The instance id a launcher process was started for (from its environment)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return "?"
    for item in environ:
        if item.startswith(b"JUPYTER_LOWCOST_INSTANCE_ID="):
            return item.split(b"=", 1)[1].decode()
    return "?"


@pytest.mark.timeout(600)
@pytest.mark.lowcost(
    LocalBackend={"slots": 3, "preemption_notice": 1.0, "low_cost_when_full": "fail"}
)
async def test_churn_more_kernels_than_slots_moves_and_interruptions_at_once(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    """Three low-cost kernels in three slots, a regular kernel coming and going, moves and
    interruptions at random for a bounded time: afterwards no instance is stuck, every
    launcher process belongs to a live instance, and every kernel has its variables."""
    before = launcher_pids()
    kernels = []
    for n in range(3):
        body = await start_lowcost_kernel(api, "T4")
        kernels.append(body["kernel"]["id"])
        await execute(jp_serverapp, body["kernel"]["id"], f"mine = {n}\nbig = list(range(1000))\n")
    rng = random.Random(13)
    answers: list[int] = []
    regular: str | None = None
    end = time.monotonic() + 45
    while time.monotonic() < end:
        kernel_id = rng.choice(kernels)
        action = rng.choice(["interrupt", "interrupt", "move", "regular"])
        _, model = await api("GET", f"kernels/{kernel_id}")
        instance = model["instance"]
        if action == "interrupt" and instance and instance["state"] == "running":
            status, _ = await api(
                "POST",
                f"instances/{instance['id']}/interrupt",
                {"notice_seconds": rng.choice([0, 0.5, 1])},
            )
        elif action == "move":
            low_cost = not model["placement"]["low_cost"]
            status, _ = await api("PUT", f"kernels/{kernel_id}?wait=0", {"low_cost": low_cost})
        elif regular is None:
            status, body = await api(
                "POST", "kernels", {"instance_type": "A100-80G", "low_cost": False}
            )
            regular = body["kernel"]["id"] if status == 201 else None
        else:
            status, _ = await api(
                "DELETE",
                f"instances/{(await api('GET', f'kernels/{regular}'))[1]['instance']['id']}",
            )
            regular = None
        answers.append(status)
        assert status < 500 or status == 503, status
        await asyncio.sleep(rng.uniform(0, 0.7))
    if regular is not None:
        _, model = await api("GET", f"kernels/{regular}")
        await api("DELETE", f"instances/{model['instance']['id']}")

    async def settled() -> bool:
        _, instances = await api("GET", "instances")
        if any(i["state"] in ("pending", "notice") for i in instances):
            return False
        for kernel_id in kernels:
            _, model = await api("GET", f"kernels/{kernel_id}")
            if model["moving"] or model["instance"]["state"] != "running":
                return False
        return True

    await wait_until(settled, timeout=180)
    _, instances = await api("GET", "instances")
    live = [i for i in instances if i["state"] == "running"]
    assert len(live) == len(kernels) <= 3
    pids = {manager_of(jp_serverapp).record(i["id"]).backend_state["pid"] for i in live}
    assert all(process_alive(pid) for pid in pids)

    # Nothing left running that nobody knows (the message says whose a stray one is). A
    # launcher of an instance that has ended may still be exiting (its kernel writes its
    # last checkpoint first): it is a stray only if it is still there a while later.
    def strays() -> dict[int, str]:
        return {pid: instance_of(pid) for pid in launcher_pids() - before - pids}

    try:
        await wait_until(lambda: not strays(), timeout=30)
    except AssertionError:
        record = manager_of(jp_serverapp).record

        def whose(instance_id: str) -> Any:
            found = record(instance_id)
            return (found.state, found.reason) if found else "unknown to this server"

        raise AssertionError({p: (i, whose(i)) for p, i in strays().items()}) from None
    for n, kernel_id in enumerate(kernels):
        out = await execute(jp_serverapp, kernel_id, "print(mine, len(big))")
        assert out == f"{n} 1000\n", (kernel_id, out)
    assert answers.count(202) + answers.count(200) + answers.count(201) >= 10, answers
