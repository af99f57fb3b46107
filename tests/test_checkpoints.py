"""The checkpoint store: what comes back, what does not, incremental writes, atomicity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jupyter_lowcost.checkpoints import CHUNK_SIZE, CheckpointStore


def test_variables_come_back_equal_and_aliases_stay_aliases(tmp_path: Path) -> None:
    big = np.random.default_rng(0).random(200 * 1024 * 1024 // 8)  # 200 MB
    nested = {"a": [1, 2, {"b": ("x", 3.5, None)}], "s": {"t", "u"}}
    frame = pd.DataFrame({"n": np.arange(1000), "x": np.linspace(0, 1, 1000), "s": ["v"] * 1000})

    def numbers():
        yield 1

    namespace = {
        "i": 42,
        "text": "héllo",
        "nested": nested,
        "same": nested,  # b = a
        "holder": [big, nested],  # holds other variables' objects
        "big": big,
        "frame": frame,
        "gen": numbers(),
        "np": np,
    }
    store = CheckpointStore(tmp_path)
    saved = store.save(namespace)
    assert [s.name for s in saved.skipped] == ["gen"]
    assert saved.skipped[0].type == "generator" and "pickle" in saved.skipped[0].why

    restored: dict = {}
    report = store.load(into=restored)
    assert restored["i"] == 42 and restored["text"] == "héllo"
    assert restored["nested"] == nested
    assert restored["same"] is restored["nested"]
    assert restored["holder"][0] is restored["big"]
    assert restored["holder"][1] is restored["nested"]
    assert np.array_equal(restored["big"], big)
    restored["big"][0] = -1.0  # a writable array of its own
    assert big[0] != -1.0
    pd.testing.assert_frame_equal(restored["frame"], frame)
    assert restored["np"] is np
    assert "gen" not in restored
    assert [(s.name, s.type) for s in report.not_restored] == [("gen", "generator")]
    assert report.summary().endswith("not restored: gen (generator)")
    assert report.bytes > 200 * 1024 * 1024


def test_a_change_of_one_element_rewrites_about_one_chunk(tmp_path: Path) -> None:
    big = np.zeros(64 * 1024 * 1024 // 8)  # 64 MiB, 16 chunks
    store = CheckpointStore(tmp_path)
    first = store.save({"big": big})
    assert first.bytes_written >= big.nbytes
    big[0] = 1
    second = store.save({"big": big})
    # One chunk, plus the small pickle stream (which did not change either).
    assert second.bytes_written == CHUNK_SIZE
    unchanged = store.save({"big": big})
    assert unchanged.bytes_written == 0
    restored: dict = {}
    store.load(into=restored)
    assert restored["big"][0] == 1 and not restored["big"][1:].any()


def test_old_checkpoints_are_deleted_with_their_chunks(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for value in range(6):
        store.save({"a": np.full(CHUNK_SIZE // 8, value)})
    assert store.checkpoint_ids() == ["00000004", "00000005", "00000006"]
    chunks = [p for p in (tmp_path / "chunks").iterdir()]
    # Each kept checkpoint: one buffer chunk and one pickle stream (shared when equal).
    assert len([p for p in chunks if not p.name.startswith("s")]) == 3
    restored: dict = {}
    store.load("00000004", into=restored)
    assert restored["a"][0] == 3


def test_a_checkpoint_killed_while_writing_leaves_the_previous_one_whole(
    tmp_path: Path,
) -> None:
    writer = textwrap.dedent(
        f"""
        import numpy as np, sys
        from jupyter_lowcost.checkpoints import CheckpointStore
        store = CheckpointStore({str(tmp_path)!r})
        store.save({{"small": np.arange(10), "word": "first"}})
        print("first", flush=True)
        big = np.ones(1024 * 1024 * 1024 // 8)  # 1 GiB: long enough to be killed
        while True:
            big += 1
            store.save({{"small": np.arange(10), "word": "second", "big": big}})
        """
    )
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "first"
        chunks = tmp_path / "chunks"
        end = time.monotonic() + 60
        # Kill it once it has written part of the second checkpoint, not all of it.
        while sum(1 for _ in chunks.iterdir()) < 20:
            assert time.monotonic() < end, "the writer did not start the second checkpoint"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    store = CheckpointStore(tmp_path)
    assert store.checkpoint_ids() == ["00000001"]
    restored: dict = {}
    report = store.load(into=restored)
    assert report.not_restored == []
    assert restored["word"] == "first" and list(restored["small"]) == list(range(10))


def test_loading_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        CheckpointStore(tmp_path).load()
