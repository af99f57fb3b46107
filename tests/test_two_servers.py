"""Servers sharing one data directory: a starting server adopts only what servers that are
gone left, once, and prunes only what no other server holds.

The records store is tested on its own (servers are stand-in processes: a live ``sleep``,
or one that has exited); the pruning with an in-process server whose data directory holds
the records of another live server. tests/test_server_restart.py runs real servers.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_lowcost.storage.records import (
    InstanceRecord,
    InstanceState,
    RecordStore,
    process_start_ticks,
)


class StandIn:
    """A process that stands for a server: its records file is named after it."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(["sleep", "600"])
        self.pid = self.process.pid
        self.ticks = process_start_ticks(self.pid)

    def records_file(self, folder: Path) -> Path:
        return folder / f"server-{self.pid}-{self.ticks}.json"

    def store(self, folder: Path) -> RecordStore:
        """The records store this server would have."""
        store = RecordStore(folder)
        store.path = self.records_file(folder)
        return store

    def die(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def stand_ins() -> Iterator[list[StandIn]]:
    made: list[StandIn] = []
    yield made
    for stand_in in made:
        stand_in.die()


def new(stand_ins: list[StandIn]) -> StandIn:
    stand_ins.append(StandIn())
    return stand_ins[-1]


def record(instance_id: str, kernel_id: str, state: InstanceState) -> InstanceRecord:
    return InstanceRecord(
        kernel_id=kernel_id,
        instance_type="T4",
        low_cost=True,
        backend="local",
        price_per_hour=0.1,
        regular_price_per_hour=0.3,
        id=instance_id,
        state=state,
    )


def write_records(path: Path, *records: InstanceRecord, kernels: Any = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"version": 1, "instances": [r.to_json() for r in records], "kernels": kernels}
    path.write_text(json.dumps(payload))


def test_servers_starting_at_once_adopt_a_gone_servers_records_once(
    tmp_path: Path, stand_ins: list[StandIn]
) -> None:
    gone = new(stand_ins)
    write_records(gone.records_file(tmp_path), record("aaaaaaaaaaaa", "k1", InstanceState.RUNNING))
    gone.die()
    first, second = new(stand_ins), new(stand_ins)

    records, _, _ = first.store(tmp_path).adopt_orphans()
    assert [r.id for r in records] == ["aaaaaaaaaaaa"]
    # The second, starting meanwhile (the first has not saved nor removed anything yet),
    # adopts nothing, and knows the instance is held: its pruning leaves it alone.
    assert second.store(tmp_path).adopt_orphans() == ([], {}, [])
    assert second.store(tmp_path).held_elsewhere().live_instances == {"aaaaaaaaaaaa"}

    # The first dies before it saved the records as its own: the next server adopts them.
    first.die()
    records, _, _ = second.store(tmp_path).adopt_orphans()
    assert [r.id for r in records] == ["aaaaaaaaaaaa"]
    assert not list(tmp_path.glob(f"server-{first.pid}-*"))


def test_what_other_servers_hold_is_what_their_records_files_name(
    tmp_path: Path, stand_ins: list[StandIn]
) -> None:
    live, gone, me = new(stand_ins), new(stand_ins), new(stand_ins)
    write_records(
        live.records_file(tmp_path),
        record("livelivelive", "kernel-live", InstanceState.RUNNING),
        record("endedendeded", "kernel-ended", InstanceState.INTERRUPTED),
        kernels={"kernel-taken-back": {}},
    )
    # A server gone after this one adopted what was there: the next one to start adopts it.
    write_records(
        gone.records_file(tmp_path), record("gonegonegone", "k-gone", InstanceState.NOTICE)
    )
    gone.die()
    write_records(
        me.records_file(tmp_path), record("mineminemine", "k-mine", InstanceState.RUNNING)
    )

    held = me.store(tmp_path).held_elsewhere()
    assert held.instances == {"livelivelive", "endedendeded", "gonegonegone"}
    assert held.live_instances == {"livelivelive", "gonegonegone"}
    assert held.kernels == {"kernel-live", "kernel-taken-back", "k-gone"}


def test_servers_sharing_a_data_folder_share_its_id_and_other_folders_have_others(
    tmp_path: Path, stand_ins: list[StandIn]
) -> None:
    """The folder's id labels the instances a backend can label (the kubernetes backend's
    pods): the same for every server of a folder, for good; another folder's differs."""
    first, second = new(stand_ins), new(stand_ins)
    folder_id = first.store(tmp_path).folder_id()
    assert len(folder_id) == 16 and int(folder_id, 16) >= 0
    first.die()
    assert second.store(tmp_path).folder_id() == folder_id
    assert RecordStore(tmp_path / "other").folder_id() != folder_id
    assert sorted(p.name for p in tmp_path.iterdir() if "folder-id" in p.name) == ["folder-id"]


@pytest.mark.lowcost(LowCostApp={"orphaned_checkpoints_days": 1})
async def test_a_starting_server_prunes_only_what_no_server_holds(
    api: Any, jp_data_dir: Path, stand_ins: list[StandIn]
) -> None:
    """Another server runs on the data directory: its live instance's launcher log and
    channel file, its ended instance's log, and its kernel's checkpoints (older than
    orphaned_checkpoints_days) stay; what no server holds is deleted."""
    data = jp_data_dir / "lowcost"
    other = new(stand_ins)
    write_records(
        other.records_file(data),
        record("livelivelive", "kernel-of-the-other", InstanceState.RUNNING),
        record("endedendeded", "kernel-of-the-other", InstanceState.INTERRUPTED),
    )
    files = {
        "live log": data / "logs" / "livelivelive.log",
        "live channel": data / "channels" / "livelivelive.json",
        "ended log": data / "logs" / "endedendeded.log",
        "ended channel": data / "channels" / "endedendeded.json",
        "nobody's log": data / "logs" / "nobodynobody.log",
        "nobody's channel": data / "channels" / "nobodynobody.json",
        "its checkpoints": data / "checkpoints" / "kernel-of-the-other",
        "nobody's checkpoints": data / "checkpoints" / "kernel-of-nobody",
    }
    two_days_ago = time.time() - 2 * 86400
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix:
            path.write_text("{}")
        else:
            path.mkdir()
        os.utime(path, (two_days_ago, two_days_ago))

    status, _ = await api("GET", "status")  # (answers once the server's start is done)
    assert status == 200
    left = {what for what, path in files.items() if path.exists()}
    assert left == {"live log", "live channel", "ended log", "its checkpoints"}
