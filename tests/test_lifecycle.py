"""The instance lifecycle: switches, interruptions, the lifetime cap, slots and recovery."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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

from jupyter_lowcost.instance.launcher import WORKDIR_PREFIX, remove_stale_workdirs


async def test_switch_low_cost_regular_low_cost_keeps_the_kernel_id(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    body = await start_lowcost_kernel(api)
    kernel_id = body["kernel"]["id"]
    seen = [body["instance"]["id"]]

    for low_cost in (False, True):
        status, model = await api("PUT", f"kernels/{kernel_id}", {"low_cost": low_cost})
        assert status == 200, model
        assert model["kernel_id"] == kernel_id
        assert model["placement"]["low_cost"] is low_cost
        assert model["instance"]["state"] == "running"
        assert model["instance"]["low_cost"] is low_cost
        assert model["instance"]["id"] not in seen
        seen.append(model["instance"]["id"])
        # The same kernel id answers, on the new instance.
        assert (await execute(jp_serverapp, kernel_id, "print('here')")).strip() == "here"

    assert list(jp_serverapp.kernel_manager.list_kernel_ids()) == [kernel_id]
    status, history = await api("GET", f"instances?kernel_id={kernel_id}")
    assert [i["id"] for i in history] == seen
    assert [(i["tier"], i["state"]) for i in history] == [
        ("low-cost", "terminated"),
        ("regular", "terminated"),
        ("low-cost", "running"),
    ]
    assert history[0]["reason"] == "the kernel moved to a regular A100-80G instance"
    assert history[1]["reason"] == "the kernel moved to a low-cost A100-80G instance"
    assert history[1]["savings"] == 0 and history[1]["price_per_hour"] == 3.09
    assert all(i["ended"] for i in history[:2])
    # Each old instance's process is gone.
    status, model = await api("GET", f"kernels/{kernel_id}")
    assert [h["id"] for h in model["history"]] == seen
    # The events tell the same story, in order.
    states = instance_events.states(kernel_id)
    assert states.index((seen[0], "terminated")) < states.index((seen[1], "running"))
    assert states.index((seen[1], "terminated")) < states.index((seen[2], "running"))


async def test_switch_a_kernel_started_without_placement(
    api: Any, jp_fetch: Any, jp_serverapp: Any
) -> None:
    response = await jp_fetch("api", "kernels", method="POST", body="{}")
    import json

    kernel_id = json.loads(response.body)["id"]
    status, model = await api("GET", f"kernels/{kernel_id}")
    assert model["placement"] is None and model["instance"] is None
    status, model = await api(
        "PUT", f"kernels/{kernel_id}", {"low_cost": True, "instance_type": "T4"}
    )
    assert status == 200
    assert model["instance"]["tier"] == "low-cost" and model["instance"]["instance_type"] == "T4"
    pid = await execute(jp_serverapp, kernel_id, "import os; print(os.getpid())")
    assert int(pid) == manager_of(jp_serverapp).current_instance(kernel_id).backend_state["pid"]


async def test_interruption_notice_callback_then_relaunch(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder, tmp_path: Path
) -> None:
    body = await start_lowcost_kernel(api)
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    marker = tmp_path / "notice.txt"
    pid = await execute(
        jp_serverapp,
        kernel_id,
        "import os, pathlib, time\n"
        "print(os.getpid())\n"
        "from jupyter_lowcost import notice, on_notice\n"
        f"def save(n): pathlib.Path({str(marker)!r}).write_text(f'{{bool(notice)}}|{{n.seconds_left:.1f}}|{{n.reason}}')\n"
        "on_notice(save)\n",
    )
    # The launcher's connection file (the kernel's session key) is in a directory of its own.
    (workdir,) = Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}{pid.strip()}-*")
    assert (workdir / "kernel.json").exists()
    sent = time.time()
    status, model = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 3})
    assert status == 202 and model["state"] == "notice"

    noticed = await instance_events.wait_for(instance_id=first, state="notice")
    assert noticed["reason"] == "interruption injected through the REST API"
    deadline = noticed["deadline"]
    assert deadline is not None
    interrupted = await instance_events.wait_for(instance_id=first, state="interrupted")
    assert interrupted["recovery"] == "relaunch"
    # The user's callback ran in the kernel, during the notice, with the flag set.
    flag, left, reason = marker.read_text().split("|")
    assert flag == "True" and 0 < float(left) <= 3
    assert reason == "interruption injected through the REST API"
    running = await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first
    )
    states = instance_events.states(kernel_id)
    assert states.index((first, "notice")) < states.index((first, "interrupted"))
    assert states.index((first, "interrupted")) < states.index((running["instance_id"], "pending"))
    assert running["tier"] == "low-cost"
    # The relaunched kernel answers under the same id, in a new process.
    out = await execute(jp_serverapp, kernel_id, "import os; print(os.getpid())")
    assert out.strip().isdigit() and out.strip() != pid.strip()
    # The lost instance's launcher was killed, with no chance to clean up: the next
    # launcher removed what it left.
    assert not process_alive(int(pid)) and not workdir.exists()
    status, old = await api("GET", f"instances/{first}")
    assert old["state"] == "interrupted" and old["notice_deadline"] == deadline
    assert time.time() - sent >= 3


async def interrupt_at_once(
    api: Any, instance_events: EventRecorder
) -> tuple[str, str, dict[str, Any]]:
    """A low-cost T4 kernel interrupted without notice: its id, its instance, the event."""
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 0})
    interrupted = await instance_events.wait_for(instance_id=first, state="interrupted")
    return kernel_id, first, interrupted


@pytest.mark.lowcost(LowCostApp={"recovery_policy": "fallback"})
async def test_fallback_policy_moves_to_a_regular_instance(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    kernel_id, first, interrupted = await interrupt_at_once(api, instance_events)
    assert interrupted["recovery"] == "fallback"
    running = await instance_events.wait_for(kernel_id=kernel_id, state="running", tier="regular")
    assert running["instance_id"] != first
    assert (
        "recovery (fallback)"
        in instance_events.matching(instance_id=running["instance_id"], state="pending")[0][
            "reason"
        ]
    )
    status, model = await api("GET", f"kernels/{kernel_id}")
    assert model["placement"] == {"instance_type": "T4", "low_cost": False, "tier": "regular"}
    assert (await execute(jp_serverapp, kernel_id, "print(1)")).strip() == "1"


@pytest.mark.lowcost(LowCostApp={"recovery_policy": "none"})
async def test_none_policy_stops_the_kernel(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    kernel_id, _, interrupted = await interrupt_at_once(api, instance_events)
    assert interrupted["recovery"] == "none"
    await wait_until(lambda: kernel_id not in jp_serverapp.kernel_manager)
    assert [s for _, s in instance_events.states(kernel_id)].count("running") == 1


@pytest.mark.lowcost(LowCostApp={"lifetime_cap": 4.0, "cap_notice": 2.0})
async def test_lifetime_cap_gives_notice_then_expires_then_relaunches(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    body = await start_lowcost_kernel(api)
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    assert body["instance"]["seconds_left"] <= 4
    noticed = await instance_events.wait_for(instance_id=first, state="notice")
    assert "always stop after 4 seconds" in noticed["reason"]
    expired = await instance_events.wait_for(instance_id=first, state="expired")
    assert expired["reason"] == noticed["reason"] and expired["recovery"] == "relaunch"
    second = await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first
    )
    assert second["tier"] == "low-cost"
    states = instance_events.states(kernel_id)
    assert states.index((first, "notice")) < states.index((first, "expired"))
    assert states.index((first, "expired")) < states.index((second["instance_id"], "pending"))
    status, record = await api("GET", f"instances/{first}")
    assert record["state"] == "expired" and record["cost"] > 0 and record["savings"] > 0


@pytest.mark.lowcost(LocalBackend={"slots": 1, "preemption_notice": 1.0})
async def test_with_one_slot_a_regular_request_preempts_the_low_cost_instance(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    low = await start_lowcost_kernel(api, "T4")
    low_kernel, low_instance = low["kernel"]["id"], low["instance"]["id"]
    pid = manager_of(jp_serverapp).current_instance(low_kernel).backend_state["pid"]

    regular = await start_lowcost_kernel(api, "A100-80G", low_cost=False)
    assert regular["instance"]["state"] == "running" and regular["instance"]["tier"] == "regular"
    progress = [
        e["reason"] for e in instance_events.matching(instance_id=regular["instance"]["id"])
    ]
    assert progress[:4] == [
        "the kernel asked for a regular A100-80G instance",
        f"waiting for the slot of low-cost instance {low_instance}, preempted with 1 s of notice",
        "starting the kernel on the instance",
        "the kernel runs on a regular A100-80G instance",
    ]
    noticed = instance_events.matching(instance_id=low_instance, state="notice")[0]
    assert noticed["reason"] == "preempted: a regular A100-80G instance needs its slot"
    assert instance_events.matching(instance_id=low_instance, state="interrupted")
    assert not process_alive(pid)
    status, server = await api("GET", "status")
    assert server["capacity"] == {"slots": 1, "used": 1, "free": 0, "gpus": []}


@pytest.mark.lowcost(LocalBackend={"slots": 1, "preemption_notice": 1.0})
async def test_a_preempted_kernel_with_no_slot_left_waits_and_resumes_with_its_variables(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    """Default settings, one slot: the regular kernel takes it; the low-cost kernel's
    relaunch finds none. It was shut down and its variables lost; now it waits."""
    low = await start_lowcost_kernel(api, "T4")
    low_kernel, low_instance = low["kernel"]["id"], low["instance"]["id"]
    await execute(jp_serverapp, low_kernel, "weights = [0.5, 0.25]\nstep = 41\nstep += 1\n")
    regular = await start_lowcost_kernel(api, "A100-80G", low_cost=False)
    await instance_events.wait_for(instance_id=low_instance, state="interrupted")
    waiting = await instance_events.wait_for(
        kernel_id=low_kernel,
        state="pending",
        where=lambda e: e["reason"].startswith("waiting for a slot to resume the kernel"),
    )
    assert "it resumes from its checkpoint when one frees" in waiting["reason"]
    assert low_kernel in jp_serverapp.kernel_manager
    assert not instance_events.matching(kernel_id=low_kernel, state="failed")
    status, model = await api("GET", f"kernels/{low_kernel}")
    assert status == 200 and model["moving"] and model["instance"]["state"] == "pending"
    status, answer = await api("PUT", f"kernels/{low_kernel}", {"low_cost": False})
    assert status == 409 and "resuming after the interrupted instance" in answer["message"]
    # The regular kernel goes: the slot frees, and the low-cost kernel resumes in it.
    status, _ = await api("DELETE", f"instances/{regular['instance']['id']}")
    assert status == 204
    await instance_events.wait_for(instance_id=waiting["instance_id"], state="running")
    await wait_until(lambda: moved(api, low_kernel))
    assert await execute(jp_serverapp, low_kernel, "print(weights, step)") == "[0.5, 0.25] 42\n"


@pytest.mark.lowcost(LocalBackend={"slots": 1, "preemption_notice": 1.0})
async def test_a_kernel_waiting_for_a_slot_can_be_shut_down(
    api: Any, jp_fetch: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    low = await start_lowcost_kernel(api, "T4")
    low_kernel = low["kernel"]["id"]
    await start_lowcost_kernel(api, "A100-80G", low_cost=False)
    waiting = await instance_events.wait_for(
        kernel_id=low_kernel,
        state="pending",
        where=lambda e: e["reason"].startswith("waiting for a slot to resume the kernel"),
    )
    await jp_fetch("api", "kernels", low_kernel, method="DELETE")
    await wait_until(lambda: low_kernel not in jp_serverapp.kernel_manager)
    await instance_events.wait_for(instance_id=waiting["instance_id"], state="terminated")
    status, server = await api("GET", "status")
    assert status == 200 and server["live_instances"] == 1


@pytest.mark.lowcost(
    LocalBackend={"random_interruption_rate": 36000.0, "random_interruption_notice": 0.5}
)
async def test_random_interruptions_for_demos(api: Any, instance_events: EventRecorder) -> None:
    body = await start_lowcost_kernel(api, "T4")
    first = body["instance"]["id"]
    noticed = await instance_events.wait_for(instance_id=first, state="notice")
    assert noticed["reason"].startswith("a random interruption, as when a provider")
    assert "demo setting LocalBackend.random_interruption_rate" in noticed["reason"]
    await instance_events.wait_for(instance_id=first, state="interrupted")


@pytest.mark.lowcost(
    LocalBackend={"random_interruption_rate": 36000.0, "random_interruption_notice": 0.2}
)
async def test_random_interruptions_spare_regular_instances(
    api: Any, instance_events: EventRecorder
) -> None:
    regular = await start_lowcost_kernel(api, "T4", low_cost=False)
    low = await start_lowcost_kernel(api, "T4")
    # Both instances run under the same rate; the low-cost kernel is interrupted again and
    # again (and relaunched each time), the regular one never.
    low_kernel = low["kernel"]["id"]
    await instance_events.wait_for(
        where=lambda e: len(instance_events.matching(kernel_id=low_kernel, state="notice")) >= 3
    )
    assert {state for _, state in instance_events.states(regular["kernel"]["id"])} == {
        "pending",
        "running",
    }


@pytest.mark.lowcost(LocalBackend={"slots": 1, "low_cost_when_full": "wait"})
async def test_a_low_cost_request_can_wait_for_a_slot(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    import asyncio

    first = await start_lowcost_kernel(api, "T4")
    waiting = asyncio.ensure_future(api("POST", "kernels", {"instance_type": "P100"}))
    queued = await instance_events.wait_for(
        state="pending", instance_type="P100", reason="waiting for a free slot: all 1 are in use"
    )
    assert not waiting.done()
    status, _ = await api("DELETE", f"instances/{first['instance']['id']}")
    assert status == 204
    status, body = await waiting
    assert status == 201 and body["instance"]["id"] == queued["instance_id"]
    assert body["instance"]["state"] == "running"


@pytest.mark.lowcost(LocalBackend={"gpus": -1})
async def test_one_slot_per_gpu_each_instance_sees_its_own(
    api: Any, jp_serverapp: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This machine has no GPU: an nvidia-smi that lists two stands in for the driver's.
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")

    seen = []
    for _ in range(2):
        body = await start_lowcost_kernel(api, "T4")
        out = await execute(
            jp_serverapp,
            body["kernel"]["id"],
            "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])",
        )
        seen.append(out.strip())
    assert sorted(seen) == ["0", "1"]
    status, server = await api("GET", "status")
    assert server["capacity"] == {"slots": 2, "used": 2, "free": 0, "gpus": ["0", "1"]}
    status, answer = await api("POST", "kernels", {"instance_type": "T4"})
    assert status == 503 and "all 2 slot(s)" in answer["message"]


async def test_a_kernel_that_dies_is_restarted_on_a_new_instance(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    client = jp_serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        client.execute("import os; os._exit(7)")
        failed = await instance_events.wait_for(instance_id=first, state="failed")
    finally:
        client.stop_channels()
    assert failed["reason"] == "the kernel died: the process exited (7)"
    # Jupyter's restarter brings the kernel back, on a new instance of the same placement.
    running = await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first
    )
    assert running["tier"] == "low-cost" and running["instance_type"] == "T4"
    await wait_until(lambda: moved(api, kernel_id))
    assert (await execute(jp_serverapp, kernel_id, "print('back')")).strip() == "back"


@pytest.mark.lowcost(LowCostApp={"recovery_policy": "fallback", "fallback_after": 2})
async def test_fallback_tries_low_cost_first_when_there_is_capacity(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    kernel_id, first, _ = await interrupt_at_once(api, instance_events)
    running = await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first
    )
    assert running["tier"] == "low-cost"
    pending = instance_events.matching(instance_id=running["instance_id"], state="pending")
    assert "(attempt 1)" in pending[0]["reason"]


@pytest.mark.lowcost(
    LowCostApp={"recovery_policy": "fallback", "fallback_after": 2},
    LocalBackend={"slots": 2, "low_cost_when_full": "fail", "preemption_notice": 1.0},
)
async def test_fallback_goes_regular_when_there_is_no_low_cost_capacity(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    await start_lowcost_kernel(api, "T4")
    second = await start_lowcost_kernel(api, "T4")
    kernel_id, preempted = second["kernel"]["id"], second["instance"]["id"]
    # A regular kernel takes the newest low-cost instance's slot: no low-cost slot is left.
    await start_lowcost_kernel(api, "T4", low_cost=False)
    await instance_events.wait_for(instance_id=preempted, state="interrupted", timeout=30)
    running = await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != preempted
    )
    assert running["tier"] == "regular"
    pending = instance_events.matching(instance_id=running["instance_id"], state="pending")
    assert "no low-cost capacity" in pending[0]["reason"]


def test_a_launcher_removes_only_the_directories_of_launchers_that_are_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    names = {
        "live": f"{WORKDIR_PREFIX}{os.getpid()}-abc",  # a launcher still running
        "gone": f"{WORKDIR_PREFIX}{gone.pid}-def",
        "odd": f"{WORKDIR_PREFIX}notapid-ghi",
        "other": "jupyter-lowcost-other",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "kernel.json").write_text("{}")
    remove_stale_workdirs()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[k] for k in ("live", "odd", "other")
    )
