"""Issue 31: jupyter-scheduler's job UI runs low-cost jobs. Everything goes through
jupyter-scheduler's own REST API (``/scheduler/...``, what its JupyterLab UI calls), on a
server configured as an installed one: both extensions enabled, nothing else configured
by hand (``LowCostApp`` makes jupyter-scheduler's classes ours)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
import requests
from conftest import BASE_CONFIG, manager_of, wait_until
from job_notebooks import appending_cell, code_cells, notebook_of, outputs_text, wait_for_file
from jupyter_process import LowCostServer
from nbconvert import HTMLExporter
from traitlets import Unicode
from traitlets.config import Config

from jupyter_lowcost.server.scheduler import outputs
from jupyter_lowcost.server.scheduler.links import link_of

T4_LOW = "T4 · low-cost · $0.14/h"


def shipped_config(**extra: dict[str, Any]) -> dict[str, Any]:
    """The tests' base with jupyter-scheduler enabled (as its own installed file does),
    and ``extra``."""
    config = {section: dict(values) for section, values in BASE_CONFIG.items()}
    config["ServerApp"] = {
        "jpserver_extensions": dict(BASE_CONFIG["ServerApp"]["jpserver_extensions"])
    }
    for source in (extra,):
        for section, values in source.items():
            merged = config.setdefault(section, {})
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    value = {**merged[key], **value}
                merged[key] = value
    config["ServerApp"]["jpserver_extensions"]["jupyter_scheduler"] = True
    return config


@pytest.fixture
def jp_server_config(request: pytest.FixtureRequest) -> Config:
    # (the TaskRunner looks for due job definitions every second, not every 10)
    marker = request.node.get_closest_marker("lowcost")
    return Config(
        shipped_config(TaskRunner={"poll_interval": 1}, **(marker.kwargs if marker else {}))
    )


@pytest.fixture
def scheduler(jp_fetch: Any) -> Any:
    """``await scheduler("POST", "jobs", body)``: (status, JSON) of a jupyter-scheduler call."""

    async def call(method: str, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"params": params} if params else {}
        if body is not None:
            kwargs["body"] = json.dumps(body)
        response = await jp_fetch(
            "scheduler", *path.split("/"), method=method, raise_error=False, **kwargs
        )
        text = response.body.decode() if response.body else ""
        return response.code, (json.loads(text) if text else None)

    return call


def write_notebook(root: Path, name: str, sources: list[str]) -> str:
    nbformat.write(nbformat.from_dict(notebook_of(sources, markdown_at=None)), root / name)
    return name


async def create_job(scheduler: Any, input_uri: str, **fields: Any) -> str:
    body = {
        "name": "scheduled-by-the-ui",
        "input_uri": input_uri,
        "runtime_environment_name": "jupyter-lowcost",
        "compute_type": T4_LOW,
        "output_formats": ["ipynb", "html"],
        **fields,
    }
    status, answer = await scheduler("POST", "jobs", body)
    assert status == 200, answer
    return answer["job_id"]


async def row_of(scheduler: Any, job_id: str) -> dict[str, Any]:
    status, row = await scheduler("GET", f"jobs/{job_id}")
    assert status == 200, row
    return row


async def until_status(scheduler: Any, job_id: str, *statuses: str, timeout: float = 120) -> Any:
    async def reached() -> bool:
        return (await row_of(scheduler, job_id))["status"] in statuses

    await wait_until(reached, timeout=timeout)
    return await row_of(scheduler, job_id)


def our_job(serverapp: Any, job_id: str) -> Any:
    """Our job record behind the row ``job_id`` (through the scheduler's links)."""
    scheduler = serverapp.web_app.settings["scheduler"]
    with scheduler.db_session() as session:
        link = link_of(session, job_id)
        lowcost_id = link.lowcost_id if link is not None else None
    return manager_of(serverapp).jobs.jobs.get(lowcost_id) if lowcost_id else None


async def test_create_job_offers_the_catalog_and_this_server(
    scheduler: Any, jp_serverapp: Any
) -> None:
    status, environments = await scheduler("GET", "runtime_environments")
    assert status == 200, environments
    assert [e["name"] for e in environments] == ["jupyter-lowcost"]
    (env,) = environments
    assert env["label"] == env["name"]
    catalog = manager_of(jp_serverapp).ctx.catalog.values()
    expected = [f"{t.name} · low-cost · ${t.price_low_cost:.2f}/h" for t in catalog]
    expected += [f"{t.name} · regular · ${t.price_regular:.2f}/h" for t in catalog]
    assert env["compute_types"] == [*expected, "this server"]
    assert env["default_compute_type"] == T4_LOW
    assert [f["name"] for f in env["output_formats"]] == ["ipynb", "html"]


@pytest.mark.lowcost(
    SchedulerApp={
        "environment_manager_class": "jupyter_scheduler.environments.CondaEnvironmentManager"
    }
)
async def test_a_class_the_user_configured_stays(scheduler: Any) -> None:
    status, environments = await scheduler("GET", "runtime_environments")
    assert status == 200 and "jupyter-lowcost" not in [e["name"] for e in environments]


async def test_a_job_from_the_ui_runs_as_our_job_through_an_interruption(
    scheduler: Any, api: Any, jp_serverapp: Any, jp_root_dir: Path, tmp_path: Path
) -> None:
    log, go = tmp_path / "cells.txt", tmp_path / "go"
    sources = [
        appending_cell(log, 1),
        appending_cell(log, 2, before=wait_for_file(go)),
        appending_cell(log, 3, before="print('x is', x)\n"),
    ]
    name = write_notebook(jp_root_dir, "ui.ipynb", sources)
    job_id = await create_job(scheduler, name, parameters={"x": "42"})
    await wait_until(lambda: our_job(jp_serverapp, job_id) is not None, timeout=30)
    ours = our_job(jp_serverapp, job_id)
    assert (ours.instance_type, ours.low_cost, ours.parameters) == ("T4", True, {"x": 42})
    assert (await row_of(scheduler, job_id))["status"] == "IN_PROGRESS"

    async def waiting_for_go() -> bool:  # (code cell 3: our parameters cell comes first)
        _, model = await api("GET", f"jobs/{ours.id}")
        return (
            model["current_cell"] == 3 and model["cells_done"] == 2 and model["state"] == "running"
        )

    await wait_until(waiting_for_go, timeout=120)
    first = ours.instance_id
    status, _ = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 0})
    assert status == 202
    await wait_until(lambda: ours.interruptions, timeout=60)
    assert (await row_of(scheduler, job_id))["status"] == "IN_PROGRESS"
    go.touch()
    row = await until_status(scheduler, job_id, "COMPLETED", "FAILED", "STOPPED", timeout=150)
    assert row["status"] == "COMPLETED", row
    assert log.read_text().split() == ["1", "2", "3"]
    assert row["start_time"] and row["end_time"] and row["status_message"] is None

    paths = jp_serverapp.web_app.settings["scheduler"].get_staging_paths(
        jp_serverapp.web_app.settings["scheduler"].get_job(job_id, False)
    )
    output = nbformat.read(paths["ipynb"], as_version=4)
    code = code_cells(output)
    assert "x is 42" in outputs_text(code[-1])
    assert output.metadata["lowcost"]["interruptions"], output.metadata["lowcost"]
    assert "x is 42" in Path(paths["html"]).read_text()

    # (the server runs from another folder than its root: jupyter-scheduler#568, downloads.py)
    status, _ = await scheduler("GET", f"jobs/{job_id}/download_files", redownload="false")
    assert status == 204
    folder = jp_root_dir / "jobs" / f"ui-{job_id}"

    def downloaded() -> bool:
        return len(list(folder.glob("ui-*.ipynb"))) == 1 and len(list(folder.glob("*.html"))) == 1

    await wait_until(downloaded, timeout=30)
    assert (await row_of(scheduler, job_id))["downloaded"] is True


async def test_a_failing_cell_fails_the_row_with_our_reason(
    scheduler: Any, jp_serverapp: Any, jp_root_dir: Path
) -> None:
    name = write_notebook(jp_root_dir, "fails.ipynb", ["print('one')", "1 / 0", "print('never')"])
    job_id = await create_job(scheduler, name, output_formats=["ipynb"])
    row = await until_status(scheduler, job_id, "COMPLETED", "FAILED", "STOPPED")
    ours = our_job(jp_serverapp, job_id)
    assert row["status"] == "FAILED" and ours.state.value == "failed"
    assert row["status_message"] == ours.reason and "ZeroDivisionError" in ours.reason


class TemplatesNotFound(HTMLExporter):
    """nbconvert as in an environment whose share/jupyter lacks its templates (a venv
    over another Python's packages): it raises a ValueError naming the template."""

    template_name = Unicode("lab-not-installed")


async def test_an_output_that_cannot_be_written_leaves_the_row_completed_and_says_why(
    scheduler: Any, jp_serverapp: Any, jp_root_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outputs, "HTMLExporter", TemplatesNotFound)
    name = write_notebook(jp_root_dir, "nohtml.ipynb", ["print('made it')"])
    job_id = await create_job(scheduler, name)
    row = await until_status(scheduler, job_id, "COMPLETED", "FAILED", "STOPPED")
    assert row["status"] == "COMPLETED", row
    assert "html output could not be written" in row["status_message"], row
    assert "lab-not-installed" in row["status_message"], row
    # (the notebook is written all the same, and every later answer about the row works)
    paths = jp_serverapp.web_app.settings["scheduler"].get_staging_paths(
        jp_serverapp.web_app.settings["scheduler"].get_job(job_id, False)
    )
    assert "made it" in outputs_text(code_cells(nbformat.read(paths["ipynb"], as_version=4))[0])
    assert not Path(paths["html"]).exists()
    assert (await row_of(scheduler, job_id))["status"] == "COMPLETED"
    status, listed = await scheduler("GET", "jobs")
    assert status == 200 and job_id in [job["job_id"] for job in listed["jobs"]]


async def test_a_refused_notebook_is_the_posts_answer(scheduler: Any, jp_root_dir: Path) -> None:
    name = write_notebook(jp_root_dir, "bad.ipynb", ["print(1)"])
    status, answer = await scheduler(
        "POST",
        "jobs",
        {
            "name": "n",
            "input_uri": name,
            "runtime_environment_name": "jupyter-lowcost",
            "compute_type": "Z99 · low-cost · $1.00/h",
        },
    )
    assert status == 500 and "Z99" in answer["message"], answer
    status, answer = await scheduler(
        "POST",
        "jobs",
        {
            "name": "n",
            "input_uri": name,
            "runtime_environment_name": "jupyter-lowcost",
            "compute_type": T4_LOW,
            "parameters": {"class": "1"},
        },
    )
    assert status == 500 and "keyword" in answer["message"], answer


async def test_stop_in_the_ui_cancels_our_job(
    scheduler: Any, jp_serverapp: Any, jp_root_dir: Path, tmp_path: Path
) -> None:
    name = write_notebook(jp_root_dir, "stop.ipynb", [wait_for_file(tmp_path / "never")])
    job_id = await create_job(scheduler, name)
    await wait_until(lambda: our_job(jp_serverapp, job_id) is not None, timeout=30)
    ours = our_job(jp_serverapp, job_id)
    await wait_until(lambda: ours.state.value == "running" and ours.kernel_id, timeout=120)
    kernel_id = ours.kernel_id
    status, _ = await scheduler("PATCH", f"jobs/{job_id}", {"status": "STOPPED"})
    assert status == 204
    row = await until_status(scheduler, job_id, "STOPPED", "FAILED", "COMPLETED", timeout=60)
    assert row["status"] == "STOPPED", row
    assert ours.state.value == "cancelled"
    assert kernel_id not in jp_serverapp.kernel_manager


async def test_a_scheduled_definition_creates_our_job(
    scheduler: Any, jp_serverapp: Any, jp_root_dir: Path
) -> None:
    name = write_notebook(jp_root_dir, "cron.ipynb", ["print('on schedule')"])
    before = set(manager_of(jp_serverapp).jobs.jobs)
    body = {
        "name": "every-minute",
        "input_uri": name,
        "runtime_environment_name": "jupyter-lowcost",
        "compute_type": "T4 · regular · $0.01/h (an older price)",
        "output_formats": ["ipynb"],
        "schedule": "* * * * *",
        "timezone": "UTC",
    }
    status, answer = await scheduler("POST", "job_definitions", body)
    assert status == 200, answer
    definition = answer["job_definition_id"]

    async def fired() -> list[dict[str, Any]]:
        _, listed = await scheduler("GET", "jobs", job_definition_id=definition)
        return listed["jobs"]

    await wait_until(fired, timeout=75)  # (cron fires on the minute)
    job_id = (await fired())[0]["job_id"]
    row = await until_status(scheduler, job_id, "COMPLETED", "FAILED", "STOPPED")
    assert row["status"] == "COMPLETED", row
    ours = our_job(jp_serverapp, job_id)
    assert ours.id not in before and (ours.instance_type, ours.low_cost) == ("T4", False)
    status, _ = await scheduler("DELETE", f"job_definitions/{definition}")
    assert status == 204


async def test_jobs_of_jupyter_lowcost_run_are_listed(
    scheduler: Any, api: Any, jp_serverapp: Any
) -> None:
    notebook = notebook_of(["print('from the cli')"], markdown_at=None)
    status, job = await api(
        "POST",
        "jobs",
        {"notebook": notebook, "name": "cli.ipynb", "instance_type": "P100", "low_cost": False},
    )
    assert status == 201, job

    async def listed() -> list[dict[str, Any]]:
        _, answer = await scheduler("GET", "jobs")
        return [j for j in answer["jobs"] if j["name"] == "cli.ipynb"]

    await wait_until(listed, timeout=30)

    async def completed() -> bool:
        return [j["status"] for j in await listed()] == ["COMPLETED"]

    await wait_until(completed, timeout=120)
    (row,) = await listed()
    assert row["compute_type"] == "P100 · regular · $1.72/h"
    assert row["runtime_environment_name"] == "jupyter-lowcost"


# -- a restart of the server -------------------------------------------------------------

TOKEN = "scheduler-restart-token"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LowCostServer]:
    """``jupyter server`` in a process of its own, configured as installed (the packages'
    own files in the environment enable both extensions), nothing by hand."""
    server = LowCostServer(tmp_path, TOKEN)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def rest(server: LowCostServer, method: str, path: str, body: Any = None) -> Any:
    response = requests.request(
        method, f"{server.base}scheduler/{path}", json=body, headers=server.headers, timeout=60
    )
    assert response.status_code < 300, response.text
    return response.json() if response.text else None


def poll(condition: Any, server: LowCostServer, timeout: float = 120) -> Any:
    end = time.monotonic() + timeout
    while True:
        try:
            found = condition()
            if found:
                return found
        except (requests.ConnectionError, AssertionError):
            pass
        assert time.monotonic() < end, server.log()[-4000:]
        time.sleep(0.1)


def test_rows_are_reconciled_when_the_server_restarts(
    server: LowCostServer, tmp_path: Path
) -> None:
    log, go = tmp_path / "cells.txt", tmp_path / "go"
    sources = [appending_cell(log, 1), appending_cell(log, 2, before=wait_for_file(go))]
    write_notebook(tmp_path, "restart.ipynb", sources)
    job_id = rest(
        server,
        "POST",
        "jobs",
        {
            "name": "goes-on",
            "input_uri": "restart.ipynb",
            "runtime_environment_name": "jupyter-lowcost",
            "compute_type": T4_LOW,
            "output_formats": ["ipynb"],
        },
    )["job_id"]

    def on_cell_2() -> bool:
        return any(
            j["current_cell"] == 2 and j["cells_done"] == 1 and j["state"] == "running"
            for j in server.get("jobs").json()
        )

    poll(on_cell_2, server)
    server.kill_hard()
    # Rows the killed server left: one whose job is gone, one its user was stopping.
    db = sqlite3.connect(tmp_path / "data" / "scheduler.sqlite")
    for row_id, status in (("gone-row-0001", "IN_PROGRESS"), ("stopping-row-0001", "STOPPING")):
        db.execute(
            "INSERT INTO jobs (job_id, runtime_environment_name, compute_type, input_filename, "
            "name, status, create_time, update_time, output_formats, url) VALUES "
            "(?, 'jupyter-lowcost', ?, 'x.ipynb', ?, ?, 0, 0, '[]', ?)",
            (row_id, T4_LOW, row_id, status, f"/jobs/{row_id}"),
        )
        db.execute(
            "INSERT INTO lowcost_links (job_id, lowcost_id, final, row_deleted) "
            "VALUES (?, ?, 0, 0)",
            (row_id, f"{row_id[:4]}00000000"),
        )
    db.commit()
    db.close()
    server.start()

    def rows() -> dict[str, dict[str, Any]]:
        return {j["job_id"]: j for j in rest(server, "GET", "jobs?max_items=100")["jobs"]}

    poll(lambda: rows()["gone-row-0001"]["status"] == "FAILED", server, timeout=60)
    current = rows()
    assert "does not know the jupyter-lowcost job" in current["gone-row-0001"]["status_message"]
    assert current["stopping-row-0001"]["status"] == "STOPPED"
    assert current[job_id]["status"] == "IN_PROGRESS"  # (resumed by our jobs service)
    go.touch()
    poll(lambda: rows()[job_id]["status"] == "COMPLETED", server)
    assert log.read_text().split() == ["1", "2"]
