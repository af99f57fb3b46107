"""A Jupyter server (``jupyter server`` or ``jupyter lab``) in a subprocess, for the tests
that need a real separate process: a server killed hard (test_server_restart.py) and
JupyterLab in a browser (browser/lab.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterProcess:
    """``python -m <module>`` on a free port with ``token``, its output in ``log_path``."""

    def __init__(
        self,
        module: str,
        home: Path,
        token: str,
        log_name: str,
        program: list[str] | None = None,
    ) -> None:
        self.module = module
        #: What runs: ``python -m <module>`` unless the caller names a command.
        self.program = program or [sys.executable, "-m", module]
        self.home = home
        self.token = token
        self.log_path = home / log_name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def launch(
        self,
        root_dir: Path,
        env: dict[str, str],
        answers: Callable[[], bool],
        cwd: Path | None = None,
    ) -> None:
        """Start the process and wait (60 s at most) until ``answers()`` is true."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.program,
                    f"--ServerApp.port={self.port}",
                    "--ServerApp.port_retries=0",
                    "--ServerApp.ip=127.0.0.1",
                    f"--IdentityProvider.token={self.token}",
                    "--ServerApp.open_browser=False",
                    "--ServerApp.allow_root=True",
                    f"--ServerApp.root_dir={root_dir}",
                ],
                env={**os.environ, **env},
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        end = time.monotonic() + 60
        while not answers():
            if time.monotonic() > end:
                raise AssertionError(f"{self.module} did not answer:\n{self.log()}")
            time.sleep(0.1)

    def exited(self) -> bool:
        """True (with the log in the error) once the process has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.module} exited:\n{self.log()}")
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill_hard(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class LowCostServer(JupyterProcess):
    """``jupyter server`` in a subprocess whose data directory outlives it (tests that
    kill a server hard and start another on the same directory), with the lowcost API."""

    def __init__(self, home: Path, token: str, extra_env: dict[str, str] | None = None) -> None:
        super().__init__("jupyter_server", home, token, "server.log")
        self.url = f"{self.base}lowcost/api/"
        self.extra_env = extra_env or {}

    def start(self) -> None:
        env = {
            "JUPYTER_DATA_DIR": str(self.home / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
            # Orphaned launchers would stop by themselves after this long; the tests must
            # see a restarted server stop them much sooner.
            "JUPYTER_LOWCOST_ORPHAN_TIMEOUT": "600",
            **self.extra_env,
        }
        self.launch(self.home, env, self._answers)

    def _answers(self) -> bool:
        try:
            return self.exited() or self.get("status").status_code == 200
        except requests.ConnectionError:
            return False

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, headers=self.headers, timeout=30)

    def post(self, path: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=self.headers, timeout=60)
