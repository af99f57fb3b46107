"""What the launcher prepares on the instance before ipykernel starts: the kernel's
connection file, in a directory of the launcher's own, and the kernel's command line.

Called by :func:`jupyter_lowcost.instance.launcher.main`. A launcher killed before it
could clean up (a lost instance is killed, and atexit does not run then) leaves its
directory behind: the next launcher removes it (:func:`remove_stale_workdirs`).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from typing import Any

from .. import env

#: A launcher's own directory in the temporary directory (its kernel's connection file):
#: this, its process id, "-", a random part.
WORKDIR_PREFIX = "jupyter-lowcost-launcher-"


def write_connection_file(config: dict[str, Any], ip: str, port_names: tuple[str, ...]) -> str:
    """The kernel's connection file, owner-only, in a directory of this launcher's own
    (removed at exit, or by the next launcher if this one is killed); ports 0: ipykernel
    picks them."""
    remove_stale_workdirs()
    workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    connection_file = os.path.join(workdir, "kernel.json")
    with open(connection_file, "w") as handle:
        json.dump(
            {
                "key": config["key"],
                "signature_scheme": config["signature_scheme"],
                "transport": config.get("transport", "tcp"),
                "ip": ip,
                **{name: 0 for name in port_names},
            },
            handle,
        )
    os.chmod(connection_file, 0o600)
    return connection_file


def remove_stale_workdirs() -> None:
    """Remove the directories that launchers killed before they could clean up left in
    the temporary directory (their kernels' connection files, with the session keys): a
    lost instance is killed, and atexit does not run then. Called by every launcher as it
    starts; only this user's, only those whose process no longer runs."""
    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(WORKDIR_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        path = os.path.join(root, name)
        try:
            if not pid.isdigit() or os.lstat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its launcher is gone
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # gone already; or a process of another user has that id now
            continue


def kernel_arguments(connection_file: str) -> list[str]:
    """ipykernel's command line on the instance: our extension in every kernel; a job's
    kernel (``JUPYTER_LOWCOST_JOB``) keeps IPython's history in memory, as nbclient and
    papermill run kernels, instead of writing the profile's SQLite history file."""
    arguments = ["-f", connection_file, "--IPKernelApp.extra_extensions=jupyter_lowcost"]
    if os.environ.get(env.JOB):
        arguments.append("--HistoryManager.hist_file=:memory:")
    return arguments
