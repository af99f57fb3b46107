"""A job's output notebook (issue 28, items 9 and 15): a cell that completes is on disk at
once, at a cost that does not grow with the notebook (a journal of the cells that
changed), and the whole notebook is written off the server's event loop: a write held up
stops neither the cells nor the server. The per-cell cost itself is measured by
``tests/benchmarks/jobs.py --size``."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from job_notebooks import code_cells, notebook_of, outputs_text, post_job, until_state

from jupyter_lowcost.storage.jobs import JOURNAL, JobRecord, JobStore


async def test_a_held_write_of_the_whole_notebook_stops_neither_the_cells_nor_the_server(
    api: Any, jp_root_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write of the whole output notebook is held (as a slow disk or a 60 MB
    notebook would hold it) until the test lets it go: meanwhile every cell runs, the
    server answers, and what the cells printed is already the job's output (from its
    journal). Writes in the event loop would hold the server itself: nothing would
    answer, and no cell would run, until the gate opened (after 60 s, in case)."""
    gate = threading.Event()
    timer = threading.Timer(60, gate.set)
    timer.start()
    real_save_output = JobStore.save_output
    made: set[str] = set()

    def held_save_output(self: JobStore, job_id: str, notebook: dict[str, Any]) -> bytes:
        if job_id in made:  # (the job's creation writes it once, unheld)
            gate.wait()
        made.add(job_id)
        return real_save_output(self, job_id, notebook)

    monkeypatch.setattr(JobStore, "save_output", held_save_output)
    sources = [f"print('cell {n}')" for n in range(1, 7)]
    try:
        job = await post_job(api, notebook_of(sources), output_path="out.ipynb")
        done = lambda: api("GET", f"jobs/{job['id']}")  # noqa: E731

        async def all_cells_done() -> bool:
            return bool((await done())[1]["cells_done"] == len(sources))

        await wait_until(all_cells_done, timeout=120)
        assert not gate.is_set(), "the cells waited for the held write"
        output = (await api("GET", f"jobs/{job['id']}/output"))[1]
        assert [outputs_text(c) for c in code_cells(output)] == [
            f"cell {n}\n" for n in range(1, 7)
        ]
        assert not gate.is_set(), "the server waited for the held write"
    finally:
        gate.set()
        timer.cancel()
    model = await until_state(api, job["id"], "succeeded", "failed", "cancelled")
    assert model["state"] == "succeeded", model
    written = json.loads((jp_root_dir / "out.ipynb").read_text())
    assert [outputs_text(c) for c in code_cells(written)] == [f"cell {n}\n" for n in range(1, 7)]


def a_job(store: JobStore, cells: int) -> tuple[str, dict[str, Any]]:
    notebook = notebook_of([f"print({n})" for n in range(cells)], markdown_at=None)
    job = JobRecord(
        id="0123456789ab",
        name="nb.ipynb",
        kernel_name="python3",
        instance_type="T4",
        low_cost=True,
        parameters={},
        path=None,
        output_path=None,
        created=0.0,
    )
    store.create(job, notebook)
    return job.id, notebook


def test_the_journal_brings_back_every_cell_noted_after_the_last_full_write(
    tmp_path: Path,
) -> None:
    """A server killed after cells were journalled but before the whole notebook was
    written again: the output read back has them, the later change of a cell over the
    earlier, the notebook's metadata last noted; a line cut short by the kill is
    skipped."""
    store = JobStore(tmp_path / "jobs")
    job_id, notebook = a_job(store, 3)
    first = dict(notebook["cells"][0], outputs=[{"output_type": "stream", "name": "stdout",
                                                 "text": "0\n"}])
    store.append_change(job_id, store.change_line({0: first}, {"noted": 1}))
    updated = dict(first, outputs=[{"output_type": "stream", "name": "stdout", "text": "zero\n"}])
    second = dict(notebook["cells"][1], outputs=[{"output_type": "stream", "name": "stdout",
                                                  "text": "1\n"}])
    store.append_change(job_id, store.change_line({0: updated, 1: second}, {"noted": 2}))
    line = store.change_line({2: dict(notebook["cells"][2], outputs=[])}, {"noted": 3})
    store.append_change(job_id, line[: len(line) // 2])  # (the kill cut it short)

    output = store.output(job_id)
    assert [c["outputs"] for c in output["cells"]] == [
        updated["outputs"],
        second["outputs"],
        [],
    ]
    assert output["metadata"] == {"noted": 2}


def test_a_full_write_leaves_in_the_journal_only_what_came_after_it(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    job_id, notebook = a_job(store, 2)
    old = store.change_line({0: dict(notebook["cells"][0], execution_count=1)}, {"n": 1})
    new = store.change_line({1: dict(notebook["cells"][1], execution_count=2)}, {"n": 2})
    store.append_change(job_id, old)
    store.append_change(job_id, new)
    full = store.output(job_id)
    full["cells"][1]["execution_count"] = None  # (the full write had the first change only)
    full["metadata"] = {"n": 1}
    store.save_output(job_id, full)
    store.rewrite_changes(job_id, [new])
    output = store.output(job_id)
    assert [c["execution_count"] for c in output["cells"]] == [1, 2]
    assert output["metadata"] == {"n": 2}
    store.rewrite_changes(job_id, [])
    assert not (store.folder_of(job_id) / JOURNAL).exists()


def add_hooked_mark(model: dict[str, Any], **kwargs: Any) -> None:
    """A contents pre-save hook (configured by dotted name below)."""
    if model.get("type") == "notebook":
        model["content"]["metadata"]["hooked"] = True


@pytest.mark.lowcost(
    AsyncLargeFileManager={"pre_save_hook": "test_jobs_output.add_hooked_mark"},
)
async def test_a_contents_manager_with_a_save_hook_still_saves_the_output_itself(
    api: Any, jp_root_dir: Path
) -> None:
    """The output path is written by the job itself only where that is all the contents
    manager's save would do; a configured save hook (jupytext, nbstripout) still runs."""
    job = await post_job(api, notebook_of(["print('hooked')"]), output_path="out.ipynb")
    model = await until_state(api, job["id"], "succeeded", "failed", "cancelled")
    assert model["state"] == "succeeded", model
    written = json.loads((jp_root_dir / "out.ipynb").read_text())
    assert written["metadata"].get("hooked") is True
    assert outputs_text(code_cells(written)[0]) == "hooked\n"
