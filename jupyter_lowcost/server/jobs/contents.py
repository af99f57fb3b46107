"""A job's files on the server's contents: which paths a job may use, and the save of its
output notebook there.

Called by the ``POST jobs`` handler before the job is made (:func:`path_problem`,
:func:`same_path`, :func:`hidden`, :func:`file_problem`) and by the job's
:class:`~.output.OutputWriter` at each write of the output notebook at its output path
(:func:`save` through a contents manager; :func:`file_problem_at` before it writes a
file itself). Jupyter's own rules apply: no hidden file or folder unless the contents
manager's ``allow_hidden`` says so (as jupyter_server's contents handlers refuse them),
and a notebook is written only over a regular file: writing over a FIFO would wait for a
reader for ever.
"""

from __future__ import annotations

import os
import posixpath
import stat
from typing import Any

from jupyter_core.utils import ensure_async
from tornado import web


def path_problem(path: str) -> str | None:
    """Why ``path`` (a path of the server's contents) is no path at all (None: it may be
    one): a NUL or another control character, which no file name of a notebook holds."""
    if any(ord(c) < 32 or c == "\x7f" for c in path):
        return "holds a control character (a NUL, a newline...), which no notebook path has"
    return None


def same_path(contents_manager: Any, first: str, second: str) -> bool:
    """Whether two contents paths name the same file: ``./nb.ipynb``, ``sub/../nb.ipynb``
    and ``/nb.ipynb`` are ``nb.ipynb``; on disk, a link to it is too."""
    if _normal(first) == _normal(second):
        return True
    try:
        one, two = os_path(contents_manager, first), os_path(contents_manager, second)
    except (OSError, ValueError, web.HTTPError):  # (outside the root: checked apart)
        return False
    if one is None or two is None:
        return False
    return os.path.realpath(one) == os.path.realpath(two)


async def hidden(contents_manager: Any, path: str) -> bool:
    """Whether Jupyter's own contents API refuses ``path`` as hidden (a name starting with
    ``.`` in it, below the root), ``allow_hidden`` being off."""
    if getattr(contents_manager, "allow_hidden", True):
        return False
    return bool(await ensure_async(contents_manager.is_hidden(path)))


def file_problem(contents_manager: Any, path: str) -> str | None:
    """Why a notebook cannot be written at ``path`` (None: nothing is there yet, or a
    regular file): a folder, a FIFO, a device. A ``stat``, which never blocks (opening a
    FIFO does). Contents managers without files on this machine answer None."""
    where = os_path(contents_manager, path)
    if where is None:
        return None
    return file_problem_at(where)


def file_problem_at(where: str) -> str | None:
    """Why a notebook cannot be written at the file ``where`` (None: nothing there yet,
    or a regular file); see :func:`file_problem`. Also called from a worker thread."""
    try:
        mode = os.stat(where).st_mode
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return f"cannot be looked at ({err})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (a named pipe), not a file"
    return "is not a regular file (a device or a socket)"


async def save(contents_manager: Any, notebook: dict[str, Any], path: str) -> None:
    """Save ``notebook`` at ``path`` through the contents manager, after checking that
    what is there is a regular file (``ValueError`` says why not, before anything is
    opened). Whatever the contents manager raises comes through."""
    problem = file_problem(contents_manager, path)
    if problem is not None:
        raise ValueError(f"{path} {problem}")
    model = {"type": "notebook", "format": "json", "content": notebook}
    await ensure_async(contents_manager.save(model, path))


def os_path(contents_manager: Any, path: str) -> str | None:
    """The file of a contents path on this machine (None: the contents manager keeps no
    files here). Raises what the contents manager raises for a path outside its root."""
    get = getattr(contents_manager, "_get_os_path", None)
    if get is None:
        return None
    return str(get(path.strip("/")))


def _normal(path: str) -> str:
    return posixpath.normpath("/" + path.strip("/")).lstrip("/")
