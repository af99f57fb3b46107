"""Slurm's terms as the ``slurm`` backend reads them: what its job states and pending
reasons mean, the shape of a Slurm job (the ``sbatch`` options of an instance type on a
tier), and the parsing of ``scontrol``'s answers.

Used by :class:`jupyter_lowcost.backends.slurm.SlurmBackend`; plain data and functions,
no commands run here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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

#: Slurm job states of a Slurm job whose processes are gone.
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
class SlurmJobShape:
    """Where and with what one instance type's Slurm job runs, on one tier."""

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


def memory_gb(mem: str) -> float:
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


def sigterm_reason(
    slurm_job_id: str, slurm_job: dict[str, str], kill_wait: float
) -> tuple[str, bool]:
    """Why a Slurm job's launcher got SIGTERM, from its fields in ``scontrol show job``:
    ``(reason, expired)``, ``expired`` when it is the end of its time limit."""
    # While its processes are signalled the Slurm job shows as COMPLETING; why it ends is
    # in its preemption time and its reason.
    state, reason = slurm_job.get("JobState", ""), slurm_job.get("Reason", "")
    notice = f"SIGKILL follows in {kill_wait:g} s (KillWait)"
    if state == "PREEMPTED" or slurm_job.get("PreemptTime", "None") not in ("None", ""):
        return f"Slurm job {slurm_job_id} was {TAKEN['PREEMPTED']}; {notice}", False
    if state in ("TIMEOUT", "DEADLINE") or reason in ("TimeLimit", "DeadLine"):
        limit = "DEADLINE" if "DEAD" in (state + reason).upper() else "TIMEOUT"
        return f"Slurm job {slurm_job_id}: {TAKEN[limit]}; {notice}", True
    if state in ("NODE_FAIL", "BOOT_FAIL") or reason in ("NodeDown", "NodeFail"):
        return f"Slurm job {slurm_job_id}: {TAKEN['NODE_FAIL']}; {notice}", False
    if state in ("CANCELLED", "COMPLETING"):
        return (
            f"Slurm job {slurm_job_id} was cancelled outside Jupyter (scancel); {notice}",
            False,
        )
    return (
        f"Slurm job {slurm_job_id} received SIGTERM ({state or 'state unknown'}); {notice}",
        False,
    )
