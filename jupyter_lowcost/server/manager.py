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
- :class:`~.instances.comeback.Comeback`: a restarted server taking kernels back;
- :class:`~.instances.rest_models.RestModels` and
  :class:`~.instances.kernel_reports.KernelReports`: the REST API's lookups and models.

Who calls the facade: the REST handlers (``handlers.py``; every refusal is a
``tornado.web.HTTPError`` with a message a person understands, raised before anything
changes), the kernel provisioner (``provisioner.py``, which finds the manager through
:func:`current_manager`), the backend (as its listener) and the launch channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from jupyter_events import EventLogger
from tornado import web

from ..backends import Backend, BackendError, BackendListener, InstanceType
from ..storage import checkpoint_dirs
from ..storage.private import private_dir
from ..storage.records import InstanceRecord, InstanceState, Placement, RecordStore
from ..words import describe_seconds
from . import jupyter_adapters as jupyter
from .channel import LaunchChannel
from .instances.clients import Clients
from .instances.comeback import Comeback
from .instances.kernel_reports import KernelReports
from .instances.launches import Launches
from .instances.ledger import Context, Ledger
from .instances.moves import Moves
from .instances.notices import Notices
from .instances.recovery import Recovery
from .instances.rest_models import RestModels
from .instances.state import RECOVERY_POLICIES, Settings

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
    ) -> None:
        self.settings = settings
        self.kernel_manager = kernel_manager
        self.log = log
        self.backend = backend_factory(self)
        self.channel = LaunchChannel(
            log,
            self._on_channel_message,
            host=settings.channel_ip,
            port=settings.channel_port,
            on_reconnect_secret=self._reconnect_secret_made,
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
        self.comeback = Comeback(self.ctx, self.notices, self._kernel_gone)
        self.launches = Launches(self.ctx, self.notices, self.comeback)
        self.moves = Moves(self.ctx, self.recovery, self.clients)
        self.rest = RestModels(self.ctx)
        self.reports = KernelReports(self.ctx)
        self._started: asyncio.Task[None] | None = None
        self._session_watch: asyncio.Task[None] | None = None

    @property
    def catalog(self) -> dict[str, InstanceType]:
        """The instance types on offer (the backend's, once it has started)."""
        return self.ctx.catalog

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
        records, kernels, orphaned_files = self.ledger.store.adopt_orphans()
        for record in records:
            self.ledger.add(record)
        # The kernels a previous server ran come back under their ids at once, before
        # anything here awaits: JupyterLab, polling, must never see them gone (it would
        # drop its kernel and session). They are pending until their launch has taken the
        # running instance back, or resumed the kernel from its checkpoint on a new one.
        comebacks = await self.comeback.recreate_kernels(kernels)
        await self.backend.start()
        self.ctx.catalog = self.backend.offered_types(self.ctx.catalog)
        for record in records:
            if not record.is_live or await self.comeback.find_again(record):
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
        await self.channel.start()
        for instance_id in self.comeback.awaited():
            self.comeback.write_channel_file(instance_id)
        self.ledger.save()
        self.ledger.store.remove(orphaned_files)
        self.comeback.prune_files()
        live = set(self.kernel_manager.list_kernel_ids()) | set(comebacks)
        for kernel_id in checkpoint_dirs.prune(
            settings.checkpoint_dir, settings.orphaned_checkpoints_seconds, keep=live
        ):
            self.log.info(
                "jupyter_lowcost | deleted the checkpoints of kernel %s: no server runs it, "
                "and the newest is older than %s",
                kernel_id,
                describe_seconds(settings.orphaned_checkpoints_seconds),
            )
        if self.ctx.session_manager is not None:
            self._session_watch = asyncio.ensure_future(self.comeback.watch_sessions())

    async def stop(self) -> None:
        """Terminate every live instance and stop listening (called at server shutdown)."""
        global _current
        ledger = self.ledger
        if ledger.stopped:
            return
        ledger.stopped = True
        for entry in ledger.instances.values():
            if entry.cap_timer is not None:
                entry.cap_timer.cancel()
        # Launches still waiting for room (a recovery waits as long as it takes) end now;
        # those that hold room (a slot, a job) run to their end like the rest.
        waiting = [
            r for r in ledger.records() if r.state == InstanceState.PENDING and not r.backend_state
        ]
        for record in waiting:
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
            jupyter.cancel_unsettled_start(self.kernel_manager)
        if self._session_watch is not None:
            self._session_watch.cancel()
        if self._started is not None:
            await asyncio.gather(self._started, return_exceptions=True)
            for record in [r for r in ledger.records() if r.is_live]:
                ledger.end(record, InstanceState.TERMINATED, "the Jupyter server stopped")
                await self.backend.terminate(record, now=True)
            await self.backend.stop()
            await self.channel.stop()
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

    # -- the kernel provisioner ----------------------------------------------------------

    def kernel_env(self, kernel_id: str) -> dict[str, str]:
        return self.launches.kernel_env(kernel_id)

    async def launch(
        self,
        kernel_id: str,
        python: str,
        env: dict[str, str],
        cwd: str | None,
        kernel_config: dict[str, Any],
        kernel_name: str | None = None,
    ) -> dict[str, Any]:
        if self.ledger.stopped:
            raise BackendError("the Jupyter server is shutting down", status=503)
        await self.ensure_started()
        return await self.launches.launch(kernel_id, python, env, cwd, kernel_config, kernel_name)

    def poll(self, kernel_id: str) -> int | None:
        return self.launches.poll(kernel_id)

    async def wait(self, kernel_id: str) -> int:
        return await self.launches.wait(kernel_id)

    async def send_signal(self, kernel_id: str, signum: int) -> None:
        await self.launches.send_signal(kernel_id, signum)

    def shutdown_requested(self, kernel_id: str, restart: bool) -> None:
        self.launches.shutdown_requested(kernel_id, restart)

    async def stop_instance(self, kernel_id: str, now: bool) -> None:
        await self.launches.stop_instance(kernel_id, now)

    def kernel_gone(self, kernel_id: str) -> None:
        self._kernel_gone(kernel_id)

    def _kernel_gone(self, kernel_id: str) -> None:
        self.launches.kernel_gone(kernel_id)

    # -- the backend (its listener) and the launch channel -------------------------------

    def instance_noticed(self, instance_id: str, deadline: float, reason: str) -> None:
        self.notices.instance_noticed(instance_id, deadline, reason)

    def instance_exited(self, instance_id: str, returncode: int | None, detail: str) -> None:
        self.notices.instance_exited(instance_id, returncode, detail)

    def instance_progress(self, instance_id: str, message: str) -> None:
        self.notices.instance_progress(instance_id, message)

    def instance_taken(self, instance_id: str, expired: bool, reason: str) -> None:
        self.notices.instance_taken(instance_id, expired, reason)

    def _on_channel_message(self, instance_id: str, message: dict[str, Any]) -> None:
        self.notices.on_channel_message(instance_id, message)

    def _reconnect_secret_made(self, instance_id: str, secret: str) -> None:
        self.comeback.reconnect_secret_made(instance_id, secret)

    # -- the REST API --------------------------------------------------------------------

    def catalog_models(self) -> list[dict[str, Any]]:
        return self.rest.catalog_models()

    def status_model(self) -> dict[str, Any]:
        return self.rest.status_model()

    def instance_models(self, kernel_id: str | None = None) -> list[dict[str, Any]]:
        return self.rest.instance_models(kernel_id)

    def instance_model(self, instance_id: str) -> dict[str, Any]:
        return self.rest.instance_model(instance_id)

    def current_instance_model(self, kernel_id: str) -> dict[str, Any] | None:
        return self.rest.current_instance_model(kernel_id)

    def kernel_model(self, kernel_id: str) -> dict[str, Any]:
        return self.rest.kernel_model(kernel_id)

    def parse_placement(self, body: dict[str, Any], current: Placement | None) -> Placement:
        return self.rest.parse_placement(body, current)

    def kernel_restored(self, kernel_id: str, report: dict[str, Any]) -> dict[str, Any]:
        """``POST kernels/<id>/restored``: a resumed kernel says what came back."""
        self.rest.require_kernel(kernel_id)
        return self.reports.restored(kernel_id, report)

    def checkpoint_status(self, kernel_id: str, report: dict[str, Any]) -> dict[str, Any]:
        """``POST kernels/<id>/checkpoint-status``: checkpoints fail, or work again."""
        self.rest.require_kernel(kernel_id)
        return self.reports.checkpoint_status(kernel_id, report)

    async def start_kernel(
        self, kernel_name: str, placement: Placement, path: str | None, notebook: str | None = None
    ) -> str:
        """``POST kernels``: a new kernel with ``placement``; returns its id once it answers.
        ``path`` is the kernel's working directory, ``notebook`` the path it was given."""
        await self.ensure_started()
        return await self.launches.start_kernel(kernel_name, placement, path, notebook)

    async def switch(self, kernel_id: str, placement: Placement, wait: bool) -> None:
        """``PUT kernels/<id>``: move the kernel to ``placement`` (a restart, same id)."""
        await self.ensure_started()
        self.rest.require_kernel(kernel_id)
        await self.moves.switch(kernel_id, placement, wait)

    async def terminate(self, instance_id: str) -> None:
        """``DELETE instances/<id>``: stop the instance; its kernel is shut down."""
        record = self.rest.record(instance_id)
        if not record.is_live:
            raise web.HTTPError(
                409, f"instance {instance_id} has already ended ({record.state.value})"
            )
        entry = self.ledger.instances[record.id]
        entry.stop_reason = "terminated through the REST API"
        kernel_id = record.kernel_id
        if kernel_id is not None and kernel_id in self.kernel_manager:
            await self.kernel_manager.shutdown_kernel(kernel_id, now=True)
        await self.backend.terminate(record, now=True)
        self.ledger.end(record, InstanceState.TERMINATED, "terminated through the REST API")

    async def interrupt(self, instance_id: str, notice_seconds: Any) -> dict[str, Any]:
        """``POST instances/<id>/interrupt``: announce an interruption ``notice_seconds`` ahead."""
        return await self.notices.interrupt(self.rest.record(instance_id), notice_seconds)
