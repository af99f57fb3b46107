"""Instance records: the lifecycle states, the per-kernel placement, and their persistence.

The :class:`~jupyter_lowcost.server.manager.InstanceManager` owns every :class:`InstanceRecord`
and is the only writer; handlers read :meth:`InstanceRecord.to_model`. The
:class:`RecordStore` writes all records to one JSON file in the server's data directory
after every transition (atomically: write then rename), so that a restarted server can
find the instances a previous run left behind.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from .atomic import write_private
from .private import open_private, private_dir


class PricedType(Protocol):
    """What a record needs of an instance type (``backends.base.InstanceType`` is one)."""

    name: str
    price_regular: float

    def price(self, low_cost: bool) -> float: ...


class InstanceState(str, enum.Enum):
    """``pending -> running -> notice -> interrupted | expired | terminated | failed``."""

    PENDING = "pending"
    RUNNING = "running"
    NOTICE = "notice"
    INTERRUPTED = "interrupted"
    EXPIRED = "expired"
    TERMINATED = "terminated"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """True once the instance is gone for good."""
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {
        InstanceState.INTERRUPTED,
        InstanceState.EXPIRED,
        InstanceState.TERMINATED,
        InstanceState.FAILED,
    }
)


def tier_name(low_cost: bool) -> str:
    """The tier as users read it: ``low-cost`` or ``regular``."""
    return "low-cost" if low_cost else "regular"


def iso(timestamp: float | None) -> str | None:
    """A UNIX timestamp as an ISO 8601 UTC string (``None`` stays ``None``)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()


@dataclass(frozen=True)
class Placement:
    """Where a kernel runs: an instance type and a tier."""

    instance_type: str
    low_cost: bool

    def describe(self) -> str:
        """``a low-cost A100-80G instance``."""
        return f"a {tier_name(self.low_cost)} {self.instance_type} instance"

    def to_model(self) -> dict[str, Any]:
        """The JSON model of a placement."""
        return {
            "instance_type": self.instance_type,
            "low_cost": self.low_cost,
            "tier": tier_name(self.low_cost),
        }


@dataclass
class InstanceRecord:
    """Everything the server knows of one instance, live or ended."""

    kernel_id: str | None
    instance_type: str
    low_cost: bool
    backend: str
    price_per_hour: float
    regular_price_per_hour: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: InstanceState = InstanceState.PENDING
    reason: str = ""
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    expires_at: float | None = None
    notice_deadline: float | None = None
    #: Why the cloud's own notice cannot be read on this instance (the launcher says so:
    #: interruptions will come without notice); None while it can, or nothing watches.
    notice_warning: str | None = None
    #: After an interruption or expiry: the recovery policy applied to its kernel.
    recovery: str | None = None
    #: What the backend needs to find the instance again (pids, job ids), from its launch.
    backend_state: dict[str, Any] = field(default_factory=dict)
    #: What a restarted server needs to take the running kernel back: its session key and
    #: signature scheme, and the launcher's reconnect secret (the launcher reports its
    #: ports again when it reconnects). Persisted
    #: owner-only, never served (not in :meth:`to_model`).
    reattach: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_placement(
        cls, kernel_id: str | None, placement: Placement, itype: PricedType, backend: str
    ) -> InstanceRecord:
        """A new pending record for ``placement`` (called by the manager before a launch)."""
        return cls(
            kernel_id=kernel_id,
            instance_type=itype.name,
            low_cost=placement.low_cost,
            backend=backend,
            price_per_hour=itype.price(placement.low_cost),
            regular_price_per_hour=itype.price_regular,
        )

    @property
    def tier(self) -> str:
        return tier_name(self.low_cost)

    @property
    def is_live(self) -> bool:
        return not self.state.is_final

    def hours_billed(self, now: float | None = None) -> float:
        """Hours from ``running`` to the end (or to now while it lasts)."""
        if self.started_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else (now or time.time())
        return max(0.0, end - self.started_at) / 3600

    def cost(self, now: float | None = None) -> float:
        """Money spent on this instance so far, in dollars."""
        return self.hours_billed(now) * self.price_per_hour

    def savings(self, now: float | None = None) -> float:
        """Money saved against the regular price of the same type, in dollars."""
        return self.hours_billed(now) * (self.regular_price_per_hour - self.price_per_hour)

    def to_model(self, now: float | None = None) -> dict[str, Any]:
        """The JSON model served by ``GET instances`` and sent in events."""
        now = now or time.time()
        return {
            "id": self.id,
            "kernel_id": self.kernel_id,
            "instance_type": self.instance_type,
            "low_cost": self.low_cost,
            "tier": self.tier,
            "backend": self.backend,
            "state": self.state.value,
            "reason": self.reason,
            "created": iso(self.created_at),
            "started": iso(self.started_at),
            "ended": iso(self.ended_at),
            "expires": iso(self.expires_at),
            "notice_deadline": iso(self.notice_deadline),
            "notice_warning": self.notice_warning,
            "recovery": self.recovery,
            "seconds_left": (
                max(0.0, self.expires_at - now)
                if self.expires_at is not None and self.is_live
                else None
            ),
            "price_per_hour": self.price_per_hour,
            "regular_price_per_hour": self.regular_price_per_hour,
            "cost": round(self.cost(now), 6),
            "savings": round(self.savings(now), 6),
        }

    def to_json(self) -> dict[str, Any]:
        """The persisted form (see :class:`RecordStore`)."""
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceRecord:
        known = set(cls.__dataclass_fields__)
        data = {k: v for k, v in data.items() if k in known}
        data["state"] = InstanceState(data["state"])
        return cls(**data)


@dataclass(frozen=True)
class Holdings:
    """What other servers sharing a data directory hold (:meth:`RecordStore.held_elsewhere`):
    a starting server prunes a launcher log, a channel file or a kernel's checkpoints only
    when no other server holds them."""

    #: Every instance on another server's record, live or ended (its launcher log stays).
    instances: frozenset[str] = frozenset()
    #: The live ones (their launchers may read their channel files at any time).
    live_instances: frozenset[str] = frozenset()
    #: The kernels another server runs, or a server will take back (their checkpoints).
    kernels: frozenset[str] = frozenset()


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None if it is not running.

    A pid with the same start time is the same process (pids are reused, start times are
    not), so ``(pid, start ticks)`` names a process for good.
    """
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def server_name(pid: int | None = None) -> str:
    """``server-<pid>-<start ticks>``: a server process, named for good (the owner of its
    records file, see :class:`RecordStore`, and of its jobs, see ``storage/jobs.py``)."""
    pid = os.getpid() if pid is None else pid
    return f"server-{pid}-{process_start_ticks(pid)}"


def server_running(name: str) -> bool:
    """True while the server process ``name`` (see :func:`server_name`) runs."""
    try:
        _, pid, ticks = name.split("-")
        return str(process_start_ticks(int(pid))) == ticks
    except ValueError:
        return False


class RecordStore:
    """The records of one server, in a JSON file of its own, rewritten whole and atomically.

    Each running server writes ``server-<pid>-<start ticks>.json`` in the store's folder,
    so that two servers sharing a data directory never touch each other's instances. At
    start-up a server adopts the files of servers that are no longer running (see
    :meth:`adopt_orphans`): their records join its history, and their live instances are
    the ones it must stop. What other servers hold (:meth:`held_elsewhere`) is what its
    pruning of files and checkpoints leaves alone.
    """

    #: Ended records kept beyond this many are dropped, oldest first.
    max_ended = 500

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / f"{server_name()}.json"
        self._folder_id = ""

    def folder_id(self) -> str:
        """The id of this records folder, shared by every server that shares it: made once
        (16 hex digits, kept in ``folder-id``), then read. Backends that can label what
        they start label it with this id, so that a server finds the instances of its
        folder that no records file names (a server killed between starting an instance
        and saving its record). Called by the manager at start and for each launch."""
        if not self._folder_id:
            self._folder_id = self._read_or_make_folder_id()
        return self._folder_id

    def _read_or_make_folder_id(self) -> str:
        path = self.folder / "folder-id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        private_dir(self.folder)
        made = self.folder / f"folder-id.{uuid.uuid4().hex}.tmp"
        with open_private(made, "w", exclusive=True) as out:
            out.write(uuid.uuid4().hex[:16] + "\n")
        try:
            os.link(made, path)  # (two servers starting at once: the first one's id)
        except FileExistsError:
            pass
        finally:
            made.unlink()
        return path.read_text().strip()

    @staticmethod
    def _owner(path: Path) -> str:
        """``server-<pid>-<ticks>``: the server a records file belongs to (its own file,
        or one it claimed from a server that is gone: ``<owner>.claimed-<n>.json``)."""
        return path.name.split(".", 1)[0]

    @classmethod
    def _owner_alive(cls, path: Path) -> bool:
        return server_running(cls._owner(path))

    @classmethod
    def _read(cls, path: Path) -> tuple[list[InstanceRecord], dict[str, dict[str, Any]]]:
        try:
            return cls._parse(path.read_text())
        except FileNotFoundError:
            return [], {}

    @staticmethod
    def _parse(text: str) -> tuple[list[InstanceRecord], dict[str, dict[str, Any]]]:
        try:
            raw = json.loads(text)
        except ValueError:
            return [], {}
        records = [InstanceRecord.from_json(item) for item in raw.get("instances", [])]
        kernels = raw.get("kernels")
        return records, kernels if isinstance(kernels, dict) else {}

    @contextmanager
    def taking_over(self) -> Iterator[None]:
        """Held by a starting server while it takes over what servers that are gone left
        (their records, :meth:`adopt_orphans`, and their jobs, ``storage/jobs.py``):
        servers starting at once on one data directory take over one after the other, so
        that a gone server's records and its jobs go to the same server. Called by the
        manager; what it holds it for is quick, and never awaits."""
        private_dir(self.folder)
        with open_private(self.folder / "takeover.lock", "ab") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def adopt_orphans(
        self,
    ) -> tuple[list[InstanceRecord], dict[str, dict[str, Any]], list[Path]]:
        """The records of servers that are gone, oldest first, the kernels they ran (kernel
        id -> what re-creating it needs, see :meth:`save`), and the files that held them.

        Each file is first claimed (renamed ``<this server>.claimed-<n>.json``, atomically):
        of servers starting at once on one folder, one adopts it and the others leave it
        alone, as they do a live server's; claimed files of a server that died before
        removing them are adopted again. The caller saves the records as its own, then
        deletes the files (:meth:`remove`).
        """
        records: list[InstanceRecord] = []
        kernels: dict[str, dict[str, Any]] = {}
        files = []

        # Oldest first: a server that adopted another's records and was killed in turn
        # wrote the newer copy of the same records (a launcher's latest reconnect secret).
        def written(path: Path) -> float:
            try:
                return path.stat().st_mtime
            except OSError:
                return 0.0

        mine = self._owner(self.path)
        for path in sorted(self.folder.glob("server-*.json"), key=written):
            if self._owner(path) == mine or self._owner_alive(path):
                continue
            claimed = self.folder / f"{mine}.claimed-{uuid.uuid4().hex[:12]}.json"
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another server starting now claimed it first
            found, their_kernels = self._read(claimed)
            records.extend(found)
            kernels.update(their_kernels)
            files.append(claimed)
        newest = {r.id: r for r in records}
        records = sorted(newest.values(), key=lambda r: r.created_at)
        return records, kernels, files

    def held_elsewhere(self) -> Holdings:
        """What the records files of other servers hold: those of live servers, and those
        of servers that are gone that no server has adopted yet (the next one to start
        does). Called by the manager at start, after :meth:`adopt_orphans`, so that its
        pruning deletes only what belongs to no server (see :class:`Holdings`)."""
        while True:
            instances: set[str] = set()
            live: set[str] = set()
            kernels: set[str] = set()
            vanished = False
            for path in self.folder.glob("server-*.json"):
                if self._owner(path) == self._owner(self.path):
                    continue
                try:
                    records, their_kernels = self._parse(path.read_text())
                except FileNotFoundError:
                    vanished = True  # claimed or adopted meanwhile: its records moved
                    continue
                instances.update(r.id for r in records)
                live.update(r.id for r in records if r.is_live)
                kernels.update(r.kernel_id for r in records if r.is_live and r.kernel_id)
                kernels.update(their_kernels)
            if not vanished:
                return Holdings(frozenset(instances), frozenset(live), frozenset(kernels))

    @staticmethod
    def remove(files: list[Path]) -> None:
        for path in files:
            path.unlink(missing_ok=True)

    def save(
        self, records: list[InstanceRecord], kernels: dict[str, dict[str, Any]] | None = None
    ) -> None:
        """Write ``records`` and ``kernels`` (called by the manager after every transition
        and every change of a kernel's placement or session). ``kernels`` maps each
        kernel id the server runs on an instance to what re-creating it under that id
        needs: its kernelspec, working directory, placement, notebook and session."""
        live = [r for r in records if r.is_live]
        ended = [r for r in records if not r.is_live][-self.max_ended :]
        payload = {
            "version": 1,
            "instances": [r.to_json() for r in ended + live],
            "kernels": kernels or {},
        }
        private_dir(self.folder)
        write_private(self.path, json.dumps(payload))
