"""The InstanceManager: placements, the instance lifecycle, the cap, cost, and recovery.

One per server, created by ``LowCostApp``. Who calls it:

- the REST handlers (``handlers.py``), for everything in the API; the manager raises
  ``tornado.web.HTTPError`` with a message a person understands, and changes nothing when
  it refuses;
- the kernel provisioner (``provisioner.py``), to launch, poll, signal and stop the instance
  of a kernel that has a placement; it finds the manager through :func:`current_manager`;
- the backend and the launch channel, through :meth:`instance_noticed`,
  :meth:`instance_exited`, :meth:`instance_taken`, :meth:`instance_progress` and
  :meth:`_on_channel_message` (a notice the launcher saw itself, such as Slurm's SIGTERM).

Every transition of an instance is saved to the record store and emitted as an event.
Recovery after an interruption or expiry, and every switch, is a restart of the same
kernel id through the server's kernel manager, so JupyterLab reconnects by itself.

The records also hold what a server started after this one died needs (see
"a restart of the server" below): at start it puts each kernel back under its id, and
that kernel's first launch takes its running instance back (its launcher reconnects) or,
if the instance was lost meanwhile, resumes it from its checkpoint on a new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from jupyter_events import EventLogger
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from tornado import web

from . import checkpoint_dirs, events
from ._version import __version__
from .backends import Backend, BackendError, BackendListener, LaunchSpec, available_backends
from .catalog import InstanceType
from .channel import LaunchChannel, LaunchFailed
from .checkpoints import human_bytes
from .client import ENV_KERNEL_ID, ENV_TOKEN, ENV_URL
from .kernel_checkpoints import ENV_DIR as ENV_CHECKPOINT_DIR
from .kernel_checkpoints import ENV_FAILING, ENV_NOTEBOOK, ENV_RESTORE
from .kernel_checkpoints import ENV_WHEN as ENV_CHECKPOINTS
from .launcher import (
    ENV_CHANNEL,
    ENV_CHANNEL_FILE,
    ENV_INSTANCE_ID,
    ENV_SECRET,
    is_ipykernel_command,
)
from .private import open_private, private_dir
from .records import InstanceRecord, InstanceState, Placement, RecordStore, iso

RECOVERY_POLICIES = ("relaunch", "fallback", "none")

_current: InstanceManager | None = None


def current_manager() -> InstanceManager | None:
    """The manager of the server in this process (None outside a server with the extension)."""
    return _current


def describe_seconds(seconds: float) -> str:
    """``86400`` -> "24 hours", ``600`` -> "10 minutes", ``90`` -> "1.5 minutes",
    ``45`` -> "45 seconds": for messages."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size:
            amount = round(seconds / size, 1)
            return f"{amount:g} {unit}{'' if amount == 1 else 's'}"
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"


class InstanceManager:
    """Owns placements and instance records; drives the backend; enforces the cap."""

    def __init__(
        self,
        *,
        backend_factory: Callable[[BackendListener], Backend],
        catalog: dict[str, InstanceType],
        kernel_manager: Any,
        event_logger: EventLogger | None,
        data_dir: Path,
        server_url: Callable[[], str],
        token: Callable[[], str],
        lifetime_cap: float,
        cap_notice: float,
        recovery_policy: str,
        launch_timeout: float,
        max_notice: float,
        channel_ip: str,
        channel_port: int = 0,
        log: logging.Logger,
        checkpoints: str = "cell",
        checkpoint_dir: Path | None = None,
        fallback_after: int = 0,
        demo: bool = False,
        orphaned_checkpoints_seconds: float = 7 * 86400,
        session_manager: Any = None,
        orphan_timeout: float = 0.0,
        reattach_timeout: float = 30.0,
    ) -> None:
        self.catalog = catalog
        self.kernel_manager = kernel_manager
        self.event_logger = event_logger
        self.data_dir = data_dir
        self.server_url = server_url
        self.token = token
        self.lifetime_cap = lifetime_cap
        self.cap_notice = cap_notice
        self.recovery_policy = recovery_policy
        self.launch_timeout = launch_timeout
        self.max_notice = max_notice
        self.log = log
        self.checkpoints = checkpoints
        self.fallback_after = fallback_after
        self.demo = demo
        self.orphaned_checkpoints_seconds = orphaned_checkpoints_seconds
        self.session_manager = session_manager
        self.orphan_timeout = orphan_timeout
        self.reattach_timeout = reattach_timeout
        self.checkpoint_dir = checkpoint_dir or data_dir / "checkpoints"
        self._resume: set[str] = set()  # kernels whose next start restores their checkpoint
        self._restored: dict[str, dict[str, Any]] = {}  # kernel id -> its last restore
        self.backend = backend_factory(self)
        self.store = RecordStore(data_dir)
        self.channel = LaunchChannel(
            log,
            self._on_channel_message,
            host=channel_ip,
            port=channel_port,
            on_reconnect_secret=self._reconnect_secret_made,
        )
        self._records: dict[str, InstanceRecord] = {}
        self._placements: dict[str, Placement] = {}
        self._current: dict[str, str] = {}  # kernel id -> id of its latest instance
        # Kernel id -> what is under way (a move, a recovery), oldest first; one at a time
        # runs (``_kernel_lock``), a move asked meanwhile is refused with 409.
        self._busy: dict[str, list[str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._recovering: set[str] = set()  # kernels whose next launch waits for capacity
        self._keep_checkpoints: set[str] = set()  # kernels the server (not a user) stopped
        self._notebooks: dict[str, str] = {}  # kernel id -> the notebook path it was given
        self._checkpoint_status: dict[str, dict[str, Any]] = {}  # kernel id -> last report
        self._save_failed = False  # the record store could not be written (a full disk)
        # Kernel id -> the pending record of the instance that will resume it, made while
        # its recovery waited for room (its launch goes on with that record).
        self._prepared: dict[str, InstanceRecord] = {}
        self._launch_reasons: dict[str, str] = {}  # kernel id -> why its next instance starts
        self._stop_reasons: dict[str, str] = {}  # instance id -> why it is being stopped
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._deadlines: dict[str, asyncio.Task[None]] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._expiring: set[str] = set()  # instances whose notice is their lifetime's end
        self._returncodes: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started: asyncio.Task[None] | None = None
        self._stopped = False
        # Kernel id -> what re-creating it under its id after a server restart needs
        # (kernelspec, working directory, notebook, session), saved with the records.
        self._kernel_info: dict[str, dict[str, Any]] = {}
        # Kernel id -> the instance a previous server ran it on, to take back at its
        # launch (see ``_take_back``); instance id -> the reconnection awaited from it.
        self._adopting: dict[str, InstanceRecord] = {}
        self._coming_back: dict[str, asyncio.Future[dict[str, Any]]] = {}
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
        private_dir(self.data_dir)
        private_dir(self.checkpoint_dir)
        records, kernels, orphaned_files = self.store.adopt_orphans()
        for record in records:
            self._records[record.id] = record
        # The kernels a previous server ran come back under their ids at once, before
        # anything here awaits: JupyterLab, polling, must never see them gone (it would
        # drop its kernel and session). They are pending until their launch has taken the
        # running instance back, or resumed the kernel from its checkpoint on a new one.
        comebacks = await self._recreate_kernels(kernels)
        await self.backend.start()
        self.catalog = self.backend.offered_types(self.catalog)
        taking_back = {r.id for r in self._adopting.values()}
        for record in records:
            if not record.is_live:
                continue
            if record.id in taking_back:
                await self._find_again(record)
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
            self._transition(record, InstanceState.TERMINATED, reason)
        await self.channel.start()
        for instance_id in self._coming_back:
            self._write_channel_file(instance_id)
        self._save()
        self.store.remove(orphaned_files)
        self._prune_logs()
        live = set(self.kernel_manager.list_kernel_ids()) | set(comebacks)
        for kernel_id in checkpoint_dirs.prune(
            self.checkpoint_dir, self.orphaned_checkpoints_seconds, keep=live
        ):
            self.log.info(
                "jupyter_lowcost | deleted the checkpoints of kernel %s: no server runs it, "
                "and the newest is older than %s",
                kernel_id,
                describe_seconds(self.orphaned_checkpoints_seconds),
            )
        if self.session_manager is not None:
            self._session_watch = asyncio.ensure_future(self._watch_sessions())

    # -- a restart of the server: kernels taken back or resumed --------------------------

    async def _recreate_kernels(self, kernels: dict[str, dict[str, Any]]) -> list[str]:
        """Put back, under its id, each kernel a previous server ran on an instance, with
        its placement and its notebook's session (called at start, before anything else
        awaits). Each one's launch then takes its instance back or resumes it (see
        :meth:`_take_back`). Returns the kernel ids."""
        comebacks = []
        for kernel_id, info in kernels.items():
            try:
                placement = Placement(
                    str(info["placement"]["instance_type"]), bool(info["placement"]["low_cost"])
                )
                kernel_name = str(info["kernel_name"])
            except (KeyError, TypeError):
                continue
            if kernel_id in self.kernel_manager:
                continue
            record = self._records.get(str(info.get("instance_id")))
            if record is None or record.kernel_id != kernel_id:
                continue
            self._placements[kernel_id] = placement
            self._current[kernel_id] = record.id
            self._kernel_info[kernel_id] = {
                k: info.get(k) for k in ("kernel_name", "cwd", "session")
            }
            if info.get("notebook"):
                self._notebooks[kernel_id] = str(info["notebook"])
            status = info.get("checkpoint_status")
            if isinstance(status, dict) and "ok" in status:
                self._checkpoint_status[kernel_id] = status
            self._adopting[kernel_id] = record
            try:
                await self._start_pending(kernel_id, kernel_name, info.get("cwd"))
            except Exception as err:  # its kernelspec is gone, say
                self.log.error(
                    "jupyter_lowcost | kernel %s cannot come back after the server restart: %s",
                    kernel_id,
                    err,
                )
                self._keep_checkpoints.add(kernel_id)
                self.kernel_gone(kernel_id)
                continue
            await self._restore_session(kernel_id, info.get("session"))
            comebacks.append(kernel_id)
        return comebacks

    async def _start_pending(self, kernel_id: str, kernel_name: str, cwd: Any) -> None:
        """Start the kernel under its id without waiting for it: it is listed at once,
        and a client that connects waits until it answers (jupyter_client's pending
        kernels, for this one start: with them ``start_kernel`` returns without awaiting
        anything, so no other start sees the setting)."""
        km = self.kernel_manager
        pending = km.use_pending_kernels
        km.use_pending_kernels = True
        try:
            await km.start_kernel(
                kernel_id=kernel_id,
                kernel_name=kernel_name,
                **({"cwd": cwd} if isinstance(cwd, str) and os.path.isdir(cwd) else {}),
            )
        finally:
            km.use_pending_kernels = pending
        self._spawn(self._until_back(kernel_id))

    async def _until_back(self, kernel_id: str) -> None:
        """Follow a kernel put back at start until it answers; a kernel that cannot come
        back at all is removed (its checkpoints are kept, for %lowcost restore)."""
        try:
            await self.kernel_manager.get_kernel(kernel_id).ready
        except Exception as err:
            message = err.message if isinstance(err, BackendError) else str(err)
            self.log.error(
                "jupyter_lowcost | kernel %s could not come back after the server restart: %s",
                kernel_id,
                message,
            )
            self._keep_checkpoints.add(kernel_id)
            if kernel_id in self.kernel_manager:
                self.kernel_manager.remove_kernel(kernel_id)
            getattr(self.kernel_manager, "_pending_kernels", {}).pop(kernel_id, None)
            self.kernel_gone(kernel_id)
        finally:
            self._recovering.discard(kernel_id)

    async def _restore_session(self, kernel_id: str, session: Any) -> None:
        """Put back the session that tied the kernel to its notebook, with its id (the
        one JupyterLab holds)."""
        if self.session_manager is None or not isinstance(session, dict):
            return
        try:
            try:
                await self.session_manager.get_session(session_id=str(session["id"]))
                return  # (a session store that outlives the server kept it)
            except web.HTTPError:
                pass
            await self.session_manager.save_session(
                str(session["id"]),
                path=session.get("path"),
                name=session.get("name"),
                type=session.get("type"),
                kernel_id=kernel_id,
            )
        except Exception as err:  # a session store that refuses: the kernel still comes back
            self.log.warning(
                "jupyter_lowcost | could not restore the session of kernel %s: %s", kernel_id, err
            )

    async def _watch_sessions(self) -> None:
        """Keep the session of each kernel on an instance in the saved records (its id,
        notebook path and name change with the user's renames), once a second."""
        while not self._stopped:
            changed = False
            for kernel_id, info in list(self._kernel_info.items()):
                try:
                    model = await self.session_manager.get_session(kernel_id=kernel_id)
                except web.HTTPError:
                    continue  # no session (a kernel started without one)
                session = {k: model.get(k) for k in ("id", "path", "name", "type")}
                if info.get("session") != session:
                    info["session"] = session
                    changed = True
            if changed:
                self._save()
            await asyncio.sleep(1.0)

    async def _find_again(self, record: InstanceRecord) -> None:
        """Ask the backend whether an instance a previous server ran still runs; if so,
        wait for its launcher to reconnect (its kernel's launch takes it back)."""
        secret = record.reattach.get("secret")
        alive = (
            record.backend == self.backend.name
            and record.state in (InstanceState.RUNNING, InstanceState.NOTICE)
            and bool(secret)
            and await self.backend.reattach(record)
        )
        if alive:
            self._coming_back[record.id] = self.channel.expect_back(record.id, str(secret))
        elif record.backend == self.backend.name and record.state == InstanceState.PENDING:
            await self.backend.forget_orphan(record)

    def _reconnect_secret_made(self, instance_id: str, secret: str) -> None:
        """The channel made a launcher's next reconnect secret: saved before it is sent."""
        record = self._records.get(instance_id)
        if record is not None:
            record.reattach["secret"] = secret
            self._save()

    def _channel_file(self, instance_id: str) -> Path:
        return self.data_dir / "channels" / f"{instance_id}.json"

    def _write_channel_file(self, instance_id: str) -> None:
        """Tell the instance's launcher where this server listens (it reads the file when
        it dials again after losing its server)."""
        path = self._channel_file(instance_id)
        address = self.backend.channel_address(self.channel.host, self.channel.port)
        try:
            private_dir(path.parent)
            tmp = path.with_suffix(".tmp")
            with open_private(tmp, "w") as handle:
                json.dump({"address": address}, handle)
            os.replace(tmp, path)
        except OSError as err:
            self.log.warning("jupyter_lowcost | could not write %s: %s", path, err)

    def _orphan_rules(self, record: InstanceRecord) -> dict[str, Any]:
        """How long the instance's launcher keeps its kernel without a server: the
        configured ``orphan_timeout``, else until its lifetime cap."""
        cap = self.lifetime_cap
        if self.orphan_timeout > 0:
            return {"orphan_timeout": self.orphan_timeout, "orphan_until": None}
        until = time.time() + cap + 60 if record.low_cost and cap > 0 else None
        return {"orphan_timeout": cap if cap > 0 else 86400.0, "orphan_until": until}

    async def _take_back(self, kernel_id: str, record: InstanceRecord) -> dict[str, Any] | None:
        """The launch of a kernel put back at start: its connection info once the
        launcher of its running instance has reconnected (the same kernel, its variables
        and the cell it runs), else None after ending the instance as lost; the launch
        then resumes the kernel from its checkpoint on a new instance, by the policy."""
        coming = self._coming_back.pop(record.id, None)
        why = (
            "it was still starting when the Jupyter server went away"
            if record.state == InstanceState.PENDING
            else "it had ended while the Jupyter server was away"
        )
        if coming is not None:
            try:
                info = await asyncio.wait_for(asyncio.shield(coming), self.reattach_timeout)
            except (asyncio.TimeoutError, LaunchFailed):
                info = None
                why = f"its launcher did not reconnect within {self.reattach_timeout:g} s"
            if info is not None and record.is_live:
                return self._taken_back(kernel_id, record, info)
            await self.backend.terminate(record, now=True)
        if not record.is_live:
            why = record.reason
        expired = record.expires_at is not None and record.expires_at <= time.time() + 1
        state = InstanceState.EXPIRED if expired else InstanceState.INTERRUPTED
        record.recovery = self.recovery_policy
        self._end(record, state, f"the Jupyter server restarted; the instance was lost: {why}")
        self._returncodes.setdefault(record.id, 1)
        placement = self._placements[kernel_id]
        if self.recovery_policy == "none":
            self._keep_checkpoints.add(kernel_id)
            raise BackendError(
                f"the {record.state.value} instance {record.id} is not replaced (recovery "
                "policy 'none'); its checkpoints are kept (%lowcost restore)",
                status=503,
            )
        if self.recovery_policy == "fallback" and self.fallback_after == 0:
            placement = Placement(placement.instance_type, low_cost=False)
            self._placements[kernel_id] = placement
        self._launch_reasons[kernel_id] = (
            f"recovery ({self.recovery_policy}) after the {record.state.value} instance "
            f"{record.id} (lost while the Jupyter server was away): relaunched on "
            f"{placement.describe()}"
        )
        self._recovering.add(kernel_id)
        return None

    def _taken_back(
        self, kernel_id: str, record: InstanceRecord, info: dict[str, Any]
    ) -> dict[str, Any]:
        """Settle a kernel whose instance is back: its clocks (cap, notice) run on."""
        self._current[kernel_id] = record.id
        busy = " (a cell is running)" if info.get("execution_state") == "busy" else ""
        self._transition(
            record,
            record.state,
            f"re-attached after the Jupyter server restarted: the kernel runs on "
            f"{self._placements[kernel_id].describe()}, as before{busy}",
        )
        if record.state == InstanceState.NOTICE and record.notice_deadline is not None:
            self._deadlines[record.id] = self._spawn(self._enforce_deadline(record))
        else:
            self._arm_cap(record)
        if info.get("execution_state") in ("busy", "idle") and kernel_id in self.kernel_manager:
            # Busy or idle, as its launcher said: jupyter_server holds a kernel "starting"
            # until its first status, which a kernel running a long cell sends only at the
            # end (a client connecting meanwhile would wait that long, its output lost).
            km = self.kernel_manager.get_kernel(kernel_id)
            km.execution_state = info["execution_state"]
            kernel_info = info.get("kernel_info")
            if isinstance(kernel_info, dict) and kernel_info.get("protocol_version"):
                # What a websocket asks first, once per kernel manager (jupyter_server keeps
                # the answer there): the shell of a kernel running a cell answers only
                # when the cell ends, and the client would wait for it.
                known: asyncio.Future[dict[str, Any]] = asyncio.Future()
                known.set_result(kernel_info)
                km._kernel_info_future = known
        ports = {k: v for k, v in info.items() if k in ("ip", "transport") or k.endswith("_port")}
        return {
            **ports,
            "key": str(record.reattach["key"]).encode(),
            "signature_scheme": record.reattach["signature_scheme"],
        }

    def _prune_logs(self) -> None:
        """Drop the launcher logs of instances no longer on record, and the channel files
        of instances no longer live (kept until now: deleting one while the server runs
        would free the block that a full disk then gives to the records)."""
        for log in (self.data_dir / "logs").glob("*.log"):
            if log.stem not in self._records:
                log.unlink(missing_ok=True)
        for path in (self.data_dir / "channels").glob("*.json"):
            record = self._records.get(path.stem)
            if record is None or not record.is_live:
                path.unlink(missing_ok=True)

    async def stop(self) -> None:
        """Terminate every live instance and stop listening (called at server shutdown)."""
        global _current
        if self._stopped:
            return
        self._stopped = True
        for timer in self._timers.values():
            timer.cancel()
        # Launches still waiting for room (a recovery waits as long as it takes) end now;
        # those that hold room (a slot, a job) run to their end like the rest.
        waiting = [
            r
            for r in self._records.values()
            if r.state == InstanceState.PENDING and not r.backend_state
        ]
        for record in waiting:
            self._end(record, InstanceState.TERMINATED, "the Jupyter server stopped")
            await self.backend.terminate(record, now=True)
        # Deadlines still counting down are dropped; moves and recoveries under way run to
        # their end (launches now fail at once), so that no kernel is left half restarted.
        for instance_id, task in list(self._deadlines.items()):
            record = self._records.get(instance_id)
            if record is not None and record.state == InstanceState.NOTICE:
                task.cancel()
        busy = [t for t in self._tasks if not t.done()]
        if busy:
            await asyncio.wait(busy, timeout=30)
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
            # A restart cancelled above leaves its kernel's ``ready`` future pending
            # (jupyter_client settles it only on success or an Exception): the server's
            # shutdown of that kernel would then fail on it (InvalidStateError).
            for kernel_id in list(self.kernel_manager.list_kernel_ids()):
                ready = self.kernel_manager.get_kernel(kernel_id).ready
                if not ready.done():
                    ready.cancel()
        if self._session_watch is not None:
            self._session_watch.cancel()
        if self._started is not None:
            await asyncio.gather(self._started, return_exceptions=True)
            for record in [r for r in self._records.values() if r.is_live]:
                self._end(record, InstanceState.TERMINATED, "the Jupyter server stopped")
                await self.backend.terminate(record, now=True)
            await self.backend.stop()
            await self.channel.stop()
        if _current is self:
            _current = None

    # -- records -------------------------------------------------------------------------

    def _save(self) -> None:
        """Write the records; a failure (a full disk) is logged, and the server goes on
        from what it holds in memory: its deadlines, events and answers do not depend on
        the disk. The next transition tries again."""
        try:
            self.store.save(list(self._records.values()), self._kernels_to_save())
        except OSError as err:
            if not self._save_failed:
                self.log.error(
                    "jupyter_lowcost | could not save the instance records in %s: %s; "
                    "going on without (a restarted server will not know these instances)",
                    self.store.folder,
                    err,
                )
            self._save_failed = True
        else:
            if self._save_failed:
                self.log.warning("jupyter_lowcost | instance records saved again")
            self._save_failed = False

    def _kernels_to_save(self) -> dict[str, dict[str, Any]]:
        """What a restarted server needs to re-create each kernel on an instance."""
        saved = {}
        for kernel_id, info in self._kernel_info.items():
            placement = self._placements.get(kernel_id)
            if placement is None or kernel_id not in self._current:
                continue
            saved[kernel_id] = {
                **info,
                "placement": placement.to_model(),
                "instance_id": self._current[kernel_id],
                "notebook": self._notebooks.get(kernel_id),
                "checkpoint_status": self._checkpoint_status.get(kernel_id),
            }
        return saved

    def _transition(self, record: InstanceRecord, state: InstanceState, reason: str) -> None:
        """Move ``record`` to ``state``, then save and emit (the only place that does)."""
        now = time.time()
        record.state = state
        record.reason = reason
        if state == InstanceState.RUNNING and record.started_at is None:
            record.started_at = now
            if record.low_cost and self.lifetime_cap > 0:
                record.expires_at = now + self.lifetime_cap
        if state.is_final:
            record.ended_at = now
            timer = self._timers.pop(record.id, None)
            if timer is not None:
                timer.cancel()
            deadline = self._deadlines.pop(record.id, None)
            if deadline is not None and deadline is not asyncio.current_task():
                deadline.cancel()
            self.channel.forget(record.id)
            self._ended.setdefault(record.id, asyncio.Event()).set()
        self._save()
        events.emit_transition(self.event_logger, record)
        self.log.info(
            "jupyter_lowcost | instance %s (%s %s, kernel %s): %s: %s",
            record.id,
            record.tier,
            record.instance_type,
            record.kernel_id,
            state.value,
            reason,
        )

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def current_instance(self, kernel_id: str) -> InstanceRecord | None:
        """The latest instance of ``kernel_id`` (live or not), if it ever had one."""
        instance_id = self._current.get(kernel_id)
        return self._records.get(instance_id) if instance_id else None

    def current_instance_model(self, kernel_id: str) -> dict[str, Any] | None:
        """The model of the kernel's current instance (None without a placement)."""
        current = self.current_instance(kernel_id)
        if current is None or kernel_id not in self._placements:
            return None
        return current.to_model()

    def placement(self, kernel_id: str) -> Placement | None:
        """The placement of ``kernel_id`` (None: it runs on the server's machine)."""
        return self._placements.get(kernel_id)

    # -- what the provisioner calls ------------------------------------------------------

    def kernel_env(self, kernel_id: str) -> dict[str, str]:
        """Variables every kernel gets: the REST API for ``%lowcost``, where and when to
        checkpoint, and whether this start resumes the kernel (a move or a recovery)."""
        env = {ENV_URL: self.server_url(), ENV_TOKEN: self.token(), ENV_KERNEL_ID: kernel_id}
        if kernel_id in self._notebooks:
            env[ENV_NOTEBOOK] = self._notebooks[kernel_id]
        if self.checkpoints != "off":
            env[ENV_CHECKPOINT_DIR] = str(self.checkpoint_dir / kernel_id)
            env[ENV_CHECKPOINTS] = self.checkpoints
            status = self._checkpoint_status.get(kernel_id)
            if status is not None and not status["ok"]:
                env[ENV_FAILING] = status["error"] or "unknown error"
            if kernel_id in self._resume:
                self._resume.discard(kernel_id)
                env[ENV_RESTORE] = "1"
        return env

    def kernel_restored(self, kernel_id: str, report: dict[str, Any]) -> dict[str, Any]:
        """A resumed kernel says what came back: remember it and emit the event."""
        self._kernel(kernel_id)
        lost = [
            r
            for r in self._records.values()
            if r.kernel_id == kernel_id and r.recovery is not None and r.ended_at is not None
        ]
        taken_at = float(report.get("taken_at") or 0)
        if lost:
            event = max(lost, key=lambda r: r.ended_at or 0)
            what = {
                InstanceState.INTERRUPTED: "the interruption",
                InstanceState.EXPIRED: "the cap",
            }.get(event.state, "the loss of its instance")
            before = f"{max(0.0, (event.ended_at or 0) - taken_at):.0f} s before {what}"
        else:
            before = f"{max(0.0, time.time() - taken_at):.0f} s before the move"
        variables = len(report.get("variables") or [])
        size = int(report.get("bytes") or 0)
        lost_variables = [
            {"name": str(s.get("name")), "type": str(s.get("type")), "why": str(s.get("why"))}
            for s in report.get("not_restored") or []
        ]
        not_restored = ", ".join(f"{s['name']} ({s['type']})" for s in lost_variables)
        model: dict[str, Any] = {
            "kernel_id": kernel_id,
            "checkpoint_id": str(report.get("checkpoint_id", "")),
            "taken_at": iso(taken_at),
            "variables": variables,
            "bytes": size,
            "not_restored": lost_variables,
            "message": (
                f"resumed from the checkpoint taken {before}: {variables} variables, "
                f"{human_bytes(size)}" + (f"; not restored: {not_restored}" if not_restored else "")
            ),
        }
        self._restored[kernel_id] = model
        events.emit_restored(self.event_logger, model)
        self.log.info("jupyter_lowcost | kernel %s %s", kernel_id, model["message"])
        return model

    def checkpoint_status(self, kernel_id: str, report: dict[str, Any]) -> dict[str, Any]:
        """A kernel says its checkpoints fail (a full disk), or work again: remember it
        (``GET kernels/<id>`` shows it) and emit the checkpoint-status event."""
        self._kernel(kernel_id)
        checkpoint_id = str(report.get("checkpoint_id") or "") or None
        if report["ok"]:
            message = "checkpoints work again" + (
                f": checkpoint {checkpoint_id} was written" if checkpoint_id else ""
            )
        else:
            message = f"checkpoint failed: {report.get('error') or 'unknown error'}; " + (
                f"an interruption now resumes from checkpoint {checkpoint_id}, the last one written"
                if checkpoint_id
                else "there is no earlier checkpoint: an interruption now loses the variables"
            )
        model = {
            "kernel_id": kernel_id,
            "ok": bool(report["ok"]),
            "error": None if report["ok"] else str(report.get("error") or ""),
            "checkpoint_id": checkpoint_id,
            "message": message,
        }
        self._checkpoint_status[kernel_id] = model
        events.emit_checkpoint_status(self.event_logger, model)
        log = self.log.info if report["ok"] else self.log.error
        log("jupyter_lowcost | kernel %s: %s", kernel_id, message)
        return model

    async def launch(
        self,
        kernel_id: str,
        python: str,
        env: dict[str, str],
        cwd: str | None,
        kernel_config: dict[str, Any],
        kernel_name: str | None = None,
    ) -> dict[str, Any]:
        """Start an instance for the kernel's placement; return its connection info.

        Called by the provisioner's ``launch_kernel``; waits until the kernel on the
        instance has bound its ports. Raises ``BackendError`` when it cannot. The first
        launch of a kernel put back after a server restart takes its running instance
        back instead (its connection info then holds the kernel's own session key).
        """
        if self._stopped:
            raise BackendError("the Jupyter server is shutting down", status=503)
        await self.ensure_started()
        adopting = self._adopting.pop(kernel_id, None)
        if adopting is not None:
            taken_back = await self._take_back(kernel_id, adopting)
            if taken_back is not None:
                return taken_back
            env = {**env, ENV_RESTORE: "1"}  # resumed from its checkpoint
        info_now = self._kernel_info.setdefault(kernel_id, {})
        info_now.update(cwd=cwd)
        if kernel_name:
            info_now["kernel_name"] = kernel_name
        placement = self._placements[kernel_id]
        itype = self.catalog[placement.instance_type]
        reason = self._launch_reasons.pop(kernel_id, f"the kernel asked for {placement.describe()}")
        record = self._prepared.pop(kernel_id, None)
        if record is None or not record.is_live or record.instance_type != itype.name:
            record = InstanceRecord.for_placement(kernel_id, placement, itype, self.backend.name)
            self._records[record.id] = record
        self._current[kernel_id] = record.id
        self._transition(record, InstanceState.PENDING, reason)
        log_path = self.data_dir / "logs" / f"{record.id}.log"
        try:
            await self.backend.reserve(record, wait=kernel_id in self._recovering)
            if not record.is_live:  # stopped (or preempted) while it waited for room
                raise BackendError(
                    f"the instance was stopped before it started: {record.reason}", status=503
                )
            record.reattach = {
                "key": kernel_config["key"],
                "signature_scheme": kernel_config["signature_scheme"],
            }
            secret, ready = self.channel.expect(
                record.id,
                {
                    **kernel_config,
                    "transport": "tcp",
                    "ip": self.backend.kernel_ip,
                    **self._orphan_rules(record),
                },
            )
            self._write_channel_file(record.id)
            launch_env = {
                **env,
                ENV_CHANNEL: self.backend.channel_address(self.channel.host, self.channel.port),
                ENV_CHANNEL_FILE: str(self._channel_file(record.id)),
                ENV_INSTANCE_ID: record.id,
                ENV_SECRET: secret,
            }
            self.instance_progress(record.id, "starting the kernel on the instance")
            time_limit = self.lifetime_cap if record.low_cost and self.lifetime_cap > 0 else None
            spec = LaunchSpec(python, launch_env, cwd, str(log_path), time_limit)
            await self.backend.launch(record, spec)
            self._save()
            info = await asyncio.wait_for(ready, self.launch_timeout)
        except BackendError as err:
            self._end(record, InstanceState.FAILED, err.message)
            await self.backend.terminate(record, now=True)  # (a slot it may hold)
            raise
        except (LaunchFailed, asyncio.TimeoutError) as err:
            if not record.is_live:  # preempted (or stopped) while it started
                await self.backend.terminate(record, now=True)
                raise BackendError(
                    f"the instance was stopped before its kernel was ready: {record.reason}",
                    status=503,
                    reason="preempted",
                ) from err
            why = str(err) or f"the kernel was not ready within {self.launch_timeout:g} s"
            message = f"{why}; the launcher's log ends with:\n{_tail(log_path)}"
            self._end(record, InstanceState.FAILED, message)
            await self.backend.terminate(record, now=True)
            raise BackendError(message, status=500, reason="launch") from err
        if not record.is_live:  # ended while starting (an exit raced the ready message)
            raise BackendError(f"the instance ended while starting: {record.reason}", status=500)
        self._transition(
            record, InstanceState.RUNNING, f"the kernel runs on {placement.describe()}"
        )
        self._arm_cap(record)
        return info

    def _arm_cap(self, record: InstanceRecord) -> None:
        """Give a running instance with a lifetime cap its notice, ``cap_notice`` ahead
        (at its start, or when a restarted server takes it back: the cap does not move)."""
        if record.expires_at is not None:
            notice = min(self.cap_notice, self.lifetime_cap / 2)
            self._timers[record.id] = asyncio.get_running_loop().call_later(
                max(0.0, record.expires_at - notice - time.time()), self._cap_reached, record.id
            )

    def poll(self, kernel_id: str) -> int | None:
        """None while the kernel's instance lives, else its exit code."""
        record = self.current_instance(kernel_id)
        if record is None or record.is_live:
            return None
        return self._returncodes.get(record.id, 1)

    async def wait(self, kernel_id: str) -> int:
        """Wait until the kernel's current instance has ended; return its exit code."""
        record = self.current_instance(kernel_id)
        if record is None:
            return 0
        await self._ended.setdefault(record.id, asyncio.Event()).wait()
        return self._returncodes.get(record.id, 1)

    async def send_signal(self, kernel_id: str, signum: int) -> None:
        """Forward a signal (an interrupt) to the kernel on its instance."""
        record = self.current_instance(kernel_id)
        if record is not None and record.is_live:
            await self.backend.send_signal(record, signum)

    def shutdown_requested(self, kernel_id: str, restart: bool) -> None:
        """The kernel is asked to stop: remember why, for its instance's record."""
        record = self.current_instance(kernel_id)
        if record is not None and record.is_live:
            why = "the kernel was restarted" if restart else "the kernel was shut down"
            self._stop_reasons.setdefault(record.id, why)

    async def stop_instance(self, kernel_id: str, now: bool) -> None:
        """Stop the kernel's instance (the provisioner's ``terminate`` and ``kill``)."""
        record = self.current_instance(kernel_id)
        if record is None or not record.is_live:
            return
        self._stop_reasons.setdefault(record.id, "the kernel was stopped")
        await self.backend.terminate(record, now=now)
        self._end(record, InstanceState.TERMINATED, self._stop_reasons.pop(record.id, ""))

    def kernel_gone(self, kernel_id: str) -> None:
        """The kernel was shut down for good: forget its placement (its records stay)."""
        record = self.current_instance(kernel_id)
        if record is not None and record.state == InstanceState.PENDING:
            # Shut down while its instance waited for room: that wait ends here.
            self._end(record, InstanceState.TERMINATED, "the kernel was shut down")
            self._spawn(self.backend.terminate(record, now=True))
        self._placements.pop(kernel_id, None)
        self._current.pop(kernel_id, None)
        self._adopting.pop(kernel_id, None)
        if self._kernel_info.pop(kernel_id, None) is not None:
            self._save()
        self._launch_reasons.pop(kernel_id, None)
        self._resume.discard(kernel_id)
        self._restored.pop(kernel_id, None)
        self._notebooks.pop(kernel_id, None)
        self._checkpoint_status.pop(kernel_id, None)
        self._locks.pop(kernel_id, None)  # (a task that holds it keeps it until it is done)
        if kernel_id in self._keep_checkpoints:
            # Stopped by the server (its recovery could not relaunch it, or the policy is
            # "none"): the checkpoints stay, for %lowcost restore KERNEL in another kernel.
            self._keep_checkpoints.discard(kernel_id)
            return
        # Shut down for good by its user: its checkpoints have no one left to resume.
        shutil.rmtree(self.checkpoint_dir / kernel_id, ignore_errors=True)

    # -- what the backend and the channel report -----------------------------------------

    def instance_noticed(self, instance_id: str, deadline: float, reason: str) -> None:
        """An interruption is announced: state ``notice``, tell the kernel, enforce the deadline."""
        record = self._records.get(instance_id)
        if self._stopped or record is None:
            return
        if record.state == InstanceState.PENDING:
            # Its kernel has nothing to save yet (a resume's state is still in the
            # checkpoint): it stops now, and its launch says why (a recovery tries again).
            self._end(record, InstanceState.INTERRUPTED, f"{reason}, before it started")
            self._spawn(self.backend.terminate(record, now=True))
            return
        if record.state not in (InstanceState.RUNNING, InstanceState.NOTICE):
            return
        if record.notice_deadline is not None and record.notice_deadline <= deadline:
            return  # an earlier notice stands
        record.notice_deadline = deadline
        self._transition(record, InstanceState.NOTICE, reason)
        self._spawn(
            self.channel.send(
                instance_id, {"type": "notice", "deadline": deadline, "reason": reason}
            )
        )
        task = self._deadlines.pop(instance_id, None)
        if task is not None:
            task.cancel()
        self._deadlines[instance_id] = self._spawn(self._enforce_deadline(record))

    def instance_exited(self, instance_id: str, returncode: int | None, detail: str) -> None:
        """The instance's process or job is gone; settle its record."""
        record = self._records.get(instance_id)
        if record is None:
            return
        self._returncodes[instance_id] = returncode if returncode is not None else 1
        self.channel.fail(
            instance_id, f"the launcher exited before its kernel was ready ({detail})"
        )
        if not record.is_live or record.state == InstanceState.PENDING:
            return  # a pending instance is settled by launch(), which says why it failed
        stop_reason = self._stop_reasons.pop(instance_id, None)
        if stop_reason is not None:
            self._end(record, InstanceState.TERMINATED, stop_reason)
        elif returncode == 0:
            self._end(record, InstanceState.TERMINATED, "the kernel exited")
        else:
            self._end(record, InstanceState.FAILED, f"the kernel died: {detail}")

    def instance_progress(self, instance_id: str, message: str) -> None:
        """A pending instance waits: say so with a new ``pending`` event (long work shows)."""
        record = self._records.get(instance_id)
        if (
            record is not None
            and record.state == InstanceState.PENDING
            and record.reason != message
        ):
            self._transition(record, InstanceState.PENDING, message)

    def instance_taken(self, instance_id: str, expired: bool, reason: str) -> None:
        """The instance is gone without (or before the end of) its notice: end it as
        interrupted or expired now, and apply the recovery policy."""
        record = self._records.get(instance_id)
        if record is None or not record.is_live:
            return
        if record.state == InstanceState.PENDING or instance_id in self._stop_reasons:
            # Not yet running (launch() says why it failed), or being stopped anyway.
            self.instance_exited(instance_id, None, reason)
            return
        if expired:
            self._expiring.add(instance_id)
        task = self._deadlines.pop(instance_id, None)
        if task is not None:
            task.cancel()
        self._deadlines[instance_id] = self._spawn(self._take_away(record, reason))

    def _on_channel_message(self, instance_id: str, message: dict[str, Any]) -> None:
        """A launcher saw an interruption signal itself (Slurm's SIGTERM, say)."""
        if message.get("type") != "notice":
            return
        record = self._records.get(instance_id)
        if record is None or record.state != InstanceState.RUNNING:
            return  # the server sent it (an injected notice), or already knows
        if instance_id in self._stop_reasons:
            return  # the server is stopping this instance: its own SIGTERM
        # (a launcher's clock may be off, its frame garbage: a deadline is between now and
        # the longest notice)
        now = time.time()
        deadline = min(max(_finite(message.get("deadline"), now), now), now + self.max_notice)
        reason = str(message.get("reason") or "the instance received an interruption notice")
        self._spawn(self._launcher_notice(record, deadline, reason))

    async def _launcher_notice(self, record: InstanceRecord, deadline: float, reason: str) -> None:
        try:
            explained = await self.backend.explain_notice(record)
        except BackendError as err:
            self.log.warning("jupyter_lowcost | could not explain a notice: %s", err.message)
            explained = None
        if explained is not None:
            reason, expired = explained
            if expired:
                self._expiring.add(record.id)
        self.instance_noticed(record.id, deadline, reason)

    def _end(self, record: InstanceRecord, state: InstanceState, reason: str) -> None:
        if record.is_live:
            self._transition(record, state, reason)

    def _cap_reached(self, instance_id: str) -> None:
        record = self._records.get(instance_id)
        if record is None or record.expires_at is None:
            return
        cap = describe_seconds(self.lifetime_cap)
        self.instance_noticed(
            instance_id, record.expires_at, f"low-cost instances always stop after {cap}"
        )

    async def _enforce_deadline(self, record: InstanceRecord) -> None:
        assert record.notice_deadline is not None
        await asyncio.sleep(max(0.0, record.notice_deadline - time.time()))
        if record.state != InstanceState.NOTICE:
            return
        await self._take_away(record, record.reason)

    async def _take_away(self, record: InstanceRecord, reason: str) -> None:
        """End a live instance as interrupted or expired, stop what is left of it, and
        apply the recovery policy to its kernel."""
        kernel_id = record.kernel_id
        expired = record.id in self._expiring or (
            record.expires_at is not None and record.notice_deadline == record.expires_at
        )
        self._expiring.discard(record.id)
        state = InstanceState.EXPIRED if expired else InstanceState.INTERRUPTED
        what = f"resuming after the {state.value} instance {record.id}"
        if kernel_id is not None:
            self._begin(kernel_id, what)
            if kernel_id in self.kernel_manager:
                # The recovery below restarts the kernel; the restarter must not race it.
                self.kernel_manager.get_kernel(kernel_id).stop_restarter()
        try:
            if kernel_id is not None and kernel_id in self.kernel_manager:
                record.recovery = self.recovery_policy
            self._end(record, state, reason)  # final before the exit is reported
            await self.backend.terminate(record, now=True)
            if kernel_id is not None:
                async with self._kernel_lock(kernel_id):
                    # A move that ran meanwhile has already taken the kernel elsewhere.
                    if self._current.get(kernel_id) == record.id:
                        await self._recover(kernel_id, record)
        finally:
            if kernel_id is not None:
                self._finish(kernel_id, what)

    async def _recover(self, kernel_id: str, lost: InstanceRecord) -> None:
        """Apply the recovery policy to a kernel whose instance was taken away."""
        placement = self._placements.get(kernel_id)
        if placement is None or kernel_id not in self.kernel_manager:
            return
        what = f"{lost.state.value} instance {lost.id}"
        if self.recovery_policy == "none":
            self.log.warning(
                "jupyter_lowcost | %s: recovery policy 'none' stops kernel %s", what, kernel_id
            )
            self._keep_checkpoints.add(kernel_id)
            await self.kernel_manager.shutdown_kernel(kernel_id, now=True)
            return
        if self.recovery_policy == "fallback":
            why = "the policy falls back at once"
            for attempt in range(1, self.fallback_after + 1):
                try:
                    self.backend.check_capacity(True, replacing=None)
                except BackendError as err:
                    why = f"no low-cost capacity ({err.message})"
                    break
                if await self._relaunch(kernel_id, placement, what, f"attempt {attempt}") is None:
                    return
                why = f"{attempt} low-cost relaunch(es) failed"
            placement = Placement(placement.instance_type, low_cost=False)
            self._placements[kernel_id] = placement
            what = f"{what}; {why}"
        # Never thrown away for lack of room: this launch waits for capacity, as long as it
        # takes (pending, with events saying what it waits for).
        self._recovering.add(kernel_id)
        try:
            attempt, tries = "", 1
            while await self._until_room(kernel_id, placement, lost):
                failure = await self._relaunch(kernel_id, placement, what, attempt)
                if failure is None:
                    return
                if self._stopped or kernel_id not in self.kernel_manager or failure != "preempted":
                    break  # it cannot start (not for lack of room)
                # Preempted while it started (a regular request took the slot): again.
                tries += 1
                attempt = f"attempt {tries}: the previous one was preempted while starting"
            else:
                return  # shut down by its user while it waited, or the server stops
        finally:
            self._recovering.discard(kernel_id)
            self._prepared.pop(kernel_id, None)
        if kernel_id in self.kernel_manager and not self._stopped:
            # The kernel cannot start anywhere: its checkpoints stay, for %lowcost restore.
            self._keep_checkpoints.add(kernel_id)
            await self.kernel_manager.shutdown_kernel(kernel_id, now=True)

    async def _until_room(self, kernel_id: str, placement: Placement, lost: InstanceRecord) -> bool:
        """Wait until the backend has room for the kernel's new instance, as long as it
        takes: its pending record says so (events) meanwhile. The kernel's restart starts
        only then, so that the kernel can be shut down as usual while it waits. False when
        the kernel was shut down meanwhile, or the server stops."""
        record: InstanceRecord | None = None
        while not self.backend.has_room(placement.low_cost):
            if self._stopped or kernel_id not in self.kernel_manager:
                return False
            if record is None:
                itype = self.catalog[placement.instance_type]
                record = InstanceRecord.for_placement(
                    kernel_id, placement, itype, self.backend.name
                )
                self._records[record.id] = record
                self._current[kernel_id] = record.id
                self._prepared[kernel_id] = record
                self._transition(
                    record, InstanceState.PENDING, self.backend.room_message(placement.low_cost)
                )
            elif not record.is_live:
                return False
            try:
                await asyncio.wait_for(self.backend.room_changed(), timeout=30)
            except asyncio.TimeoutError:
                pass
        if record is None:
            return True
        if not record.is_live or self._stopped:
            return False
        # The restart stops the kernel's current instance first: that is the lost one (the
        # waiting record goes on as the new instance, in launch()).
        self._current[kernel_id] = lost.id
        return True

    async def _relaunch(
        self, kernel_id: str, placement: Placement, what: str, attempt: str
    ) -> str | None:
        """Restart the kernel on a new instance of ``placement``: None when it runs there,
        else why not (a ``BackendError.reason`` such as ``preempted``, or ``error``)."""
        self._launch_reasons[kernel_id] = (
            f"recovery ({self.recovery_policy}) after the {what}: relaunched on "
            f"{placement.describe()}" + (f" ({attempt})" if attempt else "")
        )
        self._placements[kernel_id] = placement
        self._resume.add(kernel_id)
        try:
            await self.kernel_manager.restart_kernel(kernel_id, now=True)
        except Exception as err:  # the restart's own failure: report it to the caller
            self.log.error(
                "jupyter_lowcost | relaunch of kernel %s on %s failed: %s",
                kernel_id,
                placement.describe(),
                err,
            )
            return err.reason if isinstance(err, BackendError) else "error"
        self._reconnect_clients(kernel_id, died=True)
        return None

    # -- what the REST API calls ---------------------------------------------------------

    def _itype(self, name: Any) -> InstanceType:
        if not isinstance(name, str) or name not in self.catalog:
            known = ", ".join(self.catalog)
            raise web.HTTPError(400, f"unknown instance type {name!r}; the catalog has: {known}")
        return self.catalog[name]

    def _record(self, instance_id: str) -> InstanceRecord:
        record = self._records.get(instance_id)
        if record is None:
            raise web.HTTPError(404, f"no instance with id {instance_id!r}")
        return record

    def _kernel(self, kernel_id: str) -> None:
        if kernel_id not in self.kernel_manager:
            raise web.HTTPError(404, f"no kernel with id {kernel_id!r}")

    def catalog_models(self) -> list[dict[str, Any]]:
        """``GET instance-types``."""
        return [itype.to_model(self.lifetime_cap) for itype in self.catalog.values()]

    def status_model(self) -> dict[str, Any]:
        """``GET status``."""
        live = [r for r in self._records.values() if r.is_live]
        return {
            "backend": self.backend.name,
            "backends_installed": available_backends(),
            "version": __version__,
            "capacity": self.backend.capacity(),
            "lifetime_cap_seconds": self.lifetime_cap,
            "recovery_policy": self.recovery_policy,
            "checkpoints": self.checkpoints,
            "live_instances": len(live),
            "demo": self.demo_message() if self.demo else None,
        }

    def demo_message(self) -> str:
        """What this demo server does that a real one does not (``LowCostApp.demo``),
        shown by ``GET status``, the JupyterLab dialog and status bar, and ``%lowcost``."""
        parts = []
        if self.lifetime_cap > 0:
            parts.append(f"stop after {describe_seconds(self.lifetime_cap)} (not 24 hours)")
        random_interruptions = self.backend.random_interruptions()
        if random_interruptions:
            parts.append(random_interruptions)
        rules = " and ".join(parts) if parts else "behave as configured"
        return f"Demo server (LowCostApp.demo): its low-cost instances {rules}."

    def instance_models(self, kernel_id: str | None = None) -> list[dict[str, Any]]:
        """``GET instances``: every record this server knows, oldest first."""
        now = time.time()
        return [
            r.to_model(now)
            for r in self._records.values()
            if kernel_id is None or r.kernel_id == kernel_id
        ]

    def instance_model(self, instance_id: str) -> dict[str, Any]:
        """``GET instances/<id>``."""
        return self._record(instance_id).to_model()

    def kernel_model(self, kernel_id: str) -> dict[str, Any]:
        """``GET kernels/<id>``: the placement, the current instance, the history."""
        self._kernel(kernel_id)
        placement = self._placements.get(kernel_id)
        return {
            "kernel_id": kernel_id,
            "placement": placement.to_model() if placement else None,
            "instance": self.current_instance_model(kernel_id),
            "moving": bool(self._busy.get(kernel_id)),
            "restored": self._restored.get(kernel_id),
            "checkpoints": self._checkpoint_status.get(kernel_id),
            "history": self.instance_models(kernel_id),
        }

    def parse_placement(self, body: dict[str, Any], current: Placement | None) -> Placement:
        """Validate ``{"low_cost": bool, "instance_type": T}`` against the catalog."""
        low_cost = body.get("low_cost", True if current is None else current.low_cost)
        if not isinstance(low_cost, bool):
            raise web.HTTPError(400, f"low_cost must be true or false, not {low_cost!r}")
        default_type = current.instance_type if current else next(iter(self.catalog))
        itype = self._itype(body.get("instance_type") or default_type)
        return Placement(itype.name, low_cost)

    def _check_launchable(self, spec: Any) -> None:
        if not is_ipykernel_command(list(spec.argv)):
            raise web.HTTPError(
                400,
                f"kernel {spec.display_name!r} is not an IPython kernel (python -m "
                "ipykernel_launcher): only IPython kernels run on low-cost instances",
            )

    async def start_kernel(
        self,
        kernel_name: str,
        placement: Placement,
        path: str | None,
        notebook: str | None = None,
    ) -> str:
        """``POST kernels``: a new kernel with ``placement``; returns its id once it answers.
        ``path`` is the kernel's working directory, ``notebook`` the path it was given."""
        await self.ensure_started()
        self._check_launchable(self.kernel_manager.kernel_spec_manager.get_kernel_spec(kernel_name))
        self.backend.check_capacity(placement.low_cost, replacing=None)
        kernel_id = str(uuid.uuid4())
        self._placements[kernel_id] = placement
        if notebook:
            self._notebooks[kernel_id] = notebook
        try:
            await self.kernel_manager.start_kernel(
                kernel_id=kernel_id, kernel_name=kernel_name, path=path
            )
        except BackendError:
            self.kernel_gone(kernel_id)
            # jupyter_client keeps a kernel whose start failed among its pending kernels
            # (listed by GET /api/kernels, then 404 on every call): it never started.
            getattr(self.kernel_manager, "_pending_kernels", {}).pop(kernel_id, None)
            raise
        return kernel_id

    async def switch(self, kernel_id: str, placement: Placement, wait: bool) -> None:
        """``PUT kernels/<id>``: move the kernel to ``placement`` (a restart, same id)."""
        await self.ensure_started()
        self._kernel(kernel_id)
        if self._busy.get(kernel_id):
            raise web.HTTPError(
                409,
                f"this kernel is {self._busy[kernel_id][0]}; move it when that is done "
                "and it runs again",
            )
        old = self._placements.get(kernel_id)
        if old == placement:
            raise web.HTTPError(409, f"the kernel already runs on {placement.describe()}")
        kernel = self.kernel_manager.get_kernel(kernel_id)
        if not getattr(kernel.provisioner, "supports_placement", False):
            raise web.HTTPError(
                409,
                f"this kernel was started by {type(kernel.provisioner).__name__}, which cannot "
                "move it; kernels started with lowcost-provisioner can",
            )
        self._check_launchable(kernel.kernel_spec)
        current = self.current_instance(kernel_id)
        live = current if current is not None and current.is_live else None
        self.backend.check_capacity(placement.low_cost, replacing=live)
        what = f"moving to {placement.describe()}"
        self._begin(kernel_id, what)
        self._placements[kernel_id] = placement  # where the kernel goes, from now on
        task = self._spawn(self._move(kernel_id, what, old, placement, live, after_cell=not wait))
        if wait:
            await asyncio.shield(task)

    async def _move(
        self,
        kernel_id: str,
        what: str,
        old: Placement | None,
        placement: Placement,
        live: InstanceRecord | None,
        after_cell: bool,
    ) -> None:
        """A move (``what``, begun by :meth:`switch`), in its turn among the kernel's moves
        and recoveries."""
        try:
            async with self._kernel_lock(kernel_id):
                await self._move_now(kernel_id, old, placement, live, after_cell)
        finally:
            self._finish(kernel_id, what)

    def _begin(self, kernel_id: str, what: str) -> None:
        """``what`` is under way for the kernel (``GET kernels/<id>`` says it is moving)."""
        self._busy.setdefault(kernel_id, []).append(what)

    def _finish(self, kernel_id: str, what: str) -> None:
        busy = self._busy.get(kernel_id, [])
        if what in busy:
            busy.remove(what)
        if not busy:
            self._busy.pop(kernel_id, None)

    def _kernel_lock(self, kernel_id: str) -> asyncio.Lock:
        """Moves and recoveries of one kernel run one at a time, in the order asked."""
        return self._locks.setdefault(kernel_id, asyncio.Lock())

    async def _move_now(
        self,
        kernel_id: str,
        old: Placement | None,
        placement: Placement,
        live: InstanceRecord | None,
        after_cell: bool,
    ) -> None:
        """The move itself (``_move`` holds the kernel's lock): restart on ``placement``."""
        if kernel_id not in self.kernel_manager:
            return
        if after_cell:
            # Asked from the kernel itself (%lowcost): let the asking cell finish first.
            await self._until_cell_ended(kernel_id)
            # Its last output and "idle" may still wait in the websockets' iopub queue.
            await self._forwarded(kernel_id)
        # What the old kernel prints while it shuts down is noise in the user's cell.
        self._mute_clients(kernel_id)
        if live is not None:
            self._stop_reasons[live.id] = f"the kernel moved to {placement.describe()}"
        self._launch_reasons[kernel_id] = (
            f"moved from {old.describe() if old else 'the server machine'}"
            f" to {placement.describe()}"
        )
        self._resume.add(kernel_id)
        try:
            await self.kernel_manager.restart_kernel(kernel_id, now=False)
            self._reconnect_clients(kernel_id, died=False)
        except Exception as err:
            # Put the kernel back where it was, so the user keeps a working kernel.
            self.log.error("jupyter_lowcost | moving kernel %s failed: %s", kernel_id, err)
            if old is None:
                self._placements.pop(kernel_id, None)
            else:
                self._placements[kernel_id] = old
            self._launch_reasons[kernel_id] = f"back on its previous placement: {err}"
            self._resume.add(kernel_id)  # (the old instance was shut down: its variables too)
            if kernel_id in self.kernel_manager:
                await self._put_back(kernel_id, old)
            message = err.message if isinstance(err, BackendError) else str(err)
            raise web.HTTPError(
                503, f"could not move the kernel ({message}); it runs where it ran before"
            ) from err

    async def _put_back(self, kernel_id: str, old: Placement | None) -> None:
        """Restart a kernel whose move failed where it ran before. Its old instance is gone
        and its slot may be taken meanwhile (a regular request, say): like a recovery, it
        then waits for room, pending, instead of being left without an instance."""
        failed = self.current_instance(kernel_id)
        if old is None or failed is None:
            await self.kernel_manager.restart_kernel(kernel_id, now=True)
            self._reconnect_clients(kernel_id, died=False)
            return
        self._recovering.add(kernel_id)
        try:
            if await self._until_room(kernel_id, old, failed):
                await self.kernel_manager.restart_kernel(kernel_id, now=True)
                self._reconnect_clients(kernel_id, died=False)
        finally:
            self._recovering.discard(kernel_id)
            self._prepared.pop(kernel_id, None)

    def _reconnect_clients(self, kernel_id: str, *, died: bool) -> None:
        """Make the kernel's websocket clients (JupyterLab) reconnect to its new instance.

        A kernel on a new instance listens on new ports, and jupyter_server re-reads a
        kernel's ports only when a websocket (re)connects. Called after each successful
        restart made here:

        - ``died`` (a recovery): the kernel's restart callbacks are fired, as jupyter_client's
          restarter does after a crash, so each websocket sends the "restarting" status on
          which JupyterLab clears the dead kernel's pending cells and reconnects (and says
          the kernel died and restarted);
        - a move the user asked for: the websockets are closed, so JupyterLab reconnects
          quietly (no "kernel died" dialog; the switch shows the move's progress).
        """
        if died:
            restarter = getattr(self.kernel_manager.get_kernel(kernel_id), "_restarter", None)
            if restarter is not None:
                restarter._fire_callbacks("restart")
            return
        for connection in self._connections(kernel_id):
            iopub = connection.channels.get("iopub")
            if iopub is not None and not iopub.closed():
                iopub.flush()  # what the old kernel sent last goes to _drop, not to a replay
            connection.websocket_handler.close()

    def _mute_clients(self, kernel_id: str) -> None:
        """Drop the kernel's output instead of forwarding it to its websockets (before a
        move: the old kernel's last words as it stops are noise; the websockets are closed
        after the move and reconnect to the kernel's new instance)."""
        for connection in self._connections(kernel_id):
            iopub = connection.channels.get("iopub")
            if iopub is not None and not iopub.closed():
                iopub.on_recv(_drop)

    async def _forwarded(self, kernel_id: str, timeout: float = 1.0) -> None:
        """Wait (1 s at most) until the kernel's websockets have no iopub message received
        and not yet forwarded: the kernel published its last outputs and "idle" before the
        reply that ended the wait above, but they come over another socket."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            await asyncio.sleep(0)  # let the loop hand on what has arrived
            pending = [
                iopub
                for connection in self._connections(kernel_id)
                if (iopub := connection.channels.get("iopub")) is not None
                and not iopub.closed()
                and iopub.socket.get(zmq.EVENTS) & zmq.POLLIN
            ]
            if not pending:
                return
            await asyncio.sleep(0.01)

    @staticmethod
    def _connections(kernel_id: str) -> list[Any]:
        """jupyter_server's open websocket connections to the kernel."""
        return [
            connection
            for connection in list(getattr(ZMQChannelsWebsocketConnection, "_open_sockets", ()))
            if getattr(connection, "kernel_id", None) == kernel_id
        ]

    async def _until_cell_ended(self, kernel_id: str) -> None:
        """Wait until the cell that asked for a move (``%lowcost on``) has ended and its
        reply has been sent, however long it runs ("the kernel restarts on the new instance
        when this cell ends"), or until the kernel is gone. A request on the kernel's shell
        channel is answered only after the requests before it, since a kernel handles them
        one at a time. (The server's ``execution_state`` cannot tell: the kernel's "busy"
        for the cell can reach the server after the cell's own request, and moving then
        would stop the kernel before it sent the cell's reply.)"""
        kernel = self.kernel_manager.get_kernel(kernel_id)
        answered = asyncio.get_running_loop().create_future()
        channel = kernel.connect_shell()
        channel.on_recv(lambda _msg: answered.done() or answered.set_result(None))
        kernel.session.send(channel, "kernel_info_request")
        try:
            while not answered.done():
                try:
                    await asyncio.wait_for(asyncio.shield(answered), 1.0)
                except asyncio.TimeoutError:
                    if kernel_id not in self.kernel_manager or not await kernel.is_alive():
                        return
        finally:
            channel.close()

    async def terminate(self, instance_id: str) -> None:
        """``DELETE instances/<id>``: stop the instance; its kernel is shut down."""
        record = self._record(instance_id)
        if not record.is_live:
            raise web.HTTPError(
                409, f"instance {instance_id} has already ended ({record.state.value})"
            )
        self._stop_reasons[record.id] = "terminated through the REST API"
        kernel_id = record.kernel_id
        if kernel_id is not None and kernel_id in self.kernel_manager:
            await self.kernel_manager.shutdown_kernel(kernel_id, now=True)
        await self.backend.terminate(record, now=True)
        self._end(record, InstanceState.TERMINATED, "terminated through the REST API")

    async def interrupt(self, instance_id: str, notice_seconds: Any) -> dict[str, Any]:
        """``POST instances/<id>/interrupt``: announce an interruption ``notice_seconds`` ahead."""
        record = self._record(instance_id)
        if isinstance(notice_seconds, bool) or not isinstance(notice_seconds, (int, float)):
            raise web.HTTPError(400, f"notice_seconds must be a number, not {notice_seconds!r}")
        if not 0 <= notice_seconds <= self.max_notice:
            shown = repr(notice_seconds)
            shown = shown if len(shown) <= 24 else f"{shown[:12]}... ({len(shown)} digits)"
            raise web.HTTPError(
                400, f"notice_seconds must be between 0 and {self.max_notice:g}, not {shown}"
            )
        if not record.low_cost:
            raise web.HTTPError(
                409, "regular instances are not interrupted; only low-cost ones are"
            )
        if record.state != InstanceState.RUNNING:
            raise web.HTTPError(
                409,
                f"instance {instance_id} is {record.state.value}, not running: only a running "
                "instance can be interrupted",
            )
        await self.backend.interrupt(
            record, float(notice_seconds), "interruption injected through the REST API"
        )
        return record.to_model()


def _finite(value: Any, default: float) -> float:
    """``value`` as a finite float, else ``default`` (booleans, strings, NaN, 1e999...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    try:
        number = float(value)
    except OverflowError:
        return default
    return number if math.isfinite(number) else default


def _tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4000))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _drop(msg_parts: Any) -> None:
    """An iopub handler that discards (see ``InstanceManager._mute_clients``)."""
