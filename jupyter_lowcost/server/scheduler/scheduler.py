"""``LowCostScheduler``: jupyter-scheduler's Scheduler, whose jobs of the ``jupyter-lowcost``
environment run as our jobs (``manager.jobs``) on the compute type's instance type and tier.

Who calls it: jupyter-scheduler's ``SchedulerApp`` builds it (``scheduler_class``, set by
``LowCostApp`` through :mod:`.defaults`); its REST handlers call ``create_job``,
``get_job``, ``list_jobs``, ``count_jobs``, ``stop_job`` (PATCH status STOPPED),
``delete_job``; its ``TaskRunner``
calls ``create_job`` for a job definition's schedule, and "Run Job" on a definition
``create_job_from_definition``, which calls ``create_job``.

Every method stays synchronous, as jupyter-scheduler's: its handlers call them on the
server's event loop, and the TaskRunner and ``delete_job_definition`` call them without
awaiting. What must wait (our job's start, its cancel) runs as a task on that loop.
A job of another compute type ("this server") or environment, or any job when the
``jupyter_lowcost`` extension is not enabled, is jupyter-scheduler's own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any

from jupyter_scheduler.exceptions import IdempotencyTokenError, InputUriError, SchedulerError
from jupyter_scheduler.models import CreateJob, DescribeJob, Status
from jupyter_scheduler.orm import Job
from jupyter_scheduler.scheduler import Scheduler
from tornado import web

from ..events import JOB_SCHEMA_ID
from .checks import JobArguments, job_arguments
from .environments import ENVIRONMENT, manager, parse_compute_type
from .links import Link, create_table, link_of
from .rows import Rows


class LowCostScheduler(Scheduler):
    """jupyter-scheduler's Scheduler; the ``jupyter-lowcost`` environment's jobs are ours."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        create_table(self.db_url)
        self.rows = Rows(self)
        #: Rows whose job is being handed to our service now, and those stopped meanwhile.
        self.submitting: set[str] = set()
        self.stop_asked: set[str] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._loop = asyncio.get_event_loop()
        self._attached: object = None
        self.attach()

    def attach(self) -> None:
        """Follow our manager's job events, and reconcile the rows once it has started
        (once per manager: called when the scheduler is built, and again before each
        call, for a manager made after it)."""
        found = manager()
        if found is None or found is self._attached:
            return
        self._attached = found
        if found.event_logger is not None:
            found.event_logger.add_listener(schema_id=JOB_SCHEMA_ID, listener=self.rows.on_event)
        self.spawn(self.rows.reconcile())

    # -- tasks on the server's loop ------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run ``coroutine`` on the server's event loop (from a sync method on that loop,
        or from another thread); its failure is logged."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            task: asyncio.Future[Any] = self._loop.create_task(coroutine)
        else:
            task = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("jupyter_lowcost | scheduler task failed", exc_info=task.exception())

    def cancel(self, lowcost_id: str) -> None:
        """Cancel our job (its kernel shut down; it ends cancelled, its row STOPPED)."""
        found = manager()
        if found is not None:
            self.spawn(self._cancel(found, lowcost_id))

    @staticmethod
    async def _cancel(found: Any, lowcost_id: str) -> None:
        try:
            await found.jobs.cancel(lowcost_id)
        except web.HTTPError:  # (it had ended, or is being cancelled already)
            pass

    # -- jobs ----------------------------------------------------------------------------

    def _ours(self, model: Any) -> bool:
        self.attach()
        return model.runtime_environment_name == ENVIRONMENT and manager() is not None

    def create_job(self, model: CreateJob) -> str:
        """A row (QUEUED) and our job, started on the loop (the row follows it); the
        notebook is checked first, as ``POST lowcost/api/jobs`` checks it. Other compute
        types: jupyter-scheduler's own run."""
        if not self._ours(model):
            return super().create_job(model)
        try:
            placement = parse_compute_type(model.compute_type)
        except ValueError as err:
            raise SchedulerError(str(err)) from err
        if placement is None:
            return super().create_job(model)
        if not model.job_definition_id and not self.file_exists(model.input_uri):
            raise InputUriError(model.input_uri)
        found = manager()
        assert found is not None
        input_path = os.path.join(self.root_dir, model.input_uri)
        arguments = job_arguments(found, input_path, placement, model.parameters)
        with self.db_session() as session:
            if model.idempotency_token and (
                session.query(Job).filter(Job.idempotency_token == model.idempotency_token).first()
            ):
                raise IdempotencyTokenError(model.idempotency_token)
            values = model.dict(exclude_none=True, exclude={"input_uri"})
            values["output_formats"] = model.output_formats or []
            values["status"] = Status.QUEUED  # (the table's default is STOPPED)
            job = Job(**values)
            session.add(job)
            session.commit()
            description = DescribeJob.from_orm(job)
        self.copy_input_file(model.input_uri, self.get_staging_paths(description)["input"])
        # The notebook's folder is its kernel's working directory; a definition's input is
        # its staged copy, outside the server's contents.
        path = (
            None if model.job_definition_id or os.path.isabs(model.input_uri) else model.input_uri
        )
        self.submitting.add(description.job_id)
        self.rows.made_here.add(description.job_id)
        self.spawn(self._submit(description.job_id, description.name, arguments, path))
        return description.job_id

    async def _submit(
        self, job_id: str, name: str, arguments: JobArguments, path: str | None
    ) -> None:
        """Hand the job to our service; the row links to it (or fails with the reason)."""
        found = manager()
        try:
            if found is None:
                raise SchedulerError("the jupyter_lowcost extension stopped")
            await found.ensure_started()
            record = await found.jobs.create(
                arguments.notebook,
                name,
                arguments.kernel_name,
                arguments.placement,
                arguments.parameters,
                path,
                None,
            )
        except Exception as err:  # noqa: BLE001 (any failure: the row says it)
            self.submitting.discard(job_id)
            message = getattr(err, "log_message", None) or getattr(err, "message", None) or str(err)
            self._set(
                job_id, status=Status.FAILED, status_message=f"the job did not start: {message}"
            )
            return
        with self.db_session() as session:
            session.add(Link(job_id=job_id, lowcost_id=record.id, final=False, row_deleted=False))
            row = session.get(Job, job_id)
            if row is None:  # (deleted meanwhile)
                session.get(Link, job_id).row_deleted = True
                self.stop_asked.add(job_id)
            elif job_id not in self.stop_asked:
                row.status = Status.IN_PROGRESS
            session.commit()
        self.submitting.discard(job_id)
        if job_id in self.stop_asked:
            self.stop_asked.discard(job_id)
            self.cancel(record.id)

    def _set(self, job_id: str, **values: Any) -> None:
        with self.db_session() as session:
            session.query(Job).filter(Job.job_id == job_id).update(values)
            session.commit()

    def _open_link(self, job_id: str) -> str | None:
        """Our job's id, when the row is ours and not final yet."""
        with self.db_session() as session:
            link = link_of(session, job_id)
            return link.lowcost_id if link is not None and not link.final else None

    def stop_job(self, job_id: str) -> None:
        """PATCH status STOPPED: our job is cancelled (never a process killed); the row is
        STOPPING until it has ended, then STOPPED."""
        if job_id in self.submitting:
            self.stop_asked.add(job_id)
            self._set(job_id, status=Status.STOPPED)
            return
        lowcost_id = self._open_link(job_id)
        if lowcost_id is None or manager() is None:
            return super().stop_job(job_id)
        self._set(job_id, status=Status.STOPPING)
        self.cancel(lowcost_id)

    def delete_job(self, job_id: str) -> None:
        """Delete the row and its staged files; our job, if it still runs, is cancelled
        (the base class would stop only an IN_PROGRESS row, by its process)."""
        if job_id in self.submitting:
            self.stop_asked.add(job_id)
        lowcost_id = self._open_link(job_id)
        if lowcost_id is not None:
            self.cancel(lowcost_id)
        with self.db_session() as session:
            link = link_of(session, job_id)
            if link is not None:
                link.final = link.row_deleted = True
                session.query(Job).filter(Job.job_id == job_id).update({"status": Status.STOPPED})
                session.commit()
        super().delete_job(job_id)

    def get_job(self, job_id: str, job_files: bool | None = True) -> DescribeJob:
        self.attach()
        self.rows.refresh()
        return super().get_job(job_id, job_files)

    def list_jobs(self, query: Any) -> Any:
        self.attach()
        self.rows.refresh()
        return super().list_jobs(query)

    def count_jobs(self, query: Any) -> int:
        self.rows.refresh()
        return super().count_jobs(query)
