"""A job's kernel: started when the job's turn for room comes, a client connected to its
current instance, and released at the job's end.

Owned by :class:`~.runner.JobRunner`, one per job it runs. Everything it knows of the
kernel's instances, and every wait for them, it asks the manager
(``manager.job_kernels``); it starts the kernel through ``manager.launches``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import nbformat
from jupyter_core.utils import ensure_async

from ...backends import BackendError
from ...storage.jobs import JobState
from ...storage.records import InstanceState, Placement
from .admission import Admission
from .execution import CellExecutor, connect, language_info
from .progress import JobFailed, JobProgress

if TYPE_CHECKING:
    from ..manager import InstanceManager


def _refused_for_room(start: asyncio.Future[str]) -> bool:
    """The kernel's start was refused at once for want of room (another kernel took it
    between the check and the start): nothing started, the job waits again."""
    if not start.done() or start.cancelled():
        return False
    error = start.exception()
    return isinstance(error, BackendError) and error.reason == "no-capacity"


class JobKernel:
    """The kernel one job runs its cells on, and the client connected to it."""

    def __init__(
        self,
        manager: InstanceManager,
        admission: Admission,
        contents_manager: Any,
        progress: JobProgress,
        executor: CellExecutor,
    ) -> None:
        self.kernels = manager.job_kernels
        self.launches = manager.launches
        self.kernel_manager = manager.kernel_manager
        self.settings = manager.settings
        #: The line of jobs waiting for room (the server's, see ``admission.py``).
        self.admission = admission
        self.contents_manager = contents_manager
        self.progress = progress
        self.job = progress.job
        self.executor = executor
        self.client: Any = None
        #: The instance the client is connected to (a cell starts only there).
        self.connected_instance: str | None = None
        #: The kernel's start under way (or the last one, refused for want of room).
        self._starting: asyncio.Future[str] | None = None

    # -- what the kernel is doing --------------------------------------------------------

    def exists(self) -> bool:
        """The job's kernel is in the server (put back after a server restart, say)."""
        return self.job.kernel_id is not None and self.job.kernel_id in self.kernel_manager

    def instance_id(self) -> str | None:
        current = self.kernels.current_instance(self.job.kernel_id or "")
        return current.id if current is not None else None

    def lost(self, instance_id: str | None) -> str | None:
        """Why the kernel running the cell is gone (None while it runs)."""
        return self.kernels.lost_reason(self.job.kernel_id or "", instance_id)

    def ready_for_a_cell(self) -> bool:
        """Connected to the kernel's current instance, which runs (no notice)."""
        current = self.kernels.current_instance(self.job.kernel_id or "")
        return (
            current is not None
            and current.id == self.connected_instance
            and current.state == InstanceState.RUNNING
            and self.client is not None
        )

    # -- start ---------------------------------------------------------------------------

    async def start(self, restore: str | None) -> None:
        """Start the job's kernel (under its id when it has one), resumed from checkpoint
        ``restore`` (None: none), once the job's turn for room has come and there is
        room: a full backend makes jobs wait, never fail."""
        job = self.job
        cwd = await self._kernel_cwd()
        ahead = self.admission.waiting()
        if ahead and job.state != JobState.RESUMING:
            self.progress.set(JobState.QUEUED, f"queued: {ahead} job(s) before it start first")
        try:
            # One job at a time, in the order they came, asks for room, and only when
            # there is some.
            async with self.admission.turn(job.id):
                await self._start_when_room(cwd, restore)
            assert self._starting is not None
            await self._start_settled(self._starting)
        except asyncio.CancelledError:
            if self._starting is not None:
                await self._start_settled(self._starting, cancelled=True)
            raise
        except BackendError as err:
            raise JobFailed(f"the kernel could not start: {err.message}") from err
        self.progress.track_instances()

    async def _start_when_room(self, cwd: str, restore: str | None) -> None:
        """(The job's turn.) Start the kernel once there is room, and return once its
        instance holds that room, or its start has ended; a start refused at once for
        want of room (another kernel took it first) waits for room again."""
        job = self.job
        placement = Placement(job.instance_type, job.low_cost)

        def say_waiting() -> None:
            if job.state != JobState.RESUMING:
                self.progress.set(JobState.QUEUED, self.kernels.room_message(job.low_cost))

        while True:
            await self.admission.until_room(job.low_cost, say_waiting)
            if job.state != JobState.RESUMING:
                self.progress.set(JobState.QUEUED, f"starting on {placement.describe()}")
            job.kernel_id = job.kernel_id or str(uuid.uuid4())
            self._starting = asyncio.ensure_future(
                self.launches.start_kernel(
                    job.kernel_name,
                    placement,
                    cwd,
                    job.name,
                    job_id=job.id,
                    kernel_id=job.kernel_id,
                    restore_checkpoint=restore,
                )
            )
            await self.admission.until_holding_room(self._starting, job.kernel_id)
            if not _refused_for_room(self._starting):
                return

    async def _start_settled(self, start: asyncio.Future[str], cancelled: bool = False) -> None:
        """Wait for the kernel's start to end, through any cancel of the job (``cancelled``:
        one came already): :meth:`release` then shuts the kernel down whole, never half
        started. A cancelled job's instance that still waits for room stops waiting. The
        cancel is raised once the start has ended; else the start's error, if any."""
        while not start.done():
            if cancelled:
                self.kernels.stop_waiting_for_room(
                    self.job.kernel_id or "", "its job was cancelled"
                )
            try:
                # (leaves ``start`` alone when cancelled; looks again at the next change
                # once cancelled: its instance may come to wait for room only later)
                if cancelled:
                    await self.kernels.changed(start)
                else:
                    await asyncio.wait([start])
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            if not start.cancelled():
                start.exception()  # (retrieved: the job was cancelled anyway)
            raise asyncio.CancelledError
        start.result()

    async def _kernel_cwd(self) -> str:
        """The kernel's working directory: the notebook's folder (as for a notebook
        opened in JupyterLab), the server's root when the notebook is not under it."""
        path = self.job.path or ""
        try:
            return str(await ensure_async(self.contents_manager.get_kernel_path(path)))
        except Exception:
            return ""

    # -- the client ----------------------------------------------------------------------

    async def connect(self) -> None:
        """A client of the job's kernel on its current instance (noted: a cell starts
        only there)."""
        self.disconnect()
        timeout = self.settings.launch_timeout + 60
        instance_id = self.instance_id()
        try:
            self.client = await connect(self.kernel_manager, self.job.kernel_id, timeout)
        except (RuntimeError, TimeoutError) as err:
            if self.lost(instance_id) is None:
                raise JobFailed(f"the job's kernel does not answer: {err}") from err
            # Lost while it started: the next cell's check waits for its next instance.
        self.connected_instance = instance_id
        if self.client is not None:
            self.executor.use(self.client)
            # (what the kernel runs, in the notebook's metadata, as nbclient writes it)
            info = await language_info(self.client, lambda: self.lost(instance_id))
            if info is not None:
                self.progress.notebook.metadata["language_info"] = nbformat.from_dict(info)

    def disconnect(self) -> None:
        if self.client is not None:
            self.client.stop_channels()
            self.client = None

    # -- the job's end -------------------------------------------------------------------

    async def release(self) -> None:
        """The job has ended: its kernel is shut down, and whatever a relaunch started
        meanwhile is stopped; its checkpoints go with it (the manager's
        ``end_job_kernel``). Called by the runner before the job says it has ended, so
        that its record holds its instances' final state and cost."""
        kernel_id = self.job.kernel_id
        if kernel_id is None:
            return
        await self.kernels.end_job_kernel(
            kernel_id,
            self.job.id,
            lambda instance_id: self.progress.log(
                f"stopping instance {instance_id}: the job has ended"
            ),
        )
