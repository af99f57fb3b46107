"""Jobs (``POST lowcost/api/jobs``): a notebook's cells run in order on a low-cost kernel,
and an interruption (or the cap) resumes it at the first cell that did not complete, with
its variables, no completed cell running twice."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import EventRecorder, manager_of, wait_until
from job_notebooks import (
    interrupt_then_let_go,
    post_job,
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


async def test_an_interrupted_job_resumes_at_the_cell_that_did_not_complete(
    api: Any, jp_serverapp: Any, tmp_path: Path, job_events: EventRecorder
) -> None:
    notebook, log, go = ten_cells(tmp_path)
    job = await post_job(api, notebook)
    job_id = job["id"]
    assert job["cells_total"] == 10 and job["low_cost"] is True

    first = await until_running_cell(api, job_id, 5)
    model = await interrupt_then_let_go(api, job_id, first, go, notice_seconds=1)
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
    assert queued["reason"] == (
        "waiting for a free slot: all 1 are in use (the job starts when one frees)"
    ), queued  # (its kernel has not started: nothing to resume)
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
    assert model["reason"].startswith("the kernel crashed while running cell 2"), model
    assert model["interruptions"] == [], model
    assert model["cells_done"] == 1


async def test_a_killed_instance_is_resumed_and_a_cell_killed_three_times_fails_the_job(
    api: Any, tmp_path: Path
) -> None:
    # SIGKILL of the kernel's instance (its launcher): an instance lost, not a crash. The
    # first time the job resumes; a cell killed 3 times in a row (as a kernel that runs
    # out of memory is) fails the job instead of running again for ever.
    marker = tmp_path / "killed-once"
    once = f"import os, pathlib, signal\nif not pathlib.Path({str(marker)!r}).exists():\n"
    once += f"    pathlib.Path({str(marker)!r}).touch(); os.kill(os.getpid(), signal.SIGKILL)"
    job_id = (await post_job(api, notebook_of(["x = 1", once, "x + 1"])))["id"]
    model = await until_state(api, job_id, "succeeded", "failed", "cancelled")
    assert model["state"] == "succeeded", model
    assert [i["cell"] for i in model["interruptions"]] == [2], model
    assert model["interruptions"][0]["state"] == "interrupted"
    always = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    job_id = (await post_job(api, notebook_of(["x = 1", always, "x"])))["id"]
    model = await until_state(api, job_id, "succeeded", "failed", "cancelled")
    assert model["state"] == "failed", model
    assert model["reason"].startswith(
        "the kernel's instance was killed 3 times in a row while running cell 2"
    ), model
    assert [i["cell"] for i in model["interruptions"]] == [2, 2], model
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


# -- bad input and messages (issue 28, items 8-13) ---------------------------------------


#: A code cell as nbformat 4.5 has it.
CELL = {"id": "c1", "cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None}


def nested_metadata(depth: int) -> str:
    """A POST jobs body whose notebook's metadata nests ``depth`` objects (as text: the
    json module refuses to write it)."""
    notebook = notebook_of(["print(1)"])
    notebook["metadata"]["deep"] = "HOLE"
    text = json.dumps({"notebook": notebook})
    return text.replace('"HOLE"', '{"a": ' * depth + "1" + "}" * depth)


def saved_notebook(path: Path) -> bool:
    try:
        return "cells" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


async def finished_job(api: Any) -> str:
    job_id = (await post_job(api, notebook_of(["print('done')"])))["id"]
    assert (await until_state(api, job_id, "succeeded", "failed"))["state"] == "succeeded"
    return job_id


async def test_log_offsets_no_file_has_are_refused_with_a_4xx(api: Any) -> None:
    job_id = await finished_job(api)
    for offset in (2**63 - 1, 2**63, 2**64, 10**30, 2**53 + 1):
        status, body = await api("GET", f"jobs/{job_id}/log?offset={offset}")
        assert status == 400, (offset, body)
        assert body["message"].startswith(f"offset must be between 0 and {2**53} (a byte offset)")
    status, body = await api("GET", f"jobs/{job_id}/log?offset=-{10**40}")
    assert status == 400 and body["message"].endswith("not a negative number of 41 digits"), body
    for offset in (2**53, 2**50):  # (past what the file system allows: no 500)
        status, body = await api("GET", f"jobs/{job_id}/log?offset={offset}")
        assert status in (200, 400), body
    status, body = await api("GET", f"jobs/{job_id}/log?offset={10**6}")  # past the end
    assert status == 200 and body == {"text": "", "offset": 10**6, "state": "succeeded"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "a\ud800b"}, "name is not text: it holds a lone surrogate (\\ud800)"),
        (
            {"notebook": notebook_of(["print('\udc00')"], markdown_at=None)},
            "notebook.cells.0.source is not text: it holds a lone surrogate (\\udc00)",
        ),
        ({"parameters": {"x": "\udfff"}}, "parameters.x is not text"),
        ({"parameters": {"x\n": 1}}, 'parameter name "x\\n" is not a Python variable name'),
        ({"parameters": {"__builtins__": {}}}, "'__builtins__' is one of Python's own names"),
        ({"parameters": {"__debug__": 0}}, "'__debug__' is one of Python's own names"),
        ({"parameters": {"None": 0}}, "'None' is a Python keyword"),
        ({"path": "nb.ipynb", "output_path": "./nb.ipynb"}, "it would be overwritten"),
        ({"path": "nb.ipynb", "output_path": "sub/../nb.ipynb"}, "it would be overwritten"),
        ({"path": "./a/nb.ipynb", "output_path": "a//nb.ipynb"}, "it would be overwritten"),
        ({"path": "a\x00b.ipynb"}, "path 'a\\x00b.ipynb' holds a control character"),
        ({"output_path": "out\x00.ipynb"}, "output_path 'out\\x00.ipynb' holds a control"),
        ({"notebook": {"cells": []}}, 'not a notebook: it has no "nbformat" field'),
        ({"notebook": {"nbformat": None, "cells": []}}, "nbformat None (this server reads"),
        ({"notebook": {"nbformat": 4, "metadata": {}}}, "its 'cells' is missing"),
        (
            {"notebook": {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [1]}},
            "not a valid notebook: cell 0 is not a JSON object",
        ),
        (
            {"notebook": {"nbformat": 4, "metadata": {}, "cells": [{"cell_type": 1}]}},
            "not a valid notebook: cell 0's cell_type is 1, not code, markdown or raw",
        ),
        (
            {
                "notebook": {
                    **notebook_of(["1"], markdown_at=None),
                    "cells": [{**CELL, "source": 3}],
                }
            },
            "not a valid notebook: cells[0].source: 3 is not valid under any of the given",
        ),
    ],
)
async def test_bad_text_names_and_paths_are_refused_at_post(
    api: Any, jp_serverapp: Any, body: dict[str, Any], message: str
) -> None:
    status, answer = await api("POST", "jobs", {"notebook": notebook_of(["print(1)"]), **body})
    assert status == 400, answer
    assert message in answer["message"], answer["message"]
    assert "(None, None)" not in answer["message"]
    assert (await api("GET", "jobs"))[1] == []
    assert jp_serverapp.kernel_manager.list_kernel_ids() == []


async def test_a_notebook_nested_too_deeply_is_refused_in_plain_words(api: Any) -> None:
    for depth in (150, 400, 700, 5000):
        status, answer = await api("POST", "jobs", nested_metadata(depth))
        assert status == 400, (depth, answer)
        assert "nested too deeply" in answer["message"], (depth, answer["message"])
        assert "recursion" not in answer["message"]
    assert (await api("GET", "jobs"))[1] == []


@pytest.mark.parametrize("kind", ["folder", "fifo"])
async def test_an_output_path_that_is_no_regular_file_is_refused_at_post(
    api: Any, jp_root_dir: Path, kind: str
) -> None:
    target = jp_root_dir / "out.ipynb"
    if kind == "folder":
        target.mkdir()
    else:
        os.mkfifo(target)
    status, answer = await api(
        "POST", "jobs", {"notebook": notebook_of(["print(1)"]), "output_path": "out.ipynb"}
    )
    assert status == 400, answer
    expected = "is a folder" if kind == "folder" else "is a FIFO (a named pipe)"
    assert f"output_path 'out.ipynb' {expected}" in answer["message"], answer
    assert (await api("GET", "jobs"))[1] == []


@pytest.mark.parametrize("kind", ["folder", "fifo"])
async def test_an_output_path_that_becomes_no_file_fails_the_job_and_the_server_goes_on(
    api: Any, jp_root_dir: Path, tmp_path: Path, kind: str
) -> None:
    """Checked again at each save: a FIFO put there meanwhile would block the server's
    event loop at the first save (opening it waits for a reader); the job says its
    output could not be written instead of "succeeded"."""
    go = tmp_path / "go"
    notebook = notebook_of([wait_for_file(go), "print('the result')"])
    job = await post_job(api, notebook, output_path="out.ipynb")
    await until_running_cell(api, job["id"], 1)
    target = jp_root_dir / "out.ipynb"
    await wait_until(lambda: saved_notebook(target))  # (the first save is over)
    target.unlink()
    if kind == "folder":
        target.mkdir()
    else:
        os.mkfifo(target)
    go.touch()
    model = await until_state(api, job["id"], "succeeded", "failed", "cancelled")
    assert model["state"] == "failed", model
    expected = "is a folder" if kind == "folder" else "is a FIFO (a named pipe)"
    assert model["reason"].startswith(
        "all 2 cells ran, but the output notebook could not be written at out.ipynb: "
        f"out.ipynb {expected}"
    ), model["reason"]
    assert f"jupyter lowcost show {job['id']} --output FILE" in model["reason"]
    output = (await api("GET", f"jobs/{job['id']}/output"))[1]  # (the server keeps it)
    assert outputs_text(code_cells(output)[1]) == "the result\n"
    assert target.is_dir() if kind == "folder" else stat.S_ISFIFO(target.stat().st_mode)


async def test_hidden_paths_are_refused_as_jupyters_own_save_refuses_them(
    api: Any, jp_root_dir: Path
) -> None:
    (jp_root_dir / ".secret").mkdir()
    for field, value in (
        ("output_path", ".secret/out.ipynb"),
        ("output_path", ".out.ipynb"),
        ("path", ".secret/nb.ipynb"),
    ):
        status, answer = await api(
            "POST", "jobs", {"notebook": notebook_of(["print(1)"]), field: value}
        )
        assert status == 400, (field, value, answer)
        assert f"{field} {value!r} is hidden" in answer["message"], answer
        assert "allow_hidden" in answer["message"]
    assert (await api("GET", "jobs"))[1] == []
    assert list((jp_root_dir / ".secret").iterdir()) == []


@pytest.mark.lowcost(ContentsManager={"allow_hidden": True})
async def test_hidden_paths_are_accepted_when_the_contents_manager_allows_them(
    api: Any, jp_root_dir: Path
) -> None:
    (jp_root_dir / ".secret").mkdir()
    job = await post_job(api, notebook_of(["print(1)"]), output_path=".secret/out.ipynb")
    model = await until_state(api, job["id"], "succeeded", "failed")
    assert model["state"] == "succeeded", model
    assert (jp_root_dir / ".secret" / "out.ipynb").is_file()


async def test_nan_and_infinite_parameters_are_injected_as_papermill_writes_them(
    api: Any,
) -> None:
    notebook = notebook_of(["print(a != a, b, c, d[0] != d[0], d[1], e)"])
    body = json.dumps({"notebook": notebook, "instance_type": "T4", "name": "t.ipynb"})
    body = body[:-1] + (
        ', "parameters": {"a": NaN, "b": Infinity, "c": -Infinity, "d": [NaN, 1.5], "e": 1}}'
    )
    status, job = await api("POST", "jobs", body)
    assert status == 201, job
    model = await until_state(api, job["id"], "succeeded", "failed")
    assert model["state"] == "succeeded", model
    output = (await api("GET", f"jobs/{job['id']}/output"))[1]
    injected = "".join(code_cells(output)[0]["source"])
    assert "a = float('nan')\nb = float('inf')\nc = float('-inf')\n" in injected
    assert "d = [float('nan'), 1.5]\n" in injected
    assert outputs_text(code_cells(output)[1]) == "True inf -inf True 1.5 1\n"


async def test_parameters_in_a_notebook_older_than_4_5_keep_it_valid(api: Any) -> None:
    """nbformat 4.4 has no cell ids: the injected cell gets none (papermill runs such
    notebooks), and the output notebook is valid, as its input was."""
    notebook = notebook_of(["print(alpha)"], markdown_at=None)
    notebook["nbformat_minor"] = 4
    for cell in notebook["cells"]:
        del cell["id"]
    nbformat.validate(nbformat.from_dict(notebook))
    job = await post_job(api, notebook, parameters={"alpha": 7})
    model = await until_state(api, job["id"], "succeeded", "failed")
    assert model["state"] == "succeeded", model
    output = (await api("GET", f"jobs/{job['id']}/output"))[1]
    assert "id" not in code_cells(output)[0]
    nbformat.validate(nbformat.from_dict(output))
    status, again = await api("POST", "jobs", {"notebook": output, "name": "again.ipynb"})
    assert status == 201, again


async def test_concurrent_cancels_one_answers_200_the_others_409(api: Any, tmp_path: Path) -> None:
    go = tmp_path / "go"
    job_id = (await post_job(api, notebook_of([wait_for_file(go), "print(2)"])))["id"]
    await until_running_cell(api, job_id, 1)
    answers = await asyncio.gather(*(api("DELETE", f"jobs/{job_id}") for _ in range(6)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] + [409] * 5, answers
    for status, body in answers:
        if status == 409:
            assert body["message"] in (
                f"job {job_id} is already being cancelled",
                f"job {job_id} has already ended (cancelled)",
            ), body
        else:
            assert body["state"] == "cancelled"
    go.touch()
    assert (await job_model(api, job_id))["state"] == "cancelled"


async def test_a_kernel_that_crashes_on_a_regular_instance_is_no_interruption(
    api: Any, tmp_path: Path
) -> None:
    notebook = notebook_of(["x = 1", "import os; os._exit(3)", "x"])
    job_id = (await post_job(api, notebook, low_cost=False))["id"]
    model = await until_state(api, job_id, "succeeded", "failed", "cancelled")
    assert model["state"] == "failed", model
    assert model["reason"].startswith("the kernel crashed while running cell 2"), model
    assert model["interruptions"] == [], model
    assert model["cells_done"] == 1
