"""Notices and the lifetime cap: what ends a low-cost instance, and how.

Who calls it: the backend (through the manager, the backend's listener) when an instance
gets a notice, exits, waits for room or is taken; the launch channel when a launcher saw a
notice itself (Slurm's SIGTERM); the REST API's ``POST instances/<id>/interrupt``; the
launch, which arms the cap of each instance that starts. At a notice's deadline (or at
once when an instance was taken without one) the instance ends ``interrupted`` or
``expired`` and :class:`~.recovery.Recovery` applies the policy to its kernel.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from typing import Any

from tornado import web

from ...backends import BackendError
from ...storage.records import InstanceRecord, InstanceState
from ...words import describe_seconds
from .ledger import Context
from .recovery import Recovery

#: Under a provider's own notice (the cloud's metadata), the provider takes the instance;
#: the server ends it itself only if it is still there this long after the notice came
#: (or at the deadline, if later): a deadline already past (AWS's hibernate, a late read)
#: must leave the kernel time for its notice checkpoint.
PROVIDER_GRACE = 10.0
#: Why an instance whose launcher was killed (SIGKILL) ended: it was lost, not crashed.
INSTANCE_KILLED = "the instance was lost without a notice: its processes were killed"


class Notices:
    """Turns notices, exits and the cap into transitions, and hands lost kernels on."""

    def __init__(self, ctx: Context, recovery: Recovery) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.recovery = recovery

    # -- what the backend reports --------------------------------------------------------

    def instance_noticed(
        self, instance_id: str, deadline: float, reason: str, take_at: float | None = None
    ) -> None:
        """An interruption is announced: state ``notice``, tell the kernel, enforce the
        deadline (or end it at ``take_at``, a provider's notice: see PROVIDER_GRACE)."""
        record = self.ledger.record(instance_id)
        if self.ledger.stopped or record is None:
            return
        if record.state == InstanceState.PENDING:
            # Its kernel has nothing to save yet (a resume's state is still in the
            # checkpoint): it stops now, and its launch says why (a recovery tries again).
            self.ledger.end(record, InstanceState.INTERRUPTED, f"{reason}, before it started")
            self.ledger.spawn(self.ctx.backend.terminate(record, now=True))
            return
        if record.state not in (InstanceState.RUNNING, InstanceState.NOTICE):
            return
        if record.notice_deadline is not None and record.notice_deadline <= deadline:
            return  # an earlier notice stands
        record.notice_deadline = deadline
        self.ledger.instances[instance_id].take_at = take_at
        self.ledger.transition(record, InstanceState.NOTICE, reason)
        self.ledger.spawn(
            self.ctx.channel.send(
                instance_id, {"type": "notice", "deadline": deadline, "reason": reason}
            )
        )
        self._replace_deadline(instance_id, self.enforce_deadline(record))

    def instance_exited(self, instance_id: str, returncode: int | None, detail: str) -> None:
        """The instance's process or job is gone; settle its record."""
        entry = self.ledger.instances.get(instance_id)
        if entry is None:
            return
        record = entry.record
        entry.returncode = returncode if returncode is not None else 1
        self.ctx.channel.fail(
            instance_id, f"the launcher exited before its kernel was ready ({detail})"
        )
        if not record.is_live or record.state == InstanceState.PENDING:
            return  # a pending instance is settled by launch(), which says why it failed
        stop_reason, entry.stop_reason = entry.stop_reason, None
        if stop_reason is not None:
            self.ledger.end(record, InstanceState.TERMINATED, stop_reason)
        elif record.state == InstanceState.NOTICE and returncode != 0:
            # Gone during its notice: taken (the provider did not wait for the server).
            self.instance_taken(instance_id, False, record.reason)
        elif returncode == -signal.SIGKILL:
            # Killed whole, without a word from it: what a machine that goes looks like
            # from here (a VM taken with no notice, a node that dies). A kernel that
            # crashes exits by itself, with a status of its own: that one has failed.
            self.instance_taken(instance_id, False, f"{INSTANCE_KILLED} ({detail})")
        elif returncode == 0:
            self.ledger.end(record, InstanceState.TERMINATED, "the kernel exited")
        else:
            self.ledger.end(record, InstanceState.FAILED, f"the kernel died: {detail}")

    def instance_unplaceable(self, instance_id: str, reason: str) -> None:
        """A pending instance found no capacity: it ends, and its launch fails for lack of
        room (``Launches.launch`` answers 503; a recovery tries again or falls back)."""
        entry = self.ledger.instances.get(instance_id)
        if entry is None or entry.record.state != InstanceState.PENDING:
            return
        self.ledger.end(entry.record, InstanceState.FAILED, f"no capacity: {reason}")
        self.ctx.channel.fail(instance_id, f"no capacity: {reason}")

    def instance_progress(self, instance_id: str, message: str) -> None:
        """A pending instance waits: say so with a new ``pending`` event (long work shows)."""
        record = self.ledger.record(instance_id)
        if (
            record is not None
            and record.state == InstanceState.PENDING
            and record.reason != message
        ):
            self.ledger.transition(record, InstanceState.PENDING, message)

    def instance_taken(self, instance_id: str, expired: bool, reason: str) -> None:
        """The instance is gone without (or before the end of) its notice: end it as
        interrupted or expired now, and apply the recovery policy."""
        entry = self.ledger.instances.get(instance_id)
        if entry is None or not entry.record.is_live:
            return
        if entry.record.state == InstanceState.PENDING or entry.stop_reason is not None:
            # Not yet running (launch() says why it failed), or being stopped anyway.
            self.instance_exited(instance_id, None, reason)
            return
        if expired:
            entry.expiring = True
        self._replace_deadline(instance_id, self.take_away(entry.record, reason))

    def on_channel_message(self, instance_id: str, message: dict[str, Any]) -> None:
        """A launcher saw an interruption signal itself (Slurm's SIGTERM, the cloud's
        metadata), or an early warning (AWS's rebalance recommendation)."""
        if message.get("type") == "warning":
            self._early_warning(instance_id, message)
            return
        if message.get("type") == "notice_warning":
            self._notice_warning(instance_id, message.get("warning"))
            return
        if message.get("type") != "notice":
            return
        entry = self.ledger.instances.get(instance_id)
        if entry is None or entry.record.state != InstanceState.RUNNING:
            return  # the server sent it (an injected notice), or already knows
        if entry.stop_reason is not None:
            return  # the server is stopping this instance: its own SIGTERM
        # (a launcher's clock may be off, its frame garbage: a deadline is between now and
        # the longest notice)
        now = time.time()
        deadline = min(
            max(_finite(message.get("deadline"), now), now), now + self.ctx.settings.max_notice
        )
        reason = str(message.get("reason") or "the instance received an interruption notice")[:500]
        if message.get("source") in ("aws", "gcp", "azure"):
            # The provider said it itself: its words and its deadline stand, and it takes
            # the instance itself (the server ends it only after PROVIDER_GRACE).
            take_at = max(deadline, now + PROVIDER_GRACE)
            self.instance_noticed(entry.record.id, deadline, reason, take_at)
            return
        self.ledger.spawn(self._launcher_notice(entry.record, deadline, reason))

    def _early_warning(self, instance_id: str, message: dict[str, Any]) -> None:
        """A risk of interruption, not a notice: the instance event says it (state
        unchanged), and the log."""
        record = self.ledger.record(instance_id)
        if record is None or record.state != InstanceState.RUNNING:
            return
        reason = str(message.get("reason") or "the cloud warns of an interruption")[:500]
        self.ledger.transition(record, InstanceState.RUNNING, f"early warning: {reason}")

    def _notice_warning(self, instance_id: str, warning: Any) -> None:
        """The launcher cannot read the cloud's notice (``warning`` says why), or can again
        (None): the instance's ``notice_warning``; an instance event the first time (its
        reason ``warning: ...``: JupyterLab shows it once), the log."""
        record = self.ledger.record(instance_id)
        if record is None or not record.is_live:
            return
        text = str(warning)[:500] if isinstance(warning, str) and warning else None
        if text == record.notice_warning:
            return
        record.notice_warning = text
        if record.state == InstanceState.RUNNING:
            self.tell_notice_warning(record)
        self.ledger.save()

    def tell_notice_warning(self, record: InstanceRecord) -> None:
        """Emit the instance's notice warning, if it has one (also called by the launch
        once it runs: the launcher may say so while the instance is still pending)."""
        if record.notice_warning is not None and record.state == InstanceState.RUNNING:
            self.ledger.transition(
                record, InstanceState.RUNNING, f"warning: {record.notice_warning}"
            )

    async def _launcher_notice(self, record: InstanceRecord, deadline: float, reason: str) -> None:
        try:
            explained = await self.ctx.backend.explain_notice(record)
        except BackendError as err:
            self.ctx.log.warning("jupyter_lowcost | could not explain a notice: %s", err.message)
            explained = None
        if explained is not None:
            reason, expired = explained
            if expired:
                self.ledger.instances[record.id].expiring = True
        self.instance_noticed(record.id, deadline, reason)

    # -- the cap and the deadlines -------------------------------------------------------

    def arm_cap(self, record: InstanceRecord) -> None:
        """Give a running instance with a lifetime cap its notice, ``cap_notice`` ahead
        (at its start, or when a restarted server takes it back: the cap does not move)."""
        if record.expires_at is not None:
            settings = self.ctx.settings
            notice = min(settings.cap_notice, settings.lifetime_cap / 2)
            self.ledger.instances[record.id].cap_timer = asyncio.get_running_loop().call_later(
                max(0.0, record.expires_at - notice - time.time()), self._cap_reached, record.id
            )

    def _cap_reached(self, instance_id: str) -> None:
        record = self.ledger.record(instance_id)
        if record is None or record.expires_at is None:
            return
        cap = describe_seconds(self.ctx.settings.lifetime_cap)
        self.instance_noticed(
            instance_id, record.expires_at, f"low-cost instances always stop after {cap}"
        )

    def resume_deadline(self, record: InstanceRecord) -> None:
        """Enforce the notice of an instance taken back by a restarted server."""
        self._replace_deadline(record.id, self.enforce_deadline(record))

    def _replace_deadline(self, instance_id: str, coro: Any) -> None:
        entry = self.ledger.instances[instance_id]
        if entry.deadline is not None:
            entry.deadline.cancel()
        entry.deadline = self.ledger.spawn(coro)

    async def enforce_deadline(self, record: InstanceRecord) -> None:
        assert record.notice_deadline is not None
        take_at = self.ledger.instances[record.id].take_at or record.notice_deadline
        await asyncio.sleep(max(0.0, take_at - time.time()))
        if record.state != InstanceState.NOTICE:
            return
        await self.take_away(record, record.reason)

    async def take_away(self, record: InstanceRecord, reason: str) -> None:
        """End a live instance as interrupted or expired, stop what is left of it, and
        apply the recovery policy to its kernel."""
        kernel_id = record.kernel_id
        entry = self.ledger.instances[record.id]
        expired = entry.expiring or (
            record.expires_at is not None and record.notice_deadline == record.expires_at
        )
        entry.expiring = False
        state = InstanceState.EXPIRED if expired else InstanceState.INTERRUPTED
        what = f"resuming after the {state.value} instance {record.id}"
        kernels = self.ctx.kernel_manager
        if kernel_id is not None:
            self.ledger.begin(kernel_id, what)
            if kernel_id in kernels:
                # The recovery below restarts the kernel; the restarter must not race it.
                kernels.get_kernel(kernel_id).stop_restarter()
        try:
            if kernel_id is not None and kernel_id in kernels:
                record.recovery = self.ctx.settings.recovery_policy
            self.ledger.end(record, state, reason)  # final before the exit is reported
            await self.ctx.backend.terminate(record, now=True)
            if kernel_id is not None:
                async with self.ledger.lock(kernel_id):
                    # A move that ran meanwhile has already taken the kernel elsewhere.
                    current = self.ledger.kernels.get(kernel_id)
                    if current is not None and current.instance_id == record.id:
                        await self.recovery.recover(kernel_id, record)
        finally:
            if kernel_id is not None:
                self.ledger.finish(kernel_id, what)

    # -- the REST API --------------------------------------------------------------------

    async def interrupt(self, record: InstanceRecord, notice_seconds: Any) -> dict[str, Any]:
        """``POST instances/<id>/interrupt``: announce an interruption ``notice_seconds`` ahead."""
        max_notice = self.ctx.settings.max_notice
        if isinstance(notice_seconds, bool) or not isinstance(notice_seconds, (int, float)):
            raise web.HTTPError(400, f"notice_seconds must be a number, not {notice_seconds!r}")
        if not 0 <= notice_seconds <= max_notice:
            shown = repr(notice_seconds)
            shown = shown if len(shown) <= 24 else f"{shown[:12]}... ({len(shown)} digits)"
            raise web.HTTPError(
                400, f"notice_seconds must be between 0 and {max_notice:g}, not {shown}"
            )
        if not record.low_cost:
            raise web.HTTPError(
                409, "regular instances are not interrupted; only low-cost ones are"
            )
        if record.state != InstanceState.RUNNING:
            raise web.HTTPError(
                409,
                f"instance {record.id} is {record.state.value}, not running: only a running "
                "instance can be interrupted",
            )
        await self.ctx.backend.interrupt(
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
