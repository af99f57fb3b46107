"""Jobs under load: more jobs than slots wait in order and never fail for want of room;
a cancel at any moment of a job's start leaves no kernel and no instance; and many jobs
on few slots, with a storm of cancels and interruptions, all end succeeded or cancelled,
every cell of a succeeded job run once, with nothing left behind, and the server then
stops on SIGTERM (items 6 and 7 of issue 28, and its load test)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import wait_until
from job_notebooks import (
    post_job,
    until_ended,
    appending_cell,
    code_cells,
    job_model,
    notebook_of,
    outputs_text,
    until_running_cell,
    wait_for_file,
)
from jupyter_process import LowCostServer

#: The load test's size: 50 jobs on 4 slots is the issue's; this machine runs the suite
#: with fewer (set both to run it at full size).
LOAD_JOBS = int(os.environ.get("JUPYTER_LOWCOST_LOAD_JOBS", "50"))
LOAD_SLOTS = int(os.environ.get("JUPYTER_LOWCOST_LOAD_SLOTS", "4"))

LIVE = ("pending", "running", "notice")


async def nothing_left(api: Any, jp_fetch: Any, jp_serverapp: Any) -> None:
    """No kernel (listed or half started) and no live instance are left."""

    async def gone() -> bool:
        instances = (await api("GET", "instances"))[1]
        return not jp_serverapp.kernel_manager.list_kernel_ids() and not [
            i for i in instances if i["state"] in LIVE
        ]

    await wait_until(gone, timeout=60)
    response = await jp_fetch("api", "kernels", method="GET")
    assert json.loads(response.body) == []


@pytest.mark.lowcost(LocalBackend={"slots": 2, "gpus": 0})
async def test_jobs_beyond_the_slots_wait_in_order_and_none_fails(
    api: Any, jp_serverapp: Any, jp_fetch: Any, tmp_path: Path
) -> None:
    log = tmp_path / "cells.txt"
    ids = []
    for n in range(8):
        cell = appending_cell(log, n, before="import time; time.sleep(0.3)\n")
        ids.append((await post_job(api, notebook_of([cell], markdown_at=None)))["id"])
    models = [await until_ended(api, job_id, timeout=300) for job_id in ids]
    assert [m["state"] for m in models] == ["succeeded"] * 8, [m["reason"] for m in models]
    assert sorted(log.read_text().split()) == [str(n) for n in range(8)]
    instances = (await api("GET", "instances"))[1]
    assert [i for i in instances if i["state"] == "failed"] == []
    # In the order they came: each job's kernel got its instance after the jobs before it.
    first: dict[str, str] = {}
    for instance in instances:
        first.setdefault(instance["kernel_id"], instance["created"])
    assert len(instances) == 8
    order = [first[m["kernel_id"]] for m in models]
    assert order == sorted(order)
    await nothing_left(api, jp_fetch, jp_serverapp)


@pytest.mark.parametrize(
    "moment", ["queued", "pending", "pending, twice at once", "running", "relaunching"]
)
async def test_a_job_cancelled_as_its_kernel_starts_leaves_no_kernel_and_no_instance(
    api: Any, jp_serverapp: Any, jp_fetch: Any, tmp_path: Path, moment: str
) -> None:
    log = tmp_path / "cells.txt"
    cell = appending_cell(log, 1, before=wait_for_file(tmp_path / "never"))
    job_id = (await post_job(api, notebook_of([cell], markdown_at=None)))["id"]

    async def there() -> bool:
        model = await job_model(api, job_id)
        assert model["state"] not in ("succeeded", "failed", "cancelled"), model
        kernel_id = model["kernel_id"]
        if kernel_id is None:
            return False
        states = [i["state"] for i in (await api("GET", f"instances?kernel_id={kernel_id}"))[1]]
        if moment.startswith("pending"):
            return states == ["pending"]
        if moment == "relaunching":  # (its kernel starts again, on a new instance)
            return states == ["interrupted", "pending"]
        return states == ["running"] and model["current_cell"] == 1

    if moment == "relaunching":
        first = await until_running_cell(api, job_id, 1)
        status, _ = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 0})
        assert status == 202
    if moment != "queued":
        await wait_until(there, timeout=60)
    count = 2 if moment.endswith("twice at once") else 1
    answers = await asyncio.gather(*(api("DELETE", f"jobs/{job_id}") for _ in range(count)))
    assert 200 in [status for status, _ in answers], answers
    assert {status for status, _ in answers} <= {200, 409}, answers
    model = await job_model(api, job_id)
    assert model["state"] == "cancelled"
    kernel_id = model["kernel_id"]
    await nothing_left(api, jp_fetch, jp_serverapp)
    if kernel_id is not None:
        response = await jp_fetch("api", "kernels", kernel_id, method="DELETE", raise_error=False)
        assert response.code == 404
        instances = (await api("GET", f"instances?kernel_id={kernel_id}"))[1]
        assert {i["state"] for i in instances} <= {"terminated", "interrupted"}, instances
    assert not log.exists()


def launchers_of(data_dir: Path) -> list[int]:
    """The pids of the launchers (and kernels) a server on ``data_dir`` started."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        ours = f"JUPYTER_DATA_DIR={data_dir}".encode() in environ
        if ours and (b"jupyter_lowcost.launcher" in cmdline or b"ipykernel" in cmdline):
            found.append(int(proc.name))
    return found


def stopped_by_sigterm(server: Any) -> None:
    """SIGTERM to the server's process, which must exit within a minute."""
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server did not stop:\n{server.log()[-3000:]}") from None


def no_launcher_left(data_dir: Path) -> None:
    """Wait (30 s at most) until no launcher of the server's data folder runs."""
    deadline = time.monotonic() + 30
    while launchers_of(data_dir):
        assert time.monotonic() < deadline, launchers_of(data_dir)
        time.sleep(0.1)


def load_cell(out: Path, number: int, last: bool = False) -> str:
    """Cell ``number`` of a load test job: a short wait, then it notes itself in the
    kernel (``ran``, restored with the checkpoints) and in the job's file (appended)."""
    start = "ran = []\n" if number == 1 else ""
    end = "print('ran', ran)\n" if last else ""
    return appending_cell(
        out,
        number,
        before=f"{start}import time; time.sleep(0.3)\n",
        after=f"ran.append({number})\n{end}",
    )


def test_many_jobs_on_few_slots_with_a_storm_of_cancels_and_interruptions(
    tmp_path: Path,
) -> None:
    """The issue's load test (scaled, see ``LOAD_JOBS``): cancels when a job is queued,
    while its kernel starts, and while it runs (some twice at once); interruptions while
    others run (without notice, or with one the running cell finishes in)."""
    config = tmp_path / "config"
    config.mkdir()
    settings = {
        "LocalBackend": {"slots": LOAD_SLOTS, "gpus": 0},
        "LowCostApp": {"launch_timeout": 120.0},
    }
    (config / "jupyter_server_config.json").write_text(json.dumps(settings))
    server = LowCostServer(tmp_path, "load-token", {"JUPYTER_CONFIG_DIR": str(config)})
    server.start()
    session = requests.Session()
    session.headers.update(server.headers)

    def call(method: str, path: str, body: Any = None) -> requests.Response:
        return session.request(method, server.url + path, json=body, timeout=60)

    try:
        files = []
        for n in range(LOAD_JOBS):
            out = tmp_path / f"job-{n}.txt"
            sources = [load_cell(out, 1), load_cell(out, 2), load_cell(out, 3, last=True)]
            notebook = notebook_of(sources, markdown_at=None)
            response = call("POST", "jobs", {"notebook": notebook, "name": f"job-{n}"})
            assert response.status_code == 201, response.text
            files.append((response.json()["id"], out))
        ids = [job_id for job_id, _ in files]
        # Every sixth job is cancelled: when queued, as its kernel starts, or as it runs.
        moments = {
            job_id: ("queued", "starting", "running")[n % 3] for n, job_id in enumerate(ids[2::6])
        }
        twice = set(ids[2::12])  # (two cancels at once)
        interrupted: set[str] = set()
        budget = max(3, LOAD_JOBS // 5)

        def cancel(job_id: str) -> list[int]:
            count = 2 if job_id in twice else 1
            with ThreadPoolExecutor(count) as pool:
                answers = list(pool.map(lambda _: call("DELETE", f"jobs/{job_id}"), range(count)))
            return [a.status_code for a in answers]

        end = time.monotonic() + 900
        while True:
            jobs = {j["id"]: j for j in call("GET", "jobs").json()}
            if all(j["state"] in ("succeeded", "failed", "cancelled") for j in jobs.values()):
                break
            assert time.monotonic() < end, f"jobs did not end:\n{server.log()[-3000:]}"
            for job_id, moment in list(moments.items()):
                job = jobs[job_id]
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    del moments[job_id]
                    continue
                starting = job["kernel_id"] is not None and job["current_cell"] is None
                if (
                    (moment == "queued" and job["state"] == "queued" and not job["kernel_id"])
                    or (moment == "starting" and starting and job["state"] != "running")
                    or (moment == "running" and job["current_cell"] is not None)
                ):
                    codes = cancel(job_id)  # (409: it has just ended, or another cancels it)
                    assert set(codes) <= {200, 409}, codes
                    del moments[job_id]
            for job_id, job in jobs.items():
                if (
                    budget
                    and job_id not in moments
                    and job_id not in interrupted
                    and job["state"] == "running"
                    and job["current_cell"] == 2
                    and job["cells_done"] == 1  # (cell 1's checkpoint on disk: issue 32)
                ):
                    # (no notice: the cell is cut, and runs again whole on the next instance)
                    notice = 2 if len(interrupted) % 2 else 0
                    answer = call(
                        "POST",
                        f"instances/{job['instance_id']}/interrupt",
                        {"notice_seconds": notice},
                    )
                    if answer.status_code == 202:
                        interrupted.add(job_id)
                        budget -= 1
            time.sleep(0.05)

        final = {j["id"]: j for j in call("GET", "jobs").json()}
        states = {job_id: final[job_id]["state"] for job_id in ids}
        assert set(states.values()) <= {"succeeded", "cancelled"}, [
            (j["id"], j["state"], j["reason"]) for j in final.values() if j["state"] == "failed"
        ]
        assert "succeeded" in states.values() and "cancelled" in states.values()
        assert interrupted, "no job was interrupted"
        for job_id, out in files:
            if states[job_id] != "succeeded":
                continue
            assert out.read_text().split() == ["1", "2", "3"], (job_id, out.read_text())
            output = call("GET", f"jobs/{job_id}/output").json()
            assert outputs_text(code_cells(output)[2]).endswith("ran [1, 2, 3]\n"), job_id
        # Nothing is left: no kernel (no ghost), no live instance, no failed one.
        assert requests.get(f"{server.base}api/kernels", headers=server.headers).json() == []
        instances = call("GET", "instances").json()
        assert [i for i in instances if i["state"] in LIVE + ("failed",)] == []
        # The server stops on SIGTERM, and no launcher or kernel of it is left.
        stopped_by_sigterm(server)
        no_launcher_left(tmp_path / "data")
    finally:
        session.close()
        server.stop()


def test_a_server_stopped_as_a_job_is_cancelled_while_its_kernel_starts_stops_cleanly(
    tmp_path: Path,
) -> None:
    """A job cancelled as its kernel starts, and the server stopped (SIGTERM) at once: the
    server stops, no launcher or kernel of it is left, and the job stays cancelled (the
    next server does not run it)."""
    server = LowCostServer(tmp_path, "stop-token")
    server.start()
    try:
        cell = appending_cell(tmp_path / "cells.txt", 1, before=wait_for_file(tmp_path / "no"))
        notebook = notebook_of([cell], markdown_at=None)
        response = server.post("jobs", {"notebook": notebook, "name": "nb.ipynb"})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]

        def pending() -> bool:
            kernel_id = server.get(f"jobs/{job_id}").json()["kernel_id"]
            instances = server.get(f"instances?kernel_id={kernel_id}").json()
            return kernel_id is not None and [i["state"] for i in instances] == ["pending"]

        deadline = time.monotonic() + 60
        while not pending():
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.02)
        with ThreadPoolExecutor(1) as pool:
            url = f"{server.url}jobs/{job_id}"
            cancel = pool.submit(requests.delete, url, headers=server.headers, timeout=60)
            deadline = time.monotonic() + 30
            while server.get(f"jobs/{job_id}").json()["reason"] != "cancelled by its user":
                assert time.monotonic() < deadline, server.log()[-3000:]  # (under way)
                time.sleep(0.02)
            stopped_by_sigterm(server)
            try:
                cancel.result()
            except requests.RequestException:
                pass  # (the server stopped before it answered)
        no_launcher_left(tmp_path / "data")
        server.start()
        model = server.get(f"jobs/{job_id}").json()
        assert model["state"] == "cancelled", model
        assert requests.get(f"{server.base}api/kernels", headers=server.headers).json() == []
        assert [i for i in server.get("instances").json() if i["state"] in LIVE] == []
    finally:
        server.stop()
