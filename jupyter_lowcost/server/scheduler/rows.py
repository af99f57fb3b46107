"""jupyter-scheduler's rows kept current with our jobs.

Who calls it: :class:`~.scheduler.LowCostScheduler`, which builds one :class:`Rows` and
calls :meth:`Rows.refresh` before it answers a list, a count or a job, :meth:`Rows.on_event`
for every job event our jobs service emits (registered with the server's event logger),
and :meth:`Rows.reconcile` once our manager has started (loaded, resumed or given up the
jobs a previous server left).

A row turns final (COMPLETED, FAILED, STOPPED) only once the output files of its job are
staged, so that Download finds them as soon as the row says it can. Jobs of ours that
have no row (``jupyter lowcost run``, the REST API) get one, of the ``jupyter-lowcost``
environment, so that the Jobs panel lists them too.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import psutil
from jupyter_scheduler.models import DescribeJob, Status
from jupyter_scheduler.orm import Job

from ...storage.jobs import JobRecord
from . import states
from .environments import ENVIRONMENT, compute_type, manager
from .links import Link, link_of, linked_ids, open_links
from .outputs import write_outputs

if TYPE_CHECKING:
    from .scheduler import LowCostScheduler

GONE = (
    "this Jupyter server does not know the jupyter-lowcost job {job} any more (its data "
    "directory was changed, or another server running on it owns the job)"
)
NEVER_STARTED = "the Jupyter server stopped before the job was handed to jupyter-lowcost"
LOCAL_LOST = "the Jupyter server stopped while this job ran in one of its processes"


class Rows:
    """The rows of one scheduler, brought up to date with our jobs service."""

    def __init__(self, scheduler: LowCostScheduler) -> None:
        self.scheduler = scheduler
        #: Our jobs whose output files a worker thread is writing now.
        self.staging: set[str] = set()
        #: Rows this server made (the start's reconciliation leaves them alone).
        self.made_here: set[str] = set()

    def session(self) -> Any:
        return self.scheduler.db_session()

    # -- kept current --------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring every row not yet final up to date, and make rows for our jobs that have
        none (called before a list, a count, a job is answered). Output files not staged
        yet by a job event are written here (rare: the event comes first)."""
        jobs = manager()
        if jobs is None:
            return
        records = jobs.jobs.jobs
        with self.session() as session:
            for link in open_links(session):
                job = records.get(link.lowcost_id)
                row = session.get(Job, link.job_id)
                if job is None or row is None or link.lowcost_id in self.staging:
                    continue
                self._settle(session, link, row, job)
            self._rows_for_unlinked(session, records)
            session.commit()

    async def on_event(self, logger: Any = None, schema_id: str = "", data: Any = None) -> None:
        """A job event: that job's row follows it; once the job has ended, its output files
        are staged in a worker thread first."""
        jobs = manager()
        lowcost_id = (data or {}).get("id")
        if jobs is None or lowcost_id is None or lowcost_id in self.staging:
            return
        job = jobs.jobs.jobs.get(lowcost_id)
        if job is None:
            return
        with self.session() as session:
            link = session.query(Link).filter(Link.lowcost_id == lowcost_id).first()
            if link is None:
                self._rows_for_unlinked(session, {lowcost_id: job})
                session.commit()
                return
            row = session.get(Job, link.job_id)
            if link.final or link.row_deleted or row is None:
                return
            if not job.state.is_final:
                if states.apply(row, job):
                    session.commit()
                return
            paths = self.scheduler.get_staging_paths(DescribeJob.from_orm(row))
        self.staging.add(lowcost_id)
        try:
            problems = await asyncio.to_thread(write_outputs, paths, jobs.jobs.output(lowcost_id))
        finally:
            self.staging.discard(lowcost_id)
        with self.session() as session:
            link, row = session.get(Link, link.job_id), session.get(Job, link.job_id)
            if link is not None and row is not None and not link.final:
                self._settle(session, link, row, job, staged=problems)
                session.commit()

    def _settle(
        self, session: Any, link: Link, row: Any, job: JobRecord, staged: list[str] | None = None
    ) -> None:
        """The row follows our job; a final state only with its outputs staged (written
        here unless ``staged``, the problems of their writing, says they were)."""
        if job.state.is_final:
            if staged is None:
                paths = self.scheduler.get_staging_paths(DescribeJob.from_orm(row))
                found = manager()
                if found is None:
                    return
                staged = write_outputs(paths, found.jobs.output(job.id))
            link.final = True
        states.apply(row, job)
        _tell_output_problems(row, staged or [])

    def _rows_for_unlinked(self, session: Any, records: dict[str, JobRecord]) -> None:
        """A row (and a link) for each of our jobs that never had one."""
        known = linked_ids(session)
        for job in records.values():
            if job.id in known:
                continue
            row = Job(
                runtime_environment_name=ENVIRONMENT,
                compute_type=self._compute_type(job),
                input_filename=job.name if job.name.endswith(".ipynb") else f"{job.name}.ipynb",
                output_formats=["ipynb"],
                name=job.name,
                parameters={
                    k: v if isinstance(v, str) else repr(v) for k, v in job.parameters.items()
                },
                tags=["jupyter lowcost run"],
                create_time=states.millis(job.created),
                status=Status.QUEUED,
            )
            session.add(row)
            session.flush()
            link = Link(job_id=row.job_id, lowcost_id=job.id, final=False, row_deleted=False)
            session.add(link)
            self.made_here.add(row.job_id)
            self._settle(session, link, row, job)

    @staticmethod
    def _compute_type(job: JobRecord) -> str:
        found = manager()
        itype = found.ctx.catalog.get(job.instance_type) if found else None
        price = itype.price(job.low_cost) if itype else 0.0
        return compute_type(job.instance_type, job.low_cost, price)

    # -- the server's start --------------------------------------------------------------

    async def reconcile(self) -> None:
        """No row stays IN_PROGRESS or STOPPING for ever: once our manager has started
        (the jobs of the previous server loaded and resumed), each open row from before
        this start follows its job: one our service resumed stays in progress, one whose
        job is gone becomes FAILED with the reason, a STOPPING one STOPPED (its job
        cancelled if it still runs). Rows of jupyter-scheduler's own runs whose process
        is gone become FAILED."""
        found = manager()
        if found is None:
            return
        await found.ensure_started()
        records, cancel = found.jobs.jobs, []
        with self.session() as session:
            open_rows = session.query(Job).filter(Job.status.in_([s.value for s in states.OPEN]))
            for row in open_rows.all():
                if row.job_id in self.made_here or row.job_id in self.scheduler.submitting:
                    continue
                link = link_of(session, row.job_id)
                job = records.get(link.lowcost_id) if link is not None else None
                stopping = row.status == Status.STOPPING
                if job is not None:
                    if stopping and not job.state.is_final:
                        cancel.append(job.id)
                    elif link is not None and not link.final:
                        self._settle(session, link, row, job)
                    continue
                if link is None and row.pid and psutil.pid_exists(row.pid) and not stopping:
                    continue  # (jupyter-scheduler's own run, still going: it writes its row)
                self._end(row, link, stopping)
            session.commit()
        for lowcost_id in cancel:
            self.scheduler.cancel(lowcost_id)

    @staticmethod
    def _end(row: Any, link: Link | None, stopping: bool) -> None:
        """A row whose job is gone ends: STOPPED if its user had stopped it, else FAILED."""
        if link is not None:
            link.final = True
        row.end_time = row.end_time or int(time.time() * 1000)
        if stopping:
            row.status = Status.STOPPED
            return
        row.status = Status.FAILED
        if link is not None:
            row.status_message = GONE.format(job=link.lowcost_id)
        elif row.pid:
            row.status_message = LOCAL_LOST
        else:
            row.status_message = NEVER_STARTED


def _tell_output_problems(row: Any, problems: list[str]) -> None:
    """A final row says which of its output files could not be written, after its own
    message (our reason, for a failed job)."""
    if problems:
        row.status_message = "; ".join(filter(None, [row.status_message, *problems]))
