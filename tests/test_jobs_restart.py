"""A job goes on across a restart of the Jupyter server: killed hard (its kernel is
re-attached, still running) or stopped (its kernel is started again from the checkpoint
after the last completed cell). No completed cell runs twice.

The server is a real separate process (``jupyter server``) on a data directory kept
across its runs.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from job_notebooks import code_cells, outputs_text, ten_cells
from jupyter_process import LowCostServer

from jupyter_lowcost.storage.jobs import JobRecord, JobStore
from jupyter_lowcost.storage.records import server_name

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
    running = poll(
        server,
        job_id,
        lambda m: m["current_cell"] == 5 and m["cells_done"] == 4 and m["state"] == "running",
    )
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


def test_a_second_server_on_the_same_data_leaves_a_running_servers_jobs_alone(
    server: LowCostServer, tmp_path: Path
) -> None:
    """Item 3 of issue 28: a job belongs to its server. A second server started on the same
    data directory neither lists nor runs it while its server runs; once that server is
    gone, the next server to start takes it over (the second one, started before, does
    not), and every cell still runs once."""
    notebook, log, go = ten_cells(tmp_path, wait_in=3)
    response = server.post("jobs", {"notebook": notebook, "name": "ten.ipynb"})
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    running = poll(
        server,
        job_id,
        lambda m: m["current_cell"] == 3 and m["cells_done"] == 2 and m["state"] == "running",
    )

    second = LowCostServer(tmp_path, TOKEN)
    second.log_path = tmp_path / "second.log"
    second.start()
    try:
        assert second.get("jobs").json() == []
        assert second.get(f"jobs/{job_id}").status_code == 404
        kernels = requests.get(f"{second.base}api/kernels", headers=second.headers, timeout=30)
        assert kernels.json() == [], kernels.text

        # The job's server is killed: the second server, already running, leaves the job
        # alone; the next server to start takes it over (its kernel still runs).
        server.kill_hard()
        third = LowCostServer(tmp_path, TOKEN)
        third.log_path = tmp_path / "third.log"
        third.start()
        try:
            go.touch()
            model = poll(third, job_id, lambda m: m["state"] in ("succeeded", "failed"))
            assert model["state"] == "succeeded", (model, third.log()[-3000:])
            assert model["kernel_id"] == running["kernel_id"]
            assert log.read_text().split() == [str(n) for n in range(1, 11)]
            assert second.get("jobs").json() == []
        finally:
            third.stop()
    finally:
        second.stop()


def test_of_servers_starting_at_once_one_takes_over_each_job_of_a_gone_server(
    tmp_path: Path,
) -> None:
    """The takeover of a job is atomic: of two servers reading the jobs at the same moment,
    each job of a server that is gone (or of a server from before jobs had owners) goes
    to exactly one of them."""
    folder = tmp_path / "jobs"
    gone = JobStore(folder, owner="server-999999999-1")
    ids = [f"{n:012x}" for n in range(40)]
    for job_id in ids:
        job = JobRecord(job_id, "nb", "python3", "T4", True, {}, None, None, time.time())
        gone.create(job, {"cells": []})
    for job_id in ids[::4]:  # (from before owners)
        shutil.rmtree(folder / job_id / "owner")
    other = subprocess.Popen(["sleep", "120"])  # a running process: the other server
    try:
        stores = [JobStore(folder), JobStore(folder, owner=server_name(other.pid))]
        barrier = threading.Barrier(len(stores))

        def load(store: JobStore) -> list[str]:
            barrier.wait()
            return [job.id for job in store.load_all()]

        with ThreadPoolExecutor(len(stores)) as pool:
            first, second = pool.map(load, stores)
        for job_id in ids:
            owners = [n for n, got in enumerate((first, second)) if job_id in got]
            assert len(owners) == 1, job_id
            assert gone.owner_of(job_id) == stores[owners[0]].owner
        assert sorted(first + second) == ids
        # Read again: each keeps its own, and leaves the other's (a running server's).
        assert sorted(job.id for job in stores[0].load_all()) == sorted(first)
        assert sorted(job.id for job in stores[1].load_all()) == sorted(second)
    finally:
        other.kill()
        other.wait()
