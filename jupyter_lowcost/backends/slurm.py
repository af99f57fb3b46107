"""The ``slurm`` backend: every instance is a Slurm batch job on a cluster's partition.

Low-cost placements go to a preemptible partition (or QOS): higher-priority work takes
their resources back, as on-premise clusters share GPUs and as cloud Slurm clusters run
whole partitions on spot nodes. Regular placements go to a partition that is not
preempted. The manager calls this backend like any other (see :mod:`.base`); here:

- :meth:`SlurmBackend.launch` runs ``sbatch`` with an argument list (never a shell string):
  the batch script is ``slurm_job.sh`` beside this module, which ``exec``s
  ``python -m jupyter_lowcost.launcher``. Low-cost jobs get ``--time`` from the lifetime
  cap. The launcher dials the server back (``server_address``) like on every backend.
- A preempted job gets SIGTERM, then SIGKILL ``KillWait`` seconds later: that SIGTERM is
  the interruption notice. The launcher reports it over its channel at once (the
  environment tells it how long ``KillWait`` is), and the manager asks
  :meth:`SlurmBackend.explain_notice` why it came (preemption, time limit, scancel).
- One polling task reads ``squeue`` for every job of this server: pending reasons become
  progress messages; a job that ends on its own is reported as exited, or as taken
  away (``PREEMPTED``, ``TIMEOUT``, ``NODE_FAIL``...), with the reason.
- :meth:`SlurmBackend.interrupt` (the REST API's injection) signals the job with SIGTERM,
  as a preemption does.
- After a server restart, :meth:`SlurmBackend.forget_orphan` cancels the jobs the previous
  run left, found by job name (``jupyter-lowcost-<instance id>``), so even a job
  submitted just before a hard kill is found.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import Dict, Float, List, Unicode

from .. import env
from ..storage.private import open_private, private_dir
from ..storage.records import InstanceRecord, InstanceState
from .base import Backend, BackendError, InstanceType, LaunchSpec

#: The environment variable that tells the launcher SIGTERM is a notice, and how long.
ENV_SIGTERM_NOTICE = env.SIGTERM_NOTICE

JOB_SCRIPT = Path(__file__).with_name("slurm_job.sh")

COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")

#: Per-type keys of ``SlurmBackend.instance_types``.
TYPE_KEYS = frozenset(
    {
        "low_cost_partition",
        "regular_partition",
        "low_cost_qos",
        "regular_qos",
        "gres",
        "cpus",
        "mem",
        "sbatch_args",
    }
)

#: Job states of a job whose processes are gone.
ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
    "REVOKED",
}

#: Ended states in which the instance was taken away (the recovery policy applies).
TAKEN = {
    "PREEMPTED": "preempted by higher-priority work on the cluster",
    "NODE_FAIL": "its node failed (on a cloud cluster: the spot node was reclaimed)",
    "BOOT_FAIL": "its node failed to boot",
    "TIMEOUT": "it reached its Slurm time limit (--time, the low-cost lifetime cap)",
    "DEADLINE": "it reached its Slurm deadline",
}

#: Pending reasons, as a person reads them.
PENDING_REASONS = {
    "Resources": "waiting for free resources",
    "Priority": "jobs of higher priority are ahead of it",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "ReqNodeNotAvail": "the nodes it needs are not available",
    "BeginTime": "waiting for its start time",
    "None": "being scheduled",
}


@dataclass(frozen=True)
class JobShape:
    """Where and with what one instance type's job runs, on one tier."""

    partition: str
    qos: str
    gres: str
    cpus: int
    mem: str
    extra: tuple[str, ...]

    def sbatch_options(self) -> list[str]:
        options = []
        if self.partition:
            options.append(f"--partition={self.partition}")
        if self.qos:
            options.append(f"--qos={self.qos}")
        if self.gres:
            options.append(f"--gres={self.gres}")
        if self.cpus:
            options.append(f"--cpus-per-task={self.cpus}")
        if self.mem:
            options.append(f"--mem={self.mem}")
        return [*options, *self.extra]


def slurm_minutes(seconds: float) -> int:
    """``--time`` in whole minutes (Slurm's unit), rounded up, at least 1."""
    return max(1, math.ceil(seconds / 60))


def parse_oneliner(text: str) -> dict[str, str]:
    """``Key=Value Key=Value ...`` (``scontrol --oneliner``) as a dict; first key wins."""
    fields: dict[str, str] = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if sep:
            fields.setdefault(key, value)
    return fields


class SlurmBackend(Backend):
    """Instances as Slurm jobs: low-cost on a preemptible partition, regular on another."""

    name = "slurm"
    #: The launcher binds the address through which it reached the server (its node's).
    kernel_ip = "auto"

    low_cost_partition = Unicode(
        "lowcost",
        config=True,
        help="""The partition of low-cost jobs: one that higher-priority work preempts
        (Slurm ``PreemptType=preempt/partition_prio``, or a partition on spot nodes).
        Per type: ``low_cost_partition`` in ``instance_types``.
        Example: ``c.SlurmBackend.low_cost_partition = "spot"``.
        """,
    )

    regular_partition = Unicode(
        "",
        config=True,
        help="""The partition of regular jobs; empty (default): the cluster's default
        partition. Per type: ``regular_partition`` in ``instance_types``.
        Example: ``c.SlurmBackend.regular_partition = "ondemand"``.
        """,
    )

    low_cost_qos = Unicode(
        "",
        config=True,
        help="""A QOS for low-cost jobs (clusters that preempt by QOS,
        ``PreemptType=preempt/qos``); empty: none. Example: ``"preemptible"``.""",
    )

    regular_qos = Unicode("", config=True, help="""A QOS for regular jobs; empty: none.""")

    instance_types = Dict(
        {},
        config=True,
        help="""What each instance type of ``LowCostApp.instance_types`` is on this cluster:
        type name -> dict of ``gres`` (``--gres``, e.g. ``"gpu:a100:1"``), ``cpus``
        (``--cpus-per-task``), ``mem`` (``--mem``, e.g. ``"64G"``), ``low_cost_partition``,
        ``regular_partition``, ``low_cost_qos``, ``regular_qos`` (override the defaults
        above) and ``sbatch_args`` (a list of extra arguments). When set, only these types
        are offered; empty (default): every type of the catalog, on the default
        partitions. Types whose partition the cluster lacks are not offered.
        Example: ``{"A100-80G": {"gres": "gpu:a100:1", "cpus": 12, "mem": "80G"}}``.
        """,
    )

    sbatch_args = List(
        Unicode(),
        [],
        config=True,
        help="""Extra ``sbatch`` arguments for every job, one list item per argument (they
        are never passed through a shell). Example: ``["--account=ml-team"]``.
        """,
    )

    server_address = Unicode(
        "",
        config=True,
        help="""The host name or address that launchers on compute nodes dial to reach this
        server's launch channel (which listens on ``LowCostApp.channel_ip``). Empty
        (default): ``LowCostApp.channel_ip``, or this machine's FQDN when that is
        ``0.0.0.0``. Example: ``c.SlurmBackend.server_address = "login1.cluster"``.
        """,
    )

    commands_dir = Unicode(
        "",
        config=True,
        help="""The folder of Slurm's commands (sbatch, squeue, scontrol, scancel, sinfo);
        empty (default): found on PATH.""",
    )

    poll_interval = Float(
        1.0,
        config=True,
        help="""Seconds between two reads of the queue (``squeue``) for this server's jobs.""",
    )

    notice_seconds = Float(
        0.0,
        config=True,
        help="""Seconds between SIGTERM and SIGKILL of a preempted job, announced to the
        kernel as the notice. 0 (default): the cluster's ``KillWait``.""",
    )

    job_name_prefix = Unicode(
        "jupyter-lowcost",
        config=True,
        help="""Job names are ``<prefix>-<instance id>`` (how a restarted server finds the
        jobs of the run before it).""",
    )

    def __init__(self, listener: Any, **kwargs: Any) -> None:
        super().__init__(listener, **kwargs)
        self._commands: dict[str, str] = {}
        self._env: dict[str, str] = {}  # the server's environment when the backend started
        self._config: dict[str, str] = {}
        self._partitions: dict[str, dict[str, str]] = {}
        self._partitions_read = 0.0
        self._jobs: dict[str, InstanceRecord] = {}  # instance id -> record, jobs in the queue
        self._seen: dict[str, str] = {}  # instance id -> last job state seen
        self._cancelled: set[str] = set()  # jobs this server cancelled
        self._injected: set[str] = set()  # jobs sent SIGTERM by interrupt()
        self._gone: dict[str, asyncio.Event] = {}
        self._poller: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._hurry = 0  # callers waiting for a job to end: poll faster

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._env = self._environment()
        for command in COMMANDS:
            path = (
                os.path.join(self.commands_dir, command)
                if self.commands_dir
                else shutil.which(command)
            )
            if not path or not os.access(path, os.X_OK):
                raise BackendError(
                    f"the slurm backend needs Slurm's {command} command: install Slurm's "
                    "client commands on the server's machine (Debian/Ubuntu: slurm-client) "
                    "or set SlurmBackend.commands_dir",
                    status=500,
                )
            self._commands[command] = path
        self._config = await self._read_config()
        await self._read_partitions()
        for name, shape in self.instance_types.items():
            if not isinstance(shape, dict):
                raise BackendError(
                    f"SlurmBackend.instance_types[{name!r}] must be a dict, not "
                    f"{type(shape).__name__}",
                    status=500,
                )
            unknown = sorted(set(shape) - TYPE_KEYS)
            if unknown:
                raise BackendError(
                    f"SlurmBackend.instance_types[{name!r}] has unknown key(s) "
                    f"{', '.join(unknown)} (known: {', '.join(sorted(TYPE_KEYS))})",
                    status=500,
                )
        self.log.info(
            "jupyter_lowcost | slurm backend: cluster %s, partitions %s, notice (KillWait) %g s",
            self._config.get("ClusterName", "?"),
            ", ".join(self._partitions) or "none",
            self.kill_wait,
        )

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)

    @property
    def kill_wait(self) -> float:
        """The notice a preempted job gets: ``notice_seconds`` or the cluster's KillWait."""
        if self.notice_seconds > 0:
            return self.notice_seconds
        value = self._config.get("KillWait", "30 sec").split()[0]
        try:
            return float(value)
        except ValueError:
            return 30.0

    def capacity(self) -> dict[str, Any]:
        return {
            "cluster": self._config.get("ClusterName", ""),
            "notice_seconds": self.kill_wait,
            "jobs": len(self._jobs),
            "partitions": [
                {
                    "name": name,
                    "state": info.get("State", "?"),
                    "nodes": info.get("TotalNodes", "?"),
                    "cpus": info.get("TotalCPUs", "?"),
                    "max_time": info.get("MaxTime", "?"),
                    "default": info.get("Default") == "YES",
                }
                for name, info in self._partitions.items()
            ],
        }

    # -- commands ------------------------------------------------------------------------

    @staticmethod
    def _environment(base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of Slurm commands (the server's, or ``base``) without the
        SBATCH_/SLURM_ variables of a job the server itself might run in (they would
        change our jobs), except SLURM_CONF."""
        base = dict(os.environ) if base is None else base
        return {
            k: v
            for k, v in base.items()
            if not (k.startswith(("SBATCH_", "SLURM_")) and k != "SLURM_CONF")
        }

    async def _run(
        self, command: str, *args: str, env: dict[str, str] | None = None, check: bool = True
    ) -> str:
        """Run a Slurm command (an argument list, no shell); its stdout."""
        try:
            process = await asyncio.create_subprocess_exec(
                self._commands[command],
                *args,
                env=env or self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as err:
            raise BackendError(f"could not run {command}: {err}", status=500) from err
        out, err = await process.communicate()
        if check and process.returncode:
            message = err.decode(errors="replace").strip() or f"exit code {process.returncode}"
            raise BackendError(f"{command} failed: {message}", status=503, reason="slurm")
        return out.decode(errors="replace")

    async def _read_config(self) -> dict[str, str]:
        text = await self._run("scontrol", "show", "config")
        config = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                config[key.strip()] = value.strip()
        return config

    async def _read_partitions(self) -> None:
        text = await self._run("scontrol", "show", "partition", "--oneliner")
        partitions = {}
        for line in text.splitlines():
            fields = parse_oneliner(line)
            if "PartitionName" in fields:
                partitions[fields["PartitionName"]] = fields
        self._partitions = partitions
        self._partitions_read = time.monotonic()

    def _default_partition(self) -> str | None:
        for name, info in self._partitions.items():
            if info.get("Default") == "YES":
                return name
        return None

    # -- instance types ------------------------------------------------------------------

    def job_shape(self, instance_type: str, low_cost: bool) -> JobShape:
        """The partition, QOS and resources of ``instance_type``'s jobs on a tier."""
        shape = self.instance_types.get(instance_type, {})
        tier = "low_cost" if low_cost else "regular"
        default_partition = self.low_cost_partition if low_cost else self.regular_partition
        default_qos = self.low_cost_qos if low_cost else self.regular_qos
        return JobShape(
            partition=str(shape.get(f"{tier}_partition", default_partition) or ""),
            qos=str(shape.get(f"{tier}_qos", default_qos) or ""),
            gres=str(shape.get("gres", "") or ""),
            cpus=int(shape.get("cpus", 0) or 0),
            mem=str(shape.get("mem", "") or ""),
            extra=tuple(str(a) for a in shape.get("sbatch_args", [])),
        )

    def offered_types(self, catalog: dict[str, InstanceType]) -> dict[str, InstanceType]:
        """The catalog's types this cluster can run: configured (when ``instance_types``
        is set) and with both partitions present. The rest are logged and left out."""
        offered = {}
        for name, itype in catalog.items():
            if self.instance_types and name not in self.instance_types:
                continue
            missing = []
            for low_cost in (True, False):
                partition = self.job_shape(name, low_cost).partition
                if partition and partition not in self._partitions:
                    missing.append(partition)
                if not partition and self._default_partition() is None:
                    missing.append("(no default partition)")
            if missing:
                self.log.warning(
                    "jupyter_lowcost | slurm backend: %s is not offered: cluster %s has no "
                    "partition %s",
                    name,
                    self._config.get("ClusterName", "?"),
                    ", ".join(missing),
                )
                continue
            shape = self.job_shape(name, True)
            offered[name] = InstanceType(
                name=itype.name,
                gpu=itype.gpu,
                gpu_count=itype.gpu_count,
                vcpus=shape.cpus or itype.vcpus,
                memory_gb=_memory_gb(shape.mem) or itype.memory_gb,
                price_regular=itype.price_regular,
                price_low_cost=itype.price_low_cost,
            )
        for name in self.instance_types:
            if name not in catalog:
                self.log.warning(
                    "jupyter_lowcost | slurm backend: %s is configured in "
                    "SlurmBackend.instance_types but has no prices in LowCostApp.instance_types",
                    name,
                )
        if not offered:
            raise BackendError(
                "the slurm backend offers no instance type: no type of LowCostApp.instance_types "
                f"has its partitions on cluster {self._config.get('ClusterName', '?')} "
                f"(partitions there: {', '.join(self._partitions) or 'none'})",
                status=500,
            )
        return offered

    def check_type(self, instance_type: str, low_cost: bool) -> None:
        """Refuse a job for a partition that is not up (Slurm queues the rest)."""
        partition = self.job_shape(instance_type, low_cost).partition or (
            self._default_partition() or ""
        )
        state = self._partitions.get(partition, {}).get("State", "UP")
        if state != "UP":
            raise BackendError(
                f"Slurm partition {partition} is {state.lower()}: no {instance_type} job can "
                "start there now",
                status=503,
                reason="no-capacity",
            )

    # -- instances -----------------------------------------------------------------------

    def job_name(self, instance_id: str) -> str:
        return f"{self.job_name_prefix}-{instance_id}"

    def channel_address(self, host: str, port: int) -> str:
        if self.server_address:
            return f"{self.server_address}:{port}"
        if host in ("0.0.0.0", "", "::"):
            import socket

            return f"{socket.getfqdn()}:{port}"
        return f"{host}:{port}"

    async def launch(self, record: InstanceRecord, spec: LaunchSpec) -> None:
        self.check_type(record.instance_type, record.low_cost)
        shape = self.job_shape(record.instance_type, record.low_cost)
        private_dir(os.path.dirname(spec.log_path))
        # Created here, owner-only: the job appends to it (--open-mode=append) and keeps
        # its mode, whatever the job's umask (which is the user's, for the kernel's files).
        open_private(spec.log_path, "ab").close()
        argv = [
            "--parsable",
            f"--job-name={self.job_name(record.id)}",
            f"--comment=jupyter-lowcost kernel {record.kernel_id}",
            "--no-requeue",  # a preempted kernel is relaunched by the recovery policy
            "--open-mode=append",
            f"--output={spec.log_path}",
            "--export=ALL",
            *shape.sbatch_options(),
        ]
        if spec.time_limit:
            argv.append(f"--time={slurm_minutes(spec.time_limit)}")
        if spec.cwd:
            argv.append(f"--chdir={spec.cwd}")
        argv += [*self.sbatch_args, str(JOB_SCRIPT), spec.python, "-m", "jupyter_lowcost.launcher"]
        env = self._environment({**spec.env, ENV_SIGTERM_NOTICE: f"{self.kill_wait:g}"})
        if "SLURM_CONF" in self._env:
            env.setdefault("SLURM_CONF", self._env["SLURM_CONF"])
        out = await self._run("sbatch", *argv, env=env)
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise BackendError(f"sbatch answered {out.strip()!r}, not a job id", status=500)
        record.backend_state.update(
            job_id=job_id, job_name=self.job_name(record.id), partition=shape.partition
        )
        self._jobs[record.id] = record
        self._gone[record.id] = asyncio.Event()
        self.listener.instance_progress(
            record.id, f"submitted as Slurm job {job_id}" + _on(shape.partition)
        )
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll_forever())
        self._wake.set()

    async def send_signal(self, record: InstanceRecord, signum: int) -> None:
        job_id = record.backend_state.get("job_id")
        if job_id and record.id in self._jobs:
            name = signal.Signals(signum).name.removeprefix("SIG")
            await self._run("scancel", "--batch", f"--signal={name}", job_id, check=False)

    async def terminate(self, record: InstanceRecord, now: bool = False) -> None:
        job_id = record.backend_state.get("job_id")
        if not job_id or record.id not in self._jobs:
            return
        self._cancelled.add(record.id)
        # SIGKILL even when asked politely: the launcher takes SIGTERM as an interruption
        # notice, and jupyter_client asks to terminate only a kernel that did not stop
        # when asked to shut down.
        await self._run("scancel", "--full", "--signal=KILL", job_id, check=False)
        await self._run("scancel", job_id, check=False)
        gone = self._gone.get(record.id)
        if gone is None:
            return
        self._hurry += 1
        self._wake.set()
        try:
            await asyncio.wait_for(gone.wait(), timeout=self.kill_wait + 30)
        except asyncio.TimeoutError:
            self.log.warning(
                "jupyter_lowcost | Slurm job %s is still in the queue %g s after scancel",
                job_id,
                self.kill_wait + 30,
            )
        finally:
            self._hurry -= 1

    async def interrupt(self, record: InstanceRecord, notice_seconds: float, reason: str) -> None:
        """Announce the notice, then SIGTERM the job as a Slurm preemption does."""
        job_id = record.backend_state.get("job_id")
        if record.state != InstanceState.RUNNING or not job_id:
            return
        self._injected.add(record.id)
        self.listener.instance_noticed(record.id, time.time() + notice_seconds, reason)
        await self._run("scancel", "--batch", "--signal=TERM", job_id, check=False)

    async def explain_notice(self, record: InstanceRecord) -> tuple[str, bool] | None:
        """Why the launcher got SIGTERM, from the job's state; ``(reason, expired)``."""
        job_id = record.backend_state.get("job_id")
        if not job_id or record.id in self._injected:
            return None
        out = await self._run("scontrol", "show", "job", "--oneliner", job_id, check=False)
        job = parse_oneliner(out)
        # While its processes are signalled the job shows as COMPLETING; why it ends is in
        # its preemption time and its reason.
        state, reason = job.get("JobState", ""), job.get("Reason", "")
        notice = f"SIGKILL follows in {self.kill_wait:g} s (KillWait)"
        if state == "PREEMPTED" or job.get("PreemptTime", "None") not in ("None", ""):
            return f"Slurm job {job_id} was {TAKEN['PREEMPTED']}; {notice}", False
        if state in ("TIMEOUT", "DEADLINE") or reason in ("TimeLimit", "DeadLine"):
            limit = "DEADLINE" if "DEAD" in (state + reason).upper() else "TIMEOUT"
            return f"Slurm job {job_id}: {TAKEN[limit]}; {notice}", True
        if state in ("NODE_FAIL", "BOOT_FAIL") or reason in ("NodeDown", "NodeFail"):
            return f"Slurm job {job_id}: {TAKEN['NODE_FAIL']}; {notice}", False
        if state in ("CANCELLED", "COMPLETING"):
            return f"Slurm job {job_id} was cancelled outside Jupyter (scancel); {notice}", False
        return f"Slurm job {job_id} received SIGTERM ({state or 'state unknown'}); {notice}", False

    async def _live_jobs(self, record: InstanceRecord) -> list[tuple[str, str]]:
        """(job id, state) of the record's jobs still in the queue, found by name."""
        name = record.backend_state.get("job_name") or self.job_name(record.id)
        out = await self._run("squeue", "-h", "-n", name, "-o", "%i|%T", check=False)
        rows = [line.split("|", 1) for line in out.splitlines() if "|" in line]
        return [(job, state) for job, state in rows if state not in ENDED]

    async def reattach(self, record: InstanceRecord) -> bool:
        """Follow again the job a previous server submitted (found by its name), if it
        runs (a job whose processes are being killed, COMPLETING, is as good as gone)."""
        jobs = [(j, s) for j, s in await self._live_jobs(record) if s in ("RUNNING", "CONFIGURING")]
        if not jobs:
            return False
        job_id, state = jobs[0]
        record.backend_state.update(job_id=job_id, job_name=self.job_name(record.id))
        self._jobs[record.id] = record
        self._seen[record.id] = state
        self._gone[record.id] = asyncio.Event()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll_forever())
        return True

    async def forget_orphan(self, record: InstanceRecord) -> bool:
        """Cancel what is left of a previous run's job (found by its name)."""
        alive = [job_id for job_id, _ in await self._live_jobs(record)]
        if alive:
            await self._run("scancel", "--full", "--signal=KILL", *alive, check=False)
            await self._run("scancel", *alive, check=False)
        return bool(alive)

    # -- the queue -----------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        """Read the queue while this server has jobs in it (``launch`` restarts it)."""
        while self._jobs:
            try:
                await self._poll_once()
                if time.monotonic() - self._partitions_read > 10:
                    await self._read_partitions()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # squeue failing now and then must not stop polling
                self.log.warning("jupyter_lowcost | slurm backend: reading the queue: %s", err)
            self._wake.clear()
            interval = 0.2 if self._hurry else self.poll_interval
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except asyncio.TimeoutError:
                pass

    async def _poll_once(self) -> None:
        if not self._jobs:
            return
        names = ",".join(r.backend_state["job_name"] for r in self._jobs.values())
        out = await self._run("squeue", "-h", "-t", "all", "-n", names, "-o", "%i|%T|%r|%N|%j")
        rows = {}
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) == 5:
                rows[parts[0]] = parts
        for instance_id, record in list(self._jobs.items()):
            job_id = record.backend_state["job_id"]
            row = rows.get(job_id)
            if row is None:
                self._ended(record, "GONE", "the job left the Slurm queue")
                continue
            _, state, reason, node, _ = row
            state = state.split()[0]
            previous = self._seen.get(instance_id)
            self._seen[instance_id] = state
            if state in ENDED:
                self._ended(record, state, reason)
            elif state == "PENDING":
                why = PENDING_REASONS.get(reason, reason)
                self.listener.instance_progress(
                    instance_id,
                    f"Slurm job {job_id} is queued{_on(record.backend_state.get('partition', ''))}: {why}",
                )
            elif state in ("RUNNING", "CONFIGURING") and previous != state:
                record.backend_state["node"] = node
                self.listener.instance_progress(
                    instance_id, f"Slurm job {job_id} runs on node {node}: starting the kernel"
                )

    def _ended(self, record: InstanceRecord, state: str, reason: str) -> None:
        """The job's processes are gone: tell the manager how it ended (once)."""
        instance_id = record.id
        self._jobs.pop(instance_id, None)
        self._seen.pop(instance_id, None)
        self._injected.discard(instance_id)
        cancelled_here = instance_id in self._cancelled
        self._cancelled.discard(instance_id)
        gone = self._gone.pop(instance_id, None)
        if gone is not None:
            gone.set()
        job = f"Slurm job {record.backend_state.get('job_id')}"
        expired = state in ("TIMEOUT", "DEADLINE")
        if state in TAKEN and not cancelled_here:
            self.listener.instance_taken(instance_id, expired, f"{job} ended: {TAKEN[state]}")
        elif record.state == InstanceState.NOTICE and not cancelled_here:
            # Killed at the end of its notice (KillWait), maybe just before the server's
            # own deadline: the interruption that was announced.
            self.listener.instance_taken(instance_id, expired, record.reason)
        elif state == "COMPLETED":
            self.listener.instance_exited(instance_id, 0, f"{job} completed")
        elif state == "CANCELLED" and not cancelled_here:
            self.listener.instance_exited(
                instance_id, None, f"{job} was cancelled outside Jupyter (scancel)"
            )
        else:
            detail = f"{job} ended ({state.lower()}" + (
                f": {reason})" if reason not in ("", "None") else ")"
            )
            self.listener.instance_exited(instance_id, 0 if cancelled_here else None, detail)


def _on(partition: str) -> str:
    return f" on partition {partition}" if partition else ""


def _memory_gb(mem: str) -> float:
    """``--mem`` as GB (``"64G"`` -> 64.0; Slurm's default unit is MB); 0 if unset."""
    if not mem:
        return 0.0
    units = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}
    suffix = mem[-1].upper()
    try:
        if suffix in units:
            return float(mem[:-1]) * units[suffix]
        return float(mem) / 1024
    except ValueError:
        return 0.0
