"""Our job's state written into its jupyter-scheduler row.

Who calls it: :mod:`.rows`, whenever it brings a row up to date (a job event, a
``GET scheduler/jobs``, the server's start).

=========================  ============================================
our job (``JobState``)     the row (``Status``)
=========================  ============================================
(not made yet)             QUEUED
queued, running, resuming  IN_PROGRESS (a queued job waits for room)
succeeded                  COMPLETED
failed                     FAILED, our reason in ``status_message``
cancelled                  STOPPED
=========================  ============================================
"""

from __future__ import annotations

from typing import Any

from jupyter_scheduler.models import Status

from ...storage.jobs import JobRecord, JobState

STATUS = {
    JobState.QUEUED: Status.IN_PROGRESS,
    JobState.RUNNING: Status.IN_PROGRESS,
    JobState.RESUMING: Status.IN_PROGRESS,
    JobState.SUCCEEDED: Status.COMPLETED,
    JobState.FAILED: Status.FAILED,
    JobState.CANCELLED: Status.STOPPED,
}

#: The statuses of a row whose job may still change.
OPEN = (Status.CREATED, Status.QUEUED, Status.IN_PROGRESS, Status.STOPPING)


def millis(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def row_values(job: JobRecord) -> dict[str, Any]:
    """The row's columns that follow our job: status, its message, start and end."""
    values: dict[str, Any] = {
        "status": STATUS[job.state],
        "start_time": millis(job.started),
        "end_time": millis(job.finished) if job.state.is_final else None,
        # (shown in red in the job's detail view: only a failure's reason)
        "status_message": job.reason if job.state == JobState.FAILED else None,
    }
    return values


def apply(row: Any, job: JobRecord) -> bool:
    """Write our job's state into the ORM row; True when something changed."""
    changed = False
    for column, value in row_values(job).items():
        if getattr(row, column) != value:
            setattr(row, column, value)
            changed = True
    return changed
