"""Launches: what the kernel provisioner asks of the manager for a kernel with a placement,
and the REST API's ``POST kernels``.

Who calls it: :class:`~..provisioner.LowCostProvisioner` for every launch (through the
manager, which first makes sure it has started), poll, wait, signal and stop of a placed
kernel, and for the environment of every kernel; the handlers for a new low-cost kernel
and to terminate an instance. A launch makes the instance's record,
reserves room, has the backend start ``python -m jupyter_lowcost.launcher`` with a one-use
secret, and waits on the launch channel for the kernel's ports.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from tornado import web

from ... import env as names
from ...backends import BackendError, LaunchSpec
from ...storage.records import InstanceRecord, InstanceState, Placement
from .. import jupyter_adapters as jupyter
from ..channel import LaunchFailed
from .adoption import Adoption
from .entries import KernelEntry
from .ledger import Context
from .notices import Notices
from .rest_models import check_launchable


class Launches:
    """Starts, follows and stops the instances of placed kernels."""

    def __init__(self, ctx: Context, notices: Notices, adoption: Adoption) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.notices = notices
        self.adoption = adoption

    def kernel_env(self, kernel_id: str) -> dict[str, str]:
        """Variables every kernel gets: the REST API for ``%lowcost``, where and when to
        checkpoint, and whether this start resumes the kernel (a move or a recovery)."""
        settings = self.ctx.settings
        env = {
            names.URL: self.ctx.server_url(),
            names.TOKEN: self.ctx.token(),
            names.KERNEL_ID: kernel_id,
        }
        entry = self.ledger.kernels.get(kernel_id)
        if entry is not None and entry.notebook is not None:
            env[names.NOTEBOOK] = entry.notebook
        if entry is not None and entry.job_id is not None:
            env[names.JOB] = entry.job_id
        if settings.checkpoints != "off":
            env[names.CHECKPOINT_DIR] = str(settings.checkpoint_dir / kernel_id)
            env[names.CHECKPOINTS] = settings.checkpoints
            status = entry.checkpoint_status if entry is not None else None
            if status is not None and not status["ok"]:
                env[names.CHECKPOINTS_FAILING] = status["error"] or "unknown error"
            if entry is not None and entry.resume:
                entry.resume = False
                restore = _checkpoint_to_restore(entry)
                if restore is not None:
                    env[names.RESTORE] = restore
        return env

    async def start_kernel(
        self,
        kernel_name: str,
        placement: Placement,
        path: str | None,
        notebook: str | None,
        *,
        job_id: str | None = None,
        kernel_id: str | None = None,
        restore_checkpoint: str | None = None,
    ) -> str:
        """``POST kernels``: a new kernel with ``placement``; returns its id once it answers.

        A job's kernel (``job_id``) keeps its checkpoints until the job ends; a job that
        goes on after a server restart starts its kernel again under the same
        ``kernel_id``, resumed from ``restore_checkpoint``."""
        kernels = self.ctx.kernel_manager
        check_launchable(kernels.kernel_spec_manager.get_kernel_spec(kernel_name))
        self.ctx.backend.check_capacity(placement.low_cost, replacing=None)
        kernel_id = kernel_id or str(uuid.uuid4())
        entry = self.ledger.kernel(kernel_id)
        entry.placement = placement
        entry.notebook = notebook or None
        entry.job_id = job_id
        entry.keep_checkpoints = job_id is not None
        if restore_checkpoint is not None:
            entry.restore_checkpoint = restore_checkpoint
            entry.resume = True
        try:
            await kernels.start_kernel(kernel_id=kernel_id, kernel_name=kernel_name, path=path)
        except BackendError:
            self.kernel_gone(kernel_id)
            jupyter.forget_failed_start(kernels, kernel_id)
            raise
        return kernel_id

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

        Waits until the kernel on the instance has bound its ports. Raises
        ``BackendError`` when it cannot. The first launch of a kernel put back after a
        server restart takes its running instance back instead (its connection info then
        holds the kernel's own session key).
        """
        entry = self.ledger.kernel(kernel_id)
        adopting, entry.adopting = entry.adopting, None
        if adopting is not None:
            taken_back = await self.adoption.take_back(kernel_id, adopting)
            if taken_back is not None:
                return taken_back
            env = _restoring_its_checkpoint(env, entry)
        _remember_how_to_restart(entry, cwd, kernel_name)
        record = self._pending_record(kernel_id, entry)
        log_path = self.ctx.settings.logs_dir / f"{record.id}.log"
        try:
            await self._wait_for_room(record, entry)
            ready = await self._start_on_the_instance(
                record, python, env, cwd, log_path, kernel_config
            )
            info = await asyncio.wait_for(ready, self.ctx.settings.launch_timeout)
        except BackendError as err:
            self.ledger.end(record, InstanceState.FAILED, err.message)
            await self.ctx.backend.terminate(record, now=True)  # (a slot it may hold)
            raise
        except (LaunchFailed, asyncio.TimeoutError) as err:
            raise await self._not_ready(record, err, log_path) from err
        self._now_running(record, entry)
        return info

    def _pending_record(self, kernel_id: str, entry: KernelEntry) -> InstanceRecord:
        """The record of the instance this launch starts, pending: the one a move
        prepared when it still fits the placement, else a new one."""
        placement = entry.placement
        assert placement is not None
        itype = self.ctx.catalog[placement.instance_type]
        reason = entry.launch_reason or f"the kernel asked for {placement.describe()}"
        entry.launch_reason = None
        record, entry.prepared = entry.prepared, None
        if record is None or not record.is_live or record.instance_type != itype.name:
            record = InstanceRecord.for_placement(
                kernel_id, placement, itype, self.ctx.backend.name
            )
            self.ledger.add(record)
        entry.instance_id = record.id
        self.ledger.transition(record, InstanceState.PENDING, reason)
        return record

    async def _wait_for_room(self, record: InstanceRecord, entry: KernelEntry) -> None:
        """Reserve the backend's room for the instance. A recovery, and a job's kernel (its
        job waited its turn for room, see jobs/admission.py), wait for room rather than
        fail when another kernel took it."""
        await self.ctx.backend.reserve(record, wait=entry.recovering or entry.job_id is not None)
        if not record.is_live:  # stopped (or preempted) while it waited for room
            raise BackendError(
                f"the instance was stopped before it started: {record.reason}", status=503
            )

    async def _start_on_the_instance(
        self,
        record: InstanceRecord,
        python: str,
        env: dict[str, str],
        cwd: str | None,
        log_path: Path,
        kernel_config: dict[str, Any],
    ) -> asyncio.Future[dict[str, Any]]:
        """Expect the instance on the launch channel, have the backend start the launcher
        there, and return what resolves to the connection info once the kernel is ready."""
        settings, backend, channel = self.ctx.settings, self.ctx.backend, self.ctx.channel
        record.reattach = {
            "key": kernel_config["key"],
            "signature_scheme": kernel_config["signature_scheme"],
        }
        secret, ready = channel.expect(
            record.id,
            {
                **kernel_config,
                "transport": "tcp",
                "ip": backend.kernel_ip,
                **self.adoption.orphan_rules(record),
                # (the cloud's own notices: watched where the instance runs)
                "cloud_notices": settings.cloud_notices if record.low_cost else "off",
                "cloud_metadata_url": settings.cloud_metadata_url,
                "azure_acknowledge": settings.azure_acknowledge,
            },
        )
        self.adoption.write_channel_file(record.id)
        launch_env = {
            **env,
            names.CHANNEL: backend.channel_address(channel.host, channel.port),
            names.CHANNEL_FILE: str(self.adoption.channel_file(record.id)),
            names.INSTANCE_ID: record.id,
            names.LAUNCH_SECRET: secret,
        }
        self.notices.instance_progress(record.id, "starting the kernel on the instance")
        cap = settings.lifetime_cap
        time_limit = cap if record.low_cost and cap > 0 else None
        spec = LaunchSpec(
            python, launch_env, cwd, str(log_path), time_limit, self.ledger.store.folder_id()
        )
        await backend.launch(record, spec)
        self.ledger.save()
        return ready

    async def _not_ready(
        self, record: InstanceRecord, err: Exception, log_path: Path
    ) -> BackendError:
        """End an instance whose kernel did not get ready; the error to raise says why
        (preempted meanwhile, or what the launcher's log ends with)."""
        backend, settings = self.ctx.backend, self.ctx.settings
        if not record.is_live:  # preempted (or stopped) while it started
            await backend.terminate(record, now=True)
            return BackendError(
                f"the instance was stopped before its kernel was ready: {record.reason}",
                status=503,
                reason="preempted",
            )
        why = str(err) or f"the kernel was not ready within {settings.launch_timeout:g} s"
        message = f"{why}; the launcher's log ends with:\n{_tail(log_path)}"
        self.ledger.end(record, InstanceState.FAILED, message)
        await backend.terminate(record, now=True)
        return BackendError(message, status=500, reason="launch")

    def _now_running(self, record: InstanceRecord, entry: KernelEntry) -> None:
        """The kernel answered: the instance runs, its cap and notice warning are armed."""
        if not record.is_live:  # ended while starting (an exit raced the ready message)
            raise BackendError(f"the instance ended while starting: {record.reason}", status=500)
        assert entry.placement is not None
        self.ledger.transition(
            record, InstanceState.RUNNING, f"the kernel runs on {entry.placement.describe()}"
        )
        self.notices.arm_cap(record)
        self.notices.tell_notice_warning(record)

    def poll(self, kernel_id: str) -> int | None:
        """None while the kernel's instance lives, else its exit code."""
        record = self.ledger.current(kernel_id)
        if record is None or record.is_live:
            return None
        returncode = self.ledger.instances[record.id].returncode
        return 1 if returncode is None else returncode

    async def wait(self, kernel_id: str) -> int:
        """Wait until the kernel's current instance has ended; return its exit code."""
        record = self.ledger.current(kernel_id)
        if record is None:
            return 0
        entry = self.ledger.instances[record.id]
        await entry.ended.wait()
        return 1 if entry.returncode is None else entry.returncode

    async def send_signal(self, kernel_id: str, signum: int) -> None:
        """Forward a signal (an interrupt) to the kernel on its instance."""
        record = self.ledger.current(kernel_id)
        if record is None or not record.is_live:
            return
        if self.ctx.backend.signals_over_channel:
            await self.ctx.channel.send(record.id, {"type": "signal", "signal": int(signum)})
        else:
            await self.ctx.backend.send_signal(record, signum)

    def shutdown_requested(self, kernel_id: str, restart: bool) -> None:
        """The kernel is asked to stop: remember why, for its instance's record."""
        record = self.ledger.current(kernel_id)
        if record is not None and record.is_live:
            entry = self.ledger.instances[record.id]
            if entry.stop_reason is None:
                entry.stop_reason = (
                    "the kernel was restarted" if restart else "the kernel was shut down"
                )

    async def stop_instance(self, kernel_id: str, now: bool) -> None:
        """Stop the kernel's instance (the provisioner's ``terminate`` and ``kill``)."""
        record = self.ledger.current(kernel_id)
        if record is None or not record.is_live:
            return
        entry = self.ledger.instances[record.id]
        if entry.stop_reason is None:
            entry.stop_reason = "the kernel was stopped"
        await self.ctx.backend.terminate(record, now=now)
        reason, entry.stop_reason = entry.stop_reason or "", None
        self.ledger.end(record, InstanceState.TERMINATED, reason)

    async def terminate_instance(self, record: InstanceRecord) -> None:
        """``DELETE instances/<id>``: stop the instance; its kernel is shut down."""
        if not record.is_live:
            raise web.HTTPError(
                409, f"instance {record.id} has already ended ({record.state.value})"
            )
        self.ledger.instances[record.id].stop_reason = "terminated through the REST API"
        kernel_id = record.kernel_id
        kernels = self.ctx.kernel_manager
        if kernel_id is not None and kernel_id in kernels:
            await kernels.shutdown_kernel(kernel_id, now=True)
        await self.ctx.backend.terminate(record, now=True)
        self.ledger.end(record, InstanceState.TERMINATED, "terminated through the REST API")

    def kernel_gone(self, kernel_id: str) -> None:
        """The kernel was shut down for good: forget its placement (its records stay)."""
        record = self.ledger.current(kernel_id)
        if record is not None and record.state == InstanceState.PENDING:
            # Shut down while its instance waited for room: that wait ends here.
            self.ledger.end(record, InstanceState.TERMINATED, "the kernel was shut down")
            self.ledger.spawn(self.ctx.backend.terminate(record, now=True))
        entry = self.ledger.kernels.pop(kernel_id, None)
        if entry is not None and entry.restart_info is not None:
            self.ledger.save()
        if entry is not None and entry.keep_checkpoints:
            # Stopped by the server (its recovery could not relaunch it, or the policy is
            # "none"): the checkpoints stay, for %lowcost restore KERNEL in another kernel.
            return
        # Shut down for good by its user: its checkpoints have no one left to resume.
        shutil.rmtree(self.ctx.settings.checkpoint_dir / kernel_id, ignore_errors=True)


def _restoring_its_checkpoint(env: dict[str, str], entry: KernelEntry) -> dict[str, str]:
    """The launch environment of a kernel put back after a restart whose instance was not
    taken back: it resumes from its checkpoint when it has one."""
    env = {k: v for k, v in env.items() if k != names.RESTORE}
    restore = _checkpoint_to_restore(entry)
    if restore is not None:
        env[names.RESTORE] = restore
    return env


def _remember_how_to_restart(entry: KernelEntry, cwd: str | None, kernel_name: str | None) -> None:
    """What a recovery needs to start the kernel again: its folder and kernelspec."""
    if entry.restart_info is None:
        entry.restart_info = {}
    entry.restart_info["cwd"] = cwd
    if kernel_name:
        entry.restart_info["kernel_name"] = kernel_name


def _checkpoint_to_restore(entry: KernelEntry) -> str | None:
    """What a resumed kernel restores (the ``RESTORE`` variable): a job's kernel exactly
    the checkpoint its runner noted after the job's last completed cell, and nothing when
    the runner noted none (the latest may hold a cell the runner did not see complete:
    it would run again on top of itself); any other kernel its latest (``"1"``)."""
    if entry.job_id is not None:
        return entry.restore_checkpoint
    return entry.restore_checkpoint or "1"


def _tail(path: Path, lines: int = 15) -> str:
    """The last lines of a launcher's log, for the message of a failed launch."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4000))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
