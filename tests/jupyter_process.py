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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterProcess:
    """``python -m <module>`` on a free port with ``token``, its output in ``log_path``."""

    def __init__(self, module: str, home: Path, token: str, log_name: str) -> None:
        self.module = module
        self.home = home
        self.token = token
        self.log_path = home / log_name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def launch(self, root_dir: Path, env: dict[str, str], answers: Callable[[], bool]) -> None:
        """Start the process and wait (60 s at most) until ``answers()`` is true."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    self.module,
                    f"--ServerApp.port={self.port}",
                    "--ServerApp.port_retries=0",
                    "--ServerApp.ip=127.0.0.1",
                    f"--IdentityProvider.token={self.token}",
                    "--ServerApp.open_browser=False",
                    "--ServerApp.allow_root=True",
                    f"--ServerApp.root_dir={root_dir}",
                ],
                env={**os.environ, **env},
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
