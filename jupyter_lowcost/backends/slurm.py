"""The ``slurm`` backend: every instance is a Slurm batch job on a cluster's partition.

Low-cost placements go to a preemptible partition (or QOS): higher-priority work takes
their resources back, as on-premise clusters share GPUs and as cloud Slurm clusters run
whole partitions on spot nodes. Regular placements go to a partition that is not
preempted. The manager calls this backend like any other (see :mod:`.base`); what all
batch schedulers share (running commands, following jobs through the queue, terminate,
injected interruptions, taking jobs back after a restart) is :class:`.batch.BatchBackend`'s.
Here, what is Slurm's:

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

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import Dict, Float, List, TraitError, Unicode, validate

from .. import env as names
from ..storage.records import InstanceRecord
from .base import BackendError, InstanceType, LaunchSpec
from .batch import BatchBackend, JobStatus

JOB_SCRIPT = Path(__file__).with_name("slurm_job.sh")

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


class SlurmBackend(BatchBackend):
    """Instances as Slurm jobs: low-cost on a preemptible partition, regular on another."""

    name = "slurm"
    scheduler = "Slurm"
    cancel_command = "scancel"
    commands = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
    install_hint = (
        "install Slurm's client commands on the server's machine (Debian/Ubuntu: "
        "slurm-client) or set SlurmBackend.commands_dir"
    )
    ended_states = frozenset(ENDED)
    running_states = frozenset({"RUNNING", "CONFIGURING"})
    taken_states = TAKEN
    expired_states = frozenset({"TIMEOUT", "DEADLINE"})
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

    notice_seconds = Float(
        0.0,
        config=True,
        help="""Seconds between SIGTERM and SIGKILL of a preempted job, announced to the
        kernel as the notice. 0 (default): the cluster's ``KillWait``.""",
    )

    def __init__(self, listener: Any, **kwargs: Any) -> None:
        super().__init__(listener, **kwargs)
        self._config: dict[str, str] = {}
        self._partitions: dict[str, dict[str, str]] = {}
        self._partitions_read = 0.0

    @validate("instance_types")
    def _check_types(self, proposal: dict[str, Any]) -> dict[str, Any]:
        """A wrong per-type setting fails when it is set (a config file: at the server's
        start), naming it."""
        for name, shape in proposal["value"].items():
            if not isinstance(shape, dict):
                raise TraitError(
                    f"SlurmBackend.instance_types[{name!r}] must be a dict, not "
                    f"{type(shape).__name__}"
                )
            unknown = sorted(set(shape) - TYPE_KEYS)
            if unknown:
                raise TraitError(
                    f"SlurmBackend.instance_types[{name!r}] has unknown key(s) "
                    f"{', '.join(unknown)} (known: {', '.join(sorted(TYPE_KEYS))})"
                )
        return proposal["value"]

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        self._config = await self._read_config()
        await self._read_partitions()
        self.log.info(
            "jupyter_lowcost | slurm backend: cluster %s, partitions %s, notice (KillWait) %g s",
            self._config.get("ClusterName", "?"),
            ", ".join(self._partitions) or "none",
            self.kill_wait,
        )

    async def after_poll(self) -> None:
        if time.monotonic() - self._partitions_read > 10:
            await self._read_partitions()

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

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of Slurm commands (the server's, or ``base``) without the
        SBATCH_/SLURM_ variables of a job the server itself might run in (they would
        change our jobs), except SLURM_CONF."""
        base = dict(os.environ) if base is None else base
        return {
            k: v
            for k, v in base.items()
            if not (k.startswith(("SBATCH_", "SLURM_")) and k != "SLURM_CONF")
        }

    async def _read_config(self) -> dict[str, str]:
        text = await self.run("scontrol", "show", "config")
        config = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                config[key.strip()] = value.strip()
        return config

    async def _read_partitions(self) -> None:
        text = await self.run("scontrol", "show", "partition", "--oneliner")
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

    def channel_address(self, host: str, port: int) -> str:
        if self.server_address:
            return f"{self.server_address}:{port}"
        if host in ("0.0.0.0", "", "::"):
            import socket

            return f"{socket.getfqdn()}:{port}"
        return f"{host}:{port}"

    async def submit(self, record: InstanceRecord, spec: LaunchSpec) -> str:
        """``sbatch`` the job script, which ``exec``s the launcher."""
        self.check_type(record.instance_type, record.low_cost)
        shape = self.job_shape(record.instance_type, record.low_cost)
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
        job_env = self.environment({**spec.env, names.SIGTERM_NOTICE: f"{self.kill_wait:g}"})
        if "SLURM_CONF" in self._env:
            job_env.setdefault("SLURM_CONF", self._env["SLURM_CONF"])
        out = await self.run("sbatch", *argv, env=job_env)
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise BackendError(f"sbatch answered {out.strip()!r}, not a job id", status=500)
        record.backend_state["partition"] = shape.partition
        return job_id

    def submitted_message(self, record: InstanceRecord) -> str:
        return f"submitted as {self.describe_job(record)}" + _on(
            record.backend_state.get("partition", "")
        )

    def job_queued_message(self, record: InstanceRecord, why: str) -> str:
        partition = record.backend_state.get("partition", "")
        return f"Slurm job {record.backend_state.get('job_id')} is queued{_on(partition)}: {why}"

    def pending_reason(self, reason: str) -> str:
        return PENDING_REASONS.get(reason, reason)

    @property
    def notice_seconds_given(self) -> float:
        return self.kill_wait

    async def cancel_jobs(self, job_ids: list[str]) -> None:
        # SIGKILL first (a plain scancel sends SIGTERM, which the launcher takes as an
        # interruption notice), then scancel to take the jobs out of the queue.
        await self.run("scancel", "--full", "--signal=KILL", *job_ids, check=False)
        await self.run("scancel", *job_ids, check=False)

    async def signal_job(self, job_id: str, signal_name: str) -> None:
        await self.run("scancel", "--batch", f"--signal={signal_name}", job_id, check=False)

    async def jobs_named(self, name: str) -> list[tuple[str, str]]:
        out = await self.run("squeue", "-h", "-n", name, "-o", "%i|%T", check=False)
        rows = [line.split("|", 1) for line in out.splitlines() if "|" in line]
        return [(job, state) for job, state in rows]

    async def queue(self, job_ids: list[str], names: list[str]) -> dict[str, JobStatus]:
        out = await self.run(
            "squeue", "-h", "-t", "all", "-n", ",".join(names), "-o", "%i|%T|%r|%N|%j"
        )
        rows = {}
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) == 5:
                rows[parts[0]] = JobStatus(parts[1].split()[0], parts[2], parts[3])
        return rows

    async def explain_notice(self, record: InstanceRecord) -> tuple[str, bool] | None:
        """Why the launcher got SIGTERM, from the job's state; ``(reason, expired)``."""
        job_id = record.backend_state.get("job_id")
        if not job_id or self.injected(record):
            return None
        out = await self.run("scontrol", "show", "job", "--oneliner", job_id, check=False)
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
