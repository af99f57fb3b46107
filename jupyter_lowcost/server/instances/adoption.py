"""A restart of the Jupyter server: kernels taken back, or resumed.

The records hold, per kernel on an instance, what re-creating it needs (kernelspec,
working directory, placement, notebook, session), and per instance the kernel's session
key and its launcher's reconnect secret. A server started on the same data directory,
first thing at start (:meth:`Adoption.recreate_kernels`), puts each such kernel back
under its id, pending, and its session under its old id; then the kernel's first launch
(:meth:`Adoption.take_back`, called by :class:`~.launches.Launches`) either takes the
running instance back, when its launcher reconnects within ``reattach_timeout``, or ends
that instance as lost and lets the launch resume the kernel from its checkpoint on a new
instance, by the recovery policy.

It also keeps the files launchers read to find a server again (``channels/<id>.json``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tornado import web

from ...backends import BackendError
from ...storage.atomic import write_private
from ...storage.private import private_dir
from ...storage.records import InstanceRecord, InstanceState, Placement, RecordStore
from .. import jupyter_adapters as jupyter
from ..channel import LaunchFailed
from .ledger import Context
from .notices import Notices


class Adoption:
    """Puts kernels back after a server restart and takes their instances back."""

    def __init__(self, ctx: Context, notices: Notices, forget_kernel: Callable[[str], None]):
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.notices = notices
        self._forget_kernel = forget_kernel

    # -- at start ------------------------------------------------------------------------

    async def recreate_kernels(self, kernels: dict[str, dict[str, Any]]) -> list[str]:
        """Put back, under its id, each kernel a previous server ran on an instance, with
        its placement and its notebook's session (called at start, before anything else
        awaits). Returns the kernel ids."""
        put_back = []
        for kernel_id, info in kernels.items():
            try:
                placement = Placement(
                    str(info["placement"]["instance_type"]), bool(info["placement"]["low_cost"])
                )
                kernel_name = str(info["kernel_name"])
            except (KeyError, TypeError):
                continue
            if kernel_id in self.ctx.kernel_manager:
                continue
            record = self.ledger.record(str(info.get("instance_id")))
            if record is None or record.kernel_id != kernel_id:
                continue
            entry = self.ledger.kernel(kernel_id)
            entry.placement = placement
            entry.instance_id = record.id
            entry.restart_info = {k: info.get(k) for k in ("kernel_name", "cwd", "session")}
            if info.get("notebook"):
                entry.notebook = str(info["notebook"])
            if info.get("job_id"):
                entry.job_id = str(info["job_id"])
                entry.keep_checkpoints = True
            if info.get("restore_checkpoint"):
                entry.restore_checkpoint = str(info["restore_checkpoint"])
            status = info.get("checkpoint_status")
            if isinstance(status, dict) and "ok" in status:
                entry.checkpoint_status = status
            entry.adopting = record
            try:
                await jupyter.start_listed_at_once(
                    self.ctx.kernel_manager, kernel_id, kernel_name, info.get("cwd")
                )
            except Exception as err:  # its kernelspec is gone, say
                self.ctx.log.error(
                    "jupyter_lowcost | kernel %s cannot come back after the server restart: %s",
                    kernel_id,
                    err,
                )
                entry.keep_checkpoints = True
                self._forget_kernel(kernel_id)
                continue
            self.ledger.spawn(self._until_back(kernel_id))
            await self._restore_session(kernel_id, info.get("session"))
            put_back.append(kernel_id)
        return put_back

    async def _until_back(self, kernel_id: str) -> None:
        """Follow a kernel put back at start until it answers; a kernel that cannot come
        back at all is removed (its checkpoints are kept, for %lowcost restore)."""
        kernels = self.ctx.kernel_manager
        try:
            await kernels.get_kernel(kernel_id).ready
        except Exception as err:
            message = err.message if isinstance(err, BackendError) else str(err)
            self.ctx.log.error(
                "jupyter_lowcost | kernel %s could not come back after the server restart: %s",
                kernel_id,
                message,
            )
            self.ledger.kernel(kernel_id).keep_checkpoints = True
            if kernel_id in kernels:
                kernels.remove_kernel(kernel_id)
            jupyter.forget_failed_start(kernels, kernel_id)
            self._forget_kernel(kernel_id)
        finally:
            entry = self.ledger.kernels.get(kernel_id)
            if entry is not None:
                entry.recovering = False

    async def _restore_session(self, kernel_id: str, session: Any) -> None:
        """Put back the session that tied the kernel to its notebook, with its id (the
        one JupyterLab holds)."""
        sessions = self.ctx.session_manager
        if sessions is None or not isinstance(session, dict):
            return
        try:
            try:
                await sessions.get_session(session_id=str(session["id"]))
                return  # (a session store that outlives the server kept it)
            except web.HTTPError:
                pass
            await sessions.save_session(
                str(session["id"]),
                path=session.get("path"),
                name=session.get("name"),
                type=session.get("type"),
                kernel_id=kernel_id,
            )
        except Exception as err:  # a session store that refuses: the kernel still comes back
            self.ctx.log.warning(
                "jupyter_lowcost | could not restore the session of kernel %s: %s", kernel_id, err
            )

    async def watch_sessions(self) -> None:
        """Keep the session of each kernel on an instance in the saved records (its id,
        notebook path and name change with the user's renames), once a second."""
        while not self.ledger.stopped:
            changed = False
            for kernel_id, entry in list(self.ledger.kernels.items()):
                if entry.restart_info is None:
                    continue
                try:
                    model = await self.ctx.session_manager.get_session(kernel_id=kernel_id)
                except web.HTTPError:
                    continue  # no session (a kernel started without one)
                session = {k: model.get(k) for k in ("id", "path", "name", "type")}
                if entry.restart_info.get("session") != session:
                    entry.restart_info["session"] = session
                    changed = True
            if changed:
                self.ledger.save()
            await asyncio.sleep(1.0)

    async def find_again(self, record: InstanceRecord) -> bool:
        """Ask the backend whether an instance a previous server ran still runs; if so,
        await its launcher's reconnection (its kernel's launch takes it back). False when
        the record is not one a kernel is taken back on."""
        entry = self.ledger.kernels.get(record.kernel_id or "")
        if entry is None or entry.adopting is not record:
            return False
        backend = self.ctx.backend
        secret = record.reattach.get("secret")
        alive = (
            record.backend == backend.name
            and record.state in (InstanceState.RUNNING, InstanceState.NOTICE)
            and bool(secret)
            and await backend.reattach(record)
        )
        if alive:
            instance = self.ledger.instances[record.id]
            instance.coming_back = self.ctx.channel.expect_back(record.id, str(secret))
        elif record.backend == backend.name and record.state == InstanceState.PENDING:
            await backend.forget_orphan(record)
        return True

    def awaited(self) -> list[str]:
        """The instances whose launchers a restarted server awaits."""
        return [i for i, e in self.ledger.instances.items() if e.coming_back is not None]

    # -- the launcher's way back ---------------------------------------------------------

    def reconnect_secret_made(self, instance_id: str, secret: str) -> None:
        """The channel made a launcher's next reconnect secret: saved before it is sent."""
        record = self.ledger.record(instance_id)
        if record is not None:
            record.reattach["secret"] = secret
            self.ledger.save()

    def channel_file(self, instance_id: str) -> Path:
        return self.ctx.settings.channels_dir / f"{instance_id}.json"

    def write_channel_file(self, instance_id: str) -> None:
        """Tell the instance's launcher where this server listens (it reads the file when
        it dials again after losing its server)."""
        path = self.channel_file(instance_id)
        channel = self.ctx.channel
        address = self.ctx.backend.channel_address(channel.host, channel.port)
        try:
            private_dir(path.parent)
            write_private(path, json.dumps({"address": address}))
        except OSError as err:
            self.ctx.log.warning("jupyter_lowcost | could not write %s: %s", path, err)

    def orphan_rules(self, record: InstanceRecord) -> dict[str, Any]:
        """How long the instance's launcher keeps its kernel without a server: the
        configured ``orphan_timeout``, else until its lifetime cap."""
        settings = self.ctx.settings
        cap = settings.lifetime_cap
        if settings.orphan_timeout > 0:
            return {"orphan_timeout": settings.orphan_timeout, "orphan_until": None}
        until = time.time() + cap + 60 if record.low_cost and cap > 0 else None
        return {"orphan_timeout": cap if cap > 0 else 86400.0, "orphan_until": until}

    def prune_files(self, store: RecordStore) -> None:
        """Drop the launcher logs of instances no server has on record, and the channel
        files of instances no server has live (kept until now: deleting one while the
        server runs would free the block that a full disk then gives to the records).

        Called by the manager at start, once this server holds the records of the servers
        that are gone; what another server holds (``store``'s :meth:`held_elsewhere`: a
        live server's, or a gone one's that the next server will adopt) stays. The files
        are listed before the other servers' records are read: a server saves a record
        before it makes the instance's files."""
        logs = list(self.ctx.settings.logs_dir.glob("*.log"))
        channels = list(self.ctx.settings.channels_dir.glob("*.json"))
        elsewhere = store.held_elsewhere()
        for log in logs:
            if self.ledger.record(log.stem) is None and log.stem not in elsewhere.instances:
                log.unlink(missing_ok=True)
        for path in channels:
            record = self.ledger.record(path.stem)
            mine = record is not None and record.is_live
            if not mine and path.stem not in elsewhere.live_instances:
                path.unlink(missing_ok=True)

    # -- the first launch of a kernel put back -------------------------------------------

    async def take_back(self, kernel_id: str, record: InstanceRecord) -> dict[str, Any] | None:
        """The launch of a kernel put back at start: its connection info once the
        launcher of its running instance has reconnected (the same kernel, its variables
        and the cell it runs), else None after ending the instance as lost; the launch
        then resumes the kernel from its checkpoint on a new instance, by the policy."""
        settings = self.ctx.settings
        instance = self.ledger.instances[record.id]
        coming, instance.coming_back = instance.coming_back, None
        why = (
            "it was still starting when the Jupyter server went away"
            if record.state == InstanceState.PENDING
            else "it had ended while the Jupyter server was away"
        )
        if coming is not None:
            try:
                info = await asyncio.wait_for(asyncio.shield(coming), settings.reattach_timeout)
            except (asyncio.TimeoutError, LaunchFailed):
                info = None
                why = f"its launcher did not reconnect within {settings.reattach_timeout:g} s"
            if info is not None and record.is_live:
                return self._taken_back(kernel_id, record, info)
            await self.ctx.backend.terminate(record, now=True)
        if not record.is_live:
            why = record.reason
        expired = record.expires_at is not None and record.expires_at <= time.time() + 1
        state = InstanceState.EXPIRED if expired else InstanceState.INTERRUPTED
        policy = settings.recovery_policy
        record.recovery = policy
        self.ledger.end(
            record, state, f"the Jupyter server restarted; the instance was lost: {why}"
        )
        if instance.returncode is None:
            instance.returncode = 1
        entry = self.ledger.kernel(kernel_id)
        if policy == "none":
            entry.keep_checkpoints = True
            raise BackendError(
                f"the {record.state.value} instance {record.id} is not replaced (recovery "
                "policy 'none'); its checkpoints are kept (%lowcost restore)",
                status=503,
            )
        assert entry.placement is not None
        if policy == "fallback" and settings.fallback_after == 0:
            entry.placement = Placement(entry.placement.instance_type, low_cost=False)
        entry.launch_reason = (
            f"recovery ({policy}) after the {record.state.value} instance "
            f"{record.id} (lost while the Jupyter server was away): relaunched on "
            f"{entry.placement.describe()}"
        )
        entry.recovering = True
        return None

    def _taken_back(
        self, kernel_id: str, record: InstanceRecord, info: dict[str, Any]
    ) -> dict[str, Any]:
        """Settle a kernel whose instance is back: its clocks (cap, notice) run on."""
        entry = self.ledger.kernel(kernel_id)
        entry.instance_id = record.id
        busy = " (a cell is running)" if info.get("execution_state") == "busy" else ""
        assert entry.placement is not None
        self.ledger.transition(
            record,
            record.state,
            f"re-attached after the Jupyter server restarted: the kernel runs on "
            f"{entry.placement.describe()}, as before{busy}",
        )
        if record.state == InstanceState.NOTICE and record.notice_deadline is not None:
            self.notices.resume_deadline(record)
        else:
            self.notices.arm_cap(record)
        kernels = self.ctx.kernel_manager
        if info.get("execution_state") in ("busy", "idle") and kernel_id in kernels:
            # Busy or idle, as its launcher said: jupyter_server holds a kernel "starting"
            # until its first status, which a kernel running a long cell sends only at the
            # end (a client connecting meanwhile would wait that long, its output lost).
            km = kernels.get_kernel(kernel_id)
            jupyter.set_execution_state(km, info["execution_state"])
            kernel_info = info.get("kernel_info")
            if isinstance(kernel_info, dict) and kernel_info.get("protocol_version"):
                jupyter.set_kernel_info(km, kernel_info)
        ports = {k: v for k, v in info.items() if k in ("ip", "transport") or k.endswith("_port")}
        return {
            **ports,
            "key": str(record.reattach["key"]).encode(),
            "signature_scheme": record.reattach["signature_scheme"],
        }
