"""The backend contract: what an engine that runs instances must do.

The :class:`~jupyter_lowcost.server.manager.InstanceManager` is the only caller of a backend. It
creates one at start-up (``LowCostApp.backend`` names its entry point in the group
``jupyter_lowcost.backends``), passes itself as the :class:`BackendListener`, and calls:

- :meth:`Backend.start` once, :meth:`Backend.stop` once at shutdown;
- :meth:`Backend.check_capacity` before a switch (to refuse early, changing nothing);
- :meth:`Backend.reserve` then :meth:`Backend.launch` for every new instance: the backend
  runs ``python -m jupyter_lowcost.launcher`` there with the environment it is given;
- :meth:`Backend.send_signal`, :meth:`Backend.terminate` and :meth:`Backend.interrupt`
  while the instance lives;
- for the live records a previous server left (it was killed, or crashed):
  :meth:`Backend.reattach` for an instance whose kernel the server takes back (the backend
  follows it again as if it had launched it), :meth:`Backend.forget_orphan` for the rest.

A backend reports what happens on its own through the listener: an interruption notice
(``instance_noticed``), the end of an instance (``instance_exited``), an instance taken
away without notice (``instance_taken``), and what a pending instance waits for
(``instance_progress``). A launcher that sees an interruption signal itself (Slurm's
SIGTERM) reports it over the launch channel; the manager asks :meth:`Backend.explain_notice`
why. Backends are plain
async Python; they raise :class:`BackendError` with a message a person understands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from traitlets.config import LoggingConfigurable

from ..storage.records import InstanceRecord


@dataclass(frozen=True)
class InstanceType:
    """One kind of instance a user can ask for, with its two hourly prices."""

    name: str
    gpu: str
    gpu_count: int
    vcpus: int
    memory_gb: float
    price_regular: float
    price_low_cost: float

    def price(self, low_cost: bool) -> float:
        """The hourly price of this type on the given tier."""
        return self.price_low_cost if low_cost else self.price_regular

    @property
    def discount_percent(self) -> int:
        """How much cheaper the low-cost tier is, in whole percent."""
        if self.price_regular <= 0:
            return 0
        return round(100 * (1 - self.price_low_cost / self.price_regular))

    def to_model(self, lifetime_cap_seconds: float) -> dict[str, Any]:
        """The JSON model served by ``GET instance-types``."""
        return {
            "name": self.name,
            "gpu": self.gpu,
            "gpu_count": self.gpu_count,
            "vcpus": self.vcpus,
            "memory_gb": self.memory_gb,
            "price_regular": self.price_regular,
            "price_low_cost": self.price_low_cost,
            "discount_percent": self.discount_percent,
            "low_cost_lifetime_cap_seconds": lifetime_cap_seconds,
        }


class BackendError(Exception):
    """A request the backend cannot satisfy; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 503, reason: str = "unavailable") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason


@dataclass
class LaunchSpec:
    """What a backend needs to start the launcher of one instance."""

    #: The Python interpreter of the kernel's kernelspec; runs ``-m jupyter_lowcost.launcher``.
    python: str
    #: The whole environment of the launcher (the kernel's, plus the channel's address and
    #: the per-launch secret).
    env: dict[str, str]
    #: The kernel's working directory, or ``None`` for the backend's default.
    cwd: str | None
    #: Where the backend writes the launcher's output, for error messages and debugging.
    log_path: str
    #: Seconds the instance may live (the low-cost lifetime cap), or ``None``: a backend
    #: that can enforce it itself does (Slurm's ``--time``); the manager enforces it anyway.
    time_limit: float | None = None
    #: The id of the server's records folder (see ``RecordStore.folder_id``): a backend
    #: that can label instances labels them with it, for :meth:`Backend.sweep_unrecorded`.
    owner: str = ""


class BackendListener(Protocol):
    """What backends call on the manager, from the event loop."""

    def instance_noticed(self, instance_id: str, deadline: float, reason: str) -> None:
        """An interruption of ``instance_id`` is announced for the UNIX time ``deadline``."""

    def instance_exited(self, instance_id: str, returncode: int | None, detail: str) -> None:
        """The instance has ended (its launcher exited or its job left the queue)."""

    def instance_progress(self, instance_id: str, message: str) -> None:
        """A pending instance is still on its way: ``message`` says what it waits for."""

    def instance_taken(self, instance_id: str, expired: bool, reason: str) -> None:
        """The instance was taken away without (or past) its notice: preempted, its node
        lost, or its time limit reached (``expired``). The recovery policy applies."""

    def instance_unplaceable(self, instance_id: str, reason: str) -> None:
        """A pending instance found no capacity and the backend gave up on it (a pod the
        scheduler could not place in time): its launch fails for lack of room, as a
        preempted start does (a recovery tries again, or falls back, as its policy says)."""


class Backend(LoggingConfigurable):
    """Base class of backends. Subclasses override every method that raises here."""

    #: The entry point name, shown by ``GET status``.
    name = "base"
    #: The address kernels on this backend's instances bind and the server dials.
    kernel_ip = "127.0.0.1"
    #: The manager forwards signals (an interrupt) over the launch channel, not through
    #: :meth:`send_signal`: for backends that cannot reach the instance's processes.
    signals_over_channel = False

    def __init__(self, listener: BackendListener, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.listener = listener

    async def start(self) -> None:
        """Called once by the manager before any launch. No need to call ``super()``."""

    async def stop(self) -> None:
        """Called once by the manager at shutdown, after it terminated every live instance."""

    def capacity(self) -> dict[str, Any]:
        """What ``GET status`` shows of the backend's capacity."""
        return {}

    def random_interruptions(self) -> str:
        """How this backend interrupts instances at random, in words ("are interrupted at
        random ..."), for a demo server's description; empty when it does not."""
        return ""

    def offered_types(self, catalog: dict[str, InstanceType]) -> dict[str, InstanceType]:
        """The types of ``catalog`` this backend can run (called once, after :meth:`start`);
        ``GET instance-types`` shows these."""
        return catalog

    def channel_address(self, host: str, port: int) -> str:
        """``host:port`` that launchers dial to reach the launch channel listening on
        ``host`` (a cluster backend may name an address its compute nodes reach)."""
        return f"{host}:{port}"

    async def explain_notice(self, record: InstanceRecord) -> tuple[str, bool] | None:
        """Why the instance's launcher saw an interruption signal: ``(reason, expired)``,
        or ``None`` when the server itself caused it (a notice is already in force)."""
        return None

    def check_capacity(self, low_cost: bool, replacing: InstanceRecord | None) -> None:
        """Raise :class:`BackendError` if a new instance of this tier cannot be placed.

        ``replacing`` is a live instance that will be stopped first (a switch), whose
        resources count as free. Called by the manager before it touches a kernel.
        """

    def has_room(self, low_cost: bool) -> bool:
        """True when an instance of this tier could start now (or after a preemption);
        a recovery waits until then before it restarts the kernel. Queue-based backends
        (Slurm) always have room: their queue waits."""
        return True

    def room_message(self, low_cost: bool, queued_job: bool = False) -> str:
        """What a recovery that waits for :meth:`has_room` says it waits for; with
        ``queued_job``, what a queued job (whose kernel has not started yet) says."""
        if queued_job:
            return "waiting for capacity: the job starts when there is room for its kernel"
        return "waiting for capacity to resume the kernel"

    async def room_changed(self) -> None:
        """Return when room may have freed (default: after a few seconds)."""
        await asyncio.sleep(5)

    async def reserve(self, record: InstanceRecord, wait: bool = False) -> None:
        """Wait for room for ``record`` (or raise :class:`BackendError`).

        ``wait``: the instance resumes a kernel that was interrupted, which is never thrown
        away for lack of room: wait as long as it takes (saying what for through
        ``listener.instance_progress``), until ``record`` is no longer live (its kernel
        was shut down, the server stops: then raise)."""

    async def launch(self, record: InstanceRecord, spec: LaunchSpec) -> None:
        """Start the launcher for ``record``; fill ``record.backend_state``. Returns at once."""
        raise NotImplementedError

    async def send_signal(self, record: InstanceRecord, signum: int) -> None:
        """Send ``signum`` to the kernel (interrupts use ``SIGINT``)."""
        raise NotImplementedError

    async def terminate(self, record: InstanceRecord, now: bool = False) -> None:
        """Stop the instance: politely, or at once with ``now``. Must be idempotent."""
        raise NotImplementedError

    async def interrupt(self, record: InstanceRecord, notice_seconds: float, reason: str) -> None:
        """Make an interruption of ``record`` happen, announced ``notice_seconds`` ahead.

        The backend reports the notice through ``listener.instance_noticed``; the manager
        enforces the deadline.
        """
        raise BackendError(f"the {self.name} backend cannot inject interruptions", status=409)

    async def reattach(self, record: InstanceRecord) -> bool:
        """Follow again an instance that a previous server launched (its ``backend_state``
        says where): True if it still runs, and from now on it is this backend's as if
        :meth:`launch` had started it (terminate, signals, its end reported); False if it
        is gone. Called once per record at start, before any launch. Backends that cannot
        follow an instance they did not start stop it (the kernel resumes from its
        checkpoint) and return False; no need to call ``super()`` otherwise."""
        await self.forget_orphan(record)
        return False

    async def sweep_unrecorded(self, owner: str, is_recorded: Callable[[str], bool]) -> list[str]:
        """Stop the instances labelled ``owner`` (see :attr:`LaunchSpec.owner`) whose id
        ``is_recorded`` denies: a server was killed between starting them and saving their
        records, so no server would ever stop them. Called once by the manager at start,
        after every record was taken back or forgotten; returns the ids it stopped.
        Backends that cannot list what they started do nothing."""
        return []

    async def forget_orphan(self, record: InstanceRecord) -> bool:
        """Stop what is left of ``record`` from a previous server run; True if it was alive."""
        raise NotImplementedError
