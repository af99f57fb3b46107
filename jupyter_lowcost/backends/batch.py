"""``BatchBackend``: what every batch-scheduler backend shares (Slurm; PBS, LSF, HTCondor
would be the same shape).

A batch scheduler runs each instance as a batch job: submitted with a command, followed
by reading the queue, stopped and signalled with commands. This base class owns all of
that: finding the scheduler's commands, running them (argument lists, never a shell), the
batch job of each instance, one polling task that reads the queue for every batch job of
this server and turns what it sees into progress messages and ends (exited, or taken away
with the reason), terminate and its wait, the REST API's injected interruption (SIGTERM to
the batch job, as a preemption sends), and taking a batch job back after a server restart
(found by its name). A subclass says what is specific to its scheduler:

- ``commands``, ``install_hint``, and what the scheduler's batch job states mean
  (``ended_states``, ``running_states``, ``taken_states``, ``expired_states``,
  ``completed_state``, ``cancelled_state``, ``pending_state``);
- :meth:`submit` (the batch job's command line; returns its id), :meth:`queue`
  (the states of this server's batch jobs), :meth:`batch_jobs_named` (a previous run's),
  :meth:`cancel_batch_jobs` and :meth:`signal_batch_job`;
- optionally :meth:`pending_reason` and :meth:`explain_notice`.

Batch jobs are named ``<job_name_prefix>-<instance id>``, which is how a restarted server
finds the batch jobs of the run before it, even one submitted just before a hard kill.
("Job" alone, elsewhere in the package, is a notebook run by ``jupyter lowcost run``; the
instance record keeps the batch job's id and name as ``job_id`` and ``job_name``.)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from dataclasses import dataclass
from typing import Any

from traitlets import Float, Unicode

from ..storage.private import open_private, private_dir
from ..storage.records import InstanceRecord, InstanceState
from .base import Backend, BackendError, LaunchSpec


@dataclass(frozen=True)
class BatchJobStatus:
    """One row of the queue: a batch job's state, why (pending, or ended), and its node."""

    state: str
    reason: str = ""
    node: str = ""


class BatchBackend(Backend):
    """Instances as batch jobs; see the module docstring for what a subclass provides."""

    #: The scheduler's commands this backend runs (found on PATH or in ``commands_dir``).
    commands: tuple[str, ...] = ()
    #: How to install them, for the error when one is missing.
    install_hint = ""
    #: States of a batch job whose processes are gone.
    ended_states: frozenset[str] = frozenset()
    #: States of a batch job whose kernel may be running (a restarted server takes it back).
    running_states: frozenset[str] = frozenset({"RUNNING"})
    #: The state of a batch job waiting in the queue.
    pending_state = "PENDING"
    #: Ended states in which the instance was taken away, with why, in words.
    taken_states: dict[str, str] = {}
    #: Taken states that are the end of the batch job's time limit (the lifetime cap).
    expired_states: frozenset[str] = frozenset()
    completed_state = "COMPLETED"
    cancelled_state = "CANCELLED"
    #: The scheduler's name in messages ("Slurm job 42"), and its cancel command.
    scheduler = "batch"
    cancel_command = ""

    commands_dir = Unicode(
        "",
        config=True,
        help="""The folder of the scheduler's commands; empty (default): found on PATH.""",
    )

    poll_interval = Float(
        1.0,
        config=True,
        help="""Seconds between two reads of the queue for this server's batch jobs.""",
    )

    job_name_prefix = Unicode(
        "jupyter-lowcost",
        config=True,
        help="""Batch job names are ``<prefix>-<instance id>`` (how a restarted server finds
        the batch jobs of the run before it).""",
    )

    def __init__(self, listener: Any, **kwargs: Any) -> None:
        super().__init__(listener, **kwargs)
        self._commands: dict[str, str] = {}
        self._env: dict[str, str] = {}  # the server's environment when the backend started
        # instance id -> record, for the batch jobs in the queue
        self._batch_jobs: dict[str, InstanceRecord] = {}
        self._seen: dict[str, str] = {}  # instance id -> last batch job state seen
        self._cancelled: set[str] = set()  # batch jobs this server cancelled
        self._injected: set[str] = set()  # batch jobs sent SIGTERM by interrupt()
        self._gone: dict[str, asyncio.Event] = {}
        self._poller: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._hurry = 0  # callers waiting for a batch job to end: poll faster

    # -- what a subclass provides --------------------------------------------------------

    async def submit(self, record: InstanceRecord, spec: LaunchSpec) -> str:
        """Submit the batch job that runs ``spec``; return its id (``record.backend_state``
        may be filled with more)."""
        raise NotImplementedError

    async def queue(
        self, batch_job_ids: list[str], batch_job_names: list[str]
    ) -> dict[str, BatchJobStatus]:
        """The states of these batch jobs (by id), ended ones included while the scheduler
        still knows them; one missing from the answer has left the queue."""
        raise NotImplementedError

    async def batch_jobs_named(self, name: str) -> list[tuple[str, str]]:
        """(batch job id, state) of the batch jobs called ``name`` still in the queue."""
        raise NotImplementedError

    async def cancel_batch_jobs(self, batch_job_ids: list[str]) -> None:
        """Stop these batch jobs at once (their processes killed)."""
        raise NotImplementedError

    async def signal_batch_job(self, batch_job_id: str, signal_name: str) -> None:
        """Send ``SIG<signal_name>`` to the batch job's launcher."""
        raise NotImplementedError

    def pending_reason(self, reason: str) -> str:
        """Why a batch job waits, as a person reads it."""
        return reason

    def describe_batch_job(self, record: InstanceRecord) -> str:
        """``Slurm job 42``: how messages name the batch job."""
        return f"{self.scheduler} job {record.backend_state.get('job_id')}"

    def submitted_message(self, record: InstanceRecord) -> str:
        return f"submitted as {self.describe_batch_job(record)}"

    def batch_job_queued_message(self, record: InstanceRecord, why: str) -> str:
        return f"{self.describe_batch_job(record)} is queued: {why}"

    # -- commands ------------------------------------------------------------------------

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment the scheduler's commands run with (the server's by default)."""
        return dict(os.environ) if base is None else dict(base)

    async def start(self) -> None:
        self._env = self.environment()
        for command in self.commands:
            path = (
                os.path.join(self.commands_dir, command)
                if self.commands_dir
                else shutil.which(command)
            )
            if not path or not os.access(path, os.X_OK):
                raise BackendError(
                    f"the {self.name} backend needs the {command} command: {self.install_hint}",
                    status=500,
                )
            self._commands[command] = path

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)

    async def run(
        self, command: str, *args: str, env: dict[str, str] | None = None, check: bool = True
    ) -> str:
        """Run one of the scheduler's commands (an argument list, no shell); its stdout.
        ``check``: a non-zero exit raises :class:`BackendError` with its stderr."""
        try:
            process = await asyncio.create_subprocess_exec(
                self._commands[command],
                *args,
                env=env or self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as err:
            raise BackendError(f"could not run {command}: {err}", status=500) from err
        out, err = await process.communicate()
        if check and process.returncode:
            message = err.decode(errors="replace").strip() or f"exit code {process.returncode}"
            raise BackendError(f"{command} failed: {message}", status=503, reason=self.name)
        return out.decode(errors="replace")

    # -- instances -----------------------------------------------------------------------

    @property
    def notice_seconds_given(self) -> float:
        """Seconds between the scheduler's SIGTERM and its SIGKILL (the notice)."""
        return 30.0

    def batch_job_name(self, instance_id: str) -> str:
        return f"{self.job_name_prefix}-{instance_id}"

    async def launch(self, record: InstanceRecord, spec: LaunchSpec) -> None:
        private_dir(os.path.dirname(spec.log_path))
        # Created here, owner-only: the batch job appends to it and keeps its mode,
        # whatever its umask (which is the user's, for the kernel's files).
        open_private(spec.log_path, "ab").close()
        batch_job_id = await self.submit(record, spec)
        record.backend_state.update(job_id=batch_job_id, job_name=self.batch_job_name(record.id))
        self._follow(record)
        self.listener.instance_progress(record.id, self.submitted_message(record))

    def _follow(self, record: InstanceRecord) -> None:
        self._batch_jobs[record.id] = record
        self._gone[record.id] = asyncio.Event()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll_forever())
        self._wake.set()

    async def send_signal(self, record: InstanceRecord, signum: int) -> None:
        batch_job_id = record.backend_state.get("job_id")
        if batch_job_id and record.id in self._batch_jobs:
            await self.signal_batch_job(
                batch_job_id, signal.Signals(signum).name.removeprefix("SIG")
            )

    async def terminate(self, record: InstanceRecord, now: bool = False) -> None:
        batch_job_id = record.backend_state.get("job_id")
        if not batch_job_id or record.id not in self._batch_jobs:
            return
        self._cancelled.add(record.id)
        # Killed even when asked politely: the launcher takes SIGTERM as an interruption
        # notice, and jupyter_client asks to terminate only a kernel that did not stop
        # when asked to shut down.
        await self.cancel_batch_jobs([batch_job_id])
        gone = self._gone.get(record.id)
        if gone is None:
            return
        self._hurry += 1
        self._wake.set()
        limit = self.notice_seconds_given + 30
        try:
            await asyncio.wait_for(gone.wait(), timeout=limit)
        except asyncio.TimeoutError:
            self.log.warning(
                "jupyter_lowcost | %s is still in the queue %g s after it was cancelled",
                self.describe_batch_job(record),
                limit,
            )
        finally:
            self._hurry -= 1

    async def interrupt(self, record: InstanceRecord, notice_seconds: float, reason: str) -> None:
        """Announce the notice, then SIGTERM the batch job as a preemption does."""
        batch_job_id = record.backend_state.get("job_id")
        if record.state != InstanceState.RUNNING or not batch_job_id:
            return
        self._injected.add(record.id)
        self.listener.instance_noticed(record.id, time.time() + notice_seconds, reason)
        await self.signal_batch_job(batch_job_id, "TERM")

    def injected(self, record: InstanceRecord) -> bool:
        """True when the server itself sent the batch job's SIGTERM (``interrupt``)."""
        return record.id in self._injected

    async def _live_batch_jobs(self, record: InstanceRecord) -> list[tuple[str, str]]:
        name = record.backend_state.get("job_name") or self.batch_job_name(record.id)
        return [(j, s) for j, s in await self.batch_jobs_named(name) if s not in self.ended_states]

    async def reattach(self, record: InstanceRecord) -> bool:
        """Follow again the batch job a previous server submitted (found by its name), if
        it runs (one whose processes are being killed is as good as gone)."""
        batch_jobs = [
            (j, s) for j, s in await self._live_batch_jobs(record) if s in self.running_states
        ]
        if not batch_jobs:
            return False
        batch_job_id, state = batch_jobs[0]
        record.backend_state.update(job_id=batch_job_id, job_name=self.batch_job_name(record.id))
        self._seen[record.id] = state
        self._follow(record)
        return True

    async def forget_orphan(self, record: InstanceRecord) -> bool:
        """Cancel what is left of a previous run's batch job (found by its name)."""
        alive = [batch_job_id for batch_job_id, _ in await self._live_batch_jobs(record)]
        if alive:
            await self.cancel_batch_jobs(alive)
        return bool(alive)

    # -- the queue -----------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        """Read the queue while this server has batch jobs in it (``launch`` restarts it)."""
        while self._batch_jobs:
            try:
                await self._poll_once()
                await self.after_poll()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a failing queue command must not stop polling
                self.log.warning(
                    "jupyter_lowcost | %s backend: reading the queue: %s", self.name, err
                )
            self._wake.clear()
            interval = 0.2 if self._hurry else self.poll_interval
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except asyncio.TimeoutError:
                pass

    async def after_poll(self) -> None:
        """Called after each read of the queue (a subclass may refresh what it caches)."""

    async def _poll_once(self) -> None:
        if not self._batch_jobs:
            return
        records = list(self._batch_jobs.values())
        rows = await self.queue(
            [r.backend_state["job_id"] for r in records],
            [r.backend_state["job_name"] for r in records],
        )
        for record in records:
            instance_id = record.id
            row = rows.get(record.backend_state["job_id"])
            if row is None:
                self._ended(record, "GONE", f"the job left the {self.scheduler} queue")
                continue
            previous = self._seen.get(instance_id)
            self._seen[instance_id] = row.state
            if row.state in self.ended_states:
                self._ended(record, row.state, row.reason)
            elif row.state == self.pending_state:
                why = self.pending_reason(row.reason)
                self.listener.instance_progress(
                    instance_id, self.batch_job_queued_message(record, why)
                )
            elif row.state in self.running_states and previous != row.state:
                record.backend_state["node"] = row.node
                self.listener.instance_progress(
                    instance_id,
                    f"{self.describe_batch_job(record)} runs on node {row.node}: starting the kernel",
                )

    def _ended(self, record: InstanceRecord, state: str, reason: str) -> None:
        """The batch job's processes are gone: tell the manager how it ended (once)."""
        instance_id = record.id
        self._batch_jobs.pop(instance_id, None)
        self._seen.pop(instance_id, None)
        self._injected.discard(instance_id)
        cancelled_here = instance_id in self._cancelled
        self._cancelled.discard(instance_id)
        gone = self._gone.pop(instance_id, None)
        if gone is not None:
            gone.set()
        batch_job = self.describe_batch_job(record)
        expired = state in self.expired_states
        if state in self.taken_states and not cancelled_here:
            self.listener.instance_taken(
                instance_id, expired, f"{batch_job} ended: {self.taken_states[state]}"
            )
        elif record.state == InstanceState.NOTICE and not cancelled_here:
            # Killed at the end of its notice, maybe just before the server's own
            # deadline: the interruption that was announced.
            self.listener.instance_taken(instance_id, expired, record.reason)
        elif state == self.completed_state:
            self.listener.instance_exited(instance_id, 0, f"{batch_job} completed")
        elif state == self.cancelled_state and not cancelled_here:
            self.listener.instance_exited(
                instance_id,
                None,
                f"{batch_job} was cancelled outside Jupyter"
                + (f" ({self.cancel_command})" if self.cancel_command else ""),
            )
        else:
            detail = f"{batch_job} ended ({state.lower()}" + (
                f": {reason})" if reason not in ("", "None") else ")"
            )
            self.listener.instance_exited(instance_id, 0 if cancelled_here else None, detail)
