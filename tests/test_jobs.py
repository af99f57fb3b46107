"""Jobs (``POST lowcost/api/jobs``): a notebook's cells run in order on a low-cost kernel,
and an interruption resumes it at the first cell that did not complete, with its
variables, no completed cell running twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import EventRecorder, wait_until

from jupyter_lowcost.server.events import JOB_SCHEMA_ID


def appending_cell(log: Path, number: int, extra: str = "") -> str:
    """A cell that appends its number to ``log`` once (after ``extra``) and says so."""
    return (
        f"{extra}"
        f"with open({str(log)!r}, 'a') as _f:\n"
        f"    _f.write('{number}\\n')\n"
        f"print('cell {number}')\n"
    )


def ten_cells(tmp_path: Path) -> tuple[dict[str, Any], Path, Path]:
    """Ten cells appending to a file; cell 2 sets a variable cell 9 uses; cell 5 waits
    until the test lets it go on (the interruption comes while it waits)."""
    log, go = tmp_path / "cells.txt", tmp_path / "go"
    cells = []
    for number in range(1, 11):
        extra = ""
        if number == 2:
            extra = "secret = 42 * 1000\n"
        if number == 5:
            extra = (
                "import pathlib, time\n"
                f"while not pathlib.Path({str(go)!r}).exists():\n"
                "    time.sleep(0.05)\n"
            )
        if number == 9:
            extra = "print('secret', secret + 1)\n"
        cells.append(nbformat.v4.new_code_cell(appending_cell(log, number, extra)))
    cells.insert(3, nbformat.v4.new_markdown_cell("# not code"))
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    return notebook, log, go


@pytest.fixture
def job_events(jp_serverapp: Any) -> EventRecorder:
    recorder = EventRecorder()
    jp_serverapp.event_logger.add_listener(schema_id=JOB_SCHEMA_ID, listener=recorder.listener)
    return recorder


async def job_model(api: Any, job_id: str) -> dict[str, Any]:
    status, model = await api("GET", f"jobs/{job_id}")
    assert status == 200, model
    return model


async def until_state(api: Any, job_id: str, *states: str, timeout: float = 120) -> dict[str, Any]:
    async def reached() -> bool:
        return (await job_model(api, job_id))["state"] in states

    await wait_until(reached, timeout=timeout)
    return await job_model(api, job_id)


def outputs_text(cell: dict[str, Any]) -> str:
    return "".join(
        o.get("text", "") if o["output_type"] == "stream" else str(o.get("data", ""))
        for o in cell.get("outputs", [])
    )


async def test_an_interrupted_job_resumes_at_the_cell_that_did_not_complete(
    api: Any, tmp_path: Path, job_events: EventRecorder
) -> None:
    notebook, log, go = ten_cells(tmp_path)
    status, job = await api(
        "POST", "jobs", {"notebook": notebook, "name": "ten.ipynb", "instance_type": "T4"}
    )
    assert status == 201, job
    job_id = job["id"]
    assert job["cells_total"] == 10 and job["low_cost"] is True

    async def in_cell_5() -> bool:
        model = await job_model(api, job_id)
        return model["current_cell"] == 5 and model["state"] == "running"

    await wait_until(in_cell_5, timeout=120)
    first = (await job_model(api, job_id))["instance_id"]
    status, _ = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 1})
    assert status == 202
    await until_state(api, job_id, "resuming")
    go.touch()
    model = await until_state(api, job_id, "succeeded", "failed", timeout=180)
    assert model["state"] == "succeeded", model
    assert log.read_text().split() == [str(n) for n in range(1, 11)]
    assert model["cells_done"] == 10
    assert [(i["cell"], i["instance_id"]) for i in model["interruptions"]] == [(5, first)]
    assert model["instance_id"] != first

    status, output = await api("GET", f"jobs/{job_id}/output")
    assert status == 200
    code = [c for c in output["cells"] if c["cell_type"] == "code"]
    assert [outputs_text(c).splitlines()[-1] for c in code] == [f"cell {n}" for n in range(1, 11)]
    assert "secret 42001" in outputs_text(code[8])
    where = [c["metadata"]["lowcost"]["instance_id"] for c in code]
    assert where[:4] == [first] * 4 and set(where[4:]) == {model["instance_id"]}
    assert code[4]["metadata"]["lowcost"]["attempts"] == 2
    meta = output["metadata"]["lowcost"]
    assert meta["state"] == "succeeded" and len(meta["interruptions"]) == 1
    assert [i["id"] for i in meta["instances"]] == [first, model["instance_id"]]
    assert meta["cost"] >= 0 and meta["saved"] >= 0
    states = [e["state"] for e in job_events.events if e["id"] == job_id]
    assert states[0] in ("queued", "running") and "resuming" in states
    assert states[-1] == "succeeded"
