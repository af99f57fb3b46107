"""The checkpoint store: what comes back, what does not, incremental writes, atomicity."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jupyter_lowcost.storage import atomic as atomic_module
from jupyter_lowcost.storage import write_watch
from jupyter_lowcost.storage.checkpoints import CHUNK_SIZE, CheckpointStore


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
        "later": [frame],  # saved after a variable that could not be
        "also": [frame],
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
    # Past a variable that failed, sharing holds among the variables saved after it.
    assert restored["later"][0] is restored["also"][0]
    pd.testing.assert_frame_equal(restored["later"][0], frame)
    assert np.array_equal(restored["big"], big)
    restored["big"][0] = -1.0  # a writable array of its own
    assert big[0] != -1.0
    pd.testing.assert_frame_equal(restored["frame"], frame)
    assert restored["np"] is np
    assert "gen" not in restored
    assert [(s.name, s.type) for s in report.not_restored] == [("gen", "generator")]
    assert report.summary().endswith("not restored: gen (generator)")
    assert report.bytes > 200 * 1024 * 1024


WATCHED = write_watch.shared() is not None


@pytest.mark.parametrize("watch_writes", [True, False], ids=["watched", "compared"])
def test_a_change_of_one_element_rewrites_about_one_chunk(
    tmp_path: Path, watch_writes: bool
) -> None:
    big = np.zeros(64 * 1024 * 1024 // 8)  # 64 MiB, 16 chunks
    store = CheckpointStore(tmp_path, watch_writes=watch_writes)
    first = store.save({"big": big})
    assert first.bytes_written >= big.nbytes
    big[0] = 1
    second = store.save({"big": big})
    # One chunk, plus the small pickle stream (which did not change either).
    assert second.bytes_written == CHUNK_SIZE
    if watch_writes and WATCHED:
        # The written pages come from Linux: the array is not read, but for the bytes
        # before and after its whole pages.
        assert second.bytes_compared <= 2 * write_watch.PAGE
    else:
        assert second.bytes_compared == big.nbytes
    unchanged = store.save({"big": big})
    assert unchanged.bytes_written == 0
    restored: dict = {}
    store.load(into=restored)
    assert restored["big"][0] == 1 and not restored["big"][1:].any()


def test_writes_watched_by_linux_cover_every_way_memory_changes(tmp_path: Path) -> None:
    """Each way a notebook changes an array: the next checkpoint holds the change, and
    rewrites only the chunks around it (a page may straddle two chunks)."""
    mib = 1024 * 1024
    store = CheckpointStore(tmp_path, chunk_size=mib)
    big = np.arange(16 * mib // 8, dtype=np.float64)
    state = {"big": big}
    store.save(state)
    source = tmp_path / "source.bin"
    source.write_bytes(b"\x07" * 100)

    def read_file_into_the_array() -> None:  # the kernel writes, not this process
        with open(source, "rb", buffering=0) as file:
            file.readinto(memoryview(big).cast("B")[5 * mib : 5 * mib + 100])

    def write_from_a_thread() -> None:
        thread = threading.Thread(target=big.__setitem__, args=(1_500_000, -2.0))
        thread.start()
        thread.join()

    changes = [
        ("first element", lambda: big.__setitem__(0, -1.0)),
        ("last element", lambda: big.__setitem__(-1, -1.0)),
        ("an element inside", lambda: big.__setitem__(1_000_000, -3.0)),
        ("a thread", write_from_a_thread),
        ("read() into it", read_file_into_the_array),
        ("a view of a slice", lambda: np.add(big[300_000:300_010], 1, out=big[300_000:300_010])),
        ("nothing", lambda: None),
    ]
    for what, change in changes:
        change()
        report = store.save(state)
        restored: dict = {}
        store.load(into=restored)
        assert np.array_equal(restored["big"], big), what
        most = 0 if what == "nothing" else 2 * mib
        assert report.bytes_written <= most + 4096, (what, report.bytes_written)
        if WATCHED:
            assert report.bytes_compared <= 2 * write_watch.PAGE, what
    # Another array in its place: compared, then watched.
    state["big"] = big = big.copy()
    big[7] = 8.0
    report = store.save(state)
    assert report.bytes_written <= mib + 4096
    restored = {}
    store.load(into=restored)
    assert np.array_equal(restored["big"], big)


def test_two_stores_saving_one_array_both_see_its_changes(tmp_path: Path) -> None:
    """A page's "written" mark can be read once: the second store compares instead."""
    mib = 1024 * 1024
    big = np.zeros(16 * mib // 8)
    first = CheckpointStore(tmp_path / "first", chunk_size=mib)
    second = CheckpointStore(tmp_path / "second", chunk_size=mib)
    for store in (first, second):
        store.save({"big": big})
    big[1_000_000] = 1.0
    for store in (first, second):
        report = store.save({"big": big})
        assert report.bytes_written >= mib
        restored: dict = {}
        store.load(into=restored)
        assert restored["big"][1_000_000] == 1.0


def test_a_save_that_stopped_half_way_does_not_hide_changes_from_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mib = 1024 * 1024
    store = CheckpointStore(tmp_path, chunk_size=mib)
    big = np.zeros(16 * mib // 8)
    store.save({"big": big})
    big[1_000_000] = 5.0

    # The disk fills up while the next checkpoint writes the changed chunk: that save
    # has read (and cleared) the written pages, yet saved nothing.
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_module, "open_private", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.save({"big": big})
    monkeypatch.undo()
    report = store.save({"big": big})
    assert report.bytes_written >= mib
    restored: dict = {}
    store.load(into=restored)
    assert restored["big"][1_000_000] == 5.0


def test_a_saved_variable_deleted_afterwards_frees_its_memory(tmp_path: Path) -> None:
    """The store keeps nothing of the namespace alive after a checkpoint."""
    import torch

    big = np.ones(1_000_000)
    weights = torch.ones(1_000_000)
    alive = [weakref.ref(big), weakref.ref(weights)]
    store = CheckpointStore(tmp_path)
    store.save({"big": big, "weights": weights})
    del big, weights
    gc.collect()
    assert [ref() for ref in alive] == [None, None]


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
        from jupyter_lowcost.storage.checkpoints import CheckpointStore
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


def test_pytorch_tensors_and_module_state_come_back(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(3, 8)).sum().backward()
    optimizer.step()
    weights = torch.randn(256, 1024)  # 1 MiB: out of band
    grad = torch.ones(3, requires_grad=True)
    store = CheckpointStore(tmp_path)
    saved = store.save({"model": model, "optimizer": optimizer, "weights": weights, "g": grad})
    assert saved.skipped == []
    restored: dict = {}
    report = store.load(into=restored)
    assert report.not_restored == []
    assert torch.equal(restored["weights"], weights)
    assert restored["g"].requires_grad
    for (name, a), (_, b) in zip(
        model.state_dict().items(), restored["model"].state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert isinstance(next(restored["model"].parameters()), torch.nn.Parameter)
    x = torch.randn(5, 8)
    assert torch.equal(model(x), restored["model"](x))
    # The optimizer still steps the model's own parameters (one object, not a copy).
    restored_params = {id(p) for p in restored["model"].parameters()}
    optimizer_params = {id(p) for g in restored["optimizer"].param_groups for p in g["params"]}
    assert optimizer_params == restored_params
    restored["model"](torch.randn(3, 8)).sum().backward()
    before = [p.detach().clone() for p in restored["model"].parameters()]
    restored["optimizer"].step()
    after = list(restored["model"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_tensor_changed_in_place_rewrites_about_one_chunk(tmp_path: Path) -> None:
    """A model's parameter updated in place (an optimizer step on a slice): the tensor
    itself is followed from one checkpoint to the next, not the array made to save it."""
    import torch

    mib = 1024 * 1024
    weights = torch.nn.Parameter(torch.zeros(16 * mib // 4))
    state = {"weights": weights}
    store = CheckpointStore(tmp_path, chunk_size=mib)
    store.save(state)
    with torch.no_grad():
        weights[1_000_000] = 2.5
    report = store.save(state)
    assert report.bytes_written <= 2 * mib
    if WATCHED:
        assert report.bytes_compared <= 2 * write_watch.PAGE
    restored: dict = {}
    store.load(into=restored)
    assert torch.equal(restored["weights"], weights)
    assert isinstance(restored["weights"], torch.nn.Parameter)


def write_seven_at(tensor: object, index: int) -> None:
    """In a worker process: one write into a tensor shared with the test's process."""
    tensor[index] = 7.0  # type: ignore[index]


def test_a_tensor_in_shared_memory_written_by_another_process_is_saved_changed(
    tmp_path: Path,
) -> None:
    """Shared memory is not watched: this process's page tables do not see the writes of
    a worker process (torch.multiprocessing, DataLoader workers)."""
    import torch
    import torch.multiprocessing

    mib = 1024 * 1024
    shared = torch.zeros(16 * mib // 4).share_memory_()
    store = CheckpointStore(tmp_path, chunk_size=mib)
    store.save({"shared": shared})
    worker = torch.multiprocessing.get_context("spawn").Process(
        target=write_seven_at, args=(shared, 1_000_000)
    )
    worker.start()
    worker.join(timeout=60)
    assert worker.exitcode == 0
    assert shared[1_000_000] == 7.0
    store.save({"shared": shared})
    restored: dict = {}
    store.load(into=restored)
    assert restored["shared"][1_000_000] == 7.0


def test_bfloat16_tensors_are_saved_as_raw_bytes_and_come_back_typed(tmp_path: Path) -> None:
    """numpy has no bfloat16: such tensors leave the stream as raw bytes (so they are
    chunked like any buffer, and a CUDA one comes back on a machine without CUDA)."""
    import torch

    weights = torch.randn(512, 1024, dtype=torch.bfloat16)  # 1 MiB
    columns = torch.randn(4, 6, dtype=torch.bfloat16).t()  # not contiguous
    scalar = torch.tensor(2.5, dtype=torch.bfloat16)
    store = CheckpointStore(tmp_path)
    assert store.save({"w": weights, "c": columns, "s": scalar}).skipped == []
    manifest = store.manifest(store.latest())
    assert manifest["variables"]["w"]["buffers"][0]["size"] == weights.numel() * 2
    restored: dict = {}
    assert store.load(into=restored).not_restored == []
    for name, tensor in {"w": weights, "c": columns, "s": scalar}.items():
        back = restored[name]
        assert (back.dtype, back.shape) == (tensor.dtype, tensor.shape), name
        assert torch.equal(back, tensor), name


def test_functions_defined_in_the_notebook_are_saved_by_value(tmp_path: Path) -> None:
    # What a notebook defines lives in __main__; pickle would save only its name.
    namespace: dict = {}
    exec(
        "def scale(x):\n    return 3 * x\nclass Point:\n    def __init__(self, x): self.x = x\n"
        "p = Point(4)\n",
        {"__name__": "__main__"},
        namespace,
    )
    store = CheckpointStore(tmp_path)
    saved = store.save({k: namespace[k] for k in ("scale", "Point", "p")})
    assert saved.skipped == []
    restored: dict = {}
    store.load(into=restored)
    assert restored["scale"](5) == 15
    assert restored["Point"](2).x == 2
    assert restored["p"].x == 4


class _Shell:
    """What KernelCheckpoints uses of an IPython shell."""

    def __init__(self, **variables: object) -> None:
        self.user_ns: dict = dict(variables)
        self.user_ns_hidden: dict = {}


def test_a_notice_while_the_kernel_exits_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    """A move shut the kernel down (its checkpoint taken), then a notice came while the
    process exited, after IPython had emptied the namespace: that empty namespace became
    the latest checkpoint, and the kernel resumed with no variables (found by the churn
    test in test_races.py)."""
    from jupyter_lowcost.kernel.checkpointing import KernelCheckpoints

    shell = _Shell(weights=[0.5, 0.25], step=42)
    kept = KernelCheckpoints(shell, str(tmp_path), "cell")
    kept._at_shutdown()  # the move's graceful shutdown
    latest = kept.store.latest()
    shell.user_ns.clear()  # IPython at exit
    kept._at_notice(None)
    assert kept.store.latest() == latest
    assert set(kept.store.manifest(latest)["variables"]) == {"weights", "step"}
    kept.store.close()

    # A notice never writes an empty namespace over a checkpoint that has variables.
    shell = _Shell(x=1)
    other = KernelCheckpoints(shell, str(tmp_path / "other"), "cell")
    other.checkpoint()
    shell.user_ns.clear()
    other._at_notice(None)
    assert set(other.store.manifest(other.store.latest())["variables"]) == {"x"}
    other.store.close()
