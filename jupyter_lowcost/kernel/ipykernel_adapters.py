"""Where the kernel side leans on ipykernel beyond its public API: every such use is here,
with why, so that an upgrade of ipykernel is checked in one file (the server side's are in
``server/jupyter_adapters.py``).

- :func:`on_shell_status`: ipykernel publishes a kernel's status ("busy", "idle") through
  the private ``Kernel._publish_status``; no public hook says when a request starts and
  ends on the shell channel, which the launcher needs (a server that takes a kernel back
  tells its clients whether a cell runs), and the checkpoints (a request may run the
  user's code, a widget's callback for one: the last snapshot's copies must be whole).
- :func:`before_shutdown`: a shutdown request reaches ``Kernel.do_shutdown`` and no hook
  runs before it (IPython's ``atexit`` runs after the namespace is emptied); the
  checkpoints take the kernel's last checkpoint there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def on_shell_status(kernel: Any, callback: Callable[[str], None]) -> None:
    """Call ``callback(status)`` with each status the kernel publishes for its shell
    channel, before it goes out (called by the launcher and by the checkpoints, once each,
    when the kernel starts; "busy" comes before the request is handled)."""
    publish = kernel._publish_status

    def publish_status(status: str, channel: str, *args: Any, **kwargs: Any) -> Any:
        if channel == "shell":
            callback(status)
        return publish(status, channel, *args, **kwargs)

    kernel._publish_status = publish_status


def before_shutdown(kernel: Any, callback: Callable[[], None]) -> None:
    """Call ``callback()`` when the kernel receives a shutdown request, before ipykernel
    handles it (called by the kernel's checkpoints, once, when they are installed)."""
    original = kernel.do_shutdown

    def do_shutdown(restart: bool) -> Any:
        callback()
        return original(restart)

    kernel.do_shutdown = do_shutdown
