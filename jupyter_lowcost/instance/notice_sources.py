"""The notices the instance itself gives, besides those the server sends: SIGTERM (where
the scheduler's SIGTERM is the notice: a Slurm job, a pod) and the cloud's own notice in
the instance metadata (:mod:`jupyter_lowcost.instance.cloud_notices`).

Called by the launcher (:func:`jupyter_lowcost.instance.launcher.main`) as it starts the
kernel: each notice is delivered to the kernel at once (its flag, callbacks and notice
checkpoint, :mod:`jupyter_lowcost.kernel.interruption`) and reported to the server over
the launch channel. ``say`` writes a line to the launcher's log.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..kernel import checkpointing, interruption
from . import cloud_notices
from .launch_channel import Channel

Say = Callable[[str], None]


def report_sigterm(
    channel: Channel, notice_seconds: float, leave_when_saved: bool, say: Say
) -> None:
    """Make SIGTERM an interruption notice ``notice_seconds`` long: the kernel sees it at
    once (flag, callbacks), and the server hears of it from a thread (the handler may
    have interrupted the main thread anywhere). With ``leave_when_saved`` (a pod: see
    :func:`leave_when_saved`), the instance may end before the deadline."""
    received: list[float] = []

    def handle(signum: int, frame: Any) -> None:
        if received:  # (a second SIGTERM: the first one's notice stands)
            return
        received.append(time.time())
        deadline = received[0] + notice_seconds
        reason = f"the instance received SIGTERM: it stops in {notice_seconds:g} s"

        def report() -> None:
            say(reason)
            try:
                channel.send({"type": "notice", "deadline": deadline, "reason": reason})
            except OSError:
                pass
            if leave_when_saved:
                _leave_when_saved(deadline, say)

        threading.Thread(target=report, name="lowcost-sigterm", daemon=True).start()
        interruption.deliver(deadline, reason)

    signal.signal(signal.SIGTERM, handle)


def _leave_when_saved(deadline: float, say: Say) -> None:
    """End the instance before its deadline once its latest checkpoint holds the kernel's
    namespace as it is, with no cell running (:meth:`KernelCheckpoints.holds_everything`):
    nothing more can be saved, and the recovery resumes the kernel on a new instance at
    once instead of after the whole grace period (30 s on GKE, say) of a pod that is
    killed anyway. A cell that runs keeps the instance until it ends and its checkpoint
    is written, or until the deadline. Called by the SIGTERM handler's thread, once the
    notice was sent to the server."""
    while time.time() < deadline:
        checkpoints = checkpointing.installed()
        if checkpoints is not None and checkpoints.holds_everything():
            say(
                "the latest checkpoint holds the kernel's variables and no cell runs: the "
                "instance ends now, before its deadline"
            )
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            # As if SIGTERM had ended it (128 + 15): the server sees an instance taken
            # during its notice, and resumes the kernel.
            os._exit(128 + signal.SIGTERM)
        time.sleep(0.05)


def watch_cloud(channel: Channel, config: dict[str, Any], say: Say) -> None:
    """Watch the cloud's own notice (``LowCostApp.cloud_notices``): deliver it to the
    kernel at once and report it to the server; an early warning only to the server."""

    def deliver(cloud: cloud_notices.CloudNotice) -> None:
        say(cloud.reason)
        kind = "warning" if cloud.early_warning else "notice"
        message = {"type": kind, "deadline": cloud.deadline, "reason": cloud.reason}
        try:
            channel.send({**message, "source": cloud.provider})
        except OSError:
            pass
        if not cloud.early_warning:
            interruption.deliver(cloud.deadline, cloud.reason)

    def checkpoint_written(since: float) -> bool:
        """Is the notice checkpoint of a notice that came at ``since`` done with: written,
        failed, or not needed (nothing to save, checkpoints off)?"""
        checkpoints = checkpointing.installed()
        if checkpoints is None or checkpoints.when == "off":
            return True
        handled = checkpoints.notice_handled_at
        return handled is not None and handled >= since

    def warn(text: str | None) -> None:
        """The notice cannot be read (``text``), or can again (None): the server shows it
        on the instance (``notice_warning``), JupyterLab and ``%lowcost`` say it."""
        if text is not None:
            say(text)
        try:
            channel.send({"type": "notice_warning", "warning": text})
        except OSError:
            pass

    cloud_notices.start(
        str(config.get("cloud_notices") or "off"),
        str(config.get("cloud_metadata_url") or ""),
        deliver,
        say,
        acknowledge=bool(config.get("azure_acknowledge")),
        checkpoint_written=checkpoint_written,
        warn=warn,
    )
