"""Checkpoint files: on the disk before a checkpoint counts, compact, reused after a resume.

What a person relies on when an instance goes: the checkpoint that ``%lowcost checkpoint``
reported is on the disk whole (not in a page cache the machine takes with it), 20,000 small
variables do not cost thousands of files, and the first checkpoint after a resume writes
what changed, not the whole state again.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from extension_kernel import ExtensionKernel

from jupyter_lowcost.kernel import interruption
from jupyter_lowcost.kernel.training import load_saved, save_on_notice
from jupyter_lowcost.storage.checkpoints import CheckpointStore, CheckpointWriteFailed
from jupyter_lowcost.storage.manifests import chunks_of

MiB = 1024 * 1024

#: Run in a kernel: record, in order, each fdatasync/fsync (the path synced) and each
#: rename (from, to) of the checkpoint writer, whatever thread it runs in.
TRACE = """
import os as _os
_trace = []
def _traced(kind, call):
    def traced(*args, **kwargs):
        if kind == "sync":
            _trace.append(("sync", _os.readlink(f"/proc/self/fd/{args[0]}")))
        result = call(*args, **kwargs)
        if kind == "rename":
            _trace.append(("rename", _os.fspath(args[0]), _os.fspath(args[1])))
        return result
    return traced
_os.fdatasync = _traced("sync", _os.fdatasync)
_os.fsync = _traced("sync", _os.fsync)
_os.replace = _traced("rename", _os.replace)
"""


def _files_of(directory: Path, checkpoint_id: str) -> set[Path]:
    """The files in ``chunks/`` that a checkpoint needs."""
    store = CheckpointStore(directory)
    try:
        names = chunks_of(store.manifest(checkpoint_id))
    finally:
        store.close()
    return {directory / "chunks" / name for name in names}


def _assert_durable_before_counted(
    trace: list[list[str]], directory: Path, checkpoint_id: str
) -> None:
    """Every file the checkpoint needs was synced after it was written, then the chunks
    folder, then the manifest was synced and renamed into place, then the manifests folder
    was synced: a machine that goes at any point leaves no manifest that names a file, or
    a file's content, that only its page cache had."""
    renamed_to = {
        Path(event[2]): number for number, event in enumerate(trace) if event[0] == "rename"
    }
    synced: dict[str, list[int]] = {}
    for number, event in enumerate(trace):
        if event[0] == "sync":
            synced.setdefault(event[1], []).append(number)

    def first_sync(path: Path | str, after: int, before: int) -> int | None:
        return next((n for n in synced.get(str(path), []) if after < n < before), None)

    manifest = directory / "manifests" / f"{checkpoint_id}.json"
    assert manifest in renamed_to, "the manifest was not written by a rename"
    counted = renamed_to[manifest]
    assert first_sync(trace[counted][1], -1, counted) is not None, (
        "the manifest was renamed before it was synced"
    )
    assert first_sync(directory / "manifests", counted, len(trace)) is not None, (
        "the manifests folder was not synced after the manifest's rename"
    )
    files = _files_of(directory, checkpoint_id)
    assert files, "the checkpoint names no file"
    last_synced = 0
    for path in files:
        assert path in renamed_to, f"{path.name} was not written by a rename"
        placed = renamed_to[path]
        assert placed < counted, f"{path.name} was renamed after the manifest"
        # Synced under its temporary name before the rename, or under its name after it.
        when = first_sync(trace[placed][1], -1, placed) or first_sync(path, placed, counted)
        assert when is not None, f"{path.name} was not synced before the manifest's rename"
        last_synced = max(last_synced, when, placed)
    assert first_sync(directory / "chunks", last_synced, counted) is not None, (
        "the chunks folder was not synced between its files' syncs and the manifest's rename"
    )


def test_a_checkpoint_is_on_the_disk_before_the_kernel_says_it_is_written(tmp_path: Path) -> None:
    kernel = ExtensionKernel(tmp_path, when="cell")
    try:
        kernel.run(TRACE)
        # Arrays (chunks), small variables (a pack), a large immutable value (a file).
        kernel.run(
            "import numpy as np\n"
            "big = np.arange(6 * 1024 * 1024, dtype=np.float64)\n"
            "small = {f'k{i}': i for i in range(100)}\n"
            "text = 'x' * 200_000\n"
            "for _i in range(300):\n"
            "    globals()[f'v{_i}'] = _i * 1.5\n"
        )
        # The cell's checkpoint, written in the background: as the kernel says it is.
        kernel.run(
            "from jupyter_lowcost.kernel.checkpointing import installed\n"
            "assert installed().wait_for_write(60)"
        )
        background = kernel.run("print(installed().last_save.checkpoint_id)").strip()
        # %lowcost checkpoint: written in the cell's thread and a pool of writers.
        kernel.run("big[7] = -1.0\nv3 = 'changed'")
        report = kernel.run("%lowcost checkpoint")
        manual = re.search(r"Checkpoint (\d+)", report).group(1)
        trace = json.loads(kernel.run("import json\nprint(json.dumps(_trace))"))
    finally:
        kernel.stop()
    assert background != manual
    _assert_durable_before_counted(trace, tmp_path, background)
    _assert_durable_before_counted(trace, tmp_path, manual)


def _disk_usage(directory: Path) -> tuple[int, int]:
    """(bytes of disk the files under ``directory`` take, how many files there are)."""
    used = files = 0
    for folder, _, names in os.walk(directory):
        for name in names:
            used += os.lstat(os.path.join(folder, name)).st_blocks * 512
            files += 1
    return used, files


def test_twenty_thousand_small_variables_take_a_few_files(tmp_path: Path) -> None:
    kernel = ExtensionKernel(tmp_path, when="interval:3600")
    try:
        kernel.run(
            "for _i in range(20000):\n"
            "    globals()[f'v{_i}'] = (_i, float(_i), f's{_i}')[_i % 3]\n"
            "pair = (1, 'a')\n"
            "items = [pair, pair]\n"
            "index = {'items': items}\n"
        )
        for step in range(5):  # more than the 3 kept
            kernel.run(f"v{step * 7} = 'changed {step}'\n%lowcost checkpoint")
        expected = kernel.run(
            "print(sorted((k, repr(v)) for k, v in globals().items() if k[:1] == 'v' and k[1:].isdigit()) == "
            "sorted((f'v{i}', repr(globals()[f'v{i}'])) for i in range(20000)))"
        )
        assert expected.strip() == "True"
    finally:
        kernel.stop()
    used, files = _disk_usage(tmp_path)
    assert used <= 2 * MiB and files <= 20, (used, files)
    resumed = ExtensionKernel(tmp_path, when="interval:3600", restore=True)
    try:
        check = resumed.run(
            "print(all(globals()[f'v{i}'] == ((i, float(i), f's{i}')[i % 3] if i not in (0, 7, 14, 21, 28) "
            "else f'changed {i // 7}') for i in range(20000)), "
            "index['items'] is items and items[0] is items[1] and items[0] == pair)"
        )
    finally:
        resumed.stop()
    assert check.split() == ["True", "True"]


def test_packed_checkpoints_keep_every_value_and_shared_reference(tmp_path: Path) -> None:
    """Forty checkpoints of a namespace of small values that changes at random, with a
    resume every ten: each kept checkpoint restores the namespace exactly as it was,
    objects shared between variables stay shared, and the files stay few (packs used
    little are folded)."""
    rng = random.Random(33)
    store = CheckpointStore(tmp_path)
    namespace: dict[str, Any] = {f"n{i}": i for i in range(3000)}
    namespace.update({f"s{i}": f"text {i}" * (i % 5) for i in range(1000)})
    shared = (1, "shared")
    namespace["holder"] = [shared, shared]
    namespace["other"] = {"same": namespace["holder"]}
    states: dict[str, dict[str, Any]] = {}
    for round_ in range(40):
        if round_ % 10 == 9:  # a resume: a new kernel's store, the namespace restored
            store.close()
            store = CheckpointStore(tmp_path)
            namespace = {}
            store.load(into=namespace, adopt=True)
        for _ in range(rng.choice([1, 5, 200, 2000])):
            name = rng.choice(list(namespace))
            if name in ("holder", "other"):
                namespace["holder"].append(round_)
            else:
                namespace[name] = rng.choice([round_, float(round_), f"r{round_}", (round_, name)])
        if round_ % 7 == 0:
            namespace[f"new{round_}"] = bytes(range(round_))
        report = store.save(namespace)
        states[report.checkpoint_id] = {
            k: (list(v) if k == "holder" else v) for k, v in namespace.items() if k != "other"
        }
        for checkpoint_id in store.checkpoint_ids():
            restored: dict[str, Any] = {}
            loaded = store.load(checkpoint_id, into=restored)
            assert loaded.not_restored == []
            assert restored["other"]["same"] is restored["holder"]
            assert restored["holder"][0] is restored["holder"][1]
            assert {k: v for k, v in restored.items() if k != "other"} == states[checkpoint_id]
        names = [p.name for p in (tmp_path / "chunks").iterdir()]
        packs = [n for n in names if n.startswith("p")]
        # 3 kept checkpoints, each naming at most 1 + MAX_PACKS packs (mostly shared).
        assert len(packs) <= 3 * (1 + 8), packs
    store.close()


def test_a_resume_then_one_cell_writes_only_what_that_cell_changed(tmp_path: Path) -> None:
    kernel = ExtensionKernel(tmp_path, when="interval:3600")
    try:
        kernel.run(
            "import numpy as np\n"
            "big = np.arange(16 * 1024 * 1024, dtype=np.float64)\n"  # 128 MiB: 32 chunks
            "table = {'rows': [list(range(10)) for _ in range(100)], 'big': big}\n"
            "for _i in range(2000):\n"
            "    globals()[f'v{_i}'] = _i\n"
            "%lowcost checkpoint"
        )
    finally:
        kernel.stop(kill=True)
    before = {p.name for p in (tmp_path / "chunks").iterdir()}
    resumed = ExtensionKernel(tmp_path, when="interval:3600", restore=True)
    try:
        assert resumed.run("print(big[5], table['big'] is big, v1999)").split() == [
            "5.0",
            "True",
            "1999",
        ]
        report = resumed.run("big[5] = -1.0\nv7 = 'seven'\n%lowcost checkpoint")
    finally:
        resumed.stop()
    written = float(re.search(r"\(([\d.]+) MB written\)", report).group(1)) * 1e6
    new = [p for p in (tmp_path / "chunks").iterdir() if p.name not in before]
    # One 4 MiB chunk of the array, and a pack with v7 (nothing else changed).
    assert written <= 4 * MiB + 64 * 1024, report
    assert len(new) <= 2 and sum(p.stat().st_size for p in new) <= 4 * MiB + 64 * 1024, new
    restored: dict[str, Any] = {}
    store = CheckpointStore(tmp_path)
    store.load(into=restored)
    store.close()
    expected = np.arange(16 * 1024 * 1024, dtype=np.float64)
    expected[5] = -1.0
    assert np.array_equal(restored["big"], expected) and restored["table"]["big"] is restored["big"]
    assert restored["v7"] == "seven" and restored["v8"] == 8


def test_save_on_notice_writes_a_file_on_the_disk_before_its_rename(
    tmp_path: Path, monkeypatch: Any
) -> None:
    events: list[tuple[str, str]] = []
    fdatasync, replace, fsync = os.fdatasync, os.replace, os.fsync

    def traced_datasync(fd: int) -> None:
        events.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))
        fdatasync(fd)

    def traced_fsync(fd: int) -> None:
        events.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def traced_replace(source: Any, target: Any) -> None:
        replace(source, target)
        events.append(("rename", os.fspath(source)))
        events.append(("renamed", os.fspath(target)))

    monkeypatch.setattr(os, "fdatasync", traced_datasync)
    monkeypatch.setattr(os, "fsync", traced_fsync)
    monkeypatch.setattr(os, "replace", traced_replace)
    target = tmp_path / "state.pkl"
    callback = save_on_notice(target, step=7)
    try:
        callback(interruption.Notice())
    finally:
        interruption.remove_notice_callback(callback)
    renamed = events.index(("renamed", str(target)))
    temporary = events[renamed - 1][1]
    assert ("sync", temporary) in events[: renamed - 1], events
    assert ("sync", str(tmp_path)) in events[renamed:], events
    assert load_saved(target) == {"step": 7}


def test_a_checkpoint_whose_files_cannot_be_synced_does_not_count(
    tmp_path: Path, monkeypatch: Any
) -> None:
    store = CheckpointStore(tmp_path)
    store.save({"big": np.zeros(3 * MiB), "x": 1})
    kept = sorted(p.name for p in (tmp_path / "chunks").iterdir())

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(CheckpointWriteFailed, match="Input/output error"):
        store.save({"big": np.ones(3 * MiB), "x": 2})
    monkeypatch.undo()
    # Not counted: the checkpoint before is the latest, and what the failed one wrote is gone.
    assert store.checkpoint_ids() == ["00000001"]
    assert sorted(p.name for p in (tmp_path / "chunks").iterdir()) == kept
    restored: dict[str, Any] = {}
    store.load(into=restored)
    assert restored["x"] == 1 and not restored["big"].any()
    store.close()
