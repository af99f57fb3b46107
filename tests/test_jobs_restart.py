"""A job goes on across a restart of the Jupyter server: killed hard (its kernel is
re-attached, still running) or stopped (its kernel is started again from the checkpoint
after the last completed cell). No completed cell runs twice.

The server is a real separate process (``jupyter server``) on a data directory kept
across its runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from job_notebooks import code_cells, outputs_text, ten_cells
from jupyter_process import LowCostServer

TOKEN = "jobs-restart-token"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LowCostServer]:
    server = LowCostServer(tmp_path, TOKEN)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def job_of(server: LowCostServer, job_id: str) -> dict[str, Any]:
    response = server.get(f"jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def poll(server: LowCostServer, job_id: str, done: Any, timeout: float = 120) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        try:
            model = job_of(server, job_id)
            if done(model):
                return model
        except requests.ConnectionError:
            pass
        assert time.monotonic() < end, f"job {job_id} did not get there:\n{server.log()[-3000:]}"
        time.sleep(0.1)


@pytest.mark.parametrize("how", ["kill -9", "stop"])
def test_a_job_goes_on_after_the_server_restarts(
    server: LowCostServer, tmp_path: Path, how: str
) -> None:
    notebook, log, go = ten_cells(tmp_path, wait_in=5)
    response = server.post("jobs", {"notebook": notebook, "name": "ten.ipynb"})
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    running = poll(server, job_id, lambda m: m["current_cell"] == 5 and m["state"] == "running")
    kernel_id, first = running["kernel_id"], running["instance_id"]
    if how == "kill -9":
        server.kill_hard()
    else:
        server.stop()
    server.start()
    go.touch()
    model = poll(server, job_id, lambda m: m["state"] in ("succeeded", "failed", "cancelled"))
    assert model["state"] == "succeeded", (model, server.log()[-3000:])
    assert log.read_text().split() == [str(n) for n in range(1, 11)]
    assert model["kernel_id"] == kernel_id
    output = server.get(f"jobs/{job_id}/output").json()
    code = code_cells(output)
    assert "secret 42001" in outputs_text(code[8])
    assert [c["execution_count"] for c in code] == list(range(1, 11))
    if how == "kill -9":
        # The same kernel, re-attached: cell 5 completed while no server listened (its
        # outputs are lost, and said so); the rest ran on the same instance.
        assert model["interruptions"] == [] and model["instance_id"] == first
        assert "outputs of this cell were lost" in outputs_text(code[4])
        assert [outputs_text(c).splitlines()[-1] for c in code[5:]] == [
            f"cell {n}" for n in range(6, 11)
        ]
    else:
        # Resumed from the checkpoint after cell 4 on a new instance: cell 5 ran again.
        assert model["instance_id"] != first
        assert [outputs_text(c).splitlines()[-1] for c in code] == [
            f"cell {n}" for n in range(1, 11)
        ]
    assert (
        "the Jupyter server started again; going on"
        in server.get(f"jobs/{job_id}/log").json()["text"]
    )
