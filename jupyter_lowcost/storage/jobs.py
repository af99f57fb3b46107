"""Jobs (``jupyter lowcost run``) on disk: what each job is, how far it got, its notebooks
and its log, so that a job outlives the CLI, the browser and the Jupyter server.

One folder per job under the server's data directory (``jobs/<id>/``):

- ``job.json``: the :class:`JobRecord` (state, cells done, the checkpoint after each
  completed cell, instances, interruptions, cost);
- ``input.ipynb``: the notebook as the job runs it (parameters injected);
- ``output.ipynb``: the executed notebook so far (replaced atomically after every cell);
- ``log.txt``: what ``jupyter lowcost logs`` prints (appended).

Written by :class:`~jupyter_lowcost.server.jobs.runner.JobRunner`, read back by
:class:`~jupyter_lowcost.server.jobs.service.Jobs` when the server starts. Stdlib only.
"""

from __future__ import annotations

import enum
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_private
from .private import open_private, private_dir
from .records import iso, tier_name

JOB_ID = re.compile(r"^[0-9a-f]{12}$")


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    RESUMING = "resuming"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass
class JobRecord:
    """One job: what to run, where, and how far it got."""

    id: str
    name: str
    kernel_name: str
    instance_type: str
    low_cost: bool
    parameters: dict[str, Any]
    #: Where (paths of the Jupyter server's contents) the notebook is, which sets the
    #: kernel's working directory, and where the output notebook is also saved.
    path: str | None
    output_path: str | None
    created: float
    state: JobState = JobState.QUEUED
    reason: str = "waiting to start"
    started: float | None = None
    finished: float | None = None
    #: The job's kernel: one id for the job's whole life (its checkpoints live under it).
    kernel_id: str | None = None
    cells_total: int = 0
    #: How many of the code cells have completed (the next one to run is this index).
    cells_done: int = 0
    #: The number (1-based) of the code cell running now, and its first line.
    current_cell: int | None = None
    current_source: str | None = None
    #: The checkpoint taken after each completed cell: id -> cells done at that point.
    checkpoints: dict[str, int] = field(default_factory=dict)
    #: The instances the job ran on: id -> type, tier, cost and savings so far.
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Every interruption: the cell it hit, the instance, why, when.
    interruptions: list[dict[str, Any]] = field(default_factory=list)
    #: The failing cell's error (number, ename, evalue, traceback).
    error: dict[str, Any] | None = None

    @property
    def tier(self) -> str:
        return tier_name(self.low_cost)

    @property
    def cost(self) -> float:
        return sum(float(i.get("cost", 0.0)) for i in self.instances.values())

    @property
    def saved(self) -> float:
        return sum(float(i.get("saved", 0.0)) for i in self.instances.values())

    @property
    def instance_id(self) -> str | None:
        """The instance the job's kernel runs on now (the last one it ran on)."""
        return next(reversed(self.instances), None) if self.instances else None

    def to_model(self) -> dict[str, Any]:
        """The REST API's shape (``GET jobs/<id>``), also the job event's data."""
        now = time.time()
        end = self.finished or now
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "reason": self.reason,
            "kernel_name": self.kernel_name,
            "instance_type": self.instance_type,
            "low_cost": self.low_cost,
            "tier": self.tier,
            "parameters": self.parameters,
            "path": self.path,
            "output_path": self.output_path,
            "created": iso(self.created),
            "started": iso(self.started),
            "finished": iso(self.finished),
            "elapsed_seconds": round(end - self.started, 3) if self.started else 0.0,
            "kernel_id": self.kernel_id,
            "instance_id": self.instance_id,
            "cells_total": self.cells_total,
            "cells_done": self.cells_done,
            "current_cell": self.current_cell,
            "current_source": self.current_source if self.current_cell else None,
            "cost": round(self.cost, 6),
            "saved": round(self.saved, 6),
            "interruptions": [dict(i) for i in self.interruptions],
            "error": dict(self.error) if self.error else None,
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        data = dict(data)
        data["state"] = JobState(data["state"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class JobStore:
    """The folder of every job's files (``<data_dir>/jobs``), private to the server's user."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def folder_of(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise KeyError(job_id)
        return self.folder / job_id

    def create(self, job: JobRecord, notebook: dict[str, Any]) -> None:
        private_dir(self.folder)
        private_dir(self.folder_of(job.id))
        write_private(self.folder_of(job.id) / "input.ipynb", json.dumps(notebook))
        self.save_output(job.id, notebook)
        self.save(job)

    def save(self, job: JobRecord) -> None:
        write_private(self.folder_of(job.id) / "job.json", json.dumps(job.to_json()))

    def save_output(self, job_id: str, notebook: dict[str, Any]) -> None:
        write_private(self.folder_of(job_id) / "output.ipynb", json.dumps(notebook, indent=1))

    def input(self, job_id: str) -> dict[str, Any]:
        return json.loads((self.folder_of(job_id) / "input.ipynb").read_text())

    def output(self, job_id: str) -> dict[str, Any]:
        return json.loads((self.folder_of(job_id) / "output.ipynb").read_text())

    def append_log(self, job_id: str, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with open_private(self.folder_of(job_id) / "log.txt", "ab") as log:
            log.write(f"[{stamp}] {line}\n".encode())

    def read_log(self, job_id: str, offset: int = 0) -> tuple[str, int]:
        """The log from byte ``offset`` on, and the offset after it."""
        path = self.folder_of(job_id) / "log.txt"
        try:
            with open(path, "rb") as log:
                log.seek(max(0, offset))
                data = log.read()
        except FileNotFoundError:
            return "", offset
        return data.decode(errors="replace"), max(0, offset) + len(data)

    def load_all(self) -> list[JobRecord]:
        """Every job a previous server left, oldest first (unreadable ones are skipped)."""
        jobs = []
        if not self.folder.is_dir():
            return jobs
        for path in self.folder.glob("*/job.json"):
            try:
                jobs.append(JobRecord.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(jobs, key=lambda job: job.created)
