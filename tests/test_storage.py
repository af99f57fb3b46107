"""What the server and kernels keep on disk: owner-only, safe when the disk is full, and
reachable after their kernel is gone (orphaned checkpoints)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    EventRecorder,
    checkpointed,
    execute,
    moved,
    settled,
    start_lowcost_kernel,
    wait_until,
)

from jupyter_lowcost.server.events import CHECKPOINT_STATUS_SCHEMA_ID
from jupyter_lowcost.storage.checkpoints import CheckpointStore


def modes(root: Path) -> dict[str, str]:
    """Path (relative to ``root``) -> its permission bits, for every entry under it."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


async def test_checkpoints_records_and_logs_are_owner_only(
    api: Any, jp_serverapp: Any, jp_data_dir: Path
) -> None:
    """A local user read the instance ids in log file names (0755 directories), and the
    variables in checkpoints (0644 files)."""
    os.umask(0o022)  # the usual umask: what the files would get without care
    body = await start_lowcost_kernel(api, "T4")
    await execute(jp_serverapp, body["kernel"]["id"], "secret = 'hunter2'\n")
    root = jp_data_dir / "lowcost"
    await wait_until(lambda: list((root / "checkpoints").glob("*/manifests/*.json")))
    found = modes(root)
    assert any(p.startswith("logs/") for p in found)
    assert any(p.startswith("server-") for p in found)
    assert any("/chunks/" in p for p in found)
    loose = {p: m for p, m in found.items() if m not in ("0o700", "0o600")}
    assert loose == {}
    assert oct(stat.S_IMODE(root.stat().st_mode)) == "0o700"
    assert all(m == "0o700" for p, m in found.items() if (root / p).is_dir()), found


@pytest.fixture
def jp_data_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """The server's data directory (records, logs, checkpoints); a small filesystem of its
    own for the tests marked ``small_disk``."""
    path = tmp_path / "data"
    path.mkdir()
    if request.node.get_closest_marker("small_disk") is None:
        yield path
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert mounted.returncode == 0, (
        "this test fills a filesystem of its own: it mounts a 64 MB tmpfs, which needs root "
        f"(or CAP_SYS_ADMIN): {mounted.stderr.strip()}"
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int) -> Path:
    """Fill the filesystem of ``path`` until ``leave`` bytes are free; the filler file."""
    filler = path / "filler"
    free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    with open(filler, "wb") as handle:
        handle.truncate(0)
        block = b"\0" * (1 << 20)
        handle.writelines(block for _ in range(max(0, (free - leave) // len(block))))
    return filler


def fill_more(path: Path) -> Path:
    """Take the last free bytes of the filesystem of ``path``; the file that holds them."""
    last = path / "last-bytes"
    fd = os.open(last, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)
    return last


@pytest.fixture
def checkpoint_events(jp_serverapp: Any) -> EventRecorder:
    recorder = EventRecorder()
    jp_serverapp.event_logger.add_listener(
        schema_id=CHECKPOINT_STATUS_SCHEMA_ID, listener=recorder.listener
    )
    return recorder


@pytest.mark.small_disk
@pytest.mark.timeout(300)
async def test_a_full_disk_fails_a_checkpoint_cleanly_and_the_server_keeps_working(
    api: Any,
    jp_serverapp: Any,
    jp_data_dir: Path,
    instance_events: EventRecorder,
    checkpoint_events: EventRecorder,
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    await execute(jp_serverapp, kernel_id, "import numpy as np\nkept = np.ones(1 << 20)\n")
    store = jp_data_dir / "lowcost" / "checkpoints" / kernel_id
    await checkpointed(jp_serverapp, kernel_id)  # (written in the background)
    saved = sorted(p.name for p in (store / "manifests").iterdir())
    filler = fill(jp_data_dir, leave=6 << 20)
    free_before = os.statvfs(jp_data_dir).f_bavail

    # 32 MB more do not fit: the checkpoint fails, leaves nothing, keeps the previous one.
    # (It is written after the cell's reply; the server hears of the failure.)
    await execute(jp_serverapp, kernel_id, "lost = np.ones(4 << 20)\n")
    event = await checkpoint_events.wait_for(kernel_id=kernel_id, ok=False)
    assert "No space left on device" in event["message"]
    assert f"resumes from checkpoint {saved[-1].removesuffix('.json')}" in event["message"]
    assert sorted(p.name for p in (store / "manifests").iterdir()) == saved
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")]
    assert os.statvfs(jp_data_dir).f_bavail == free_before  # its partial chunks are gone
    _, model = await api("GET", f"kernels/{kernel_id}")
    assert model["checkpoint_status"]["ok"] is False
    status_text = await execute(jp_serverapp, kernel_id, "%lowcost")
    assert "Checkpoints are failing" in status_text and "No space left" in status_text
    # (that cell's own checkpoint fails too: once it has, and has deleted what it wrote,
    # the disk stays full)
    await settled(jp_serverapp, kernel_id)

    # The disk is full to the last byte now: the records cannot be saved, and still the
    # REST API, the notice's deadline and its events work.
    last = fill_more(jp_data_dir)
    status, answer = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 1})
    assert status == 202, answer
    await instance_events.wait_for(instance_id=first, state="interrupted", timeout=30)
    running = await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first
    )
    await wait_until(lambda: moved(api, kernel_id), timeout=60)
    # (the records on disk could not follow: they still say "running")
    (records,) = (jp_data_dir / "lowcost").glob("server-*.json")
    on_disk = {r["id"]: r["state"] for r in json.loads(records.read_text())["instances"]}
    assert on_disk[first] == "running"
    out = await execute(jp_serverapp, kernel_id, "print(int(kept.sum()), 'lost' in globals())")
    assert out.startswith(f"{1 << 20} False\n")  # (and, still full: checkpoint failed)
    status, answer = await api("PUT", f"kernels/{kernel_id}", {"low_cost": False})
    assert status == 200, answer
    _, instances = await api("GET", "instances")
    live = [i for i in instances if i["state"] in ("pending", "running", "notice")]
    assert [i["tier"] for i in live] == ["regular"], instances
    assert running["instance_id"] != live[0]["id"]
    status, answer = await api("POST", "kernels", {"instance_type": "T4", "low_cost": True})
    assert status == 201, answer

    # Room again: the next checkpoint works, and says so.
    filler.unlink()
    last.unlink()
    await execute(jp_serverapp, kernel_id, "again = 1\n")
    await checkpoint_events.wait_for(kernel_id=kernel_id, ok=True)
    _, model = await api("GET", f"kernels/{kernel_id}")
    assert model["checkpoint_status"]["ok"] is True


async def test_a_fresh_kernel_has_nothing_to_restore(api: Any, jp_serverapp: Any) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id = body["kernel"]["id"]
    await execute(jp_serverapp, kernel_id, "print('first cell')")
    out = await execute(jp_serverapp, kernel_id, "%lowcost restore")
    assert out.startswith("Nothing to restore: this kernel has no checkpoint with variables")
    assert "%lowcost checkpoints --all" in out


def orphan(
    root: Path, notebook: str, taken_days_ago: float, kernel_id: str = "", **variables: Any
) -> str:
    """The checkpoint directory a kernel leaves behind when its server is killed."""
    kernel_id = kernel_id or str(uuid.uuid4())
    store = CheckpointStore(root / kernel_id)
    report = store.save(variables, kernel_id, notebook=notebook)
    store.close()
    manifest = root / kernel_id / "manifests" / f"{report.checkpoint_id}.json"
    data = json.loads(manifest.read_text())
    data["taken_at"] = time.time() - taken_days_ago * 86400
    manifest.write_text(json.dumps(data))
    return kernel_id


@pytest.mark.lowcost(LowCostApp={"orphaned_checkpoints_days": 7})
async def test_orphaned_checkpoints_are_listed_restored_and_pruned(
    api: Any, jp_serverapp: Any, jp_data_dir: Path
) -> None:
    root = jp_data_dir / "lowcost" / "checkpoints"
    recent = orphan(root, "work/analysis.ipynb", 0.1, weights=np.arange(5), epoch=12)
    old = orphan(root, "old/draft.ipynb", 30, x=1)
    # The server's first start prunes: older than 7 days goes, the recent one stays.
    status, _ = await api("GET", "status")
    assert status == 200
    assert not (root / old).exists() and (root / recent).exists()

    body = await start_lowcost_kernel(api, "T4")
    kernel_id = body["kernel"]["id"]
    await execute(jp_serverapp, kernel_id, "mine = 'here'\n")
    listing = await execute(jp_serverapp, kernel_id, "%lowcost checkpoints --all")
    rows = {line.split()[0]: line for line in listing.splitlines()[1:-1]}
    assert set(rows) == {recent[:8], kernel_id[:8]}, listing
    assert "work/analysis.ipynb" in rows[recent[:8]]
    assert "no server runs" in rows[recent[:8]] and "2 h" in rows[recent[:8]]
    assert "this kernel" in rows[kernel_id[:8]]
    assert " kB " in rows[recent[:8]] or " B " in rows[recent[:8]]

    out = await execute(
        jp_serverapp,
        kernel_id,
        f"%lowcost restore {recent[:8]}\nprint(weights.tolist(), epoch, mine)",
    )
    assert out.startswith(f"Restored checkpoint {recent[:8]}/00000001: 2 variables")
    assert out.endswith("[0, 1, 2, 3, 4] 12 here\n")
    missing = await execute(jp_serverapp, kernel_id, "%lowcost restore zzzz")
    assert "no checkpoints of a kernel 'zzzz'" in missing
    # A kernel id that starts with 8 digits looks like a checkpoint id of this kernel: it
    # is restored from that kernel all the same (it was "no checkpoint" 1 run in 40).
    digits = orphan(root, "d.ipynb", 0.1, kernel_id="12345678-aaaa-4bbb-8ccc-000000000000", z=7)
    out = await execute(jp_serverapp, kernel_id, f"%lowcost restore {digits[:8]}\nprint(z)")
    assert out.startswith("Restored checkpoint 12345678/00000001: 1 variable") and out.endswith(
        "7\n"
    )
