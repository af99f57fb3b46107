"""``jupyter lowcost``, run as a user runs it: a real command in a subprocess, talking to a
real ``jupyter server`` (or starting one), its output, its exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
import requests
from job_notebooks import appending_cell, code_cells, notebook_of, outputs_text, wait_for_file
from jupyter_process import LowCostServer

from jupyter_lowcost.server.rest_schemas import MAX_JOB_BYTES

TOKEN = "cli-test-token"
BIN = str(Path(sys.executable).parent)


def jupyter_lowcost(
    *arguments: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``jupyter lowcost ARGUMENTS`` (jupyter_core finds the jupyter-lowcost command)."""
    return subprocess.run(
        [sys.executable, "-m", "jupyter", "lowcost", *arguments],
        cwd=cwd,
        env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LowCostServer]:
    """A jupyter server rooted at ``tmp_path`` (the tests' notebooks are there)."""
    server = LowCostServer(tmp_path, TOKEN)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def on(server: LowCostServer) -> list[str]:
    return ["--url", server.base, "--token", TOKEN]


def read(path: Path) -> Any:
    """A notebook as nbformat reads it (lines of text joined)."""
    return nbformat.read(str(path), as_version=4)


def write(path: Path, notebook: dict[str, Any]) -> Path:
    nbformat.write(nbformat.from_dict(notebook), str(path))
    return path


def test_run_shows_progress_and_writes_the_output_notebook(
    server: LowCostServer, tmp_path: Path
) -> None:
    log = tmp_path / "cells.txt"
    notebook = notebook_of(["alpha = 1\n", *(appending_cell(log, n) for n in (1, 2)), "alpha * 2"])
    notebook["cells"][0]["metadata"]["tags"] = ["parameters"]
    write(tmp_path / "train.ipynb", notebook)
    done = jupyter_lowcost(
        "run", "train.ipynb", "--preemptible", "--type", "T4", "-p", "alpha=21", *on(server),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("job ") and "train.ipynb on low-cost T4, 5 cells" in lines[0]
    assert any(line.startswith("[####################] 5/5 cells") for line in lines)
    assert "succeeded: 5/5 cells, 0 interruption(s)" in lines[-1]
    assert "output train.output.ipynb" in lines[-1]
    output = read(tmp_path / "train.output.ipynb")
    code = code_cells(output)
    assert "alpha = 21" in "".join(code[1]["source"])
    assert outputs_text(code[2]) == "cell 1\n" and code[4]["outputs"][0]["data"] == {
        "text/plain": "42"
    }
    assert output["metadata"]["lowcost"]["tier"] == "low-cost"
    assert log.read_text().split() == ["1", "2"]
    # The notebook itself is untouched.
    assert code_cells(read(tmp_path / "train.ipynb"))[3]["outputs"] == []


def test_a_failing_cell_exits_1_with_its_traceback(server: LowCostServer, tmp_path: Path) -> None:
    write(tmp_path / "bad.ipynb", notebook_of(["x = 1", "raise ValueError('no data')", "x"]))
    done = jupyter_lowcost("run", "bad.ipynb", "-o", "out.ipynb", *on(server), cwd=tmp_path)
    assert done.returncode == 1
    assert "ValueError: no data" in done.stderr
    assert "failed: cell 2 raised ValueError: no data; 1/3 cells" in done.stderr.splitlines()[-1]
    output = read(tmp_path / "out.ipynb")
    assert code_cells(output)[1]["outputs"][0]["ename"] == "ValueError"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["run", "missing.ipynb"], "no such file: missing.ipynb"),
        (["run", "text.ipynb"], "text.ipynb is not a notebook (not JSON"),
        (["run", "ok.ipynb", "--type", "Z9"], "unknown instance type 'Z9'; the catalog has: T4"),
        (["run", "ok.ipynb", "--kernel", "nope"], "no kernelspec named 'nope'"),
        (["run", "ok.ipynb", "--token", "wrong"], "refused the token (403)"),
        (["run", "ok.ipynb", "--fast"], "unknown option --fast"),
        (["run", "ok.ipynb", "--type"], "argument --type: expected one argument"),
        (["run", "ok.ipynb", "-p", "alpha"], "-p alpha: say NAME=VALUE"),
        (["run"], "expected NOTEBOOK, got nothing"),
        (["run", "ok.ipynb", "--output", "no/dir/x.ipynb"], "no folder no/dir"),
        (["show", "0123456789ab"], "no job with id '0123456789ab'"),
        (["show", "nope"], "'nope' is not a job id (12 hex digits"),
        (["logs", "../jobs"], "'../jobs' is not a job id"),
        (["cancel", "0123456789ab\n"], "is not a job id"),
        (["cancel", "0123456789AB/../x"], "is not a job id"),
        (["run", "fifo.ipynb"], "fifo.ipynb is not a regular file (a FIFO, a device or a socket)"),
        (["run", "/dev/zero"], "/dev/zero is not a regular file"),
        (["run", "huge.ipynb"], "huge.ipynb is 67108865 bytes: a job's notebook is at most 64 MiB"),
        (["run", "ok.ipynb", "-o", "folder.ipynb"], "--output folder.ipynb is not a regular file"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(
    server: LowCostServer, tmp_path: Path, arguments: list[str], message: str
) -> None:
    write(tmp_path / "ok.ipynb", notebook_of(["print(1)"]))
    (tmp_path / "text.ipynb").write_text("hello")
    os.mkfifo(tmp_path / "fifo.ipynb")  # (reading it would wait for a writer for ever)
    with open(tmp_path / "huge.ipynb", "wb") as huge:  # (sparse: no disk used)
        huge.truncate(MAX_JOB_BYTES + 1)
    (tmp_path / "folder.ipynb").mkdir()
    if arguments[0] != "frobnicate":
        extra = ["--url", server.base] + ([] if "--token" in arguments else ["--token", TOKEN])
        arguments = [*arguments, *extra]
    done = jupyter_lowcost(*arguments, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr
    assert requests.get(server.url + "jobs", headers=server.headers, timeout=10).json() == []


def test_detach_then_logs_follow_then_show_and_jobs(server: LowCostServer, tmp_path: Path) -> None:
    log = tmp_path / "cells.txt"
    write(tmp_path / "nb.ipynb", notebook_of([appending_cell(log, n) for n in (1, 2, 3)]))
    detached = jupyter_lowcost("run", "nb.ipynb", "--isPreemptible", "--detach", *on(server),
                               cwd=tmp_path)  # fmt: skip
    assert detached.returncode == 0, detached.stderr
    job_id = detached.stdout.strip()
    assert len(job_id) == 12 and detached.stderr == ""
    follow = jupyter_lowcost("logs", job_id, "--follow", *on(server), cwd=tmp_path)
    assert follow.returncode == 0, follow.stderr
    text = follow.stdout
    assert "cell 3/3 done" in text and "  cell 2" in text
    assert text.rstrip().endswith("succeeded: all 3 cells ran")
    shown = jupyter_lowcost("show", job_id, *on(server), cwd=tmp_path)
    assert f"Job {job_id}: nb.ipynb" in shown.stdout
    assert "succeeded (all 3 cells ran)" in shown.stdout and "low-cost T4" in shown.stdout
    listed = jupyter_lowcost("jobs", *on(server), cwd=tmp_path)
    assert listed.stdout.splitlines()[1].split()[:3] == [job_id, "succeeded", "3/3"]
    # The detached job wrote its output beside the notebook (the server's root is here).
    assert code_cells(read(tmp_path / "nb.output.ipynb"))[2]["outputs"]
    again = jupyter_lowcost("cancel", job_id, *on(server), cwd=tmp_path)
    assert again.returncode == 2 and "has already ended (succeeded)" in again.stderr


def test_cancel_stops_a_running_job(server: LowCostServer, tmp_path: Path) -> None:
    go = tmp_path / "go"
    write(tmp_path / "slow.ipynb", notebook_of(["print('first')", wait_for_file(go), "print(3)"]))
    job_id = jupyter_lowcost("run", "slow.ipynb", "--detach", *on(server), cwd=tmp_path).stdout
    job_id = job_id.strip()
    until = time.monotonic() + 60
    while (
        requests.get(server.url + f"jobs/{job_id}", headers=server.headers, timeout=10).json()[
            "current_cell"
        ]
        != 2
    ):
        assert time.monotonic() < until
        time.sleep(0.1)
    cancelled = jupyter_lowcost("cancel", job_id, *on(server), cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"job {job_id} cancelled after 1/3 cells"
    shown = jupyter_lowcost("show", job_id, *on(server), cwd=tmp_path)
    assert "cancelled (cancelled by its user)" in shown.stdout


def test_with_no_server_running_the_command_starts_one(tmp_path: Path) -> None:
    """A fresh install: no server runs; ``jupyter lowcost run`` starts one in the
    background (it outlives the command), and the next command finds it."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_TOKEN": "",
    }
    write(home / "nb.ipynb", notebook_of(["print('hello')"]))
    try:
        done = jupyter_lowcost("run", "nb.ipynb", cwd=home, env=env)
        assert done.returncode == 0, done.stderr
        assert "no Jupyter server runs; starting one in the background" in done.stderr
        assert "succeeded" in done.stderr.splitlines()[-1]
        assert (home / "nb.output.ipynb").exists()
        status = jupyter_lowcost("status", cwd=home, env=env)
        assert status.returncode == 0, status.stderr
        assert "Backend: local" in status.stdout and "1 in all" in status.stdout
        assert "starting one" not in status.stderr
        types = jupyter_lowcost("types", cwd=home, env=env)
        assert types.stdout.splitlines()[1].split()[0] == "T4"
    finally:
        for info in (tmp_path / "runtime").glob("jpserver-*.json"):
            os.kill(json.loads(info.read_text())["pid"], signal.SIGTERM)


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    """``command`` run as user ``nobody`` (another local user of the machine)."""
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command],
        check=False,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("runtime_existed", [False, True], ids=["fresh", "left-0755"])
def test_the_server_a_command_starts_shows_other_users_no_token_and_no_job_output(
    runtime_existed: bool,
) -> None:
    """On a fresh account (no runtime folder yet), or one an older version left with a
    runtime folder others can enter, another local user reads neither the started
    server's URL with its token, nor its log, nor an output notebook the CLI writes."""
    base = Path(tempfile.mkdtemp(prefix="jupyter-lowcost-modes-"))
    base.chmod(0o755)  # others may enter: only what is made inside must keep them out
    home, runtime, outputs = base / "home", base / "runtime", base / "outputs"
    home.mkdir(mode=0o755)
    outputs.mkdir(mode=0o755)
    if runtime_existed:
        runtime.mkdir(mode=0o755)
        (runtime / "jupyter-lowcost-server.log").write_text("an older server's log\n")
        (runtime / "jupyter-lowcost-server.log").chmod(0o644)
    readable = base / "readable.txt"
    readable.write_text("anyone may read this\n")
    readable.chmod(0o644)
    env = {
        "HOME": str(home),
        "JUPYTER_RUNTIME_DIR": str(runtime),
        "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_TOKEN": "",
    }
    write(home / "nb.ipynb", notebook_of(["print('the secret result')"]))
    output = outputs / "nb.output.ipynb"  # (outside the server's root: the CLI writes it)
    try:
        done = jupyter_lowcost("run", "nb.ipynb", "--output", str(output), cwd=home, env=env)
        assert done.returncode == 0, done.stderr
        [info] = runtime.glob("jpserver-*.json")
        token = json.loads(info.read_text())["token"]
        [opener] = runtime.glob("jpserver-*-open.html")
        assert token and token in opener.read_text()
        log = runtime / "jupyter-lowcost-server.log"
        assert log.read_text().strip()
        assert "the secret result" in output.read_text()

        # Another user can enter the base folder and read what is meant for everyone...
        assert as_nobody("cat", str(readable)).stdout == "anyone may read this\n"
        # ...but not the token, the log, nor the job's output, nor list the runtime folder.
        for path in (opener, info, log, output):
            refused = as_nobody("cat", str(path))
            assert refused.returncode != 0 and "Permission denied" in refused.stderr, path
            assert token not in refused.stdout and "secret" not in refused.stdout
        assert as_nobody("ls", str(runtime)).returncode != 0
    finally:
        for info in runtime.glob("jpserver-*.json"):
            os.kill(json.loads(info.read_text())["pid"], signal.SIGTERM)
        shutil.rmtree(base, ignore_errors=True)


def test_a_job_id_that_is_a_path_reaches_no_other_route(
    server: LowCostServer, tmp_path: Path
) -> None:
    """``cancel ../instances/<id>`` once stopped that instance's kernel (and then crashed):
    an id that is no job id goes in no URL."""
    started = server.post("kernels", {"instance_type": "T4", "low_cost": True})
    assert started.status_code == 201, started.text
    instance_id = started.json()["instance"]["id"]
    for command in ("cancel", "show", "logs"):
        done = jupyter_lowcost(command, f"../instances/{instance_id}", *on(server), cwd=tmp_path)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert done.stderr.strip() == (
            f"jupyter lowcost {command}: '../instances/{instance_id}' is not a job id "
            "(12 hex digits, as jupyter lowcost jobs lists them)"
        )
    assert server.get(f"instances/{instance_id}").json()["state"] == "running"


def test_parameters_as_papermill_reads_them_nan_and_infinities_included(
    server: LowCostServer, tmp_path: Path
) -> None:
    write(
        tmp_path / "p.ipynb",
        notebook_of(["print(x != x, y, z, -w, repr(t), repr(f), repr(n), T, N)"], markdown_at=None),
    )
    done = jupyter_lowcost(
        "run", "p.ipynb", "-p", "x=nan", "-p", "y=inf", "-p", "z=1e400", "-p", "w=-inf",
        "-p", "t=true", "-p", "f=false", "-p", "n=none", "-p", "T=True", "-p", "N=None",
        *on(server), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    output = read(tmp_path / "p.output.ipynb")
    injected = "".join(code_cells(output)[0]["source"])
    expected = "x = float('nan')\ny = float('inf')\nz = float('inf')\nw = float('-inf')\n"
    assert expected in injected
    assert outputs_text(code_cells(output)[1]) == (
        "True inf inf inf 'true' 'false' 'none' True None\n"
    )
