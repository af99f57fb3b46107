"""The Jupyter server a ``jupyter lowcost`` command talks to: given (``--url``,
``--token``), found as ``jupyter server list`` finds them, or started in the background
when none runs (so that the command works on a fresh install with nothing else set up).

Called by the commands of :mod:`.app`; every call of the REST API goes through
:meth:`Server.call` (and :class:`~jupyter_lowcost.client.rest.LowCostAPI`, shared with
``%lowcost``), which turns a refusal into a :class:`CommandError` carrying the server's
own message.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..client.rest import APIError, LowCostAPI
from ..storage.private import DIR_MODE, FILE_MODE, open_private

#: How long a server started in the background may take to answer.
START_TIMEOUT = 90.0
#: How long a command waits for one answer of the server.
CALL_TIMEOUT = 60.0


class CommandError(Exception):
    """What went wrong, in one line, and the command's exit code (2: bad input)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass
class Server:
    """A Jupyter server with jupyter-lowcost: its URL (ending in /), token and root."""

    url: str
    token: str
    #: The folder its contents are in (None when not known: a server given by URL).
    root_dir: str | None = None
    _api: LowCostAPI | None = field(default=None, init=False, repr=False)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """``method`` on ``lowcost/api/<path>``: the decoded answer, or CommandError."""
        if self._api is None:
            self._api = LowCostAPI(self.url, self.token, CALL_TIMEOUT)
        try:
            return self._api.call(method, path, **kwargs)
        except APIError as err:
            raise self._refused(err) from err

    def _refused(self, err: APIError) -> CommandError:
        """A failed call, as the commands say it (exit code 1: the server's fault)."""
        if err.status is None:
            return CommandError(f"cannot reach the Jupyter server at {self.url}: {err.detail}", 1)
        if err.status in (401, 403):
            return CommandError(
                f"the Jupyter server at {self.url} refused the token "
                f"({err.status}); give the right one with --token"
            )
        if err.status == 404 and not err.is_json:
            return CommandError(
                f"the Jupyter server at {self.url} has no jupyter-lowcost API "
                "(is the extension installed and enabled there?)"
            )
        return CommandError(_message(err), 2 if err.status < 500 else 1)

    def relative_path(self, path: Path) -> str | None:
        """``path`` as a path of the server's contents; None when it is not under its root."""
        if self.root_dir is None:
            return None
        try:
            relative = path.resolve().relative_to(Path(self.root_dir).resolve())
        except ValueError:
            return None
        return relative.as_posix()


def connect(url: str | None, token: str | None, start: bool = True) -> Server:
    """The server to talk to: ``url`` (with ``token``, or $JUPYTER_TOKEN), else a running
    one with jupyter-lowcost, else (``start``) one started now in the background."""
    if url:
        server = Server(url if url.endswith("/") else url + "/", token or _env_token())
        server.root_dir = server.call("GET", "status").get("root_dir")
        return server
    for info in _running_servers():
        server = Server(info["url"], token or info.get("token") or "", info.get("root_dir"))
        if _answers(server):
            return server
    if not start:
        raise CommandError("no Jupyter server with jupyter-lowcost runs (start one, or give --url)")
    return start_server()


def start_server() -> Server:
    """Start ``jupyter server`` in the background (it outlives this command: jobs go on),
    rooted at the home folder, with a token of its own; wait until it answers.

    The server writes its URL with the token (``jpserver-<pid>-open.html``) into Jupyter's
    runtime folder, and job cells print into its log there: the folder is made 0700 and
    the log 0600, so that other users of the machine read neither."""
    runtime = private_runtime_dir()
    log_path = runtime / "jupyter-lowcost-server.log"
    token = secrets.token_hex(24)
    port = _free_port()
    root = Path.home()
    print(
        f"jupyter lowcost: no Jupyter server runs; starting one in the background on port "
        f"{port} (root {root}, log {log_path})",
        file=sys.stderr,
    )
    with open_private(log_path, "ab") as log:
        if os.fstat(log.fileno()).st_uid == os.getuid():
            os.fchmod(log.fileno(), FILE_MODE)  # (one an older version left 0644)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--no-browser",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.root_dir={root}",
                *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
            ],
            env={**os.environ, "JUPYTER_TOKEN": token},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=root,
        )
    server = Server(f"http://127.0.0.1:{port}/", token, str(root))
    end = time.monotonic() + START_TIMEOUT
    while not _answers(server):
        if process.poll() is not None:
            raise CommandError(
                f"the Jupyter server did not start (exit code {process.returncode}); "
                f"see {log_path}",
                1,
            )
        if time.monotonic() > end:
            raise CommandError(f"the Jupyter server did not answer in time; see {log_path}", 1)
        time.sleep(0.2)
    return server


def private_runtime_dir() -> Path:
    """Jupyter's runtime folder, created 0700 as ``jupyter server`` creates it (called by
    :func:`start_server` before the server it starts writes its token there).

    Jupyter never tightens a folder that exists: one of ours that others can enter (an
    older ``jupyter lowcost`` made it 0755) is made 0700, unless it is a shared sticky
    folder such as ``/tmp``."""
    from jupyter_core.paths import jupyter_runtime_dir
    from jupyter_core.utils import ensure_dir_exists

    runtime = Path(jupyter_runtime_dir())
    ensure_dir_exists(runtime, mode=DIR_MODE)
    info = runtime.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077 and not info.st_mode & stat.S_ISVTX:
        runtime.chmod(DIR_MODE)
    return runtime


def _running_servers() -> list[dict[str, Any]]:
    from jupyter_server.serverapp import list_running_servers

    try:
        return list(list_running_servers())
    except OSError:
        return []


def _answers(server: Server) -> bool:
    try:
        server.call("GET", "status")
    except CommandError:
        return False
    return True


def _env_token() -> str:
    return os.environ.get("JUPYTER_TOKEN", "")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _message(err: APIError) -> str:
    """The server's own message of a refusal (its JSON ``message``), in one line."""
    body = err.body or {}
    message = body.get("message") or body.get("reason") or ""
    return " ".join(str(message).split()) or f"HTTP {err.status}"
