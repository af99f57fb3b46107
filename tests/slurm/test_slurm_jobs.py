"""A job on the Slurm backend, preempted for real: Slurm requeues nothing, the job's kernel
is relaunched as a new Slurm job once the preemptor is done, and the notebook resumes at
the cell that did not complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from job_notebooks import code_cells, outputs_text, ten_cells, until_running_cell, until_state
from slurm_cluster import SlurmCluster

from slurm.test_slurm_backend import job_of, preempt


async def test_a_preempted_job_resumes_at_the_cell_that_did_not_complete(
    api: Any, slurm: SlurmCluster, tmp_path: Path
) -> None:
    notebook, log, go = ten_cells(tmp_path, wait_in=5)
    status, job = await api(
        "POST", "jobs", {"notebook": notebook, "instance_type": "T4", "low_cost": True}
    )
    assert status == 201, job
    first = await until_running_cell(api, job["id"], 5, timeout=90)
    first_job = job_of(slurm, first)["id"]
    preempt(slurm, seconds=3)
    resuming = await until_state(api, job["id"], "resuming", timeout=60)
    assert resuming["interruptions"][0]["cell"] == 5
    reason = resuming["interruptions"][0]["reason"]  # (the notice's words, or the end's)
    assert f"Slurm job {first_job} " in reason and "preempted" in reason, reason
    go.touch()
    model = await until_state(api, job["id"], "succeeded", "failed", timeout=150)
    assert model["state"] == "succeeded", model
    assert log.read_text().split() == [str(n) for n in range(1, 11)]
    assert slurm.job(first_job)["JobState"] == "PREEMPTED"
    second = model["instance_id"]
    assert second != first
    output = (await api("GET", f"jobs/{job['id']}/output"))[1]
    code = code_cells(output)
    assert [outputs_text(c).splitlines()[-1] for c in code] == [f"cell {n}" for n in range(1, 11)]
    assert "secret 42001" in outputs_text(code[8])
    assert [c["metadata"]["lowcost"]["instance_id"] for c in code] == [first] * 4 + [second] * 6
