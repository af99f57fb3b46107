"""The README's set-up commands, run as a newcomer runs them: the first one in a fresh copy
of the repository and a fresh virtual environment, until JupyterLab answers with the
extension on the local backend. (``.ci/run`` runs the second one, read from the README, on
a clean clone: it is the whole test suite, this test included.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from fresh_install import fresh_copy, fresh_venv, readme_commands
from jupyter_process import free_port

TOKEN = "readme-token"


def test_the_readme_has_exactly_two_set_up_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    start, tests = commands
    assert "jupyter lab" in start and "pip install" in start
    assert "pytest" in tests and "[test]" in tests


@pytest.mark.timeout(900)
def test_the_first_command_starts_jupyterlab_with_the_extension_on_the_local_backend(
    tmp_path: Path,
) -> None:
    start = readme_commands()[0]
    repo = fresh_copy(tmp_path / "clone")
    env = fresh_venv(tmp_path)
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
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["bash", "-c", start],
            cwd=repo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # pip installs everything and builds the extension from source, then JupyterLab starts.
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
