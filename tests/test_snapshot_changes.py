"""A staged snapshot (a kernel's checkpoint after a cell) copies only what changed since the
last checkpoint, and is still the namespace exactly as it was when it was taken; the
kernel's namespace is read by looking again only at what changed.

Where Linux says which pages were written (``storage/write_watch.py``), a snapshot copies
only the chunks of each large array written since its last checkpoint; the rest are the
chunk files of that checkpoint. These tests hold it to what a user relies on: every
checkpoint restores the namespace as it was at its snapshot, whatever the next cells wrote
meanwhile, after failed writes, snapshots never written, arrays replaced or freed, and a
process killed at any point of a write; and the memory checkpoints keep is about what
changed, not a copy of every array.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from jupyter_lowcost.kernel.checkpointing import KernelCheckpoints
from jupyter_lowcost.storage import durable_writes, write_watch
from jupyter_lowcost.storage.checkpoints import (
    CheckpointStore,
    CheckpointWriteFailed,
    NamespaceReader,
    user_variables,
)
from jupyter_lowcost.storage.format import ATOMIC_TYPES, FROZEN_TYPES, immutable

MiB = 1024 * 1024
CHUNK = 64 * 1024


def _watching() -> bool:
    if write_watch.shared() is None:
        pytest.fail(
            "this machine's Linux cannot watch writes (userfaultfd write-protect and the "
            "PAGEMAP_SCAN ioctl, Linux 6.7 or later): snapshots copy every array whole here"
        )
    return True


def _kept_bytes(store: CheckpointStore) -> int:
    """Bytes of memory the store keeps for the copies of its snapshots."""
    return sum(copy.nbytes for copy in store._staging.values())


def _restored(store_dir: Path, checkpoint_id: str | None = None) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    store = CheckpointStore(store_dir)
    store.load(checkpoint_id, into=namespace)
    store.close()
    return namespace


def test_a_snapshot_copies_only_the_chunks_written_since_the_last_checkpoint(
    tmp_path: Path,
) -> None:
    _watching()
    store = CheckpointStore(tmp_path, chunk_size=MiB)
    big = np.zeros(64 * MiB // 8)  # 64 chunks
    first = store.snapshot({"big": big}, stage=True)
    store.write(first)
    # The first copy was whole, and is not kept once written: the next ones copy changes.
    assert _kept_bytes(store) == 0
    del first
    for cell in range(1, 6):
        big[cell * 1000] = cell
        snapshot = store.snapshot({"big": big}, stage=True)
        staged = snapshot.pending["big"][1][0][0]
        assert sorted(staged.parts) == [0], staged.parts.keys()
        assert _kept_bytes(store) <= 2 * MiB + MiB
        report = store.write(snapshot)
        assert report.bytes_written <= MiB + 4096
    restored = _restored(tmp_path)
    assert np.array_equal(restored["big"], big)


def test_a_snapshot_is_the_array_as_it_was_whatever_is_written_before_its_write(
    tmp_path: Path,
) -> None:
    _watching()
    store = CheckpointStore(tmp_path, chunk_size=MiB)
    big = np.arange(16 * MiB // 8, dtype=np.float64)
    store.write(store.snapshot({"big": big}, stage=True))
    big[10] = -1.0
    snapshot = store.snapshot({"big": big}, stage=True)
    # The next cell, before the write starts: a changed chunk and an unchanged one.
    big[11] = -2.0
    big[5 * MiB // 8] = -3.0
    store.write(snapshot)
    as_taken = _restored(tmp_path)["big"]
    assert as_taken[10] == -1.0 and as_taken[11] == 11.0
    assert as_taken[5 * MiB // 8] == 5 * MiB // 8
    # The writes after the snapshot are in the next checkpoint.
    store.write(store.snapshot({"big": big}, stage=True))
    assert np.array_equal(_restored(tmp_path)["big"], big)
    store.close()


@pytest.mark.parametrize(
    ("watch_writes", "watch_first_save", "copy_later"),
    [(True, True, False), (True, False, True), (False, False, True)],
    ids=["watched", "watched-once-calm-copied-later", "compared-copied-later"],
)
def test_random_cells_failed_and_dropped_writes_every_checkpoint_is_its_snapshot(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    watch_writes: bool,
    watch_first_save: bool,
    copy_later: bool,
) -> None:
    """Sixty rounds of a random mix: writes to slices anywhere (edges, pages, whole
    arrays) before and after each snapshot, arrays replaced, resized, deleted, views of
    arrays saved, writes that fail (a full disk) and snapshots never written. Each
    checkpoint written restores exactly the arrays as they were at its snapshot."""
    if watch_writes:
        _watching()
    rng = random.Random(7)
    failing = {"now": False}
    original = durable_writes.write_private

    def write_private(path: Any, data: Any, sync: bool = False) -> None:
        if failing["now"] and rng.random() < 0.5:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(path, data, sync=sync)

    monkeypatch.setattr(durable_writes, "write_private", write_private)
    store = CheckpointStore(
        tmp_path, chunk_size=CHUNK, watch_writes=watch_writes, watch_first_save=watch_first_save
    )
    base = np.zeros(3 * MiB + 333, dtype=np.uint8)
    namespace: dict[str, Any] = {
        "a": np.zeros(2 * MiB // 8),
        "b": base[77:],  # a view: its memory starts inside a page
        "c": np.ones(1 * MiB + 5, dtype=np.uint8),
    }
    expected: dict[str, dict[str, np.ndarray]] = {}

    def scribble() -> None:
        for _ in range(rng.choice([0, 1, 3, 10])):
            name = rng.choice(sorted(namespace))
            array = namespace[name].reshape(-1).view(np.uint8)
            start = rng.randrange(array.size)
            end = min(array.size, start + rng.choice([1, 7, 4096, CHUNK, 3 * CHUNK]))
            array[start:end] = rng.randrange(256)
        roll = rng.random()
        if roll < 0.05:
            namespace["a"] = np.full(2 * MiB // 8, rng.random())  # replaced
        elif roll < 0.08:
            namespace["c"] = np.ones(rng.choice([MiB, 2 * MiB + 1]), dtype=np.uint8)  # resized
        elif roll < 0.10:
            namespace.pop("c", None)
        elif roll < 0.12 and "c" not in namespace:
            namespace["c"] = np.arange(MiB, dtype=np.uint8)

    for round_ in range(60):
        scribble()
        snapshot = store.snapshot(dict(namespace), stage=True, copy_later=copy_later)
        as_taken = {name: array.copy() for name, array in namespace.items()}
        store.wait_for_copies()  # (a kernel's next request waits for them)
        scribble()  # the next cell, while the write waits
        roll = rng.random()
        if roll < 0.1:
            del snapshot  # never written (the notice's checkpoint took its place)
            continue
        failing["now"] = roll < 0.25
        try:
            report = store.write(snapshot)
        except CheckpointWriteFailed:
            continue
        finally:
            failing["now"] = False
        expected[report.checkpoint_id] = as_taken
        for checkpoint_id in store.checkpoint_ids():
            restored = _restored(tmp_path, checkpoint_id)
            wanted = expected[checkpoint_id]
            assert sorted(restored) == sorted(wanted), (round_, checkpoint_id)
            for name, array in wanted.items():
                assert np.array_equal(restored[name], array), (round_, checkpoint_id, name)
    assert len(expected) >= 30
    store.close()


def _copied_chunks(snapshot: Any, name: str) -> int:
    return len(snapshot.pending[name][1][0][0].parts)


def test_a_kernels_store_stops_watching_the_arrays_cells_rewrite(tmp_path: Path) -> None:
    """A kernel's store (``watch_first_save=False``): an array rewritten by every cell is
    watched until the first checkpoint that finds it rewritten, then never again (its
    pages fault once), and copied whole; an array changed a little is copied a chunk at a
    time from its second snapshot on; one rewritten whole goes back to whole copies until
    a checkpoint finds it calm again."""
    _watching()
    store = CheckpointStore(tmp_path, chunk_size=MiB, watch_first_save=False)
    busy = np.zeros(16 * MiB // 8)
    calm = np.zeros(16 * MiB // 8)
    namespace = {"busy": busy, "calm": calm}
    copied = []
    for cell in range(8):
        busy += 1
        calm[cell] = cell
        if cell == 4:
            calm += 1  # rewritten whole once
        snapshot = store.snapshot(namespace, stage=True)
        copied.append((_copied_chunks(snapshot, "busy"), _copied_chunks(snapshot, "calm")))
        store.write(snapshot)
        assert (store._buffers.previous[("busy", 0)].watched is None) == (cell > 0), cell
    whole, one = (16, 16), (16, 1)
    assert copied == [whole, one, one, one, whole, whole, whole, one], copied
    restored = _restored(tmp_path)
    assert np.array_equal(restored["busy"], busy) and np.array_equal(restored["calm"], calm)
    store.close()


def test_a_snapshot_never_written_leaves_its_arrays_watchable(tmp_path: Path) -> None:
    """The first snapshot of an array starts watching it; when that snapshot is never
    written (a notice's checkpoint took its place), the next one watches it afresh, and
    later checkpoints copy only the chunk a cell changed."""
    _watching()
    store = CheckpointStore(tmp_path, chunk_size=MiB, watch_first_save=False)
    big = np.zeros(16 * MiB // 8)
    dropped = store.snapshot({"big": big}, stage=True)
    del dropped
    copied = []
    for cell in range(3):
        big[cell] = cell + 1
        snapshot = store.snapshot({"big": big}, stage=True)
        copied.append(_copied_chunks(snapshot, "big"))
        store.write(snapshot)
    assert copied == [16, 1, 1], copied
    assert np.array_equal(_restored(tmp_path)["big"], big)
    store.close()


_HUGE_PAGES_AFTER_REWRITES = textwrap.dedent(
    """
    import json, re, sys
    import numpy as np
    from jupyter_lowcost.storage.checkpoints import CheckpointStore

    directory, layout = sys.argv[1], sys.argv[2]
    MiB = 1024 * 1024

    def huge_page_bytes(array):
        # AnonHugePages of each mapping of /proc/self/smaps the array overlaps
        start = array.__array_interface__["data"][0]
        end = start + array.nbytes
        total, inside = 0, False
        for line in open("/proc/self/smaps"):
            mapping = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if mapping:
                inside = int(mapping[1], 16) < end and start < int(mapping[2], 16)
            elif inside and line.startswith("AnonHugePages:"):
                total += int(line.split()[1]) * 1024
        return total

    if layout == "numpy's":
        busy = np.zeros(64 * MiB // 8)
    else:
        raw = np.zeros(68 * MiB // 8)
        huge_page = -raw.ctypes.data % (2 * MiB)
        busy = raw[(huge_page + 16) // 8 :][: 64 * MiB // 8]
    busy += 1
    seen = {"before": huge_page_bytes(busy)}
    if not seen["before"]:  # (what Linux says of this process and of the array's memory)
        seen["why"] = [
            line.strip()
            for line in open("/proc/self/status").readlines() + open("/proc/self/smaps").readlines()
            if line.startswith(("THP_enabled", "THPeligible", "VmFlags"))
        ][-8:]
    store = CheckpointStore(directory, chunk_size=MiB, watch_first_save=False)
    store.write(store.snapshot({"busy": busy}, stage=True))  # watched from here on
    busy += 1  # the next cell
    seen["split"] = huge_page_bytes(busy)
    store.write(store.snapshot({"busy": busy}, stage=True))  # finds it rewritten
    seen["watched"] = store._buffers.previous[("busy", 0)].watched is not None
    seen["after"] = huge_page_bytes(busy)
    busy += 1  # unwatched: no fault, nothing split
    seen["later"] = huge_page_bytes(busy)
    restored = {}
    store.load(into=restored)
    seen["restored"] = bool(np.array_equal(restored["busy"], busy - 1))
    store.close()
    print(json.dumps(seen))
    """
)


@pytest.mark.parametrize("layout", ["numpy's", "16 bytes past a huge page"])
def test_an_array_rewritten_by_every_cell_gets_its_huge_pages_back(
    tmp_path: Path, layout: str
) -> None:
    """The watch's faults split the transparent huge pages of an array the next cell
    rewrites whole (and, unwatched, they would stay split: each later pass over the array
    walks 512 times as many page table entries). The checkpoint that finds it rewritten
    stops watching it and collapses them again, the huge pages at its ends too, which it
    shares with the memory beside it (where malloc's header puts an array's data when
    its mapping starts on a huge page). In a fresh process, as a kernel's arrays are: a
    long-lived one's allocator may hand out memory that has no huge pages to begin with."""
    _watching()
    ran = subprocess.run(
        [sys.executable, "-c", _HUGE_PAGES_AFTER_REWRITES, str(tmp_path), layout],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    if seen["before"] == 0:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as setting:
            pytest.fail(
                "this machine's Linux gave a 64 MiB numpy array no transparent huge pages "
                f"(/sys/kernel/mm/transparent_hugepage/enabled: {setting.read().strip()}): "
                f"set it to madvise or always ({seen})"
            )
    assert seen["split"] < seen["before"] / 2, seen
    assert not seen["watched"], seen
    assert seen["after"] >= seen["before"], seen
    assert seen["later"] >= seen["before"], seen
    assert seen["restored"], seen


def test_memory_kept_for_checkpoints_is_what_changed_not_the_arrays(tmp_path: Path) -> None:
    """Ten arrays of 16 MiB, 1% of each changed between snapshots: the copies kept are a
    chunk or two per array, not 160 MiB."""
    _watching()
    store = CheckpointStore(tmp_path, chunk_size=MiB)
    arrays = {f"a{i}": np.zeros(16 * MiB // 8) for i in range(10)}
    for cell in range(4):
        for array in arrays.values():
            start = (cell * 3 * MiB) // 8
            array[start : start + 160 * 1024 // 8] = cell + 1  # 1%
        store.write(store.snapshot(arrays, stage=True))
    assert _kept_bytes(store) <= 10 * 3 * MiB, _kept_bytes(store)
    restored = _restored(tmp_path)
    assert all(np.array_equal(restored[n], a) for n, a in arrays.items())
    store.close()


_WRITER = textwrap.dedent(
    """
    import random, sys, threading, zlib
    import numpy as np
    from jupyter_lowcost.storage.checkpoints import CheckpointStore

    directory, ledger_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = CheckpointStore(directory, chunk_size=256 * 1024)
    namespace = {}
    if store.latest() is not None:
        store.load(into=namespace, adopt=True)  # a resume: the next checkpoints go on
    else:
        namespace = {"big": np.zeros(32 * 1024 * 1024 // 8), "round": 0}
    rng = random.Random(seed)
    ledger = open(ledger_path, "a")
    while True:
        big = namespace["big"]
        for _ in range(rng.choice([1, 4, 40])):
            start = rng.randrange(big.size)
            big[start : start + rng.choice([1, 512, 70000])] = rng.random()
        namespace["round"] += 1
        snapshot = store.snapshot(namespace, stage=True, copy_later=True)
        ledger.write(f"{namespace['round']} {zlib.crc32(big.data)}\\n")
        ledger.flush()
        writer = threading.Thread(target=store.write, args=(snapshot,))
        writer.start()
        store.wait_for_copies()
        big[rng.randrange(big.size)] = -1.0  # the next cell runs during the write
        writer.join()
    """
)


def test_a_process_killed_at_random_points_of_its_writes_resumes_whole(tmp_path: Path) -> None:
    """A process checkpoints (staged snapshots, writes in a thread while it goes on) and
    is killed with SIGKILL at random moments, eight times, each time going on from what
    it restores: the latest checkpoint is always whole and is the array exactly as it
    was at that checkpoint's snapshot."""
    store_dir, ledger = tmp_path / "store", tmp_path / "ledger"
    rng = random.Random(11)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for life in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(store_dir), str(ledger), str(life)], env=env
        )
        deadline = time.monotonic() + 60
        lines = ledger.read_text().count("\n") if ledger.exists() else 0
        while (ledger.read_text().count("\n") if ledger.exists() else 0) < lines + 3:
            assert child.poll() is None, "the writer died on its own"
            assert time.monotonic() < deadline, "the writer made no checkpoint"
            time.sleep(0.01)
        time.sleep(rng.random() * 0.3)
        child.send_signal(signal.SIGKILL)
        child.wait()
        restored = _restored(store_dir)
        crcs = dict(line.split() for line in ledger.read_text().splitlines())
        assert str(zlib.crc32(restored["big"].data)) == crcs[str(restored["round"])], life


def test_the_namespace_reader_agrees_with_a_full_read_after_any_change() -> None:
    """A kernel's namespace changed at random (values replaced in place or by another
    kind, names added, deleted, hidden and unhidden by IPython, ``_`` names): what the
    reader finds at each read is what a full read finds, in the same order."""
    rng = random.Random(5)
    namespace: dict[str, Any] = {f"v{i}": i for i in range(300)}
    hidden: dict[str, Any] = {}
    reader = NamespaceReader()
    values = [lambda: rng.random(), lambda: [1], lambda: (1, "a"), lambda: (1, [2]), lambda: "s"]
    for round_ in range(300):
        for _ in range(rng.choice([0, 1, 5, 40])):
            name = rng.choice([f"v{rng.randrange(400)}", f"_i{round_}", "In", "hid"])
            roll = rng.random()
            if roll < 0.1 and name in namespace:
                del namespace[name]
            elif roll < 0.2:
                hidden[name] = namespace.setdefault(name, rng.choice(values)())
            elif roll < 0.25:
                hidden.pop(name, None)
            else:
                namespace[name] = rng.choice(values)()
        split = reader.read(namespace, hidden)
        full = user_variables(namespace, hidden)
        assert list(split.variables.items()) == list(full.items()), round_
        immutable = {n: v for n, v in full.items() if n in split.immutable and _immutable_value(v)}
        assert split.immutable == immutable and all(_immutable_value(v) for v in immutable.values())
        assert [n for n, _ in split.mutable] == [n for n in full if n not in split.immutable]
        assert all(not _immutable_value(v) for _, v in split.mutable)


def _immutable_value(value: Any) -> bool:
    return type(value) in ATOMIC_TYPES or (type(value) in FROZEN_TYPES and immutable(value))


def test_a_kernels_next_request_waits_for_the_copies_of_its_last_snapshot(
    tmp_path: Path,
) -> None:
    """A kernel's snapshot leaves its copies to background threads while the cell's reply
    goes out; whatever the next request runs first waits for them, so that a cell that
    rewrites an array at once does not tear the checkpoint of the cell before."""
    shell = SimpleNamespace(user_ns={"big": np.zeros(32 * MiB)}, user_ns_hidden={})  # 256 MiB
    kept = KernelCheckpoints(shell, str(tmp_path), "cell")
    kept._after_cell()
    kept.before_user_code()  # (the next request: IPython's pre_execute, ipykernel's busy)
    shell.user_ns["big"][:] = 7.0
    assert kept.wait_for_write(60)
    assert not _restored(tmp_path)["big"].any()
    kept.store.close()
