"""Kernel side: ``%lowcost`` in real kernels, kernels without placement, the magic outside a server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import zipfile
from typing import Any

import pytest
from conftest import EventRecorder, execute, moved, start_lowcost_kernel, wait_until


async def start_plain_kernel(jp_fetch: Any) -> str:
    response = await jp_fetch("api", "kernels", method="POST", body="{}")
    return json.loads(response.body)["id"]


async def magic_raised(serverapp: Any, kernel_id: str, line: str) -> str:
    """Run ``%lowcost <line>`` in the kernel; what it raised, as "<type> <message>"."""
    return await execute(
        serverapp,
        kernel_id,
        f"try:\n    get_ipython().run_line_magic('lowcost', {line!r})\n"
        "except Exception as e:\n    print(type(e).__name__, e)",
    )


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
    # How its checkpoints find what changed (Linux 6.7+ watches writes).
    assert "copy only the memory written since the last checkpoint" in out


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
    out = await magic_raised(jp_serverapp, kernel_id, "sideways")
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


def run_save_on_notice(target: Any, setup: str, objects: str) -> str:
    """In a new Python process: ``setup``, ``save_on_notice(target, <objects>)``, a notice
    delivered as the launcher delivers it; prints whether PyTorch was imported after the
    save, then what :func:`load_saved` reads back."""
    script = (
        "import os, sys, time\n"
        "from jupyter_lowcost import interruption, load_saved, save_on_notice\n"
        "interruption.install_signal_handler()\n"
        f"{setup}\n"
        f"save_on_notice({str(target)!r}, {objects})\n"
        "interruption.deliver(time.time() + 2, 'test')\n"
        "for _ in range(500):\n"
        "    if os.path.exists(sys.argv[1]): break\n"
        "    time.sleep(0.01)\n"
        "print('torch' in sys.modules, load_saved(sys.argv[1]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_save_on_notice_never_imports_pytorch_at_the_notice(tmp_path: Any) -> None:
    """Importing PyTorch takes seconds (more than a short notice leaves): the notice saves
    with pickle unless the kernel has imported PyTorch itself, and then with torch.save."""
    import torch  # installed with the test extras: the helper must still not import it

    plain = tmp_path / "plain.ckpt"
    out = run_save_on_notice(plain, "model = {'w': [0.5]}", "model=model, step=7")
    assert out == "False {'model': {'w': [0.5]}, 'step': 7}"
    assert not zipfile.is_zipfile(plain)
    tensors = tmp_path / "tensors.pt"
    out = run_save_on_notice(tensors, "import torch", "w=torch.ones(2), step=7")
    assert out == "True {'w': tensor([1., 1.]), 'step': 7}"
    assert zipfile.is_zipfile(tensors)  # torch.save's format
    assert torch.load(tensors, weights_only=False)["step"] == 7


async def test_lowcost_interrupt_simulates_a_reclaim_and_the_kernel_resumes(
    jp_fetch: Any, jp_serverapp: Any, api: Any, instance_events: EventRecorder
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    await execute(
        jp_serverapp,
        kernel_id,
        "from jupyter_lowcost import notice, on_notice\n"
        "heard = []\n"
        "on_notice(lambda n: heard.append(round(n.seconds_left)))\n"
        "weights = [0.5, 0.25]",
    )
    out = await execute(jp_serverapp, kernel_id, "%lowcost interrupt --notice 3 --in 1")
    assert f"Simulated interruption of instance {first}, announced in 1 s with 3 s notice" in out
    # Announced later, from a thread of the kernel: the flag is still down right after.
    assert (await execute(jp_serverapp, kernel_id, "print(bool(notice))")).strip() == "False"
    noticed = await instance_events.wait_for(instance_id=first, state="notice")
    assert noticed["reason"] == "interruption injected through the REST API"
    assert (await execute(jp_serverapp, kernel_id, "print(bool(notice), heard)")).strip() in (
        "True [3]",
        "True [2]",
    )
    await instance_events.wait_for(instance_id=first, state="interrupted")
    second = await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first
    )
    assert second["tier"] == "low-cost"
    await wait_until(lambda: moved(api, kernel_id))
    assert (await execute(jp_serverapp, kernel_id, "print(weights)")).strip() == "[0.5, 0.25]"


async def test_lowcost_interrupt_refuses_what_it_cannot_do(
    jp_fetch: Any, jp_serverapp: Any, api: Any
) -> None:
    plain = await start_plain_kernel(jp_fetch)
    out = await execute(jp_serverapp, plain, "%lowcost interrupt")
    assert "not on a low-cost instance; only those are interrupted" in out
    body = await start_lowcost_kernel(api, "T4")
    kernel_id = body["kernel"]["id"]
    for line, message in [
        ("interrupt --notice soon", "--notice needs a number of seconds, not 'soon'"),
        ("interrupt --later 3", "unknown option '--later'"),
        ("interrupt --in", "--in needs a number of seconds"),
        ("interrupt --notice=-1", "--notice must be 0 or more seconds"),
        ("interrupt --notice nan", "--notice needs a finite number of seconds, not 'nan'"),
        ("interrupt --notice inf", "--notice needs a finite number of seconds, not 'inf'"),
        ("interrupt --notice=-inf", "--notice needs a finite number of seconds, not '-inf'"),
        ("interrupt --in nan", "--in needs a finite number of seconds, not 'nan'"),
        ("interrupt --in inf", "--in needs a finite number of seconds, not 'inf'"),
        ("interrupt --in 1e300", "--in must be at most 604800 seconds, not '1e300'"),
        ("restore 'abc", "%lowcost: no closing quotation in \"restore 'abc\""),
        ("restore " + "7" * 10_000, "is not a checkpoint ID or KERNEL[/ID]"),
        ("restore ../../etc", "'../../etc' is not a checkpoint ID or KERNEL[/ID]"),
    ]:
        out = await magic_raised(jp_serverapp, kernel_id, line)
        # One line that names the problem, and nothing else happened.
        assert out.startswith("UsageError") and message in out, out
        assert out.count("\n") == 1 and len(out) < 300, out
    # The server's own limit comes back in its words, and alone.
    out = await execute(jp_serverapp, kernel_id, "%lowcost interrupt --notice 100000")
    assert "notice_seconds must be between 0 and" in out
    assert "Simulated interruption" not in out, out
    _, instance = await api("GET", f"instances/{body['instance']['id']}")
    assert instance["state"] == "running"


@pytest.mark.lowcost(LowCostApp={"demo": True})
async def test_a_demo_server_says_so_and_interrupts_at_random_with_a_short_cap(
    jp_fetch: Any, jp_serverapp: Any, api: Any
) -> None:
    _, server = await api("GET", "status")
    assert server["demo"] == (
        "Demo server (LowCostApp.demo): its low-cost instances stop after 10 minutes "
        "(not 24 hours) and are interrupted at random, about every 5 minutes on average, "
        "with 30 s notice."
    )
    assert server["lifetime_cap_seconds"] == 600
    body = await start_lowcost_kernel(api, "T4")
    instance = body["instance"]
    assert 590 <= instance["seconds_left"] <= 600
    out = await execute(jp_serverapp, body["kernel"]["id"], "%lowcost")
    assert "Time left before the lifetime cap: 9 min" in out
    assert "Demo server (LowCostApp.demo)" in out


@pytest.mark.lowcost(
    LowCostApp={"demo": True, "lifetime_cap": 3600.0}, LocalBackend={"random_interruption_rate": 0}
)
async def test_demo_settings_give_way_to_explicit_ones(api: Any) -> None:
    _, server = await api("GET", "status")
    assert server["demo"] == (
        "Demo server (LowCostApp.demo): its low-cost instances stop after 1 hour (not 24 hours)."
    )
    assert server["lifetime_cap_seconds"] == 3600


async def test_a_real_server_is_not_a_demo(api: Any) -> None:
    _, server = await api("GET", "status")
    assert server["demo"] is None and server["lifetime_cap_seconds"] == 24 * 3600


async def test_a_move_asked_from_a_cell_waits_for_that_cell_to_end(
    jp_fetch: Any, jp_serverapp: Any, api: Any
) -> None:
    kernel_id = await start_plain_kernel(jp_fetch)
    kernel = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    code = (
        "import time\n"
        "time.sleep(1)\n"
        "get_ipython().run_line_magic('lowcost', 'on --type T4')\n"
        "time.sleep(1)\n"
        "print('the cell ran to its end')"
    )
    running = asyncio.ensure_future(execute(jp_serverapp, kernel_id, code, timeout=30))
    await wait_until(lambda: kernel.execution_state == "busy")
    # As when the kernel's "busy" reaches the server after the cell's own request (ipykernel
    # publishes it from a thread): the server's state still says idle.
    kernel.execution_state = "idle"
    out = await running
    assert "Moving this kernel to a low-cost T4 instance" in out
    assert "the cell ran to its end" in out
    model = await after_move(api, kernel_id)
    assert model["placement"]["low_cost"] is True


def test_a_resume_message_names_the_cell_it_is_back_at_and_the_cells_lost() -> None:
    from jupyter_lowcost.words import resume_point

    assert resume_point(12, None, 14) == ("at cell [12]", "the changes of cells [13]–[14] are lost")
    assert resume_point(12, None, 13) == ("at cell [12]", "the changes of cell [13] are lost")
    assert resume_point(12, None, 12) == ("at cell [12]", "")
    # A notice's checkpoint during cell [13], and cell [14] started before the end.
    assert resume_point(12, 13, 14) == (
        "in cell [13]",
        "the changes of cell [13] after the checkpoint and those of cell [14] are lost",
    )
    # What the kernel does not know, it does not claim.
    assert resume_point(12, None, None) == ("at cell [12]", "")
    assert resume_point(None, None, 14) == ("", "")
