"""What a kernel's checkpoints tell: the lines of ``%lowcost``, the kernel's stderr, the
server (a checkpoint that fails or works again, a restore), and a job's runner.

Called by ``checkpointing.py``: :func:`describe` for ``KernelCheckpoints.status``,
:func:`job_resume_state` for the function of that name there, the others when a checkpoint
fails, is written, or comes back.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from ..storage.checkpoints import CheckpointStore, CheckpointWriteFailed, RestoreReport
from ..words import resume_point

if TYPE_CHECKING:
    from .checkpointing import KernelCheckpoints


def describe(checkpoints: KernelCheckpoints) -> str:
    """The lines ``%lowcost`` adds about checkpoints."""
    lines = []
    if checkpoints.last_failure is not None:
        when, why = checkpoints.last_failure
        kept = checkpoints.store.latest()
        lines.append(
            f"Checkpoints are failing ({time.time() - when:.0f} s ago): {why}. "
            + (
                f"An interruption now resumes from checkpoint {kept}."
                if kept
                else "An interruption now loses the variables."
            )
        )
    if checkpoints.last_restore is not None:
        r = checkpoints.last_restore
        where, lost = resume_point(r.execution_count, r.taken_during, r.last_execution_count)
        lines.append(
            f"Resumed from checkpoint {r.checkpoint_id}: {r.summary()}."
            + (f" The kernel is back {where}" + (f": {lost}." if lost else ".") if where else "")
        )
    writing = checkpoints.writing
    if writing is not None:
        lines.append(
            "A checkpoint is being written in the background (taken "
            f"{time.time() - writing.taken_at:.0f} s ago)."
        )
    if checkpoints.last_save is not None:
        s = checkpoints.last_save
        ago = time.time() - s.taken_at
        lines.append(
            f"Last checkpoint {s.checkpoint_id}, {ago:.0f} s ago: {len(s.variables)} "
            f"variables, {s.bytes / 1e6:.1f} MB"
            + (f"; not saved: {', '.join(x.name for x in s.skipped)}" if s.skipped else "")
            + "."
        )
    elif writing is None:
        lines.append(f"No checkpoint yet (checkpoints: {checkpoints.when}).")
    if checkpoints.when != "off":
        lines.append(checkpoints.store.write_tracking)
    return "\n".join(lines)


def print_failure(store: CheckpointStore, err: CheckpointWriteFailed) -> None:
    """On the kernel's stderr: a checkpoint failed, and which one an interruption keeps."""
    kept = store.latest()
    print(
        f"jupyter_lowcost: checkpoint failed: {err}; "
        + (f"checkpoint {kept} is kept" if kept else "there is no earlier checkpoint"),
        file=sys.stderr,
    )


def failure_report(store: CheckpointStore, error: str) -> dict[str, Any]:
    """For the server: checkpoints fail (``error``), and which one an interruption keeps."""
    kept = store.latest()
    return {"ok": False, "error": error, "checkpoint_id": kept or ""}


def tell_server_in_background(report: dict[str, Any]) -> None:
    """Say that checkpoints fail (or work again), without holding up the user's cell."""

    def tell() -> None:
        try:
            from .client import LowCostClient

            LowCostClient.from_environment().report_checkpoint(report)
        except Exception as err:
            print(f"jupyter_lowcost: could not report the checkpoint: {err}", file=sys.stderr)

    threading.Thread(target=tell, name="lowcost-checkpoint-report", daemon=True).start()


def tell_server_restored(report: RestoreReport) -> None:
    """Say what came back (the server emits it as an event for JupyterLab)."""
    try:
        from .client import LowCostClient

        LowCostClient.from_environment().report_restored(report.to_json())
    except Exception as err:
        print(f"jupyter_lowcost: could not report the restore: {err}", file=sys.stderr)


#: At most this many of the variables that did not come back are named in
#: :func:`job_resume_state` (its answer goes over the kernel's own connection).
JOB_RESUME_LISTED = 200


def job_resume_state(report: RestoreReport | None) -> dict[str, Any]:
    """What a kernel restored at its start (``report``), for a job's runner: the
    checkpoint's id (None: nothing was restored) and the variables that did not come back
    (name, type, why: the first :data:`JOB_RESUME_LISTED`, and how many in all).

    The runner asks for it after each relaunch, as a ``user_expressions`` of a silent
    request on the kernel's own connection (``server/jobs/execution.py``): its resume
    point does not depend on the ``restored`` report, which is bounded and may not
    arrive. A silent request runs no cell: no checkpoint, no execution count."""
    if report is None:
        return {"checkpoint_id": None, "not_restored": [], "not_restored_count": 0}
    return {
        "checkpoint_id": report.checkpoint_id,
        "not_restored": [
            {"name": s.name, "type": s.type, "why": s.why}
            for s in report.not_restored[:JOB_RESUME_LISTED]
        ],
        "not_restored_count": len(report.not_restored),
    }
