"""The operating system's side of the ``local`` backend: the GPUs this machine has, the
launcher started as a process in a session of its own, that session's process group
signalled, and the end of a launcher this server did not start awaited.

Used by :class:`jupyter_lowcost.backends.local.LocalBackend`, which schedules the
instances in slots and tells the manager what happens to them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Callable
from typing import IO


def detect_gpus() -> list[str]:
    """The indices of the NVIDIA GPUs on this machine (empty without ``nvidia-smi``)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


async def start_launcher(
    python: str, env: dict[str, str], cwd: str | None, log_file: IO[bytes]
) -> asyncio.subprocess.Process:
    """``python -m jupyter_lowcost.launcher`` in a session of its own (its process group is
    what :func:`signal_group` signals), its output appended to ``log_file``; OSError when
    it cannot start."""
    return await asyncio.create_subprocess_exec(
        python,
        "-m",
        "jupyter_lowcost.launcher",
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def signal_group(pgid: int | None, signum: int) -> bool:
    """Send ``signum`` to the process group ``pgid``; False when there is none (any more)."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


async def wait_for_exit(pid: int, still_running: Callable[[], bool]) -> None:
    """Wait for the end of process ``pid``, which this process did not start (its exit
    status is its old parent's to read): through a pidfd, or where there is none by
    asking ``still_running()`` five times a second."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = None
    try:
        if fd is not None:
            exited = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().add_reader(
                fd, lambda: exited.done() or exited.set_result(None)
            )
            try:
                await exited
            finally:
                asyncio.get_running_loop().remove_reader(fd)
        else:
            while still_running():
                await asyncio.sleep(0.2)
    finally:
        if fd is not None:
            os.close(fd)
