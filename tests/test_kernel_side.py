"""Kernel side: ``%lowcost`` in real kernels, kernels without placement, the magic outside a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from conftest import EventRecorder, execute, moved, start_lowcost_kernel, wait_until


async def start_plain_kernel(jp_fetch: Any) -> str:
    response = await jp_fetch("api", "kernels", method="POST", body="{}")
    return json.loads(response.body)["id"]


async def after_move(api: Any, kernel_id: str) -> dict[str, Any]:
    """The kernel's model once the move under way is over."""
    await wait_until(lambda: moved(api, kernel_id))
    status, model = await api("GET", f"kernels/{kernel_id}")
    assert status == 200
    return model


async def test_a_kernel_without_placement_runs_locally_like_the_stock_provisioner(
    jp_fetch: Any, jp_serverapp: Any, api: Any
) -> None:
    kernel_id = await start_plain_kernel(jp_fetch)
    kernel = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    assert type(kernel.provisioner).__name__ == "LowCostProvisioner"
    # It is the provisioner's own child process, as with LocalProvisioner.
    out = await execute(jp_serverapp, kernel_id, "import os; print(os.getpid(), os.getppid())")
    pid, ppid = map(int, out.split())
    assert pid == kernel.provisioner.pid and ppid == os.getpid()
    status, instances = await api("GET", "instances")
    assert instances == []
    # Interrupt and restart work as usual.
    await jp_fetch("api", "kernels", kernel_id, "interrupt", method="POST", body="")
    await jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="")
    assert (await execute(jp_serverapp, kernel_id, "print('ok')")).strip() == "ok"


async def test_lowcost_magic_is_loaded_and_reports_status(
    jp_fetch: Any, jp_serverapp: Any, api: Any
) -> None:
    kernel_id = await start_plain_kernel(jp_fetch)
    out = await execute(jp_serverapp, kernel_id, "%lowcost")
    assert "runs on the Jupyter server's machine, not on a low-cost instance" in out
    out = await execute(jp_serverapp, kernel_id, "%lowcost types")
    assert "A100-80G" in out and "$3.09/h" in out and "$1.15/h" in out and "63%" in out

    body = await start_lowcost_kernel(api)
    out = await execute(jp_serverapp, body["kernel"]["id"], "%lowcost")
    assert "runs on a low-cost A100-80G instance (running" in out
    assert "Time left before the lifetime cap: 23 h 59 min" in out
    assert "saved $0.00 against the regular $3.09/h" in out


async def test_lowcost_on_and_off_move_the_kernel_they_run_in(
    jp_fetch: Any, jp_serverapp: Any, api: Any, instance_events: EventRecorder
) -> None:
    kernel_id = await start_plain_kernel(jp_fetch)
    out = await execute(jp_serverapp, kernel_id, "%lowcost on --type T4")
    assert "Moving this kernel to a low-cost T4 instance: $0.14/h instead of $0.35/h" in out
    assert "interrupted at any time" in out and "24 h" in out
    running = await instance_events.wait_for(kernel_id=kernel_id, state="running")
    assert running["tier"] == "low-cost" and running["instance_type"] == "T4"
    model = await after_move(api, kernel_id)
    assert model["placement"]["low_cost"] is True
    out = await execute(jp_serverapp, kernel_id, "%lowcost")
    assert "runs on a low-cost T4 instance" in out

    out = await execute(jp_serverapp, kernel_id, "%lowcost off")
    assert "Moving this kernel to a regular T4 instance" in out
    await instance_events.wait_for(kernel_id=kernel_id, state="running", tier="regular")
    model = await after_move(api, kernel_id)
    assert model["placement"] == {"instance_type": "T4", "low_cost": False, "tier": "regular"}
    out = await execute(jp_serverapp, kernel_id, "%lowcost off")
    assert "not on a low-cost instance; nothing to change" in out
    assert [i["state"] for i in model["history"]] == ["terminated", "running"]


async def test_lowcost_magic_refuses_bad_input_plainly(
    jp_fetch: Any, jp_serverapp: Any, api: Any
) -> None:
    kernel_id = await start_plain_kernel(jp_fetch)
    out = await execute(jp_serverapp, kernel_id, "%lowcost on --type Z999")
    assert "unknown instance type 'Z999'; the catalog has: T4, P100" in out
    out = await execute(
        jp_serverapp,
        kernel_id,
        "try:\n    get_ipython().run_line_magic('lowcost', 'sideways')\nexcept Exception as e:\n    print(type(e).__name__, e)",
    )
    assert "UsageError usage: %lowcost" in out
    status, instances = await api("GET", "instances")
    assert instances == []


def test_lowcost_magic_outside_a_server_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_LOWCOST")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "IPython",
            "--quick",
            "-c",
            "%load_ext jupyter_lowcost\n%lowcost on",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "not started by a Jupyter server with jupyter-lowcost" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def test_notice_flag_and_callbacks_in_a_python_process(tmp_path: Any) -> None:
    script = (
        "import time\n"
        "from jupyter_lowcost import interruption, notice, on_notice\n"
        "interruption.install_signal_handler()\n"
        "seen = []\n"
        "on_notice(lambda n: seen.append(('first', bool(notice))))\n"
        "on_notice(lambda n: 1 / 0)\n"
        "on_notice(lambda n: seen.append(('third', round(n.seconds_left))))\n"
        "assert not notice\n"
        "interruption.deliver(time.time() + 30, 'test')\n"
        "for _ in range(100):\n"
        "    if len(seen) == 2: break\n"
        "    time.sleep(0.01)\n"
        "on_notice(lambda n: seen.append(('late', n.reason)))\n"
        "print(seen, notice.wait(0))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[('first', True), ('third', 30), ('late', 'test')] True"
    assert "ZeroDivisionError" in result.stderr  # a failing callback is reported, not fatal
