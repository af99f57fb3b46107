"""Notebooks for the job tests (server, CLI, Slurm, benchmark) and ways to follow a job
through the REST API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
from conftest import wait_until


def appending_cell(log: Path, number: int, before: str = "", after: str = "") -> str:
    """A cell that appends its number to ``log`` once (after ``before``) and prints it."""
    return (
        f"{before}"
        f"with open({str(log)!r}, 'a') as _f:\n"
        f"    _f.write('{number}\\n')\n"
        f"print('cell {number}')\n"
        f"{after}"
    )


def wait_for_file(path: Path) -> str:
    """Code that waits until ``path`` exists (the test lets the cell go on)."""
    return (
        "import pathlib, time\n"
        f"while not pathlib.Path({str(path)!r}).exists():\n"
        "    time.sleep(0.05)\n"
    )


def notebook_of(sources: list[str], markdown_at: int | None = 3) -> dict[str, Any]:
    cells = [nbformat.v4.new_code_cell(source) for source in sources]
    if markdown_at is not None:
        cells.insert(markdown_at, nbformat.v4.new_markdown_cell("# not code"))
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    return notebook


def ten_cells(folder: Path, wait_in: int = 5) -> tuple[dict[str, Any], Path, Path]:
    """Ten cells appending to ``cells.txt``; cell 2 sets a variable cell 9 uses; cell
    ``wait_in`` waits for the file ``go`` before it appends (the interruption comes
    while it waits). Returns the notebook, the file, and ``go``."""
    log, go = folder / "cells.txt", folder / "go"
    sources = []
    for number in range(1, 11):
        before = ""
        if number == 2:
            before = "secret = 42 * 1000\n"
        if number == wait_in:
            before = wait_for_file(go)
        if number == 9:
            before = "print('secret', secret + 1)\n"
        sources.append(appending_cell(log, number, before))
    return notebook_of(sources), log, go


def outputs_text(cell: dict[str, Any]) -> str:
    """What a cell printed (its streams; the data of other outputs), as one string (a
    notebook on disk may hold it as a list of lines)."""

    def text(value: Any) -> str:
        return "".join(value) if isinstance(value, list) else str(value)

    return "".join(
        text(o.get("text", "")) if o["output_type"] == "stream" else str(o.get("data", ""))
        for o in cell.get("outputs", [])
    )


def code_cells(notebook: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in notebook["cells"] if c["cell_type"] == "code"]


async def post_job(api: Any, notebook: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``POST jobs`` (named ``test.ipynb``, on a T4, unless ``fields`` say otherwise): the
    new job's model."""
    body = {"notebook": notebook, "name": "test.ipynb", "instance_type": "T4", **fields}
    status, job = await api("POST", "jobs", body)
    assert status == 201, f"the job was refused: {status} {job}"
    return dict(job)


async def job_model(api: Any, job_id: str) -> dict[str, Any]:
    status, model = await api("GET", f"jobs/{job_id}")
    assert status == 200, model
    return model


async def until_state(api: Any, job_id: str, *states: str, timeout: float = 120) -> dict[str, Any]:
    """The job's model once it is in one of ``states``."""

    async def reached() -> bool:
        return (await job_model(api, job_id))["state"] in states

    await wait_until(reached, timeout=timeout)
    return await job_model(api, job_id)


#: The states a job ends in.
FINAL = ("succeeded", "failed", "cancelled")


async def until_ended(api: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """The job's model once it has ended (succeeded, failed or cancelled)."""
    return await until_state(api, job_id, *FINAL, timeout=timeout)


async def until_running_cell(
    api: Any,
    job_id: str,
    number: int,
    timeout: float = 120,
    not_on: tuple[str, ...] = (),
    before_done: bool = True,
) -> str:
    """Wait until the job runs cell ``number`` (on an instance not in ``not_on``), and,
    with ``before_done``, the cells before it are done (their checkpoints on disk: the
    next cell starts before that, issue 32); the instance it runs on."""

    async def there() -> bool:
        model = await job_model(api, job_id)
        assert model["state"] not in ("failed", "cancelled", "succeeded"), model
        return (
            model["current_cell"] == number
            and (not before_done or model["cells_done"] == number - 1)
            and model["state"] == "running"
            and model["instance_id"] not in not_on
        )

    await wait_until(there, timeout=timeout)
    return (await job_model(api, job_id))["instance_id"]


async def interrupt_then_let_go(
    api: Any, job_id: str, instance: str, go: Path, notice_seconds: float = 0
) -> dict[str, Any]:
    """Take ``instance`` away (with ``notice_seconds`` of notice), let the job's waiting
    cell go (``go``) once the job resumes, and return its model once it has succeeded."""
    status, _ = await api(
        "POST", f"instances/{instance}/interrupt", {"notice_seconds": notice_seconds}
    )
    assert status == 202
    await until_state(api, job_id, "resuming")
    go.touch()
    model = await until_state(api, job_id, "succeeded", "failed", timeout=180)
    assert model["state"] == "succeeded", model
    return model
