"""A job's resume after an interruption (issue 28, items 1, 2, 4 and 5): the checkpoint it
resumes from and the cell it resumes at always agree, whatever the kernel's ``restored``
report does; what did not come back is said where the user looks; and a job that has
ended owns no kernel and no instance, whatever arrives meanwhile."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import requests
from conftest import manager_of, process_alive, wait_until
from job_notebooks import (
    interrupt_then_let_go,
    post_job,
    appending_cell,
    code_cells,
    job_model,
    notebook_of,
    outputs_text,
    until_running_cell,
    until_state,
    wait_for_file,
)
from jupyter_core.utils import ensure_async
from jupyter_process import LowCostServer
from tornado import web

from jupyter_lowcost.server.jobs.resume import defined_names, describe_missing

LIVE = ("pending", "running", "notice")


def held_after_its_checkpoint(go: Path) -> str:
    """Code that makes its cell's reply wait for the file ``go`` after the kernel has
    written the cell's checkpoint (a hook registered after the kernel's own): an
    interruption then loses the instance between the checkpoint and the runner seeing the
    cell complete."""
    return (
        "import pathlib, time\n"
        "get_ipython().events.register('post_run_cell', lambda *a: [time.sleep(0.05) for _ "
        f"in iter(lambda: pathlib.Path({str(go)!r}).exists(), True)])\n"
    )


async def test_an_instance_lost_after_the_first_cells_checkpoint_runs_that_cell_once(
    api: Any, jp_serverapp: Any, tmp_path: Path
) -> None:
    """Item 1: the runner had not seen cell 1 complete, so the relaunch restores nothing
    (not the latest checkpoint, which holds cell 1) and cell 1 runs again on a fresh
    kernel: ``n`` is 1, not 2."""
    go = tmp_path / "go"
    first_cell = "n = globals().get('n', 0) + 1\n" + held_after_its_checkpoint(go)
    notebook = notebook_of([first_cell, "print('n =', n)\n"], markdown_at=None)
    job_id = (await post_job(api, notebook))["id"]
    first = await until_running_cell(api, job_id, 1)
    kernel_id = (await job_model(api, job_id))["kernel_id"]
    manifests = manager_of(jp_serverapp).settings.checkpoint_dir / kernel_id / "manifests"
    await wait_until(lambda: any(manifests.glob("*.json")), timeout=60)
    assert (await job_model(api, job_id))["cells_done"] == 0

    status, _ = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 0})
    assert status == 202

    async def noticed() -> bool:
        return bool((await job_model(api, job_id))["interruptions"])

    await wait_until(noticed, timeout=60)
    go.touch()
    model = await until_state(api, job_id, "succeeded", "failed", timeout=120)
    assert model["state"] == "succeeded", model
    output = (await api("GET", f"jobs/{job_id}/output"))[1]
    code = code_cells(output)
    assert outputs_text(code[1]) == "n = 1\n"
    assert code[0]["metadata"]["lowcost"]["attempts"] == 2
    assert [(i["cell"], i["instance_id"]) for i in model["interruptions"]] == [(1, first)]


def writes_held_until(go: Path) -> str:
    """Code that makes the kernel's checkpoint writes wait for the file ``go`` (it wraps
    the store's ``write``, which every checkpoint's write goes through): the test's slow
    write. Before issue 32 it held the cell's reply, and the next cell never started."""
    return (
        "import pathlib as _pl, time as _tm\n"
        "from jupyter_lowcost.kernel import checkpointing as _cp\n"
        "def _held(snapshot, pause=None, _write=_cp.installed().store.write):\n"
        f"    while not _pl.Path({str(go)!r}).exists():\n"
        "        _tm.sleep(0.02)\n"
        "    return _write(snapshot, pause=pause)\n"
        "_cp.installed().store.write = _held\n"
    )


def manifests_of(jp_serverapp: Any, kernel_id: str) -> list[Path]:
    folder = manager_of(jp_serverapp).settings.checkpoint_dir / kernel_id / "manifests"
    return sorted(folder.glob("*.json"))


async def test_the_next_cell_runs_while_the_previous_cells_checkpoint_is_written(
    api: Any, jp_serverapp: Any, tmp_path: Path
) -> None:
    """Issue 32: a job's next cell starts at the previous cell's reply, before that
    cell's checkpoint is on disk (its write is held); the cell counts as done only once
    it is, and the job still ends with every cell once, each with its own checkpoint."""
    log, go = tmp_path / "cells.txt", tmp_path / "go"
    manifests_now = (
        "import glob, os\n"
        "print('manifests at start:', len(glob.glob(os.path.join(os.environ["
        "'JUPYTER_LOWCOST_CHECKPOINT_DIR'], 'manifests', '*.json'))))\n"
    )
    sources = [
        appending_cell(log, 1, before="x = bytearray(10**6)\n" + writes_held_until(go)),
        appending_cell(log, 2, before=manifests_now),
        appending_cell(log, 3, before="print('x', len(x))\n"),
    ]
    job_id = (await post_job(api, notebook_of(sources, markdown_at=None)))["id"]
    await until_running_cell(api, job_id, 2, before_done=False)
    model = await job_model(api, job_id)
    # Cell 2 runs (its end waits for cell 1's write), cell 1 is not done: no checkpoint.
    assert model["cells_done"] == 0 and model["current_cell"] == 2
    assert manifests_of(jp_serverapp, model["kernel_id"]) == []
    go.touch()
    model = await until_state(api, job_id, "succeeded", "failed", timeout=120)
    assert model["state"] == "succeeded", model
    assert model["cells_done"] == 3
    assert log.read_text().split() == ["1", "2", "3"]
    code = code_cells((await api("GET", f"jobs/{job_id}/output"))[1])
    assert [outputs_text(c) for c in code] == [
        "cell 1\n",
        "manifests at start: 0\ncell 2\n",
        "x 1000000\ncell 3\n",
    ]
    meta = [c["metadata"]["lowcost"] for c in code]
    assert [m["attempts"] for m in meta] == [1, 1, 1]
    assert meta[0]["checkpoint"] != meta[1]["checkpoint"]  # (each cell its own)
    text = (await api("GET", f"jobs/{job_id}/log"))[1]["text"]
    assert text.index("cell 2/3 started") < text.index("cell 1/3 done")


async def test_an_interruption_while_the_previous_cells_checkpoint_is_written_resumes_there(
    api: Any, jp_serverapp: Any, tmp_path: Path
) -> None:
    """Issue 32: cell 2 replied but its checkpoint's write is held when the instance is
    lost during cell 3: the job resumes at cell 2 (from cell 1's checkpoint), not at cell
    3, and the output notebook has every cell's outputs once."""
    log, go = tmp_path / "cells.txt", tmp_path / "go"
    sources = [
        appending_cell(log, 1, before="a = 1\n"),
        appending_cell(log, 2, before="b = 2\n" + writes_held_until(go)),
        appending_cell(log, 3, before=wait_for_file(go)),
        appending_cell(log, 4, before="print('sum', a + b)\n"),
    ]
    job_id = (await post_job(api, notebook_of(sources, markdown_at=None)))["id"]
    first = await until_running_cell(api, job_id, 3, before_done=False)
    model = await job_model(api, job_id)
    assert model["cells_done"] == 1  # (cell 2 replied; its checkpoint is not on disk)
    assert len(manifests_of(jp_serverapp, model["kernel_id"])) == 1
    model = await interrupt_then_let_go(api, job_id, first, go)
    assert log.read_text().split() == ["1", "2", "2", "3", "4"]  # (cell 2 ran again)
    assert [(i["cell"], i["instance_id"]) for i in model["interruptions"]] == [(3, first)]
    code = code_cells((await api("GET", f"jobs/{job_id}/output"))[1])
    assert [outputs_text(c) for c in code] == [
        "cell 1\n",
        "cell 2\n",
        "cell 3\n",
        "sum 3\ncell 4\n",
    ]
    assert [c["execution_count"] for c in code] == [1, 2, 3, 4]
    assert [c["metadata"]["lowcost"]["attempts"] for c in code] == [1, 2, 2, 1]
    text = (await api("GET", f"jobs/{job_id}/log"))[1]["text"]
    assert "cells 1-1 are done" in text


async def test_a_job_resumes_at_its_cell_when_the_kernels_restored_report_is_refused(
    api: Any, jp_serverapp: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """Item 4: 6,000 variables, and the server refuses the kernel's ``restored`` report
    (as it did past its body limit): the job still goes on at the interrupted cell, with
    its variables, no completed cell running twice."""

    def refuse(kernel_id: str, report: dict[str, Any]) -> dict[str, Any]:
        raise web.HTTPError(413, "the report is too large")

    monkeypatch.setattr(manager_of(jp_serverapp).reports, "restored", refuse)
    log, go = tmp_path / "cells.txt", tmp_path / "go"
    many = "for k in range(6000):\n    globals()[f'v{k}'] = k\n"
    count = "sum(1 for k in list(globals()) if k[:1] == 'v' and k[1:].isdigit())"
    sources = [
        appending_cell(log, 1, before=many),
        appending_cell(log, 2),
        appending_cell(log, 3, before=wait_for_file(go)),
        appending_cell(log, 4, before=f"print('last', v5999, {count})\n"),
    ]
    job_id = (await post_job(api, notebook_of(sources, markdown_at=None)))["id"]
    first = await until_running_cell(api, job_id, 3)
    model = await interrupt_then_let_go(api, job_id, first, go)
    assert log.read_text().split() == ["1", "2", "3", "4"]
    code = code_cells((await api("GET", f"jobs/{job_id}/output"))[1])
    assert "last 5999 6000" in outputs_text(code[3])
    assert [c["metadata"]["lowcost"]["attempts"] for c in code] == [1, 1, 2, 1]
    assert (await api("GET", f"kernels/{model['kernel_id']}"))[0] == 404


async def test_a_job_cancelled_while_its_kernel_is_relaunched_leaves_no_kernel_or_instance(
    api: Any, jp_serverapp: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """Item 2: the job ends (cancelled) while the recovery relaunches its kernel on a new
    instance (held while it starts): afterwards no kernel, no live instance and no
    launcher process of the job is left."""
    manager = manager_of(jp_serverapp)
    kernels = jp_serverapp.kernel_manager
    go = tmp_path / "go"
    notebook = notebook_of([wait_for_file(go), "print('never')"], markdown_at=None)
    job_id = (await post_job(api, notebook))["id"]
    first = await until_running_cell(api, job_id, 1)
    kernel_id = (await job_model(api, job_id))["kernel_id"]

    relaunching, gate = asyncio.Event(), asyncio.Event()
    launch = manager.backend.launch

    async def slow_to_start(record: Any, spec: Any) -> None:
        if record.kernel_id == kernel_id:
            relaunching.set()
            await gate.wait()
        await launch(record, spec)

    monkeypatch.setattr(manager.backend, "launch", slow_to_start)
    shutdowns: list[str] = []
    shutdown = kernels.shutdown_kernel

    async def noting_shutdown(kid: str, *args: Any, **kwargs: Any) -> Any:
        shutdowns.append(kid)
        return await ensure_async(shutdown(kid, *args, **kwargs))

    monkeypatch.setattr(kernels, "shutdown_kernel", noting_shutdown)

    status, _ = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 0})
    assert status == 202
    await wait_until(relaunching.is_set, timeout=60)
    cancel = asyncio.ensure_future(api("DELETE", f"jobs/{job_id}"))
    entry = manager.ledger.kernels.get(kernel_id)

    def ending() -> bool:
        ended = getattr(entry, "job_ended", None)
        return kernel_id in shutdowns or (ended is not None and ended.is_set())

    await wait_until(ending, timeout=30)  # (the job's end has begun)
    gate.set()  # the relaunch goes on
    status, model = await cancel
    assert status == 200 and model["state"] == "cancelled", model

    async def live() -> list[dict[str, Any]]:
        _, instances = await api("GET", "instances")
        return [i for i in instances if i["kernel_id"] == kernel_id and i["state"] in LIVE]

    async def nothing_live() -> bool:
        return not await live()

    try:
        await wait_until(nothing_live, timeout=60)
    except AssertionError:
        raise AssertionError(f"the ended job's kernel still has {await live()}") from None
    assert kernel_id not in kernels
    _, instances = await api("GET", "instances")
    pids = [
        manager.ledger.record(i["id"]).backend_state.get("pid")
        for i in instances
        if i["kernel_id"] == kernel_id
    ]
    assert len(pids) >= 2  # (the first instance, and the relaunch's)
    await wait_until(lambda: not any(process_alive(p) for p in pids if p), timeout=30)


GENERATOR_CELLS = [
    "gen = (i for i in range(3))\nip = get_ipython()\nx = 5\n",
    "print('waiting')\n",
    "print('x is', x)\n",
]
GEN_LINE = (
    "gen (generator) was not restored; it is defined in cell 1, which ran before the "
    "interruption: the job will fail if a later cell uses it"
)


async def test_what_a_resume_did_not_bring_back_is_said_in_the_log_the_output_and_the_job(
    api: Any, tmp_path: Path
) -> None:
    """Item 5: a generator and ``ip = get_ipython()`` cannot be checkpointed; after the
    interruption the job's log, its interruption and a note on the cell it resumed at name
    them, with the cell that defines them."""
    go = tmp_path / "go"
    sources = [GENERATOR_CELLS[0], wait_for_file(go) + GENERATOR_CELLS[1], GENERATOR_CELLS[2]]
    job_id = (await post_job(api, notebook_of(sources, markdown_at=None)))["id"]
    first = await until_running_cell(api, job_id, 2)
    await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 0})
    await until_state(api, job_id, "resuming")
    go.touch()
    model = await until_state(api, job_id, "succeeded", "failed", timeout=120)
    assert model["state"] == "succeeded", model

    log = (await api("GET", f"jobs/{job_id}/log"))[1]["text"]
    assert GEN_LINE in log
    assert (
        "ip (ipykernel.zmqshell.ZMQInteractiveShell) was not restored; it is defined in cell 1"
        in log
    )
    interruption = model["interruptions"][0]
    assert GEN_LINE in interruption["note"]
    assert {v["name"] for v in interruption["not_restored"]} == {"gen", "ip"}

    code = code_cells((await api("GET", f"jobs/{job_id}/output"))[1])
    note = code[1]["outputs"][0]
    assert note["name"] == "stderr" and GEN_LINE in "".join(note["text"])
    assert outputs_text(code[1]).endswith("waiting\n")
    assert {v["name"] for v in code[1]["metadata"]["lowcost"]["not_restored"]} == {"gen", "ip"}
    assert outputs_text(code[2]) == "x is 5\n"
    assert all(o.get("name") != "stderr" for c in (code[0], code[2]) for o in c["outputs"])


def until_job(server: LowCostServer, done: Any, timeout: float = 120) -> dict[str, Any]:
    """The server's only job, once ``done(job)``."""
    end = time.monotonic() + timeout
    while True:
        jobs = requests.get(server.url + "jobs", headers=server.headers, timeout=10).json()
        if jobs and done(jobs[0]):
            return dict(jobs[0])
        assert time.monotonic() < end, jobs
        time.sleep(0.1)


def test_the_cli_says_what_a_resume_did_not_bring_back(tmp_path: Path) -> None:
    """Item 5, in ``jupyter lowcost run`` (as the job goes) and ``jupyter lowcost logs``."""
    token = "resume-cli-token"
    server = LowCostServer(tmp_path, token)
    server.start()
    go = tmp_path / "go"
    sources = [GENERATOR_CELLS[0], wait_for_file(go) + GENERATOR_CELLS[1], GENERATOR_CELLS[2]]
    notebook = nbformat.from_dict(notebook_of(sources, markdown_at=None))
    nbformat.write(notebook, tmp_path / "nb.ipynb")
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    command = [sys.executable, "-m", "jupyter", "lowcost"]
    where = ["--url", server.base, "--token", token]
    options: dict[str, Any] = {"cwd": tmp_path, "env": {**os.environ, "PATH": path}, "text": True}
    run = subprocess.Popen(
        [*command, "run", "nb.ipynb", "--isPreemptible", *where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **options,
    )
    try:
        job = until_job(
            server,
            lambda j: j["current_cell"] == 2 and j["cells_done"] == 1 and j["state"] == "running",
        )
        answer = requests.post(
            server.url + f"instances/{job['instance_id']}/interrupt",
            json={"notice_seconds": 0},
            headers=server.headers,
            timeout=10,
        )
        assert answer.status_code == 202, answer.text
        until_job(server, lambda j: bool(j["interruptions"]))
        go.touch()
        _, stderr = run.communicate(timeout=180)
        assert run.returncode == 0, stderr
        assert "after interruption 1: 2 variables did not come back" in stderr
        assert GEN_LINE in stderr
        logs = subprocess.run(
            [*command, "logs", job["id"], *where],
            capture_output=True,
            timeout=60,
            check=False,
            **options,
        )
        assert logs.returncode == 0 and GEN_LINE in logs.stdout, logs
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        server.stop()


def test_the_cell_that_defines_a_missing_variable_is_the_last_one_that_ran() -> None:
    sources = [
        "import itertools as it\nfrom os import path\n",
        "def gen():\n    local = 1\n    yield local\nsteps = gen()\n",
        "%load_ext autoreload\nrows = [x for x in range(3)]\nwith open('f') as handle:\n    pass\n",
        "steps = iter([1])\n",  # (cell 4: not run yet)
        "this is not python\n",
    ]
    assert defined_names(sources[0]) == {"it", "path"}
    assert defined_names(sources[1]) == {"gen", "steps"}
    assert defined_names(sources[2]) >= {"rows", "handle"} and "x" not in defined_names(sources[2])
    assert defined_names(sources[4]) == frozenset()
    missing = [
        {"name": "steps", "type": "generator", "why": "cannot pickle 'generator' object"},
        {"name": "handle", "type": "_io.TextIOWrapper", "why": "closed"},
        {"name": "made", "type": "socket", "why": "cannot pickle 'socket' object"},
    ]
    lines = describe_missing(missing, 25, sources, 3, "before the interruption")
    then = "which ran before the interruption: the job will fail if a later cell uses it"
    assert lines == [
        f"steps (generator) was not restored; it is defined in cell 2, {then}",
        f"handle (_io.TextIOWrapper) was not restored; it is defined in cell 3, {then}",
        "made (socket) was not restored: cannot pickle 'socket' object",
        "and 22 more variables not restored",
    ]
