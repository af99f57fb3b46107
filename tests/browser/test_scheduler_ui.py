"""JupyterLab's job UI (jupyter-scheduler) runs a notebook as a low-cost job: a person
creates the job on a low-cost T4 from the notebook's toolbar, watches it in the Jobs panel
while its instance is interrupted and the job resumes on another, and downloads its output
notebook, every cell run once."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nbformat
from conftest import wait_until
from job_notebooks import appending_cell, code_cells, outputs_text, wait_for_file
from playwright.async_api import expect

from browser.lab import Lab

ROOT = Path(__file__).parent.parent.parent

CELLS = 5
#: The cell that waits for the file ``go``: the interruption comes while it waits.
WAITING = 3


def training_notebook(folder: Path) -> tuple[Path, Path]:
    """``train.ipynb`` in the server's root: five cells that each take a moment, append
    their number to ``cells.txt`` (a cell run twice shows there twice) and print it; cell
    3 first waits for ``go``. Returns the log file and ``go``."""
    log, go = folder.parent / "cells.txt", folder.parent / "go"
    sources = [
        appending_cell(
            log,
            number,
            before="import time\ntime.sleep(1.5)\n"
            + (wait_for_file(go) if number == WAITING else ""),
        )
        for number in range(1, CELLS + 1)
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nbformat.write(notebook, folder / "train.ipynb")
    return log, go


def our_job(lab: Lab) -> dict[str, Any]:
    """The one job of our jobs service (``GET lowcost/api/jobs``)."""
    jobs = lab.api("GET", "jobs")
    assert len(jobs) == 1, jobs
    return jobs[0]


async def reload_until(page: Any, row: Any, status: str, timeout: float = 120) -> None:
    """Click the Jobs panel's Reload (it does not refresh by itself) until the row's
    Status says ``status``."""
    cell = row.locator("td").nth(4)

    async def shows() -> bool:
        await page.get_by_role("button", name="Reload", exact=True).click()
        try:
            await expect(cell).to_have_text(status, timeout=1_000)
        except AssertionError:
            return False
        return True

    await wait_until(shows, timeout=timeout)


async def test_a_job_created_in_jupyterlabs_job_ui_runs_low_cost_through_an_interruption(
    lab: Lab, browser: Any, screenshot: Any
) -> None:
    log, go = training_notebook(lab.home / "notebooks")
    page = await browser.open(lab)

    # Open the notebook from the file browser (which leaves it selected there: the
    # toolbar's "Create a job" takes the file browser's selection).
    await page.locator(".jp-DirListing-item", has_text="train.ipynb").dblclick()
    create = page.locator(
        '.jp-NotebookPanel-toolbar [data-command="scheduling:create-from-notebook"]'
    )
    await expect(create).to_have_attribute("title", "Create a job")
    await create.click()

    # The form offers our compute types, low-cost ones first, with their prices, and
    # jupyter-scheduler's own run on this server.
    await expect(page.get_by_role("heading", name="Create Job")).to_be_visible()
    await expect(page.locator("input[name=jobName]")).to_have_value("train")
    await page.locator("#jp-create-job-computeType").click()
    options = page.get_by_role("option")
    await expect(options.first).to_have_text(re.compile(r"^T4 · low-cost · \$\d+\.\d\d/h$"))
    texts = await options.all_inner_texts()
    assert texts[-1] == "this server", texts
    assert any(re.match(r"^T4 · regular · \$\d+\.\d\d/h$", t) for t in texts), texts
    tiers = [t.split(" · ")[1] for t in texts[:-1]]
    assert tiers == sorted(tiers, key=lambda tier: tier != "low-cost"), texts
    menu = page.locator(".MuiMenu-paper")
    await expect(menu).to_have_css("opacity", "1")  # done fading in
    await expect(menu).to_have_css("transform", "none")
    await screenshot(page, "scheduler-create")
    t4 = options.filter(has_text=re.compile(r"^T4 · low-cost"))
    compute_type = await t4.inner_text()
    await t4.click()
    await expect(page.locator("#jp-create-job-computeType")).to_have_text(compute_type)
    await page.get_by_role("button", name="Create", exact=True).click()

    # The Jobs panel: the job runs on a low-cost T4 through our jobs service.
    await expect(page.locator("h1.jp-jobs-Heading")).to_have_text("Jobs")
    row = page.locator("tbody tr").filter(has_text="train")
    await reload_until(page, row, "In progress")

    async def at_waiting_cell() -> bool:
        job = our_job(lab)
        # (the cells before it done: their checkpoints are written while the next runs)
        return (
            job["current_cell"] == WAITING
            and job["cells_done"] == WAITING - 1
            and job["instance_id"] is not None
        )

    await wait_until(at_waiting_cell, timeout=120)
    job = our_job(lab)
    assert (job["instance_type"], job["low_cost"], job["state"]) == ("T4", True, "running")
    assert job["cells_done"] == WAITING - 1
    (scheduled,) = lab.api("GET", "/scheduler/jobs")["jobs"]
    assert scheduled["compute_type"] == compute_type
    assert scheduled["status"] == "IN_PROGRESS"
    await expect(row.locator("td").nth(4)).to_have_text("In progress")
    await expect(row.get_by_title('Stop "train"')).to_be_visible()
    await screenshot(page, "scheduler-in-progress")

    # Halfway through, the instance is interrupted: the job resumes on a new instance
    # from its checkpoint after cell 2, and the panel still says "In progress".
    first = job["instance_id"]
    lab.api("POST", f"instances/{first}/interrupt", {"notice_seconds": 2})

    async def resumed_elsewhere() -> bool:
        job = our_job(lab)
        return bool(job["interruptions"]) and job["instance_id"] not in (None, first)

    await wait_until(resumed_elsewhere, timeout=120)
    await reload_until(page, row, "In progress")
    go.touch()

    await reload_until(page, row, "Completed", timeout=180)
    job = our_job(lab)
    assert job["state"] == "succeeded", job
    assert [i["instance_id"] for i in job["interruptions"]] == [first]
    assert log.read_text().split() == [str(n) for n in range(1, CELLS + 1)]
    await screenshot(page, "scheduler-completed")

    # Download copies the output notebook under the server's root, jobs/<stem>-<job id>/
    # (jupyter-scheduler's own Download writes it under the server's working directory
    # instead, jupyter-server/jupyter-scheduler#568; this server's differs from its root).
    download = row.get_by_role("button", name="download")
    await download.click()
    folder = lab.home / "notebooks" / "jobs" / f"train-{scheduled['job_id']}"

    def outputs() -> list[Path]:
        return sorted(folder.glob("train-*.ipynb"))

    await wait_until(outputs, timeout=60)
    await expect(download).to_have_count(0, timeout=30_000)  # the panel: downloaded
    output = json.loads(outputs()[0].read_text())
    code = code_cells(output)
    assert len(code) == CELLS
    for number, cell in enumerate(code, start=1):
        printed = [o for o in cell["outputs"] if o.get("name") == "stdout"]
        assert outputs_text({"outputs": printed}) == f"cell {number}\n", cell  # printed once
        assert cell["execution_count"] is not None
    attempts = [c["metadata"]["lowcost"]["attempts"] for c in code]
    assert attempts == [2 if n == WAITING else 1 for n in range(1, CELLS + 1)], attempts
    assert [i["instance_id"] for i in output["metadata"]["lowcost"]["interruptions"]] == [first]
    assert len(list(folder.glob("train-*.html"))) == 1  # (the form's other output format)
    assert (folder / "train.ipynb").exists()  # the input, beside them
    assert not [e for e in browser.errors if "uncaught" in e]
