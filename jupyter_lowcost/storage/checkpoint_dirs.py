"""Every kernel's checkpoint directory under one root: list them, find one, prune old ones.

The server keeps each kernel's checkpoints in ``<root>/<kernel id>/`` (see
:mod:`jupyter_lowcost.storage.checkpoints`). A kernel that no server knows any more (its server
was killed, say) leaves its directory behind: ``%lowcost checkpoints --all`` lists them
(:func:`list_checkpoints`), ``%lowcost restore <kernel>`` takes one (:func:`find`), and the
server deletes those whose newest checkpoint is older than
``LowCostApp.orphaned_checkpoints_days`` when it starts (:func:`prune`). Stdlib only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CheckpointDirectory:
    """What one kernel's checkpoint directory holds, as a listing shows it."""

    kernel_id: str
    path: Path
    #: The newest complete checkpoint's id (None: the directory has none).
    latest: str | None
    notebook: str | None
    taken_at: float | None
    variables: int

    def disk_size(self) -> int:
        """Bytes on disk, every checkpoint of the directory together (walks it: listings
        only)."""
        total = 0
        for folder, _, files in os.walk(self.path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except OSError:
                    pass
        return total

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the newest checkpoint was taken."""
        if self.taken_at is None:
            return None
        return max(0.0, (now or time.time()) - self.taken_at)


def checkpoint_ids(manifests: Path) -> list[str]:
    """The ids of the complete checkpoints (their manifest is written) of the ``manifests``
    folder of a kernel's directory, oldest first. Read by the store (``manifests.py``),
    these listings, and a job's runner (``server/instances/job_kernels.py``)."""
    return sorted((p.stem for p in manifests.glob("*.json") if p.stem.isdigit()), key=int)


def read(directory: Path) -> CheckpointDirectory:
    """The listing entry of one kernel's directory (its newest readable manifest)."""
    for checkpoint in reversed(checkpoint_ids(directory / "manifests")):
        path = directory / "manifests" / f"{checkpoint}.json"
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return CheckpointDirectory(
            kernel_id=directory.name,
            path=directory,
            latest=path.stem,
            notebook=manifest.get("notebook") or None,
            taken_at=float(manifest.get("taken_at") or 0) or None,
            variables=manifest.get("count", len(manifest.get("variables") or {})),
        )
    return CheckpointDirectory(directory.name, directory, None, None, None, 0)


def list_checkpoints(root: str | os.PathLike[str]) -> list[CheckpointDirectory]:
    """Every kernel directory under ``root`` that holds a checkpoint, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [read(d) for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    found = [f for f in found if f.latest is not None]
    return sorted(found, key=lambda f: f.taken_at or 0, reverse=True)


def find(root: str | os.PathLike[str], kernel: str) -> CheckpointDirectory:
    """The directory of the kernel whose id is or starts with ``kernel`` (as listings show
    ids: their first 8 characters). ``LookupError`` names what is wrong."""
    if not kernel or "/" in kernel or kernel.startswith("."):
        raise LookupError(f"{kernel!r} is not a kernel id")
    matches = [f for f in list_checkpoints(root) if f.kernel_id.startswith(kernel)]
    if not matches:
        raise LookupError(
            f"no checkpoints of a kernel {kernel!r}; %lowcost checkpoints --all lists them"
        )
    if len(matches) > 1:
        raise LookupError(
            f"{kernel!r} is the start of several kernel ids "
            f"({', '.join(m.kernel_id[:12] for m in matches)}); give more of it"
        )
    return matches[0]


def prune(root: str | os.PathLike[str], older_than: float, keep: set[str]) -> list[str]:
    """Delete the directories whose newest checkpoint (or, without one, the directory
    itself) is older than ``older_than`` seconds, except the kernels in ``keep``; returns
    the kernel ids deleted. Called by the server at start."""
    root = Path(root)
    if older_than <= 0 or not root.is_dir():
        return []
    now = time.time()
    deleted = []
    for directory in root.iterdir():
        if not directory.is_dir() or directory.name in keep:
            continue
        entry = read(directory)
        try:
            newest = entry.taken_at or directory.stat().st_mtime
        except OSError:
            continue
        if now - newest > older_than:
            shutil.rmtree(directory, ignore_errors=True)
            deleted.append(directory.name)
    return deleted
