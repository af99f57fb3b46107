"""A notebook job on the kubernetes backend, its pod evicted during cell 5: the job's kernel
comes back on a new pod and the notebook resumes at the cell that did not complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from job_notebooks import code_cells, outputs_text, ten_cells, until_running_cell, until_state
from kubernetes_cluster import KubernetesCluster


async def test_an_evicted_job_resumes_at_the_cell_that_did_not_complete(
    api: Any, kubernetes_cluster: KubernetesCluster, tmp_path: Path
) -> None:
    notebook, log, go = ten_cells(tmp_path, wait_in=5)
    status, job = await api(
        "POST", "jobs", {"notebook": notebook, "instance_type": "T4", "low_cost": True}
    )
    assert status == 201, job
    first = await until_running_cell(api, job["id"], 5, timeout=90)
    status, answer = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 5})
    assert status in (200, 202), answer
    resuming = await until_state(api, job["id"], "resuming", timeout=60)
    assert resuming["interruptions"][0]["cell"] == 5
    go.touch()
    model = await until_state(api, job["id"], "succeeded", "failed", timeout=150)
    assert model["state"] == "succeeded", model
    # Cells 1-4 ran once; cell 5 again on the new pod, then the rest.
    assert log.read_text().split() == [str(n) for n in range(1, 11)]
    second = model["instance_id"]
    assert second != first
    output = (await api("GET", f"jobs/{job['id']}/output"))[1]
    code = code_cells(output)
    assert [outputs_text(c).splitlines()[-1] for c in code] == [f"cell {n}" for n in range(1, 11)]
    assert [c["metadata"]["lowcost"]["instance_id"] for c in code] == [first] * 4 + [second] * 6
