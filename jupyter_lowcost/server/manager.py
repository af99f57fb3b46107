"""The InstanceManager: placements, the instance lifecycle, the cap, cost, and recovery.

One per server, created by ``LowCostApp``. A facade: each of its jobs is done by one
collaborator in :mod:`.instances`, all sharing one :class:`~.instances.ledger.Ledger` of
kernel and instance entries (the only place where an instance changes state: saved,
emitted as an event, logged):

- :class:`~.instances.launches.Launches`: what the kernel provisioner calls (launch, poll,
  wait, signal, stop) and ``POST kernels``;
- :class:`~.instances.notices.Notices`: interruption notices, exits and the lifetime cap;
- :class:`~.instances.recovery.Recovery`: the recovery policy after an interruption;
- :class:`~.instances.moves.Moves`: switches a user asks for (``PUT kernels/<id>``);
- :class:`~.instances.clients.Clients`: the kernel's websockets across those restarts;
- :class:`~.instances.adoption.Adoption`: a restarted server taking kernels back;
- :class:`~.instances.job_kernels.JobKernels`: what the jobs' runners (``jobs/``) ask
  about a job's kernel: its instances, waits for it to run again or for room, the
  checkpoint it restores, its end;
- :class:`~.instances.rest_models.RestModels` and
  :class:`~.instances.kernel_reports.KernelReports`: the REST API's lookups and models.

The manager itself starts and stops everything, and is the backend's listener. The REST
handlers (``handlers.py``; every refusal is a ``tornado.web.HTTPError`` with a message a
person understands, raised before anything changes) and the kernel provisioner
(``provisioner.py``, which finds the manager through :func:`current_manager`) and the
jobs (``jobs/``) call the collaborators they need through it: ``manager.rest``,
``manager.launches``, ``manager.job_kernels``...
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from jupyter_events import EventLogger

from ..backends import Backend, BackendError, BackendListener, InstanceType
from ..storage import checkpoint_dirs
from ..storage.private import private_dir
from ..storage.records import InstanceRecord, InstanceState, Placement, RecordStore
from ..words import describe_seconds
from . import jupyter_adapters as jupyter
from .channel import LaunchChannel
from .instances.adoption import Adoption
from .instances.clients import Clients
from .instances.entries import RECOVERY_POLICIES, Settings
from .instances.job_kernels import JobKernels
from .instances.kernel_reports import KernelReports
from .instances.launches import Launches
from .instances.ledger import Context, Ledger
from .instances.moves import Moves
from .instances.notices import Notices
from .instances.recovery import Recovery
from .instances.rest_models import RestModels
from .jobs.service import Jobs

__all__ = ["RECOVERY_POLICIES", "InstanceManager", "Settings", "current_manager"]

_current: InstanceManager | None = None


def current_manager() -> InstanceManager | None:
    """The manager of the server in this process (None outside a server with the extension)."""
    return _current


class InstanceManager:
    """Owns placements and instance records; drives the backend; enforces the cap."""

    def __init__(
        self,
        *,
        settings: Settings,
        backend_factory: Callable[[BackendListener], Backend],
        catalog: dict[str, InstanceType],
        kernel_manager: Any,
        event_logger: EventLogger | None,
        server_url: Callable[[], str],
        token: Callable[[], str],
        log: logging.Logger,
        session_manager: Any = None,
        contents_manager: Any = None,
    ) -> None:
        self.settings = settings
        self.kernel_manager = kernel_manager
        self.event_logger = event_logger
        self.log = log
        self.backend = backend_factory(self)
        self.channel = LaunchChannel(
            log,
            lambda instance_id, message: self.notices.on_channel_message(instance_id, message),
            host=settings.channel_ip,
            port=settings.channel_port,
            on_reconnect_secret=lambda i, secret: self.adoption.reconnect_secret_made(i, secret),
        )
        self.ledger = Ledger(
            settings, RecordStore(settings.data_dir), event_logger, log, self.channel.forget
        )
        self.ctx = Context(
            settings=settings,
            ledger=self.ledger,
            backend=self.backend,
            channel=self.channel,
            kernel_manager=kernel_manager,
            session_manager=session_manager,
            log=log,
            event_logger=event_logger,
            catalog=catalog,
            server_url=server_url,
            token=token,
        )
        self.clients = Clients(self.ctx)
        self.recovery = Recovery(self.ctx, self.clients)
        self.notices = Notices(self.ctx, self.recovery)
        self.adoption = Adoption(
            self.ctx, self.notices, lambda kernel_id: self.launches.kernel_gone(kernel_id)
        )
        self.launches = Launches(self.ctx, self.notices, self.adoption)
        self.moves = Moves(self.ctx, self.recovery, self.clients)
        self.rest = RestModels(self.ctx)
        self.reports = KernelReports(self.ctx)
        self.job_kernels = JobKernels(self.ctx, self.recovery)
        self.jobs = Jobs(self, contents_manager)
        self._started: asyncio.Task[None] | None = None
        self._session_watch: asyncio.Task[None] | None = None

    # -- start and stop ------------------------------------------------------------------

    def activate(self) -> None:
        """Make this the manager that provisioners find (called by ``LowCostApp``)."""
        global _current
        _current = self

    async def ensure_started(self) -> None:
        """Start the backend and the channel and settle what a previous run left (once)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        settings = self.settings
        private_dir(settings.data_dir)
        private_dir(settings.checkpoint_dir)
        with self.ledger.store.taking_over():
            records, kernels, orphaned_files = self.ledger.store.adopt_orphans()
            # (the jobs of a server that is gone go with its records, to one server)
            self.jobs.load()
        for record in records:
            self.ledger.add(record)
        # The kernels a previous server ran come back under their ids at once, before
        # anything here awaits: JupyterLab, polling, must never see them gone (it would
        # drop its kernel and session). They are pending until their launch has taken the
        # running instance back, or resumed the kernel from its checkpoint on a new one.
        taken_back = await self.adoption.recreate_kernels(kernels)
        await self.backend.start()
        self.ctx.catalog = self.backend.offered_types(self.ctx.catalog)
        for record in records:
            if not record.is_live or await self.adoption.find_again(record):
                continue
            alive = False
            if record.backend == self.backend.name:
                alive = await self.backend.forget_orphan(record)
            reason = (
                "the Jupyter server restarted, and its kernel could not be re-attached: "
                "the instance was stopped"
                if alive
                else "the Jupyter server restarted; the instance had already ended"
            )
            self.log.warning("jupyter_lowcost | instance %s: %s", record.id, reason)
            self.ledger.transition(record, InstanceState.TERMINATED, reason)
        await self._sweep_unrecorded()
        await self.channel.start()
        for instance_id in self.adoption.awaited():
            self.adoption.write_channel_file(instance_id)
        self.ledger.save()
        self.ledger.store.remove(orphaned_files)
        self._prune_leftovers(taken_back)
        if self.ctx.session_manager is not None:
            self._session_watch = asyncio.ensure_future(self.adoption.watch_sessions())
        self.jobs.resume_unfinished()

    async def _sweep_unrecorded(self) -> None:
        """Stop the instances of this data directory that no records file names (a server
        killed between starting one and saving its record): see
        :meth:`..backends.base.Backend.sweep_unrecorded` (called at start, once every record
        was taken back or forgotten)."""
        store = self.ledger.store
        elsewhere = store.held_elsewhere().instances

        def is_recorded(instance_id: str) -> bool:
            record = self.ledger.record(instance_id)
            return (record is not None and record.is_live) or instance_id in elsewhere

        try:
            swept = await self.backend.sweep_unrecorded(store.folder_id(), is_recorded)
        except Exception as err:  # (the next start tries again)
            self.log.warning("jupyter_lowcost | looking for unrecorded instances: %s", err)
            return
        for instance_id in swept:
            self.log.warning(
                "jupyter_lowcost | instance %s: stopped; no server had a record of it "
                "(a server stopped between starting it and saving its record)",
                instance_id,
            )

    def _prune_leftovers(self, taken_back: list[str]) -> None:
        """Delete what belongs to no server any more: launcher logs, channel files, and
        checkpoints older than ``orphaned_checkpoints_days`` (called at start, once the
        records of servers that are gone are this server's; ``taken_back``: the kernels
        being put back). What another server sharing the data directory holds stays (see
        :meth:`..storage.records.RecordStore.held_elsewhere`): its kernels go on."""
        settings, store = self.settings, self.ledger.store
        self.adoption.prune_files(store)
        live = set(self.kernel_manager.list_kernel_ids()) | set(taken_back) | self.jobs.kernel_ids()
        live |= store.held_elsewhere().kernels
        for kernel_id in checkpoint_dirs.prune(
            settings.checkpoint_dir, settings.orphaned_checkpoints_seconds, keep=live
        ):
            self.log.info(
                "jupyter_lowcost | deleted the checkpoints of kernel %s: no server runs it, "
                "and the newest is older than %s",
                kernel_id,
                describe_seconds(settings.orphaned_checkpoints_seconds),
            )

    async def stop(self) -> None:
        """Terminate every live instance and stop listening (called at server shutdown)."""
        global _current
        ledger = self.ledger
        if ledger.stopped:
            return
        # Jobs stop first, as they are: they go on when a server starts again.
        await self.jobs.stop()
        ledger.stopped = True
        for entry in ledger.instances.values():
            if entry.cap_timer is not None:
                entry.cap_timer.cancel()
        # Launches still waiting for room (a recovery waits as long as it takes) end now;
        # those that hold room (a slot, a job) run to their end like the rest.
        for record in ledger.awaiting_room():
            ledger.end(record, InstanceState.TERMINATED, "the Jupyter server stopped")
            await self.backend.terminate(record, now=True)
        # Deadlines still counting down are dropped; moves and recoveries under way run to
        # their end (launches now fail at once), so that no kernel is left half restarted.
        for entry in list(ledger.instances.values()):
            if entry.deadline is not None and entry.record.state == InstanceState.NOTICE:
                entry.deadline.cancel()
        busy = [t for t in ledger.tasks if not t.done()]
        if busy:
            await asyncio.wait(busy, timeout=30)
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
        if self._session_watch is not None:
            self._session_watch.cancel()
        if self._started is not None:
            await asyncio.gather(self._started, return_exceptions=True)
            for record in [r for r in ledger.records() if r.is_live]:
                ledger.end(record, InstanceState.TERMINATED, "the Jupyter server stopped")
                await self.backend.terminate(record, now=True)
            await self.backend.stop()
            await self.channel.stop()
        # A kernel whose start or restart never settled (cancelled, wherever it was) would
        # make the server's shutdown of it fail (InvalidStateError), and the server would
        # never exit: nothing settles it any more now.
        jupyter.cancel_unsettled_start(self.kernel_manager)
        if _current is self:
            _current = None

    # -- lookups -------------------------------------------------------------------------

    def current_instance(self, kernel_id: str) -> InstanceRecord | None:
        """The latest instance of ``kernel_id`` (live or not), if it ever had one."""
        return self.ledger.current(kernel_id)

    def record(self, instance_id: str) -> InstanceRecord | None:
        """The record of ``instance_id``, if this server knows it."""
        return self.ledger.record(instance_id)

    def placement(self, kernel_id: str) -> Placement | None:
        """The placement of ``kernel_id`` (None: it runs on the server's machine)."""
        return self.ledger.placement(kernel_id)

    # -- what needs the manager itself -------------------------------------------------

    async def launch(
        self,
        kernel_id: str,
        python: str,
        env: dict[str, str],
        cwd: str | None,
        kernel_config: dict[str, Any],
        kernel_name: str | None = None,
    ) -> dict[str, Any]:
        """The provisioner's launch: refused while the server stops, and only once the
        backend has started (see :meth:`.instances.launches.Launches.launch`)."""
        if self.ledger.stopped:
            raise BackendError("the Jupyter server is shutting down", status=503)
        await self.ensure_started()
        return await self.launches.launch(kernel_id, python, env, cwd, kernel_config, kernel_name)

    # -- the backend's listener ----------------------------------------------------------
    # (the backend is made before the collaborators, which need it: it reports here)

    def instance_noticed(self, instance_id: str, deadline: float, reason: str) -> None:
        self.notices.instance_noticed(instance_id, deadline, reason)

    def instance_exited(self, instance_id: str, returncode: int | None, detail: str) -> None:
        self.notices.instance_exited(instance_id, returncode, detail)

    def instance_progress(self, instance_id: str, message: str) -> None:
        self.notices.instance_progress(instance_id, message)

    def instance_taken(self, instance_id: str, expired: bool, reason: str) -> None:
        self.notices.instance_taken(instance_id, expired, reason)

    def instance_unplaceable(self, instance_id: str, reason: str) -> None:
        self.notices.instance_unplaceable(instance_id, reason)
