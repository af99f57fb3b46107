"""Kernel side: what a notebook sees of an interruption notice.

For training loops::

    from jupyter_lowcost import notice, on_notice

    @on_notice
    def save(n):                      # runs in the kernel's main thread, at the notice
        torch.save(model.state_dict(), "model.pt")

    while not notice:                 # the flag: true once a notice has arrived
        train_step()

The launcher (``jupyter_lowcost.launcher``) calls :func:`deliver` from its channel thread
when the server announces an interruption: the flag turns true at once, then the signal
``NOTICE_SIGNAL`` (SIGUSR1) is sent to the kernel's own process, and its handler runs the
callbacks in the main thread, between two Python bytecodes of whatever the kernel runs.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

#: The signal a kernel on an instance receives on an interruption notice.
NOTICE_SIGNAL = signal.SIGUSR1


class Notice:
    """Truthy once an interruption notice has arrived; says when the instance goes."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.deadline: float | None = None
        self.reason = ""

    def __bool__(self) -> bool:
        return self._event.is_set()

    def __repr__(self) -> str:
        if not self:
            return "<no interruption notice>"
        return f"<interruption notice: {self.seconds_left:.0f} s left; {self.reason}>"

    @property
    def seconds_left(self) -> float | None:
        """Seconds until the instance is taken away (None before a notice)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.time())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a notice arrives (or ``timeout`` passes); True if one did."""
        return self._event.wait(timeout)


notice = Notice()
_callbacks: list[Callable[[Notice], Any]] = []
_final_callbacks: list[Callable[[Notice], Any]] = []
_lock = threading.Lock()
_ran = False


def on_notice(callback: Callable[[Notice], Any]) -> Callable[[Notice], Any]:
    """Call ``callback(notice)`` when an interruption notice arrives (usable as a decorator).

    Registered after a notice, it runs at once.
    """
    with _lock:
        _callbacks.append(callback)
        late = _ran
    if late:
        _run_one(callback)
    return callback


def remove_notice_callback(callback: Callable[[Notice], Any]) -> None:
    """Stop calling ``callback`` on a notice."""
    with _lock:
        if callback in _callbacks:
            _callbacks.remove(callback)


def add_final_notice_callback(callback: Callable[[Notice], Any]) -> None:
    """Run ``callback`` at a notice after the user's callbacks (the notice checkpoint)."""
    with _lock:
        _final_callbacks.append(callback)


def _run_one(callback: Callable[[Notice], Any]) -> None:
    try:
        callback(notice)
    except Exception:  # a user's callback failing must not stop the others
        print(f"jupyter_lowcost: on_notice callback {callback!r} failed:", file=sys.stderr)
        traceback.print_exc()


def run_callbacks(signum: int | None = None, frame: FrameType | None = None) -> None:
    """Run every registered callback once (the ``NOTICE_SIGNAL`` handler)."""
    global _ran
    with _lock:
        if _ran:
            return
        _ran = True
        callbacks = list(_callbacks) + list(_final_callbacks)
    for callback in callbacks:
        _run_one(callback)


def install_signal_handler() -> None:
    """Make ``NOTICE_SIGNAL`` run the callbacks (called by the launcher in the main thread)."""
    signal.signal(NOTICE_SIGNAL, run_callbacks)


def deliver(deadline: float, reason: str) -> None:
    """A notice arrived: set the flag, then signal the kernel's process (launcher thread)."""
    if notice:
        return
    notice.deadline = deadline
    notice.reason = reason
    notice._event.set()
    os.kill(os.getpid(), NOTICE_SIGNAL)
