"""The manager's entries: what it knows, in three small types (the instances' states
themselves are ``storage/records.py``'s ``InstanceState``).

- :class:`Settings`: the configuration, fixed at start (``LowCostApp`` builds it);
- :class:`KernelEntry`: one per kernel with a placement (or in the middle of getting one);
- :class:`InstanceEntry`: one per instance record, live or ended, with the timers and
  waits that go with a live one.

The :class:`~.ledger.Ledger` holds the entries; every collaborator of the manager reads
and writes them through it. Nothing here does I/O.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...storage.records import InstanceRecord, Placement

RECOVERY_POLICIES = ("relaunch", "fallback", "none")


@dataclass(frozen=True)
class Settings:
    """The manager's configuration: ``LowCostApp``'s traits (their help says what each
    means, and their defaults), in seconds and paths. Built once by the app."""

    data_dir: Path
    checkpoint_dir: Path
    lifetime_cap: float
    cap_notice: float
    recovery_policy: str
    fallback_after: int
    launch_timeout: float
    max_notice: float
    channel_ip: str
    channel_port: int
    checkpoints: str
    demo: bool
    orphaned_checkpoints_seconds: float
    orphan_timeout: float
    reattach_timeout: float
    cloud_notices: str = "auto"
    cloud_metadata_url: str = ""
    azure_acknowledge: bool = False

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def channels_dir(self) -> Path:
        return self.data_dir / "channels"


@dataclass
class KernelEntry:
    """One kernel the manager places (created by a start, a switch, or a restarted
    server taking the kernel back; dropped when the kernel is shut down for good)."""

    kernel_id: str
    #: Where the kernel runs (None: on the server's machine, after a failed first move).
    placement: Placement | None = None
    #: The id of its latest instance (live or not).
    instance_id: str | None = None
    #: The notebook path it was started for.
    notebook: str | None = None
    #: What re-creating it under its id after a server restart needs (kernelspec, working
    #: directory, session); None until it first launched on an instance.
    restart_info: dict[str, Any] | None = None
    #: Its next start restores its checkpoint (a move or a recovery).
    resume: bool = False
    #: Why its next instance starts (the pending event's reason).
    launch_reason: str | None = None
    #: Its next launch waits for room as long as it takes (a recovery).
    recovering: bool = False
    #: The pending record made while its recovery waited for room (the launch goes on
    #: with it).
    prepared: InstanceRecord | None = None
    #: Stopped by the server, not by its user: its checkpoints stay.
    keep_checkpoints: bool = False
    #: Its last restore, and its checkpoints' last status report (``GET kernels/<id>``).
    restored: dict[str, Any] | None = None
    checkpoint_status: dict[str, Any] | None = None
    #: What is under way (a move, a recovery), oldest first; one runs at a time (``lock``).
    busy: list[str] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The instance a previous server ran it on, taken back at its first launch here.
    adopting: InstanceRecord | None = None
    #: The job it runs cells for (``server/jobs``); its checkpoints then stay until the
    #: job ends, and a resume restores ``restore_checkpoint`` (the state after the job's
    #: last completed cell) rather than the latest.
    job_id: str | None = None
    restore_checkpoint: str | None = None
    #: Set for the job's runner (``JobKernels.end_job_kernel``) once the job has ended or
    #: is ending, before the kernel is shut down: no recovery relaunches it from then on.
    job_ended: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class InstanceEntry:
    """One instance record, and what the manager runs for it while it lives."""

    record: InstanceRecord
    #: Fires ``cap_notice`` before the lifetime cap.
    cap_timer: asyncio.TimerHandle | None = None
    #: Ends the instance at its notice's deadline (or now, when it was taken).
    deadline: asyncio.Task[None] | None = None
    #: Set once the record is final (``wait()``).
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    #: When the server ends it under a provider's notice, if it is still there: the
    #: provider's deadline, and at least PROVIDER_GRACE after the notice came (the provider
    #: takes the instance itself; a deadline already past leaves the kernel time for its
    #: notice checkpoint). None: at the notice's deadline.
    take_at: float | None = None
    #: Its notice is its lifetime's end (it ends ``expired``).
    expiring: bool = False
    #: The exit code its process or job reported.
    returncode: int | None = None
    #: Why the server is stopping it (set before the stop, read when it exits).
    stop_reason: str | None = None
    #: Resolved when its launcher reconnects to a restarted server.
    coming_back: asyncio.Future[dict[str, Any]] | None = None
