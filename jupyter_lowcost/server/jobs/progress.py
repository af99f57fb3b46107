"""A job's progress where its user sees it: its record (saved, and emitted as a job
event), its log, and its output notebook.

Made by :class:`~.runner.JobRunner`, one per job it runs, and used by each of its pieces
(``kernel.py``, ``interruptions.py``) to say what the job does. The executed notebook so
far is on disk after every cell, with the job's metadata, at a cost that does not grow
with the notebook (``output.py``: the changed cells journalled at once, the whole
notebook written off the event loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...storage.jobs import JobRecord, JobState, JobStore
from ...storage.records import InstanceState
from . import notebook as nb
from .execution import CellExecutor
from .output import OutputWriter

if TYPE_CHECKING:
    from ..manager import InstanceManager


class JobFailed(Exception):
    """The job cannot go on (a cell's error, a kernel that cannot start): the message."""


class JobProgress:
    """What one job has done, said in its record, its events, its log and its output."""

    def __init__(
        self,
        manager: InstanceManager,
        store: JobStore,
        job: JobRecord,
        emit: Callable[[JobRecord], None],
        notebook: Any,
        executor: CellExecutor,
        contents_manager: Any,
    ) -> None:
        self.kernels = manager.job_kernels
        self.server_log = manager.log
        self.store = store
        self.job = job
        self.emit = emit
        #: The executed notebook so far (what ``GET jobs/<id>/output`` answers).
        self.notebook = notebook
        #: nbclient's executor of the notebook's cells (its outputs, as nbclient's).
        self.executor = executor
        #: The output notebook's writer (journal at once, full writes off the event loop).
        self.output = OutputWriter(
            store, job.id, contents_manager, job.output_path, self._output_path_failed
        )
        #: Cells whose outputs or metadata the runner changed since the last save.
        self.changed: set[int] = set()

    def track_instances(self) -> None:
        """The job's instances, with their cost and savings so far."""
        job = self.job
        if job.kernel_id is None:
            return
        for record in self.kernels.instances_of(job.kernel_id):
            if record.state == InstanceState.PENDING and record.id not in job.instances:
                continue
            job.instances[record.id] = {
                "instance_type": record.instance_type,
                "tier": record.tier,
                "state": record.state.value,
                "cost": round(record.cost(), 6),
                "saved": round(record.savings(), 6),
            }

    def set(self, state: JobState, reason: str) -> None:
        """The job's state and why, logged and saved when they changed."""
        job = self.job
        changed = (job.state, job.reason) != (state, reason)
        job.state, job.reason = state, reason
        if changed:
            self.log(f"{state.value}: {reason}")
            self.save()

    async def end(self, state: JobState, reason: str) -> None:
        """The job's end: its output notebook (at its output path too) is written whole,
        with the final state, before the job says it has ended."""
        job = self.job
        if job.state.is_final:
            return
        job.finished = time.time()
        job.current_cell = None if state == JobState.SUCCEEDED else job.current_cell
        job.state, job.reason = state, reason
        self.save(emit=False)
        await self.output.flush()
        error = self.output.contents_error
        if job.output_path and error is not None and state == JobState.SUCCEEDED:
            # (its cells ran, but what the user asked for is not there)
            job.state = JobState.FAILED
            job.reason = (
                f"all {job.cells_total} cells ran, but the output notebook could not be "
                f"written at {job.output_path}: {error} (the server keeps it: jupyter "
                f"lowcost show {job.id} --output FILE)"
            )
            self.save(emit=False)
            await self.output.flush()
        self.output.stop()
        self.log(f"{job.state.value}: {job.reason}")
        self.emit(job)

    def save(self, emit: bool = True) -> None:
        """The job's record, the changes to its output notebook (journalled at once,
        written whole soon, off the event loop: ``output.py``), and its event. Costs what
        changed, whatever the notebook's size."""
        job = self.job
        self.track_instances()
        self.executor.set_widgets_metadata()  # (the widgets' state, as nbclient saves it)
        nb.job_metadata(self.notebook, self._metadata())
        changed, self.changed = self.changed | self.executor.changed_cells(), set()
        try:
            self.output.note(self.notebook, changed)
            self.store.save(job)
        except OSError as err:
            self.server_log.error("jupyter_lowcost | job %s could not be saved: %s", job.id, err)
        if emit:
            self.emit(job)

    def log(self, line: str) -> None:
        """A line of the job's log (and of the server's)."""
        try:
            self.store.append_log(self.job.id, line)
        except OSError:
            pass
        self.server_log.info("jupyter_lowcost | job %s: %s", self.job.id, line)

    def log_output(self, msg_type: str, content: dict[str, Any]) -> None:
        """A cell's stream output and errors also go to the job's log."""
        if msg_type == "stream":
            for line in str(content.get("text", "")).splitlines():
                self.log(f"  {line}")
        elif msg_type == "error":
            self.log(f"  {content.get('ename')}: {content.get('evalue')}")

    def _output_path_failed(self, error: str) -> None:
        self.server_log.error(
            "jupyter_lowcost | job %s: could not save %s: %s",
            self.job.id,
            self.job.output_path,
            error,
        )

    def _metadata(self) -> dict[str, Any]:
        model = self.job.to_model()
        keys = (
            "id",
            "name",
            "state",
            "reason",
            "instance_type",
            "tier",
            "parameters",
            "started",
            "finished",
            "elapsed_seconds",
            "cost",
            "saved",
            "interruptions",
        )
        return {
            **{k: model[k] for k in keys},
            "instances": [{"id": i, **info} for i, info in self.job.instances.items()],
        }
