"""Jobs (``jupyter lowcost run``) on disk: what each job is, how far it got, its notebooks
and its log, so that a job outlives the CLI, the browser and the Jupyter server.

One folder per job under the server's data directory (``jobs/<id>/``):

- ``job.json``: the :class:`JobRecord` (state, cells done, the checkpoint after each
  completed cell, instances, interruptions, cost);
- ``input.ipynb``: the notebook as the job runs it (parameters injected);
- ``output.ipynb``: the executed notebook as of its last full write (replaced atomically,
  off the server's event loop, at most about once a second);
- ``cells.jsonl``: what changed since (appended as each cell ends: the cells whose outputs
  changed and the notebook's metadata, one JSON line each), so that a completed cell is
  on disk at once at a cost that does not grow with the notebook; :meth:`JobStore.output`
  applies it to ``output.ipynb``;
- ``log.txt``: what ``jupyter lowcost logs`` prints (appended);
- ``owner/<server>``: the server the job belongs to (one empty file, named as the server's
  records file is, ``server-<pid>-<start ticks>``, see ``storage/records.py``).

A job belongs to the server that made it, as its instances do: another server sharing the
data directory leaves it alone while that server runs, and takes it over (to go on with
it) only once that server is gone, by renaming the owner file to its own name: of servers
starting at once, one rename succeeds, and only that server runs the job.

Written by :class:`~jupyter_lowcost.server.jobs.progress.JobProgress` (for its job's
runner), read back by :class:`~jupyter_lowcost.server.jobs.service.Jobs` when the server
starts. Stdlib only.
"""

from __future__ import annotations

import enum
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_private
from .private import open_private, private_dir
from .records import iso, server_name, server_running, tier_name

JOB_ID = re.compile(r"^[0-9a-f]{12}$")

#: The largest notebook a job takes, in bytes (``POST jobs`` and the CLI refuse more); a
#: job's notebook can be large (its outputs are cleared, but not its attachments).
MAX_JOB_BYTES = 64 * 1024 * 1024

#: The folder (in a job's folder) whose one file names the server the job belongs to.
OWNER = "owner"


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


#: The journal of a job's output notebook (in its folder).
JOURNAL = "cells.jsonl"


def apply_change(notebook: dict[str, Any], change: Any) -> None:
    """Apply one journal line (``{"cells": {position: cell}, "metadata": ...}``) to the
    notebook; what does not fit it (a position out of range, not a dict) is ignored."""
    if not isinstance(change, dict):
        return
    cells = notebook.get("cells")
    for key, cell in (change.get("cells") or {}).items():
        if isinstance(cells, list) and str(key).isdigit() and int(key) < len(cells):
            if isinstance(cell, dict):
                cells[int(key)] = cell
    if isinstance(change.get("metadata"), dict):
        notebook["metadata"] = change["metadata"]


class JobStore:
    """The folder of every job's files (``<data_dir>/jobs``), private to the server's user.

    ``owner``: the server this store writes for (this process, by default; see
    :func:`~.records.server_name`)."""

    def __init__(self, folder: Path, owner: str | None = None) -> None:
        self.folder = folder
        self.owner = owner or server_name()

    def folder_of(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise KeyError(job_id)
        return self.folder / job_id

    def create(self, job: JobRecord, notebook: dict[str, Any]) -> None:
        """A new job of this server (``job.json`` comes last: a server that lists the jobs
        meanwhile sees the job whole, with its owner, or not at all)."""
        private_dir(self.folder)
        private_dir(self.folder_of(job.id))
        if not self._give_owner(job.id):
            raise FileExistsError(f"job {job.id} exists already")
        write_private(self.folder_of(job.id) / "input.ipynb", json.dumps(notebook))
        self.save_output(job.id, notebook)
        self.save(job)

    def save(self, job: JobRecord) -> None:
        write_private(self.folder_of(job.id) / "job.json", json.dumps(job.to_json()))

    def save_output(self, job_id: str, notebook: dict[str, Any]) -> bytes:
        """Write the whole output notebook (what :meth:`output` reads back, with the
        changes journalled after this write); returns the bytes written. Called when the
        job is made; the runner's writer thread (``server/jobs/output.py``) encodes it
        itself, a cell at a time, and calls :meth:`write_output`."""
        data = json.dumps(notebook, indent=1, ensure_ascii=False).encode()
        self.write_output(job_id, data)
        return data

    def write_output(self, job_id: str, data: bytes) -> None:
        """Replace the whole output notebook with ``data`` (its JSON), atomically."""
        write_private(self.folder_of(job_id) / "output.ipynb", data)

    def input(self, job_id: str) -> dict[str, Any]:
        return json.loads((self.folder_of(job_id) / "input.ipynb").read_text())

    def output(self, job_id: str) -> dict[str, Any]:
        """The output notebook as the job left it: its last full write, with the changes
        journalled since applied in order (a line cut short by a crash is skipped)."""
        folder = self.folder_of(job_id)
        notebook = json.loads((folder / "output.ipynb").read_text())
        try:
            with open(folder / JOURNAL, "rb") as journal:
                lines = journal.read().splitlines()
        except FileNotFoundError:
            return notebook
        for line in lines:
            try:
                change = json.loads(line)
            except ValueError:
                continue
            apply_change(notebook, change)
        return notebook

    @staticmethod
    def change_line(cells: dict[int, Any], metadata: dict[str, Any] | None) -> bytes:
        """One journal line: cells (by position) and the notebook's metadata."""
        change = {"cells": {str(k): v for k, v in cells.items()}, "metadata": metadata}
        return json.dumps(change, ensure_ascii=False).encode() + b"\n"

    def append_change(self, job_id: str, line: bytes) -> None:
        """Journal one change (a :meth:`change_line`) after the last full write."""
        with open_private(self.folder_of(job_id) / JOURNAL, "ab") as journal:
            journal.write(line)

    def rewrite_changes(self, job_id: str, lines: list[bytes]) -> None:
        """The journal holds only ``lines`` now (the changes the last full write did
        not include); replaced atomically: a crash meanwhile leaves the old one, whose
        changes apply again over the full write, in the same order, to the same end."""
        path = self.folder_of(job_id) / JOURNAL
        if lines:
            write_private(path, b"".join(lines))
        else:
            path.unlink(missing_ok=True)

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
        """This server's jobs, oldest first: those it made, and those it takes over now
        from servers that are gone (see :meth:`claim`); the jobs of servers still running
        stay theirs. Unreadable ones are skipped. Called once, by a server that starts."""
        return [job for job, mine in self._read_all(claim=True) if mine]

    def kernels_elsewhere(self) -> set[str]:
        """The kernels of the unfinished jobs of servers still running (their checkpoints
        must stay). Called at start, after :meth:`load_all`."""
        return {
            job.kernel_id
            for job, mine in self._read_all(claim=False)
            if not mine and job.kernel_id and not job.state.is_final
        }

    def _read_all(self, claim: bool) -> list[tuple[JobRecord, bool]]:
        """Every readable job, oldest first, and whether it is this server's (``claim``:
        taken over from a server that is gone; else only read)."""
        found = []
        if not self.folder.is_dir():
            return found
        for path in self.folder.glob("*/job.json"):
            try:
                job = JobRecord.from_json(json.loads(path.read_text()))
                if job.id != path.parent.name:
                    continue
                mine = self.claim(job.id) if claim else self.owner_of(job.id) == self.owner
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found.append((job, mine))
        return sorted(found, key=lambda item: item[0].created)

    def owner_of(self, job_id: str) -> str | None:
        """The server the job belongs to (None: a job from before jobs had owners)."""
        names = self._owner_names(job_id)
        if names is None:
            return None
        live = [name for name in names if server_running(name)]
        return (live or names or [None])[0]

    def claim(self, job_id: str) -> bool:
        """True when the job is this server's: made by it, or taken over now from a server
        that is gone (its owner file renamed to this server's name: atomic, so of servers
        starting at once exactly one takes it). False while a running server holds it."""
        owners = self.folder_of(job_id) / OWNER
        for _ in range(100):
            names = self._owner_names(job_id)
            if names is None:  # a job from before owners: given one, as a new job is
                if self._give_owner(job_id):
                    return True
                continue  # (another server gave it one first: read it)
            if self.owner in names:
                return True
            if any(server_running(name) for name in names):
                return False
            if not names:
                continue  # (read while another server renamed it: read again)
            try:
                os.rename(owners / names[0], owners / self.owner)
            except FileNotFoundError:
                continue  # another server took it first: read who
            return True
        return False

    def _owner_names(self, job_id: str) -> list[str] | None:
        try:
            return os.listdir(self.folder_of(job_id) / OWNER)
        except FileNotFoundError:
            return None

    def _give_owner(self, job_id: str) -> bool:
        """Make this server the owner of a job that has none; False if it has one (the
        owner folder is made whole beside, then renamed into place: a folder of that name
        already there, never empty, refuses the rename)."""
        folder = self.folder_of(job_id)
        making = private_dir(folder / f".{OWNER}-{uuid.uuid4().hex[:12]}")
        try:
            with open_private(making / self.owner, "wb"):
                pass
            os.rename(making, folder / OWNER)
        except OSError:
            shutil.rmtree(making, ignore_errors=True)
            if self._owner_names(job_id) is None:
                raise
            return False
        return True
