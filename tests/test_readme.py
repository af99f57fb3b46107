"""The README's set-up commands, run as a newcomer runs them, in a fresh copy of the
repository and a fresh virtual environment: the first one until JupyterLab answers with the
extension on the local backend; the second one with another Python's ``pytest`` first on
PATH, as on a machine whose own Python has pytest, up to the collection of the suite.
Their ``pip install`` halves reach PyPI and npm: with test_binder.py's installs, the only
commands of the suite run without the network guard (tests/network_guard); what they
install then runs under it.
(``.ci/run`` runs the second one in full, read from the README, on a clean clone: it is the
whole test suite, this module included.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from fresh_install import fresh_copy, fresh_venv, install_then, readme_commands, run_logged
from jupyter_process import free_port
from network_guard import without_guard

TOKEN = "readme-token"


@dataclass
class Newcomer:
    """A fresh copy of the repository and a fresh virtual environment to run its README's
    commands in, shared by this module's tests (what the first command installs, the
    second one finds there, as on a newcomer's machine)."""

    root: Path
    repo: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Newcomer:
    root = tmp_path_factory.mktemp("newcomer")
    return Newcomer(root, fresh_copy(root / "clone"), fresh_venv(root))


def test_the_readme_has_exactly_two_set_up_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    start, tests = commands
    assert "jupyter lab" in start and "pip install" in start
    assert "pytest" in tests and "[test]" in tests


@pytest.mark.timeout(900)
def test_the_first_command_starts_jupyterlab_with_the_extension_on_the_local_backend(
    newcomer: Newcomer,
) -> None:
    install, start = install_then(readme_commands()[0])
    repo, env, tmp_path = newcomer.repo, newcomer.env, newcomer.root
    port = free_port()
    # What a person would pass on the command line or keep in their config: where to
    # listen, a known token, no browser to open (and, as root, --allow-root).
    config = Path(env["JUPYTER_CONFIG_DIR"])
    config.mkdir(parents=True)
    (config / "jupyter_server_config.py").write_text(
        f"c.ServerApp.port = {port}\n"
        "c.ServerApp.port_retries = 0\n"
        "c.ServerApp.ip = '127.0.0.1'\n"
        f"c.IdentityProvider.token = {TOKEN!r}\n"
        "c.ServerApp.open_browser = False\n"
        "c.ServerApp.allow_root = True\n"
        "c.LabApp.news_url = None\n"
    )
    base = f"http://127.0.0.1:{port}/"
    headers = {"Authorization": f"token {TOKEN}"}
    log_path = tmp_path / "readme.log"
    # pip installs everything (from PyPI and npm: the one thing not under the network
    # guard) and builds the extension from source, then JupyterLab starts.
    run_logged(["bash", "-c", install], repo, without_guard(env), log_path)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            ["bash", "-c", start],
            cwd=repo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        end = time.monotonic() + 600
        while True:
            assert process.poll() is None, f"{start!r} exited:\n{log_path.read_text()[-6000:]}"
            assert time.monotonic() < end, (
                f"no JupyterLab after 600 s:\n{log_path.read_text()[-6000:]}"
            )
            try:
                status = requests.get(f"{base}lowcost/api/status", headers=headers, timeout=5)
            except requests.ConnectionError:
                time.sleep(0.5)
                continue
            if status.status_code == 200:
                break
            time.sleep(0.5)
        assert status.json()["backend"] == "local"
        assert status.json()["demo"] is None
        # The front end is there: JupyterLab's page lists it, and its settings are served.
        page = requests.get(f"{base}lab", headers=headers, timeout=30)
        assert page.status_code == 200
        assert re.search(r'"name":\s*"jupyter-lowcost"', page.text)  # federated_extensions
        settings = requests.get(
            f"{base}lab/api/settings/jupyter-lowcost:plugin", headers=headers, timeout=30
        )
        assert settings.status_code == 200, settings.text
        # A kernel starts on a low-cost instance of the local backend.
        created = requests.post(
            f"{base}lowcost/api/kernels",
            json={"instance_type": "T4", "low_cost": True},
            headers=headers,
            timeout=120,
        )
        assert created.status_code == 201, created.text
        assert created.json()["instance"]["state"] == "running"
        # What the README says next: both halves are enabled on install.
        for command, line in [
            ("jupyter server extension list", r"jupyter_lowcost\S* enabled"),
            ("jupyter labextension list", r"jupyter-lowcost v\S+ enabled OK"),
        ]:
            listed = subprocess.run(
                command.split(), env=env, capture_output=True, text=True, check=True
            )
            plain = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)
            assert re.search(line, plain), plain
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def another_pythons_pytest(root: Path) -> Path:
    """A folder holding only ``pytest``, the one of another Python (a virtual environment
    of its own that has pytest and nothing of this project), to put first on PATH."""
    other = root / "other-python"
    subprocess.run([sys.executable, "-m", "venv", str(other)], check=True)
    run_logged(
        [str(other / "bin" / "python"), "-m", "pip", "install", "pytest"],
        root,
        without_guard(os.environ),
        root / "other-python.log",
    )
    shadow = root / "shadow"
    shadow.mkdir()
    (shadow / "pytest").symlink_to(other / "bin" / "pytest")
    return shadow


@pytest.mark.timeout(900)
def test_the_second_command_runs_the_suite_with_the_python_it_installed_into(
    newcomer: Newcomer, tmp_path: Path
) -> None:
    """On a machine whose own Python has pytest (first on PATH), the README's test command
    must not run that pytest: it cannot import jupyter_lowcost, and the suite stops at its
    conftest. The command runs as written (its two halves, as ``&&`` runs them: the
    install without the network guard); PYTEST_ADDOPTS makes its pytest only collect the
    suite (running it in full here would run this test again)."""
    install, test = install_then(readme_commands()[1])
    shadow = another_pythons_pytest(tmp_path)
    env = dict(
        newcomer.env,
        PATH=f"{shadow}{os.pathsep}{newcomer.env['PATH']}",
        PYTEST_ADDOPTS="--collect-only -q -p no:cacheprovider",
    )
    log_path = tmp_path / "test-command.log"
    # (fails unless exit 0; the install reaches PyPI: not under the network guard)
    run_logged(["bash", "-c", install], newcomer.repo, without_guard(env), log_path)
    run_logged(["bash", "-c", test], newcomer.repo, env, log_path)
    output = log_path.read_text()
    # The whole suite was collected, conftest and every module imported, this test among them.
    collected = re.search(r"^(\d+) tests? collected", output, re.MULTILINE)
    assert collected and int(collected[1]) > 50, output[-6000:]
    assert "error" not in output[collected.start() :].lower(), output[-6000:]
    assert (
        "tests/test_readme.py::"
        "test_the_second_command_runs_the_suite_with_the_python_it_installed_into" in output
    ), output[-6000:]
