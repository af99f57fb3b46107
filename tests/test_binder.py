"""The Binder demo: binder/ built as repo2docker builds it, in a fresh virtual environment
(``pip install -r binder/requirements.txt``, then ``binder/postBuild`` in the repository's
folder), JupyterLab started through ``binder/start`` as the container starts it, and the
demo notebook run headless against it, cell by cell.

repo2docker's base environment brings Python, Node.js, JupyterLab and Jupyter Server; here
the venv's pip brings JupyterLab and Jupyter Server (jupyter-lowcost depends on them) and
this machine has Node.js.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
import requests
from fresh_install import fresh_copy, fresh_venv, run_logged
from jupyter_process import JupyterProcess
from network_guard import without_guard
from notebook_runner import NotebookRunner, text_of

ARTIFACTS = Path(__file__).parent / "artifacts"
TOKEN = "binder-demo-token"


@pytest.fixture(scope="module")
def binder_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh copy of the repository built by binder/ in a new venv; (its folder, its env).
    The copy has no built extension (git ignores it): postBuild builds it from source."""
    root = tmp_path_factory.mktemp("binder")
    repo = fresh_copy(root / "repo")
    env = fresh_venv(root)
    log = root / "build.log"
    # What repo2docker runs, in the repository's folder (pip and npm reach their registries:
    # the one thing not under the network guard):
    installing = without_guard(env)
    run_logged(
        ["pip", "install", "--no-cache-dir", "-r", "binder/requirements.txt"],
        repo,
        installing,
        log,
    )
    run_logged(["./binder/postBuild"], repo, installing, log)
    yield repo, env


def test_binder_builds_the_extension_from_source_and_enables_it(
    binder_build: tuple[Path, dict[str, str]],
) -> None:
    repo, env = binder_build
    python = shutil.which("python", path=env["PATH"])
    assert python is not None and python.startswith(env["VIRTUAL_ENV"])
    listed = subprocess.run(
        ["jupyter", "labextension", "list"], env=env, capture_output=True, text=True, check=True
    )
    plain = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)  # no colours
    assert re.search(r"jupyter-lowcost v\S+ enabled OK", plain), plain
    built = Path(env["VIRTUAL_ENV"], "share/jupyter/labextensions/jupyter-lowcost")
    assert (built / "static" / "style.js").is_file()
    # It was built here, from labextension/ (nothing built was copied in).
    assert (repo / "jupyter_lowcost" / "labextension" / "static" / "style.js").is_file()


@pytest.mark.timeout(900)
def test_the_demo_notebook_runs_and_shows_an_interruption_and_the_resume(
    binder_build: tuple[Path, dict[str, str]],
) -> None:
    repo, env = binder_build
    home = Path(env["HOME"])
    server = JupyterProcess(
        "jupyterlab",
        home,
        TOKEN,
        "lab.log",
        program=[str(repo / "binder" / "start"), "jupyter", "lab", "--no-browser"],
    )

    def answers() -> bool:
        try:
            response = requests.get(
                f"{server.base}lowcost/api/status", headers=server.headers, timeout=5
            )
        except requests.ConnectionError:
            return server.exited()
        return response.status_code == 200

    server.launch(repo, env, answers, cwd=repo)
    try:
        status = requests.get(f"{server.base}lowcost/api/status", headers=server.headers).json()
        # binder/start brought the demo settings in.
        assert status["demo"].startswith("Demo server (LowCostApp.demo)")
        assert status["lifetime_cap_seconds"] == 600
        runner = NotebookRunner(server.base, TOKEN, "binder/demo.ipynb")
        runner.start()
        notebook = nbformat.read(repo / "binder" / "demo.ipynb", as_version=4)
        try:
            runner.run(notebook)
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            nbformat.write(notebook, ARTIFACTS / "demo.executed.ipynb")
        history = runner.placement()["history"]
    except BaseException:
        print(server.log()[-8000:])
        raise
    finally:
        server.stop()

    cells = [text_of(c) for c in notebook.cells if c.cell_type == "code"]
    types, on, where, trained, interrupted, resumed, saved, off, regular, back, low = cells
    assert "T4" in types and "$0.14/h" in types and "$0.35/h" in types
    assert "Moving this kernel to a low-cost T4 instance" in on
    assert "runs on a low-cost T4 instance (running" in where and "Demo server" in where
    assert re.search(r"epoch 20: loss 0\.\d+", trained)
    # The interruption: forced by the notebook, or a random one of the demo that came first.
    notice_epoch = re.search(r"Interruption notice at epoch (\d+): (.+)\.\n", interrupted)
    assert notice_epoch, interrupted
    assert notice_epoch[2] in (
        "interruption injected through the REST API",
        (
            "a random interruption, as when a provider takes a spot instance back "
            "(demo setting LocalBackend.random_interruption_rate)"
        ),
    )
    # The resume: a new instance, the checkpoint restored, the variables as they were.
    assert re.search(r"Resumed from checkpoint \d+: \d+ variables", resumed), resumed
    assert f"Back at epoch {notice_epoch[1]}," in resumed
    # The file written at the notice (the callback may run between two steps of an epoch)
    file_epoch = int(re.search(r"demo-model.pkl holds epoch (\d+)", saved)[1])
    assert int(notice_epoch[1]) - 1 <= file_epoch <= int(notice_epoch[1])
    assert f"epoch {int(notice_epoch[1]) + 20}: loss" in saved
    # To a regular instance and back, the variables along.
    assert "Moving this kernel to a regular T4 instance" in off
    assert "runs on a regular T4 instance (running" in regular
    assert "Moving this kernel to a low-cost T4 instance" in back
    assert f"Still at epoch {int(notice_epoch[1]) + 20}." in regular
    assert f"Still at epoch {int(notice_epoch[1]) + 20}." in low
    assert "runs on a low-cost T4 instance (running" in low
    states = [(i["tier"], i["state"]) for i in history]
    assert ("low-cost", "interrupted") in states
    assert ("regular", "terminated") in states
    assert states[-1] == ("low-cost", "running")
