"""The slurm backend against a real Slurm: jobs, preemption, the cap, cancel, partitions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import EventRecorder, execute, moved, start_lowcost_kernel, wait_until
from network_guard import guarded, network_attempts
from slurm_cluster import KILL_WAIT, SlurmCluster


def job_of(slurm: SlurmCluster, instance_id: str) -> dict[str, str]:
    """The queue's row of an instance's job (found by the job name the backend gives)."""
    rows = [j for j in slurm.jobs() if j["name"] == f"jupyter-lowcost-{instance_id}"]
    assert len(rows) == 1, slurm.jobs()
    return rows[0]


def preempt(slurm: SlurmCluster, seconds: int = 3) -> str:
    """Submit a job to the high-priority partition that needs every CPU; its id."""
    out = slurm.command(
        "sbatch", "--parsable", "--partition=ondemand", "--cpus-per-task=2",
        f"--output={slurm.root}/preemptor-%j.out", f"--wrap=sleep {seconds}",
    )  # fmt: skip
    return out.strip()


async def test_a_low_cost_kernel_runs_as_a_slurm_job(
    api: Any, jp_serverapp: Any, slurm: SlurmCluster, jp_data_dir: Path
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, instance = body["kernel"]["id"], body["instance"]
    assert instance["state"] == "running"
    job = job_of(slurm, instance["id"])
    assert (job["partition"], job["state"]) == ("lowcost", "RUNNING")
    # The lifetime cap (24 h by default) is the job's --time.
    assert job["time_limit"] == "1-00:00:00"
    out = await execute(
        jp_serverapp,
        kernel_id,
        "import os; print(os.environ['SLURM_JOB_ID'], os.environ['SLURM_JOB_PARTITION'], 6 * 7)",
    )
    assert out.split() == [job["id"], "lowcost", "42"]
    # The kernel's own secrets are not left in the job's environment.
    out = await execute(
        jp_serverapp, kernel_id, "import os; print(sorted(k for k in os.environ if 'SECRET' in k))"
    )
    assert out.strip() == "[]"
    # The job appends its output to a log only its owner reads, in a folder only it lists.
    log = jp_data_dir / "lowcost" / "logs" / f"{instance['id']}.log"
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    assert oct(log.parent.stat().st_mode & 0o777) == "0o700"
    assert log.stat().st_size > 0  # the job wrote into the file the server made


async def test_slurm_and_its_jobs_run_under_the_network_guard(
    api: Any, jp_serverapp: Any, slurm: SlurmCluster
) -> None:
    """Slurm's daemons (C programs started by tests/slurm_cluster.py) and a job's processes
    (slurmstepd, the launcher, the kernel) have the network guard loaded."""
    for daemon in ("munged", "slurmctld", "slurmd"):
        assert guarded(int((slurm.root / f"{daemon}.pid").read_text().split()[0])), daemon
    body = await start_lowcost_kernel(api, "T4")
    pid = int(await execute(jp_serverapp, body["kernel"]["id"], "print(__import__('os').getpid())"))
    chain = []  # the kernel, then its parents up to slurmstepd
    while pid > 1 and not (chain and chain[-1][1].startswith("slurmstepd")):
        chain.append((pid, Path(f"/proc/{pid}/comm").read_text().strip()))
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert chain[-1][1].startswith("slurmstepd"), chain
    assert [name for pid, name in chain if not guarded(pid)] == [], chain
    assert [a for pid, _ in chain for a in network_attempts(pid)] == []


async def test_the_catalog_is_what_the_cluster_offers(api: Any, slurm: SlurmCluster) -> None:
    status, types = await api("GET", "instance-types")
    assert status == 200
    # Configured for this cluster and with both partitions present; H100's is missing.
    assert [t["name"] for t in types] == ["T4", "A100-80G"]
    a100 = types[1]
    assert a100["vcpus"] == 1 and a100["memory_gb"] == pytest.approx(200 / 1024)
    status, model = await api("GET", "status")
    assert model["backend"] == "slurm"
    partitions = {p["name"]: p for p in model["capacity"]["partitions"]}
    assert set(partitions) == {"lowcost", "ondemand"}
    assert partitions["lowcost"]["state"] == "UP" and partitions["lowcost"]["default"]
    assert model["capacity"]["notice_seconds"] == KILL_WAIT


async def test_preemption_is_a_notice_then_an_interruption_then_a_relaunch(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder, slurm: SlurmCluster,
    tmp_path: Path,
) -> None:  # fmt: skip
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    first_job = job_of(slurm, first)["id"]
    marker = tmp_path / "notice.txt"
    await execute(
        jp_serverapp,
        kernel_id,
        "import pathlib\n"
        "from jupyter_lowcost import on_notice\n"
        "kept = {'epoch': 7}\n"
        f"def save(n): pathlib.Path({str(marker)!r}).write_text(f'{{n.seconds_left:.1f}}|{{n.reason}}')\n"
        "on_notice(save)\n",
    )
    preemptor = preempt(slurm)

    noticed = await instance_events.wait_for(instance_id=first, state="notice", timeout=20)
    assert f"Slurm job {first_job} was preempted" in noticed["reason"]
    assert f"SIGKILL follows in {KILL_WAIT} s" in noticed["reason"]
    # The kernel's on_notice callback ran during the notice (KillWait), with time left.
    await wait_until(marker.exists, timeout=KILL_WAIT)
    left, reason = marker.read_text().split("|", 1)
    assert 0 < float(left) <= KILL_WAIT and "SIGTERM" in reason
    interrupted = await instance_events.wait_for(instance_id=first, state="interrupted")
    assert interrupted["recovery"] == "relaunch"
    # The relaunched job waits for the preemptor's CPUs, saying so, then runs.
    queued = await instance_events.wait_for(
        kernel_id=kernel_id,
        state="pending",
        where=lambda e: e["instance_id"] != first and "waiting for free resources" in e["reason"],
    )
    assert "is queued on partition lowcost" in queued["reason"]
    assert slurm.job(preemptor)["JobState"] in ("RUNNING", "COMPLETED", "COMPLETING")
    running = await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first, timeout=60
    )
    await wait_until(lambda: moved(api, kernel_id))
    second_job = job_of(slurm, running["instance_id"])
    assert second_job["partition"] == "lowcost" and second_job["id"] != first_job
    # The checkpoint taken at the notice came back on the new job.
    out = await execute(
        jp_serverapp, kernel_id, "import os; print(kept, os.environ['SLURM_JOB_ID'])"
    )
    assert out.split(maxsplit=2)[:2] == ["{'epoch':", "7}"] and out.split()[-1] == second_job["id"]
    assert slurm.job(first_job)["JobState"] == "PREEMPTED"


async def test_an_injected_interruption_signals_the_job_like_a_preemption(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder, slurm: SlurmCluster,
    tmp_path: Path,
) -> None:  # fmt: skip
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    marker = tmp_path / "signal.txt"
    await execute(
        jp_serverapp,
        kernel_id,
        "import pathlib, signal\n"
        "from jupyter_lowcost import on_notice\n"
        f"on_notice(lambda n: pathlib.Path({str(marker)!r}).write_text(f'{{n.seconds_left:.0f}}'))\n",
    )
    status, model = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 8})
    assert status == 202 and model["state"] == "notice"
    # The job got SIGTERM (the launcher turned it into the kernel's notice) and lives on
    # for the whole injected notice, longer than KillWait.
    await wait_until(marker.exists, timeout=5)
    noticed = instance_events.matching(instance_id=first, state="notice")
    assert [e["reason"] for e in noticed] == ["interruption injected through the REST API"]
    await instance_events.wait_for(instance_id=first, state="interrupted", timeout=20)
    assert int(marker.read_text()) > KILL_WAIT
    await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first
    )


@pytest.mark.lowcost(LowCostApp={"lifetime_cap": 60.0, "cap_notice": 5.0})
@pytest.mark.timeout(240)
async def test_the_lifetime_cap_is_the_jobs_time_limit(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder, slurm: SlurmCluster
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    job = job_of(slurm, first)
    assert job["time_limit"] == "1:00"  # --time=1: Slurm stops the job after the cap
    await execute(jp_serverapp, kernel_id, "progress = 'kept across the cap'")
    expired = await instance_events.wait_for(instance_id=first, state="expired", timeout=120)
    assert "1 minute" in expired["reason"] or "time limit" in expired["reason"]
    running = await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first
    )
    await wait_until(lambda: moved(api, kernel_id))
    assert job_of(slurm, running["instance_id"])["time_limit"] == "1:00"
    out = await execute(jp_serverapp, kernel_id, "print(progress)")
    assert out.strip() == "kept across the cap"
    assert job["id"] not in [j["id"] for j in slurm.jobs() if j["state"] == "RUNNING"]


async def test_delete_cancels_the_job_and_regular_kernels_run_on_the_regular_partition(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder, slurm: SlurmCluster
) -> None:
    body = await start_lowcost_kernel(api, "A100-80G", low_cost=False)
    kernel_id, instance = body["kernel"]["id"], body["instance"]
    job = job_of(slurm, instance["id"])
    assert (job["partition"], job["state"]) == ("ondemand", "RUNNING")
    assert job["time_limit"] == "1-00:00:00"  # the partition's, not a low-cost cap
    assert slurm.job(job["id"])["MinMemoryNode"] == "200M"

    status, _ = await api("DELETE", f"instances/{instance['id']}")
    assert status == 204
    ended = await instance_events.wait_for(instance_id=instance["id"], state="terminated")
    assert ended["reason"] == "terminated through the REST API"
    await wait_until(lambda: slurm.job(job["id"]).get("JobState") == "CANCELLED", timeout=10)
    assert kernel_id not in jp_serverapp.kernel_manager
    # An interruption of a regular instance is refused, and Slurm is never asked.
    status, body = await api("POST", "kernels", {"instance_type": "T4", "low_cost": False})
    status, refused = await api(
        "POST", f"instances/{body['instance']['id']}/interrupt", {"notice_seconds": 1}
    )
    assert status == 409


async def test_switching_moves_the_kernel_between_partitions(
    api: Any, jp_serverapp: Any, slurm: SlurmCluster
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    await execute(jp_serverapp, kernel_id, "answer = 42")
    status, _ = await api("PUT", f"kernels/{kernel_id}", {"low_cost": False})
    assert status == 200
    await wait_until(lambda: moved(api, kernel_id))
    status, model = await api("GET", f"kernels/{kernel_id}")
    second = model["instance"]["id"]
    assert job_of(slurm, second)["partition"] == "ondemand"
    out = await execute(
        jp_serverapp, kernel_id, "print(answer, __import__('os').environ['SLURM_JOB_PARTITION'])"
    )
    assert out.split() == ["42", "ondemand"]
    assert all(
        j["name"] != f"jupyter-lowcost-{first}" or j["state"] != "RUNNING" for j in slurm.jobs()
    )


def test_sbatch_gets_arguments_never_a_shell_string(slurm: SlurmCluster, tmp_path: Path) -> None:
    """The job script only execs its arguments: a kernelspec path with shell syntax in it
    reaches the job as one argument."""
    script = Path(__file__).parents[2] / "jupyter_lowcost" / "backends" / "slurm_job.sh"
    trap = tmp_path / "pwned"
    out = subprocess.run(
        ["/bin/sh", str(script), "echo", f"$(touch {trap}); `touch {trap}`"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == f"$(touch {trap}); `touch {trap}`"
    assert not trap.exists()


async def test_a_job_lost_with_its_node_is_interrupted_and_relaunched(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder, slurm: SlurmCluster
) -> None:
    """A cloud cluster's spot node reclaimed: Slurm marks the node down and the job
    NODE_FAIL; the kernel is relaunched, with its variables, when a node is back."""
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    job = job_of(slurm, first)["id"]
    await execute(jp_serverapp, kernel_id, "weights = [0.5, 0.25]")
    # The cell's checkpoint is on the disk (a reclaim with no notice at all just after a
    # cell resumes one checkpoint back: see the README), as %lowcost would say.
    await execute(
        jp_serverapp,
        kernel_id,
        "from jupyter_lowcost.kernel.checkpointing import installed\n"
        "assert installed().wait_for_write(30)",
    )
    # (The test node comes back by itself at once: ReturnToService=2.)
    slurm.command("scontrol", "update", "nodename=localhost", "state=down", "reason=reclaimed")
    interrupted = await instance_events.wait_for(instance_id=first, state="interrupted")
    assert f"Slurm job {job}" in interrupted["reason"]
    assert "its node failed" in interrupted["reason"]
    assert interrupted["recovery"] == "relaunch"
    await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first
    )
    await wait_until(lambda: moved(api, kernel_id))
    out = await execute(jp_serverapp, kernel_id, "print(weights)")
    assert out.strip() == "[0.5, 0.25]"


async def test_a_job_cancelled_outside_jupyter_is_reported_and_the_kernel_restarted(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder, slurm: SlurmCluster
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    job = job_of(slurm, first)["id"]
    slurm.command("scancel", job)
    noticed = await instance_events.wait_for(instance_id=first, state="notice")
    assert f"Slurm job {job} was cancelled outside Jupyter (scancel)" in noticed["reason"]
    await instance_events.wait_for(instance_id=first, state="interrupted", timeout=20)
    await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first
    )


async def test_lowcost_magic_in_a_job_moves_it_between_partitions(
    jp_fetch: Any, api: Any, jp_serverapp: Any, instance_events: EventRecorder,
    slurm: SlurmCluster,
) -> None:  # fmt: skip
    """A notebook's own kernel: ``%lowcost on`` puts it in a low-cost job; ``%lowcost`` in
    that job reaches the server's API; ``%lowcost off`` moves it to the regular partition."""
    response = await jp_fetch("api", "kernels", method="POST", body="{}")
    kernel_id = json.loads(response.body)["id"]
    await execute(jp_serverapp, kernel_id, "%lowcost on --type T4")
    running = await instance_events.wait_for(kernel_id=kernel_id, state="running")
    await wait_until(lambda: moved(api, kernel_id))
    assert job_of(slurm, running["instance_id"])["partition"] == "lowcost"
    out = await execute(jp_serverapp, kernel_id, "%lowcost")
    assert "runs on a low-cost T4 instance" in out
    await execute(jp_serverapp, kernel_id, "%lowcost off")
    regular = await instance_events.wait_for(kernel_id=kernel_id, state="running", tier="regular")
    await wait_until(lambda: moved(api, kernel_id))
    assert job_of(slurm, regular["instance_id"])["partition"] == "ondemand"
    out = await execute(
        jp_serverapp, kernel_id, "import os; print(os.environ['SLURM_JOB_PARTITION'])"
    )
    assert out.strip() == "ondemand"
