"""Jobs (``POST lowcost/api/jobs``): a notebook's cells run in order on a low-cost kernel,
and an interruption (or the cap) resumes it at the first cell that did not complete, with
its variables, no completed cell running twice."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import EventRecorder, manager_of, wait_until
from job_notebooks import (
    appending_cell,
    code_cells,
    job_model,
    notebook_of,
    outputs_text,
    ten_cells,
    until_running_cell,
    until_state,
    wait_for_file,
)

from jupyter_lowcost.server.events import JOB_SCHEMA_ID


@pytest.fixture
def job_events(jp_serverapp: Any) -> EventRecorder:
    recorder = EventRecorder()
    jp_serverapp.event_logger.add_listener(schema_id=JOB_SCHEMA_ID, listener=recorder.listener)
    return recorder


async def post_job(api: Any, notebook: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = {"notebook": notebook, "name": "test.ipynb", "instance_type": "T4", **fields}
    status, job = await api("POST", "jobs", body)
    assert status == 201, job
    return job


async def test_an_interrupted_job_resumes_at_the_cell_that_did_not_complete(
    api: Any, jp_serverapp: Any, tmp_path: Path, job_events: EventRecorder
) -> None:
    notebook, log, go = ten_cells(tmp_path)
    job = await post_job(api, notebook)
    job_id = job["id"]
    assert job["cells_total"] == 10 and job["low_cost"] is True

    first = await until_running_cell(api, job_id, 5)
    status, _ = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 1})
    assert status == 202
    await until_state(api, job_id, "resuming")
    go.touch()
    model = await until_state(api, job_id, "succeeded", "failed", timeout=180)
    assert model["state"] == "succeeded", model
    # Cells 1-4 ran once; cell 5 ran again from its start (it appends at its end).
    assert log.read_text().split() == [str(n) for n in range(1, 11)]
    assert model["cells_done"] == 10
    assert [(i["cell"], i["instance_id"], i["state"]) for i in model["interruptions"]] == [
        (5, first, "interrupted")
    ]
    second = model["instance_id"]
    assert second != first

    status, output = await api("GET", f"jobs/{job_id}/output")
    assert status == 200
    code = code_cells(output)
    assert [outputs_text(c).splitlines()[-1] for c in code] == [f"cell {n}" for n in range(1, 11)]
    assert "secret 42001" in outputs_text(code[8])  # set in cell 2, before the interruption
    assert [c["execution_count"] for c in code] == list(range(1, 11))
    where = [c["metadata"]["lowcost"]["instance_id"] for c in code]
    assert where == [first] * 4 + [second] * 6
    assert [c["metadata"]["lowcost"]["attempts"] for c in code] == [1] * 4 + [2] + [1] * 5
    meta = output["metadata"]["lowcost"]
    assert meta["state"] == "succeeded" and len(meta["interruptions"]) == 1
    assert [i["id"] for i in meta["instances"]] == [first, second]
    assert {i["state"] for i in meta["instances"]} == {"interrupted", "terminated"}
    assert meta["cost"] > 0 and meta["saved"] > 0
    states = [e["state"] for e in job_events.events if e["id"] == job_id]
    assert states[0] in ("queued", "running") and "resuming" in states
    assert states[-1] == "succeeded"
    # The job's kernel is gone, and its checkpoints with it.
    kernel_id = model["kernel_id"]
    status, _ = await api("GET", f"kernels/{kernel_id}")
    assert status == 404
    checkpoints = manager_of(jp_serverapp).settings.checkpoint_dir / kernel_id
    assert not checkpoints.exists()


async def test_two_interruptions_in_a_row_resume_from_the_same_completed_cell(
    api: Any, jp_serverapp: Any, tmp_path: Path
) -> None:
    notebook, log, go = ten_cells(tmp_path, wait_in=3)
    job_id = (await post_job(api, notebook))["id"]
    first = await until_running_cell(api, job_id, 3)
    await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 0})
    # Interrupted again as soon as cell 3 runs again, before it could complete.
    second = await until_running_cell(api, job_id, 3, not_on=(first,))
    await api("POST", f"instances/{second}/interrupt", {"notice_seconds": 0})

    async def relaunched_twice() -> bool:
        model = await job_model(api, job_id)
        return model["instance_id"] not in (first, second) and model["state"] == "running"

    await wait_until(relaunched_twice, timeout=120)
    go.touch()
    model = await until_state(api, job_id, "succeeded", "failed", timeout=120)
    assert model["state"] == "succeeded", model
    assert log.read_text().split() == [str(n) for n in range(1, 11)]
    assert [(i["cell"], i["instance_id"]) for i in model["interruptions"]] == [
        (3, first),
        (3, second),
    ]
    output = (await api("GET", f"jobs/{job_id}/output"))[1]
    assert code_cells(output)[2]["metadata"]["lowcost"]["attempts"] == 3
    assert "secret 42001" in outputs_text(code_cells(output)[8])
    assert manager_of(jp_serverapp).jobs.kernel_ids() == set()


@pytest.mark.lowcost(LowCostApp={"lifetime_cap": 8.0, "cap_notice": 1.0})
async def test_the_cap_in_the_middle_of_a_job_resumes_it_on_a_new_instance(
    api: Any, tmp_path: Path
) -> None:
    log = tmp_path / "cells.txt"
    sources = [appending_cell(log, n, before="import time; time.sleep(1.0)\n") for n in range(12)]
    job_id = (await post_job(api, notebook_of(sources, markdown_at=None)))["id"]
    model = await until_state(api, job_id, "succeeded", "failed", timeout=150)
    assert model["state"] == "succeeded", model
    assert log.read_text().split() == [str(n) for n in range(12)]
    assert model["interruptions"], model
    assert {i["state"] for i in model["interruptions"]} == {"expired"}
    output = (await api("GET", f"jobs/{job_id}/output"))[1]
    instances = [c["metadata"]["lowcost"]["instance_id"] for c in code_cells(output)]
    assert len(set(instances)) == len(model["interruptions"]) + 1


async def test_cancel_stops_the_job_and_keeps_its_output(
    api: Any, jp_serverapp: Any, tmp_path: Path, job_events: EventRecorder
) -> None:
    notebook, log, go = ten_cells(tmp_path, wait_in=4)
    job_id = (await post_job(api, notebook))["id"]
    await until_running_cell(api, job_id, 4)
    kernel_id = (await job_model(api, job_id))["kernel_id"]
    status, model = await api("DELETE", f"jobs/{job_id}")
    assert status == 200, model
    assert model["state"] == "cancelled" and model["reason"] == "cancelled by its user"
    assert model["cells_done"] == 3
    assert kernel_id not in jp_serverapp.kernel_manager
    go.touch()
    output = (await api("GET", f"jobs/{job_id}/output"))[1]
    assert [outputs_text(c) for c in code_cells(output)[:4]] == [
        "cell 1\n",
        "cell 2\n",
        "cell 3\n",
        "",
    ]
    assert output["metadata"]["lowcost"]["state"] == "cancelled"
    status, body = await api("DELETE", f"jobs/{job_id}")
    assert status == 409 and "has already ended (cancelled)" in body["message"]
    assert log.read_text().split() == ["1", "2", "3"]
    assert job_events.events[-1]["state"] == "cancelled"


async def test_a_failing_cell_fails_the_job_with_its_traceback(
    api: Any, jp_serverapp: Any, tmp_path: Path
) -> None:
    log = tmp_path / "cells.txt"
    sources = [appending_cell(log, n) for n in (1, 2)]
    sources += ["print('about to fail')\n1 / 0\n", appending_cell(log, 4)]
    job_id = (await post_job(api, notebook_of(sources)))["id"]
    model = await until_state(api, job_id, "succeeded", "failed")
    assert model["state"] == "failed"
    assert model["reason"] == "cell 3 raised ZeroDivisionError: division by zero"
    assert model["error"]["cell"] == 3 and model["error"]["ename"] == "ZeroDivisionError"
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(model["error"]["traceback"]))
    assert "1 / 0" in traceback and "ZeroDivisionError" in traceback
    assert model["cells_done"] == 2
    assert log.read_text().split() == ["1", "2"]  # cell 4 never ran
    output = (await api("GET", f"jobs/{job_id}/output"))[1]
    failed = code_cells(output)[2]
    assert [o["output_type"] for o in failed["outputs"]] == ["stream", "error"]
    assert failed["outputs"][1]["ename"] == "ZeroDivisionError"
    assert code_cells(output)[3]["outputs"] == []
    assert model["kernel_id"] not in jp_serverapp.kernel_manager


async def test_parameters_are_injected_after_the_parameters_cell(api: Any) -> None:
    cells = ["alpha = 1\nname = 'default'\n", "print(alpha * 2, name, flags)\n"]
    notebook = notebook_of(cells, markdown_at=0)
    notebook["cells"][1]["metadata"]["tags"] = ["parameters"]
    job = await post_job(
        api, notebook, parameters={"alpha": 21, "name": "it's", "flags": [1, None, True]}
    )
    assert job["cells_total"] == 3 and job["parameters"]["alpha"] == 21
    model = await until_state(api, job["id"], "succeeded", "failed")
    assert model["state"] == "succeeded", model
    output = (await api("GET", f"jobs/{job['id']}/output"))[1]
    code = code_cells(output)
    assert code[1]["metadata"]["tags"] == ["injected-parameters"]
    assert "alpha = 21" in "".join(code[1]["source"])
    assert outputs_text(code[2]) == "42 it's [1, None, True]\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"notebook": {"cells": "no"}}, "not a notebook"),
        ({"notebook": 7}, "notebook must be a JSON object"),
        ({}, "notebook is required"),
        ({"kernel_name": "nope"}, "no kernelspec named 'nope'"),
        ({"instance_type": "Z9"}, "unknown instance type 'Z9'"),
        ({"parameters": {"1x": 1}}, 'parameter name "1x" is not a Python variable name'),
        ({"parameters": {"class": 1}}, "parameter name 'class' is a Python keyword"),
        ({"path": "no/such/folder/x.ipynb"}, "no folder 'no/such/folder' on this server"),
        ({"output_path": "../../escape.ipynb"}, "output_path '../../escape.ipynb'"),
        ({"output_path": "out.txt"}, "output_path 'out.txt' must end with .ipynb"),
        ({"path": "nb.ipynb", "output_path": "/nb.ipynb"}, "it would be overwritten"),
        ({"low_cost": "yes"}, "low_cost must be true or false"),
        ({"surprise": 1}, "unknown field(s) surprise"),
    ],
)
async def test_bad_jobs_are_refused_with_what_is_wrong_and_nothing_starts(
    api: Any, jp_serverapp: Any, body: dict[str, Any], message: str
) -> None:
    full = {"notebook": notebook_of(["print(1)"]), **body}
    if body == {}:
        full = {}
    status, answer = await api("POST", "jobs", full)
    assert status == 400, answer
    assert message in answer["message"]
    assert (await api("GET", "jobs"))[1] == []
    assert jp_serverapp.kernel_manager.list_kernel_ids() == []


@pytest.mark.lowcost(LocalBackend={"slots": 1, "gpus": 0})
async def test_more_jobs_than_slots_wait_queued_then_run(api: Any, tmp_path: Path) -> None:
    go = tmp_path / "go"
    first = (await post_job(api, notebook_of([wait_for_file(go), "print('one')"])))["id"]
    await until_running_cell(api, first, 1)
    second = (await post_job(api, notebook_of(["print('two')"])))["id"]
    queued = await until_state(api, second, "queued")
    assert "slot" in queued["reason"] or "room" in queued["reason"], queued
    go.touch()
    assert (await until_state(api, first, "succeeded", "failed"))["state"] == "succeeded"
    assert (await until_state(api, second, "succeeded", "failed"))["state"] == "succeeded"
    status, jobs = await api("GET", "jobs")
    assert [j["id"] for j in jobs] == [first, second]


async def test_unknown_jobs_are_404(api: Any) -> None:
    for method, path in (
        ("GET", "jobs/0123456789ab"),
        ("DELETE", "jobs/0123456789ab"),
        ("GET", "jobs/0123456789ab/output"),
        ("GET", "jobs/0123456789ab/log"),
        ("GET", "jobs/nope"),
    ):
        status, body = await api(method, path)
        assert status == 404, (method, path, body)


async def test_a_cell_that_kills_its_kernel_fails_the_job(api: Any, tmp_path: Path) -> None:
    job_id = (await post_job(api, notebook_of(["x = 1", "import os; os._exit(3)", "x"])))["id"]
    model = await until_state(api, job_id, "succeeded", "failed", "cancelled")
    assert model["state"] == "failed", model
    assert model["reason"].startswith("the kernel died while running cell 2"), model
    assert model["cells_done"] == 1


async def test_a_job_whose_kernel_is_shut_down_from_outside_fails_and_says_so(
    api: Any, jp_fetch: Any, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    job_id = (await post_job(api, notebook_of(["x = 1", wait_for_file(go), "x"])))["id"]
    await until_running_cell(api, job_id, 2)
    kernel_id = (await job_model(api, job_id))["kernel_id"]
    await jp_fetch("api", "kernels", kernel_id, method="DELETE")
    model = await until_state(api, job_id, "succeeded", "failed", "cancelled")
    assert model["state"] == "failed"
    assert model["reason"].startswith("the job's kernel was shut down (not by the job)")
    assert model["cells_done"] == 1


@pytest.mark.lowcost(LowCostApp={"recovery_policy": "none"})
async def test_with_recovery_policy_none_an_interruption_fails_the_job(
    api: Any, tmp_path: Path
) -> None:
    notebook, log, go = ten_cells(tmp_path, wait_in=2)
    job_id = (await post_job(api, notebook))["id"]
    first = await until_running_cell(api, job_id, 2)
    await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 0})
    model = await until_state(api, job_id, "succeeded", "failed", "cancelled")
    assert model["state"] == "failed"
    assert model["reason"] == (
        f"instance {first} interrupted and the kernel was not relaunched (recovery policy 'none')"
    )
    assert model["interruptions"][0]["cell"] == 2


@pytest.mark.lowcost(LocalBackend={"slots": 1, "gpus": 0})
async def test_a_queued_job_can_be_cancelled(api: Any, tmp_path: Path) -> None:
    go = tmp_path / "go"
    first = (await post_job(api, notebook_of([wait_for_file(go)])))["id"]
    await until_running_cell(api, first, 1)
    second = (await post_job(api, notebook_of(["print('never')"])))["id"]
    await until_state(api, second, "queued")
    status, model = await api("DELETE", f"jobs/{second}")
    assert status == 200 and model["state"] == "cancelled" and model["kernel_id"] is None
    go.touch()
    assert (await until_state(api, first, "succeeded", "failed"))["state"] == "succeeded"


async def test_a_notice_that_lets_the_cell_finish_moves_the_next_cell_to_the_next_instance(
    api: Any, tmp_path: Path
) -> None:
    notebook, log, go = ten_cells(tmp_path, wait_in=3)
    job_id = (await post_job(api, notebook))["id"]
    first = await until_running_cell(api, job_id, 3)
    status, _ = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 4})
    assert status == 202
    go.touch()  # cell 3 completes during the notice; cell 4 must not start on that instance

    async def waiting() -> bool:
        model = await job_model(api, job_id)
        return model["cells_done"] == 3 and model["state"] == "resuming"

    await wait_until(waiting, timeout=30)
    model = await until_state(api, job_id, "succeeded", "failed", timeout=120)
    assert model["state"] == "succeeded", model
    assert log.read_text().split() == [str(n) for n in range(1, 11)]
    assert [(i["cell"], i["instance_id"], i["state"]) for i in model["interruptions"]] == [
        (4, first, "interrupted")
    ]
    assert model["interruptions"][0]["reason"].startswith("before the cell started")
    output = (await api("GET", f"jobs/{job_id}/output"))[1]
    where = [c["metadata"]["lowcost"]["instance_id"] for c in code_cells(output)]
    assert where == [first] * 3 + [model["instance_id"]] * 7
    assert "secret 42001" in outputs_text(code_cells(output)[8])
