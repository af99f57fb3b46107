"""The ``slurm`` backend: every instance is a Slurm batch job on a cluster's partition.

Low-cost placements go to a preemptible partition (or QOS): higher-priority work takes
their resources back, as on-premise clusters share GPUs and as cloud Slurm clusters run
whole partitions on spot nodes. Regular placements go to a partition that is not
preempted. The manager calls this backend like any other (see :mod:`.base`); what all
batch schedulers share (running commands, following batch jobs through the queue,
terminate, injected interruptions, taking batch jobs back after a restart) is
:class:`.batch.BatchBackend`'s. Here, what is Slurm's (its job states and the shape of a
Slurm job are in ``slurm_terms.py``):

- :meth:`SlurmBackend.launch` runs ``sbatch`` with an argument list (never a shell string):
  the batch script is ``slurm_job.sh`` beside this module, which ``exec``s
  ``python -m jupyter_lowcost.launcher``. Low-cost Slurm jobs get ``--time`` from the
  lifetime cap. The launcher dials the server back (``server_address``) like on every
  backend.
- A preempted Slurm job gets SIGTERM, then SIGKILL ``KillWait`` seconds later: that
  SIGTERM is the interruption notice. The launcher reports it over its channel at once
  (the environment tells it how long ``KillWait`` is), and the manager asks
  :meth:`SlurmBackend.explain_notice` why it came (preemption, time limit, scancel).
- One polling task reads ``squeue`` for every Slurm job of this server: pending reasons
  become progress messages; a Slurm job that ends on its own is reported as exited, or as
  taken away (``PREEMPTED``, ``TIMEOUT``, ``NODE_FAIL``...), with the reason.
- :meth:`SlurmBackend.interrupt` (the REST API's injection) signals the Slurm job with
  SIGTERM, as a preemption does.
- After a server restart, :meth:`SlurmBackend.forget_orphan` cancels the Slurm jobs the
  previous run left, found by name (``jupyter-lowcost-<instance id>``), so even one
  submitted just before a hard kill is found.

"Job" alone, elsewhere in the package, is a notebook run by ``jupyter lowcost run``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from traitlets import Dict, Float, List, TraitError, Unicode, validate

from .. import env as names
from ..storage.records import InstanceRecord
from .base import BackendError, InstanceType, LaunchSpec
from .batch import BatchBackend, BatchJobStatus
from .slurm_terms import (
    ENDED,
    PENDING_REASONS,
    TAKEN,
    TYPE_KEYS,
    SlurmJobShape,
    memory_gb,
    parse_oneliner,
    sigterm_reason,
    slurm_minutes,
)

__all__ = ["SLURM_JOB_SCRIPT", "SlurmBackend", "SlurmJobShape", "parse_oneliner", "slurm_minutes"]

#: The batch script of every Slurm job: it ``exec``s its arguments (the launcher).
SLURM_JOB_SCRIPT = Path(__file__).with_name("slurm_job.sh")


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
        help="""The partition of low-cost Slurm jobs: one that higher-priority work preempts
        (Slurm ``PreemptType=preempt/partition_prio``, or a partition on spot nodes).
        Per type: ``low_cost_partition`` in ``instance_types``.
        Example: ``c.SlurmBackend.low_cost_partition = "spot"``.
        """,
    )

    regular_partition = Unicode(
        "",
        config=True,
        help="""The partition of regular Slurm jobs; empty (default): the cluster's default
        partition. Per type: ``regular_partition`` in ``instance_types``.
        Example: ``c.SlurmBackend.regular_partition = "ondemand"``.
        """,
    )

    low_cost_qos = Unicode(
        "",
        config=True,
        help="""A QOS for low-cost Slurm jobs (clusters that preempt by QOS,
        ``PreemptType=preempt/qos``); empty: none. Example: ``"preemptible"``.""",
    )

    regular_qos = Unicode("", config=True, help="""A QOS for regular Slurm jobs; empty: none.""")

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
        help="""Extra ``sbatch`` arguments for every Slurm job, one list item per argument (they
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
        help="""Seconds between SIGTERM and SIGKILL of a preempted Slurm job, announced to the
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
        """The notice a preempted Slurm job gets: ``notice_seconds`` or the cluster's KillWait."""
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
            "jobs": len(self._batch_jobs),
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
        SBATCH_/SLURM_ variables of a Slurm job the server itself might run in (they
        would change our Slurm jobs), except SLURM_CONF."""
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

    def slurm_job_shape(self, instance_type: str, low_cost: bool) -> SlurmJobShape:
        """The partition, QOS and resources of ``instance_type``'s Slurm jobs on a tier."""
        shape = self.instance_types.get(instance_type, {})
        tier = "low_cost" if low_cost else "regular"
        default_partition = self.low_cost_partition if low_cost else self.regular_partition
        default_qos = self.low_cost_qos if low_cost else self.regular_qos
        return SlurmJobShape(
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
                partition = self.slurm_job_shape(name, low_cost).partition
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
            shape = self.slurm_job_shape(name, True)
            offered[name] = InstanceType(
                name=itype.name,
                gpu=itype.gpu,
                gpu_count=itype.gpu_count,
                vcpus=shape.cpus or itype.vcpus,
                memory_gb=memory_gb(shape.mem) or itype.memory_gb,
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
        """Refuse a Slurm job for a partition that is not up (Slurm queues the rest)."""
        partition = self.slurm_job_shape(instance_type, low_cost).partition or (
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
        """``sbatch`` the Slurm job script, which ``exec``s the launcher."""
        self.check_type(record.instance_type, record.low_cost)
        shape = self.slurm_job_shape(record.instance_type, record.low_cost)
        argv = [
            "--parsable",
            f"--job-name={self.batch_job_name(record.id)}",
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
        argv += [
            *self.sbatch_args,
            str(SLURM_JOB_SCRIPT),
            spec.python,
            "-m",
            "jupyter_lowcost.launcher",
        ]
        slurm_job_env = self.environment({**spec.env, names.SIGTERM_NOTICE: f"{self.kill_wait:g}"})
        if "SLURM_CONF" in self._env:
            slurm_job_env.setdefault("SLURM_CONF", self._env["SLURM_CONF"])
        out = await self.run("sbatch", *argv, env=slurm_job_env)
        slurm_job_id = out.strip().split(";")[0]
        if not slurm_job_id.isdigit():
            raise BackendError(f"sbatch answered {out.strip()!r}, not a job id", status=500)
        record.backend_state["partition"] = shape.partition
        return slurm_job_id

    def submitted_message(self, record: InstanceRecord) -> str:
        return f"submitted as {self.describe_batch_job(record)}" + _on(
            record.backend_state.get("partition", "")
        )

    def batch_job_queued_message(self, record: InstanceRecord, why: str) -> str:
        partition = record.backend_state.get("partition", "")
        return f"Slurm job {record.backend_state.get('job_id')} is queued{_on(partition)}: {why}"

    def pending_reason(self, reason: str) -> str:
        return PENDING_REASONS.get(reason, reason)

    @property
    def notice_seconds_given(self) -> float:
        return self.kill_wait

    async def cancel_batch_jobs(self, slurm_job_ids: list[str]) -> None:
        # SIGKILL first (a plain scancel sends SIGTERM, which the launcher takes as an
        # interruption notice), then scancel to take the Slurm jobs out of the queue.
        await self.run("scancel", "--full", "--signal=KILL", *slurm_job_ids, check=False)
        await self.run("scancel", *slurm_job_ids, check=False)

    async def signal_batch_job(self, slurm_job_id: str, signal_name: str) -> None:
        await self.run("scancel", "--batch", f"--signal={signal_name}", slurm_job_id, check=False)

    async def batch_jobs_named(self, name: str) -> list[tuple[str, str]]:
        out = await self.run("squeue", "-h", "-n", name, "-o", "%i|%T", check=False)
        rows = [line.split("|", 1) for line in out.splitlines() if "|" in line]
        return [(slurm_job_id, state) for slurm_job_id, state in rows]

    async def queue(
        self, slurm_job_ids: list[str], slurm_job_names: list[str]
    ) -> dict[str, BatchJobStatus]:
        out = await self.run(
            "squeue", "-h", "-t", "all", "-n", ",".join(slurm_job_names), "-o", "%i|%T|%r|%N|%j"
        )
        rows = {}
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) == 5:
                rows[parts[0]] = BatchJobStatus(parts[1].split()[0], parts[2], parts[3])
        return rows

    async def explain_notice(self, record: InstanceRecord) -> tuple[str, bool] | None:
        """Why the launcher got SIGTERM, from the Slurm job's state; ``(reason, expired)``."""
        slurm_job_id = record.backend_state.get("job_id")
        if not slurm_job_id or self.injected(record):
            return None
        out = await self.run("scontrol", "show", "job", "--oneliner", slurm_job_id, check=False)
        return sigterm_reason(slurm_job_id, parse_oneliner(out), self.kill_wait)


def _on(partition: str) -> str:
    return f" on partition {partition}" if partition else ""
