"""Jobs: the REST API's ``jobs`` routes, and every job's runner while the server runs.

Who calls it: the handlers (``POST/GET jobs``, ``GET/DELETE jobs/<id>``,
``GET jobs/<id>/output``, ``GET jobs/<id>/log``); the manager, which loads the jobs a
previous server left once it has started (they go on where they were) and stops the
runners before it stops the instances (the jobs are left as they are, to go on after the
restart). Every change of a job is saved and emitted as a job event.

A job belongs to its server (``storage/jobs.py``): a server sharing the data directory with
another that runs leaves that server's jobs alone; it takes over only the jobs of servers
that are gone, as it does their instances.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

from tornado import web

from ...storage.jobs import JobRecord, JobState, JobStore
from ...storage.records import Placement
from .. import events
from . import notebook as nb
from .admission import Admission
from .runner import JobRunner

if TYPE_CHECKING:
    from ..manager import InstanceManager


class Jobs:
    """Every job this server knows, and the runners of those not yet ended."""

    def __init__(self, manager: InstanceManager, contents_manager: Any) -> None:
        self.manager = manager
        self.contents_manager = contents_manager
        self.store = JobStore(manager.settings.data_dir / "jobs")
        self.jobs: dict[str, JobRecord] = {}
        self.runners: dict[str, JobRunner] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        #: The line in which jobs wait for room for their kernels.
        self.admission = Admission(manager.job_kernels)
        #: The kernels of the unfinished jobs of other servers running on the same data
        #: directory (their checkpoints stay; this server never runs those jobs).
        self.kernels_elsewhere: set[str] = set()
        #: The jobs a ``DELETE jobs/<id>`` is cancelling now.
        self.cancelling: set[str] = set()

    # -- the server's start and stop -----------------------------------------------------

    def load(self) -> None:
        """Read the jobs this server runs: those of servers that are gone become its own
        (called by the manager at start, as it adopts their records, before anything
        prunes checkpoints). Jobs of servers still running stay theirs."""
        for job in self.store.load_all():
            self.jobs[job.id] = job
        self.kernels_elsewhere = self.store.kernels_elsewhere()

    def kernel_ids(self) -> set[str]:
        """The kernels of unfinished jobs, this server's and other running servers' (their
        checkpoints must stay)."""
        mine = {j.kernel_id for j in self.jobs.values() if j.kernel_id and not j.state.is_final}
        return mine | self.kernels_elsewhere

    def resume_unfinished(self) -> None:
        """Run on every job of this server that had not ended when its previous server
        stopped (called by the manager once it has started)."""
        for job in self.jobs.values():
            if not job.state.is_final and job.id not in self.tasks:
                self.store.append_log(job.id, "the Jupyter server started again; going on")
                self._run(job)

    async def stop(self) -> None:
        """The server stops (called by the manager first): runners stop, jobs stay as they
        are (they go on later). A job its user is cancelling ends cancelled first, its
        kernel shut down (a next server must not bring that kernel back)."""
        stopping = {job_id for job_id in self.tasks if job_id not in self.cancelling}
        for job_id in stopping:
            self.runners[job_id].server_stopping = True
        for job_id in stopping:
            self.tasks[job_id].cancel()
        tasks = [t for t in self.tasks.values() if not t.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- the REST API --------------------------------------------------------------------

    async def create(
        self,
        notebook: dict[str, Any],
        name: str,
        kernel_name: str,
        placement: Placement,
        parameters: dict[str, Any],
        path: str | None,
        output_path: str | None,
    ) -> JobRecord:
        """``POST jobs``: a new job, queued; its runner starts at once. The notebook is
        prepared and written in a worker thread (a large one takes a while)."""
        prepared = await asyncio.to_thread(nb.prepare, notebook, parameters)
        job = JobRecord(
            id=uuid.uuid4().hex[:12],
            name=name,
            kernel_name=kernel_name,
            instance_type=placement.instance_type,
            low_cost=placement.low_cost,
            parameters=dict(parameters),
            path=path,
            output_path=output_path,
            created=time.time(),
            cells_total=len(nb.code_cells(prepared)),
        )
        try:
            await asyncio.to_thread(self.store.create, job, prepared)
        except OSError as err:
            raise web.HTTPError(507, f"the job could not be saved: {err}") from err
        self.jobs[job.id] = job
        self.store.append_log(job.id, f"queued: {name}")
        self._run(job)
        return job

    def job(self, job_id: str) -> JobRecord:
        job = self.jobs.get(job_id)
        if job is None:
            raise web.HTTPError(404, f"no job with id {job_id!r}")
        return job

    def models(self) -> list[dict[str, Any]]:
        return [job.to_model() for job in sorted(self.jobs.values(), key=lambda j: j.created)]

    def output(self, job_id: str) -> dict[str, Any]:
        """The executed notebook so far (``GET jobs/<id>/output``)."""
        job = self.job(job_id)
        runner = self.runners.get(job_id)
        if runner is not None:
            return runner.notebook
        return self.store.output(job.id)

    def log(self, job_id: str, offset: int) -> dict[str, Any]:
        """The job's log from ``offset`` on (``GET jobs/<id>/log``)."""
        job = self.job(job_id)
        text, end = self.store.read_log(job.id, offset)
        return {"text": text, "offset": end, "state": job.state.value}

    async def cancel(self, job_id: str) -> JobRecord:
        """``DELETE jobs/<id>``: stop the job (its kernel is shut down, its output stays)."""
        job = self.job(job_id)
        if job.state.is_final:
            raise web.HTTPError(409, f"job {job_id} has already ended ({job.state.value})")
        if job_id in self.cancelling:  # (one cancel answers 200; the others 409, as after)
            raise web.HTTPError(409, f"job {job_id} is already being cancelled")
        self.cancelling.add(job_id)
        job.reason = "cancelled by its user"
        task = self.tasks.get(job_id)
        try:
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            self.cancelling.discard(job_id)
        if not job.state.is_final:  # (no runner: a job loaded in a final race)
            job.state, job.finished = JobState.CANCELLED, time.time()
            self.store.save(job)
            self.emit(job)
        return job

    # -- runners -------------------------------------------------------------------------

    def _run(self, job: JobRecord) -> None:
        runner = JobRunner(
            self.manager,
            self.store,
            self.contents_manager,
            job,
            self.emit,
            self.admission,
        )
        self.runners[job.id] = runner
        task = asyncio.ensure_future(runner.run())
        self.tasks[job.id] = task

        def done(_: asyncio.Task[None]) -> None:
            if self.tasks.get(job.id) is task:
                del self.tasks[job.id]
                self.runners.pop(job.id, None)

        task.add_done_callback(done)

    def emit(self, job: JobRecord) -> None:
        events.emit_job(self.manager.event_logger, job.to_model())
