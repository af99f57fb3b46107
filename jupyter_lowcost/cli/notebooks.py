"""What ``jupyter lowcost`` reads and writes beside the server: the notebook a job runs,
its ``-p NAME=VALUE`` parameters, a job id given on the command line, and the output
notebook it saves.

Called by the commands of :mod:`.commands`; every refusal is a
:class:`~.server.CommandError` in one line.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..storage.atomic import replacing
from ..storage.jobs import JOB_ID, MAX_JOB_BYTES
from ..storage.private import open_private
from .server import CommandError


def read_notebook(path: Path) -> dict[str, Any]:
    """The notebook at ``path`` (JSON), or a CommandError that says why it is not one.
    Regular files only, of at most :data:`MAX_JOB_BYTES` (what ``POST jobs`` takes): a
    FIFO would wait for a writer, ``/dev/zero`` would fill the memory. Opened without
    blocking, then looked at (``fstat``) before anything is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise CommandError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise CommandError(f"{path} is a folder, not a notebook") from None
    except OSError as err:
        raise CommandError(f"{path} cannot be read: {err.strerror or err}") from err
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise CommandError(f"{path} is a folder, not a notebook")
        raise CommandError(
            f"{path} is not a regular file (a FIFO, a device or a socket): not a notebook"
        )
    with os.fdopen(fd, "rb") as file:
        if info.st_size > MAX_JOB_BYTES:
            raise CommandError(
                f"{path} is {info.st_size} bytes: a job's notebook is at most "
                f"{MAX_JOB_BYTES // 2**20} MiB"
            )
        try:
            data = file.read(MAX_JOB_BYTES + 1)
        except OSError as err:
            raise CommandError(f"{path} cannot be read: {err.strerror or err}") from err
    if len(data) > MAX_JOB_BYTES:  # (it grew meanwhile)
        raise CommandError(f"{path}: a job's notebook is at most {MAX_JOB_BYTES // 2**20} MiB")
    try:
        content = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CommandError(f"{path} is not a notebook (not JSON: {err})") from err
    if not isinstance(content, dict) or "cells" not in content:
        raise CommandError(f"{path} is not a notebook (no cells)")
    return content


def parse_parameters(items: list[str]) -> dict[str, Any]:
    """``-p NAME=VALUE`` as papermill reads them: True, False, None, ints and floats, else
    the text."""
    parameters: dict[str, Any] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name.isidentifier():
            raise CommandError(f"-p {item}: say NAME=VALUE, with NAME a Python variable name")
        parameters[name] = parse_value(value)
    return parameters


def parse_value(value: str) -> Any:
    """A ``-p`` value as papermill reads it: ``True``, ``False`` and ``None`` as Python
    spells them (``true`` is text), an int, a float (``nan``, ``inf`` and ``1e400``, an
    infinity, included), else the text."""
    if value == "True":
        return True
    if value == "False":
        return False
    if value == "None":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def job_id_argument(job_id: str) -> str:
    """``job_id`` checked against the form of job ids (12 hex digits) before it goes in a
    URL (called by ``show``, ``logs`` and ``cancel``): ``../instances/<id>`` would be
    another route."""
    if not JOB_ID.fullmatch(job_id):
        shown = job_id if len(job_id) <= 40 else job_id[:37] + "..."
        raise CommandError(
            f"{shown!r} is not a job id (12 hex digits, as jupyter lowcost jobs lists them)"
        )
    return quote(job_id, safe="")


def default_output(path: Path) -> Path:
    return path.with_name(f"{path.stem}.output.ipynb")


def write_notebook(path: Path, notebook: dict[str, Any]) -> None:
    """Replace ``path`` with ``notebook``, atomically (called by ``run`` and ``show`` for a
    job's output notebook). A new file is 0600: job output is for its owner; a file that
    exists keeps its mode (its user chose it)."""
    try:
        mode: int | None = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = None
    with replacing(path) as temporary:
        with open_private(temporary, "wb", exclusive=True) as file:
            file.write((json.dumps(notebook, indent=1) + "\n").encode("utf-8"))
        if mode is not None:
            temporary.chmod(mode)
