"""A job's output notebook is what nbclient gives for the same notebook (issue 28, item 14):
display ids updated across cells, ipywidgets' ``Output`` capture and widget state, the
``skip-execution`` and ``raises-exception`` tags, one output per stream message,
``language_info`` from the kernel, IPython history in memory, and kernelspecs without a
name or named ``python`` (the notebooks: ``tests/nbclient_notebooks.py``).

Each notebook runs with nbclient (the reference, once per notebook for the module) and as
a job: through the REST API without an interruption, and with ``jupyter lowcost run``
with one interruption, while the cell after the behaviour under test waits for a file
(the job resumes at that cell on a new instance). Both output notebooks are compared
after :func:`nbclient_notebooks.normalise` (counts, timings, the job's own metadata and
notes, widget model ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from job_notebooks import FINAL, job_model, post_job, until_ended
from nbclient_notebooks import (
    CASES,
    CASES_BY_NAME,
    WAITING_LINE,
    Case,
    normalise,
    run_with_nbclient,
)



class References:
    """nbclient's output notebook of each case, made once for the module (its waiting
    cell's file exists: the cell ends at once)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.go = folder / "go"
        self.go.touch()
        self.done: dict[str, dict[str, Any]] = {}

    async def of(self, case: Case) -> dict[str, Any]:
        if case.name not in self.done:
            self.done[case.name] = await run_with_nbclient(
                case.notebook(self.go), self.folder / case.name
            )
        return self.done[case.name]


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> References:
    return References(tmp_path_factory.mktemp("nbclient"))


def first_line(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    text = "".join(source) if isinstance(source, list) else str(source)
    return next((line for line in text.splitlines() if line.strip()), "")


def assert_same_as_nbclient(job: dict[str, Any], reference: dict[str, Any]) -> None:
    """The job's output notebook equals nbclient's once normalised: every cell's outputs
    (and tags), then the widget state, then ``language_info``."""
    got, want = normalise(job), normalise(reference)
    assert len(got["cells"]) == len(want["cells"]), "not the notebook's cells"
    for number, (mine, theirs) in enumerate(zip(got["cells"], want["cells"]), start=1):
        assert mine == theirs, (
            f"cell {number} ({first_line(reference['cells'][number - 1])!r}) differs from "
            f"nbclient's:\njob:     {json.dumps(mine)}\nnbclient: {json.dumps(theirs)}"
        )
    assert got["widgets"] == want["widgets"], (
        "the widget state (metadata.widgets) differs from nbclient's:\n"
        f"job:     {json.dumps(got['widgets'])}\nnbclient: {json.dumps(want['widgets'])}"
    )
    assert got["language_info"] == want["language_info"], "language_info is not the kernel's"


async def end(api: Any, job_id: str | None) -> None:
    """Cancel the job if it still runs (a test that failed midway leaves no job running
    into the server's stop)."""
    if job_id is None or (await job_model(api, job_id))["state"] in FINAL:
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(api("DELETE", f"jobs/{job_id}"), timeout=60)


@pytest.mark.parametrize("name", [case.name for case in CASES])
async def test_a_job_gives_the_outputs_nbclient_gives(
    api: Any, tmp_path: Path, references: References, name: str
) -> None:
    case = CASES_BY_NAME[name]
    go = tmp_path / "go"
    go.touch()  # (no interruption: the waiting cell ends at once)
    job = await post_job(api, case.notebook(go), name=f"{name}.ipynb")
    try:
        reference = await references.of(case)  # (nbclient runs while the job does)
        model = await until_ended(api, job["id"])
    finally:
        await end(api, job["id"])
    assert model["state"] == "succeeded", model["reason"]
    status, output = await api("GET", f"jobs/{job['id']}/output")
    assert status == 200, output
    assert_same_as_nbclient(output, reference)


async def until_waiting(api: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """The job's model once it runs the cell that waits for the file ``go``."""

    async def waiting() -> bool:
        model = await job_model(api, job_id)
        assert model["state"] not in FINAL, (
            f"the job ended ({model['state']}: {model['reason']}) before its waiting cell"
        )
        return (
            model["state"] == "running"
            and model["current_source"] == WAITING_LINE
            and model["cells_done"] == model["current_cell"] - 1  # (issue 32: on disk)
        )

    await wait_until(waiting, timeout=timeout)
    return await job_model(api, job_id)


@pytest.mark.parametrize("name", [case.name for case in CASES])
async def test_a_job_interrupted_after_the_behaviour_still_gives_nbclients_outputs(
    api: Any,
    jp_serverapp: Any,
    jp_root_dir: Path,
    jp_http_port: int,
    jp_base_url: str,
    tmp_path: Path,
    references: References,
    name: str,
) -> None:
    """``jupyter lowcost run`` of the notebook; its instance is interrupted while the cell
    after the cells under test waits for ``go``; the job resumes at that cell on a new
    instance, and its output notebook is nbclient's."""
    case = CASES_BY_NAME[name]
    go = tmp_path / "go"
    notebook_path = jp_root_dir / f"{name}.ipynb"
    notebook_path.write_text(json.dumps(case.notebook(go)))
    output_path = jp_root_dir / f"{name}.output.ipynb"
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
    token = jp_serverapp.identity_provider.token
    bin_dir = str(Path(sys.executable).parent)
    run = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jupyter",
        "lowcost",
        "run",
        notebook_path.name,
        "--isPreemptible",
        "--type",
        "T4",
        "--url",
        url,
        "--token",
        token,
        cwd=jp_root_dir,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    finished = asyncio.ensure_future(run.communicate())
    job_id = None
    try:

        async def posted() -> bool:
            assert not finished.done(), f"jupyter lowcost run ended: {finished.result()}"
            return bool((await api("GET", "jobs"))[1])

        await wait_until(posted, timeout=60)
        job_id = (await api("GET", "jobs"))[1][0]["id"]
        first = (await until_waiting(api, job_id))["instance_id"]
        status, body = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 0})
        assert status == 202, body

        async def interrupted() -> bool:
            return bool((await job_model(api, job_id))["interruptions"])

        await wait_until(interrupted, timeout=60)
        go.touch()
        reference = await references.of(case)
        _, stderr = await asyncio.wait_for(asyncio.shield(finished), timeout=150)
    finally:
        if run.returncode is None:
            run.kill()
            await finished
        await end(api, job_id)
    assert run.returncode == 0, stderr.decode(errors="replace")
    model = await job_model(api, job_id)
    assert model["state"] == "succeeded", model["reason"]
    assert [i["instance_id"] for i in model["interruptions"]] == [first]
    output = json.loads(output_path.read_text())

    # The interruption came where intended: the cells before the waiting one ran once on
    # the first instance; the waiting cell ran again, on a new one.
    ran = [c for c in output["cells"] if "lowcost" in c.get("metadata", {})]
    waiting = next(i for i, c in enumerate(ran) if first_line(c) == WAITING_LINE)
    before = [c["metadata"]["lowcost"] for c in ran[:waiting]]
    assert [(m["instance_id"], m["attempts"]) for m in before] == [(first, 1)] * len(before)
    resumed = ran[waiting]["metadata"]["lowcost"]
    assert resumed["attempts"] == 2 and resumed["instance_id"] != first, resumed

    assert_same_as_nbclient(output, reference)
