"""The embedded ``local`` backend: instances are processes on this machine, in slots.

A real scheduler, not a mock. There is one slot per GPU that ``nvidia-smi`` lists (the
instance in a slot sees only its GPU, through ``CUDA_VISIBLE_DEVICES``), or
``LocalBackend.slots`` of them on a machine without GPUs. When every slot is taken, a
regular request preempts the newest low-cost instance (with ``preemption_notice`` seconds
of notice) and takes its slot; a low-cost request fails with a clear message, or waits
for a slot when ``low_cost_when_full = "wait"``. Interruptions can be injected (the
REST API calls :meth:`LocalBackend.interrupt`) and happen at random at
``random_interruption_rate`` per hour for demos.

Each launcher runs in a session of its own; terminating an instance signals that whole
process group, so nothing the kernel started survives it. The processes themselves (GPUs
found, launchers started and signalled, the end of an adopted one awaited) are
``local_processes.py``'s; this module schedules them in slots.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from typing import Any

from traitlets import Enum, Float, Int, default

from ..storage.private import open_private, private_dir
from ..storage.records import InstanceRecord, InstanceState, process_start_ticks
from .base import Backend, BackendError, LaunchSpec
from .local_processes import detect_gpus, signal_group, start_launcher, wait_for_exit

__all__ = ["DEMO_INTERRUPTIONS_PER_HOUR", "LocalBackend", "detect_gpus"]

DEMO_INTERRUPTIONS_PER_HOUR = 12.0  # LowCostApp.demo: one every five minutes on average


class LocalBackend(Backend):
    """Instances as processes on the server's machine, scheduled in slots."""

    name = "local"

    slots = Int(
        4,
        config=True,
        help="""How many instances may run at once on a machine without NVIDIA GPUs.

        Where ``nvidia-smi`` lists GPUs there is one slot per GPU and this is ignored.
        Example: ``c.LocalBackend.slots = 1`` makes every regular request preempt the
        low-cost instance that holds the only slot.
        """,
    )

    low_cost_when_full = Enum(
        ["fail", "wait"],
        "fail",
        config=True,
        help="""What a low-cost request does when every slot is taken.

        ``fail`` (default) answers at once with a message saying so; ``wait`` queues the
        request until a slot frees, for at most ``queue_timeout`` seconds.
        Example: ``c.LocalBackend.low_cost_when_full = "wait"``.
        """,
    )

    queue_timeout = Float(
        600.0,
        config=True,
        help="""Seconds a request may wait for a slot before it fails (see
        ``low_cost_when_full``; regular requests wait while a preempted instance drains).
        Example: ``c.LocalBackend.queue_timeout = 60``.
        """,
    )

    preemption_notice = Float(
        30.0,
        config=True,
        help="""Seconds of notice a low-cost instance gets when a regular request takes its
        slot. Example: ``c.LocalBackend.preemption_notice = 5``.
        """,
    )

    random_interruption_rate = Float(
        config=True,
        help="""Random interruptions of low-cost instances, per instance and per hour
        (0 turns them off; the default, except on a demo server, ``LowCostApp.demo``, where
        it is 12). For demos: ``c.LocalBackend.random_interruption_rate = 12`` interrupts a
        low-cost instance every five minutes on average.
        """,
    )

    @default("random_interruption_rate")
    def _default_random_interruption_rate(self) -> float:
        return DEMO_INTERRUPTIONS_PER_HOUR if getattr(self.parent, "demo", False) else 0.0

    random_interruption_notice = Float(
        30.0,
        config=True,
        help="""Seconds of notice before a random interruption (see
        ``random_interruption_rate``). Example: ``c.LocalBackend.random_interruption_notice = 30``.
        """,
    )

    kill_grace = Float(
        3.0,
        config=True,
        help="""Seconds between SIGTERM and SIGKILL when an instance is stopped politely.""",
    )

    gpus = Int(
        -1,
        config=True,
        help="""How many of the detected GPUs to use as slots; -1 (default) uses every GPU
        that ``nvidia-smi`` lists, 0 ignores GPUs and uses ``slots``.
        """,
    )

    def __init__(self, listener: Any, **kwargs: Any) -> None:
        super().__init__(listener, **kwargs)
        self._gpu_ids: list[str] = []
        self._slots: list[str | None] = []
        self._records: dict[str, InstanceRecord] = {}
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        # Instances a previous server started (not children of this process): followed
        # through a pidfd, see reattach().
        self._adopted: dict[str, asyncio.Task[None]] = {}
        self._random_timers: dict[str, asyncio.TimerHandle] = {}
        self._preempting: set[str] = set()
        # Preempted instance id -> the request waiting for its slot: the slot goes to that
        # request when it frees (a relaunch of the preempted kernel cannot take it first).
        self._claims: dict[str, str] = {}
        self._waiting: set[str] = set()  # ids of the requests inside reserve()
        self._slot_freed = asyncio.Condition()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        gpus = await asyncio.to_thread(detect_gpus) if self.gpus != 0 else []
        if self.gpus > 0:
            gpus = gpus[: self.gpus]
        self._gpu_ids = gpus
        count = len(gpus) if gpus else self.slots
        if count < 1:
            raise ValueError("LocalBackend.slots must be at least 1")
        self._slots = [None] * count
        self.log.info(
            "jupyter_lowcost | local backend: %d slot(s)%s",
            count,
            f", one per GPU ({', '.join(gpus)})" if gpus else "",
        )

    async def stop(self) -> None:
        for timer in self._random_timers.values():
            timer.cancel()
        for record in list(self._records.values()):
            await self.terminate(record, now=True)
        for task in [*self._watchers.values(), *self._adopted.values()]:
            task.cancel()

    def random_interruptions(self) -> str:
        if self.random_interruption_rate <= 0:
            return ""
        minutes = 60 / self.random_interruption_rate
        return (
            f"are interrupted at random, about every {minutes:.3g} minutes on average, "
            f"with {self.random_interruption_notice:g} s notice"
        )

    def capacity(self) -> dict[str, Any]:
        used = sum(1 for s in self._slots if s is not None)
        return {
            "slots": len(self._slots),
            "used": used,
            "free": len(self._slots) - used,
            "gpus": list(self._gpu_ids),
        }

    # -- scheduling ----------------------------------------------------------------------

    def _free_slot(self) -> int | None:
        for index, holder in enumerate(self._slots):
            if holder is None:
                return index
        return None

    def _preemptible(self) -> list[InstanceRecord]:
        """Low-cost holders of slots not yet being preempted: running ones first (a pending
        one has to be stopped before it starts), newest first."""
        holders = [self._records[i] for i in self._slots if i is not None and i in self._records]
        candidates = [r for r in holders if r.low_cost and r.id not in self._preempting]
        return sorted(
            candidates,
            key=lambda r: (r.state != InstanceState.PENDING, r.created_at),
            reverse=True,
        )

    def _full_message(self) -> str:
        return (
            f"all {len(self._slots)} slot(s) of the local backend are in use; stop a kernel, "
            "or use a regular instance (it preempts the newest low-cost one)"
        )

    def check_capacity(self, low_cost: bool, replacing: InstanceRecord | None) -> None:
        if self._free_slot() is not None:
            return
        if replacing is not None and replacing.id in self._slots:
            return
        if not low_cost and (self._preemptible() or self._preempting):
            return
        if low_cost and self.low_cost_when_full == "wait":
            return
        if not low_cost:
            raise BackendError(
                f"all {len(self._slots)} slot(s) of the local backend hold regular instances; "
                "none can be preempted",
                status=503,
                reason="no-capacity",
            )
        raise BackendError(self._full_message(), status=503, reason="no-capacity")

    def has_room(self, low_cost: bool) -> bool:
        if self._free_slot() is not None:
            return True
        return not low_cost and bool(self._preemptible() or self._preempting)

    def room_message(self, low_cost: bool, queued_job: bool = False) -> str:
        slots = len(self._slots)
        full = f"all {slots} are in use" if low_cost else f"all {slots} hold regular instances"
        if queued_job:
            return f"waiting for a free slot: {full} (the job starts when one frees)"
        return (
            f"waiting for a slot to resume the kernel: {full} "
            "(it resumes from its checkpoint when one frees)"
        )

    async def room_changed(self) -> None:
        async with self._slot_freed:
            await self._slot_freed.wait()

    async def reserve(self, record: InstanceRecord, wait: bool = False) -> None:
        self._waiting.add(record.id)
        try:
            await self._reserve(record, wait)
        finally:
            self._waiting.discard(record.id)
            for victim in [v for v, c in self._claims.items() if c == record.id]:
                del self._claims[victim]

    async def _reserve(self, record: InstanceRecord, wait: bool) -> None:
        deadline = time.monotonic() + (float("inf") if wait else self.queue_timeout)
        async with self._slot_freed:
            while True:
                if not record.is_live:
                    raise BackendError(
                        f"stopped while it waited for a slot: {record.reason}", status=503
                    )
                if record.id in self._slots:  # handed over by the instance it preempted
                    index = self._slots.index(record.id)
                    self._records[record.id] = record
                    record.backend_state["slot"] = index
                    return
                index = self._free_slot()
                if index is not None:
                    self._slots[index] = record.id
                    self._records[record.id] = record
                    record.backend_state["slot"] = index
                    return
                if not record.low_cost:
                    victims = self._preemptible()
                    if victims:
                        victim = victims[0]
                        self._preempting.add(victim.id)
                        self._claims[victim.id] = record.id
                        self.listener.instance_noticed(
                            victim.id,
                            time.time() + self.preemption_notice,
                            f"preempted: a regular {record.instance_type} instance needs its slot",
                        )
                        self.listener.instance_progress(
                            record.id,
                            f"waiting for the slot of low-cost instance {victim.id}, preempted "
                            f"with {self.preemption_notice:g} s of notice",
                        )
                    elif wait and not self._preempting:
                        self.listener.instance_progress(record.id, self.room_message(False))
                    elif not self._preempting:
                        self.check_capacity(low_cost=False, replacing=None)
                elif wait:
                    self.listener.instance_progress(record.id, self.room_message(True))
                elif self.low_cost_when_full == "fail":
                    raise BackendError(self._full_message(), status=503, reason="no-capacity")
                else:
                    self.listener.instance_progress(
                        record.id,
                        f"waiting for a free slot: all {len(self._slots)} are in use",
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BackendError(
                        f"no slot of the local backend freed within {self.queue_timeout:g} s",
                        status=503,
                        reason="queue-timeout",
                    )
                try:
                    await asyncio.wait_for(self._slot_freed.wait(), timeout=remaining)
                except asyncio.TimeoutError:
                    pass

    async def _release(self, instance_id: str) -> None:
        async with self._slot_freed:
            claimant = self._claims.pop(instance_id, None)
            heir = claimant if claimant in self._waiting else None
            self._slots = [heir if s == instance_id else s for s in self._slots]
            self._records.pop(instance_id, None)
            self._preempting.discard(instance_id)
            timer = self._random_timers.pop(instance_id, None)
            if timer:
                timer.cancel()
            self._slot_freed.notify_all()

    # -- instances -----------------------------------------------------------------------

    async def launch(self, record: InstanceRecord, spec: LaunchSpec) -> None:
        env = dict(spec.env)
        slot = record.backend_state.get("slot", 0)
        if self._gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = self._gpu_ids[slot]
        private_dir(os.path.dirname(spec.log_path))
        with open_private(spec.log_path, "ab") as log_file:
            try:
                process = await start_launcher(spec.python, env, spec.cwd, log_file)
            except OSError as err:
                await self._release(record.id)
                raise BackendError(
                    f"could not start {spec.python}: {err}", status=500, reason="launch"
                ) from err
        self._processes[record.id] = process
        record.backend_state.update(
            pid=process.pid, pgid=process.pid, start_ticks=process_start_ticks(process.pid)
        )
        self._watchers[record.id] = asyncio.create_task(self._watch(record, process))
        if record.low_cost and self.random_interruption_rate > 0:
            self._schedule_random_interruption(record)

    def _schedule_random_interruption(self, record: InstanceRecord) -> None:
        delay = random.expovariate(self.random_interruption_rate / 3600)
        self._random_timers[record.id] = asyncio.get_running_loop().call_later(
            delay, self._random_interruption, record
        )

    def _random_interruption(self, record: InstanceRecord) -> None:
        instance_id = record.id
        self._random_timers.pop(instance_id, None)
        if record.state == InstanceState.PENDING:  # its kernel cannot hear a notice yet
            self._schedule_random_interruption(record)
            return
        self.listener.instance_noticed(
            instance_id,
            time.time() + self.random_interruption_notice,
            "a random interruption, as when a provider takes a spot instance back "
            "(demo setting LocalBackend.random_interruption_rate)",
        )

    async def _watch(self, record: InstanceRecord, process: asyncio.subprocess.Process) -> None:
        returncode = await process.wait()
        self._processes.pop(record.id, None)
        self._watchers.pop(record.id, None)
        await self._release(record.id)
        self.listener.instance_exited(record.id, returncode, f"the process exited ({returncode})")

    async def reattach(self, record: InstanceRecord) -> bool:
        """Take back the launcher a previous server started, in the slot it had."""
        pid = record.backend_state.get("pid")
        ticks = record.backend_state.get("start_ticks")
        if not pid or ticks is None or process_start_ticks(pid) != ticks:
            return False
        async with self._slot_freed:
            slot = record.backend_state.get("slot")
            if not (isinstance(slot, int) and 0 <= slot < len(self._slots)) or self._slots[slot]:
                slot = self._free_slot()
            if slot is None:  # fewer slots than before the restart
                self._signal_group(record, signal.SIGKILL)
                return False
            self._slots[slot] = record.id
            record.backend_state["slot"] = slot
            self._records[record.id] = record
        self._adopted[record.id] = asyncio.create_task(self._watch_adopted(record, pid))
        if record.low_cost and self.random_interruption_rate > 0:
            self._schedule_random_interruption(record)
        return True

    async def _watch_adopted(self, record: InstanceRecord, pid: int) -> None:
        """Wait for the end of a launcher this process did not start (its exit status
        is its old parent's to read: unknown here)."""
        await wait_for_exit(
            pid, lambda: process_start_ticks(pid) == record.backend_state.get("start_ticks")
        )
        self._adopted.pop(record.id, None)
        await self._release(record.id)
        self.listener.instance_exited(record.id, None, "the process exited")

    def _signal_group(self, record: InstanceRecord, signum: int) -> bool:
        return signal_group(record.backend_state.get("pgid"), signum)

    async def send_signal(self, record: InstanceRecord, signum: int) -> None:
        self._signal_group(record, signum)

    async def terminate(self, record: InstanceRecord, now: bool = False) -> None:
        adopted = self._adopted.get(record.id)
        if adopted is not None:
            if not now and self._signal_group(record, signal.SIGTERM):
                try:
                    await asyncio.wait_for(asyncio.shield(adopted), timeout=self.kill_grace)
                    return
                except asyncio.TimeoutError:
                    pass
            self._signal_group(record, signal.SIGKILL)
            await asyncio.shield(adopted)
            return
        process = self._processes.get(record.id)
        if process is None:
            # Not started: it holds at most a reserved slot, or waits for one (the waiters
            # are woken, and it gives up).
            await self._release(record.id)
            return
        if process.returncode is not None:
            return
        if not now and self._signal_group(record, signal.SIGTERM):
            try:
                await asyncio.wait_for(process.wait(), timeout=self.kill_grace)
                return
            except asyncio.TimeoutError:
                pass
        self._signal_group(record, signal.SIGKILL)
        await process.wait()
        watcher = self._watchers.get(record.id)
        if watcher is not None:
            await asyncio.shield(watcher)

    async def interrupt(self, record: InstanceRecord, notice_seconds: float, reason: str) -> None:
        if record.state not in (InstanceState.RUNNING, InstanceState.PENDING):
            return
        self.listener.instance_noticed(record.id, time.time() + notice_seconds, reason)

    async def forget_orphan(self, record: InstanceRecord) -> bool:
        pid = record.backend_state.get("pid")
        ticks = record.backend_state.get("start_ticks")
        if not pid or ticks is None or process_start_ticks(pid) != ticks:
            return False
        self._signal_group(record, signal.SIGKILL)
        return True
