"""The checkpoint store: what comes back, what does not, incremental writes, atomicity."""

from __future__ import annotations

import gc
import importlib
import marshal
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jupyter_lowcost.storage import atomic as atomic_module
from jupyter_lowcost.storage import checkpoints as store_module
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
    # Each kept checkpoint: one buffer chunk, and one pickle stream (in a pack, shared
    # when equal: here the first checkpoint's pack holds it for all of them).
    assert len([p for p in chunks if not p.name.startswith(("s", "p"))]) == 3
    assert len([p for p in chunks if p.name.startswith("p")]) == 1
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


def test_notebook_functions_of_checkpoints_written_before_the_split_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints written before the store was split into modules name the restorer of
    notebook functions ``jupyter_lowcost.storage.checkpoints._restore_notebook_function``,
    with no globals among its arguments: their functions come back bound to the
    namespace restored into."""
    namespace: dict = {}
    exec("def scaled(x):\n    return x * scale\n", namespace)
    code = marshal.dumps(namespace["scaled"].__code__)

    def old_restorer(*saved: object) -> None:
        raise AssertionError("the unpickler restores the function itself")

    old_restorer.__module__ = "jupyter_lowcost.storage.checkpoints"
    old_restorer.__qualname__ = "_restore_notebook_function"

    class WrittenBeforeTheSplit:
        def __reduce__(self) -> tuple:
            saved = (tuple(sys.version_info[:2]), code, "scaled", "scaled", None, None, None)
            return (old_restorer, (*saved, "doc", None))

    # (the stream names the restorer where the store's module had it)
    monkeypatch.setattr(store_module, "_restore_notebook_function", old_restorer)
    saved = CheckpointStore(tmp_path).save({"scaled": WrittenBeforeTheSplit(), "scale": 4})
    assert saved.skipped == []
    monkeypatch.undo()
    restored: dict = {}
    report = CheckpointStore(tmp_path).load(into=restored)
    assert report.not_restored == []
    assert restored["scaled"].__globals__ is restored
    assert restored["scaled"](2) == 8 and restored["scaled"].__doc__ == "doc"


class _Shell:
    """What KernelCheckpoints uses of an IPython shell."""

    def __init__(self, **variables: object) -> None:
        self.user_ns: dict = dict(variables)
        self.user_ns_hidden: dict = {}
        self.events = types.SimpleNamespace(register=lambda *a: None, unregister=lambda *a: None)


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


def _import_from_folder(
    folder: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> types.ModuleType:
    """``sys.path.insert(0, "../src"); import NAME`` as a notebook does: a module that only
    that folder on ``sys.path`` makes importable."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(
        textwrap.dedent(
            """
            class Trainer:
                def __init__(self, layers):
                    self.layers = layers
                    self.name = "trainer"
            """
        )
    )
    monkeypatch.setattr(sys, "path", [str(folder), *sys.path])
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


def _a_fresh_process(name: str, monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """What a resumed kernel starts with: the module not imported, its folder not on
    ``sys.path``."""
    monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(folder)])
    importlib.invalidate_caches()


def test_a_variable_that_cannot_be_restored_costs_only_the_variables_that_share_its_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 27, 3: a class imported from a folder the notebook put on sys.path cost every
    variable saved after its object ("saved after model, which could not be restored").
    Only the variables that are or hold that object are lost now; those that hold other
    objects it held (an array, its strings, numpy's dtypes) come back."""
    src = tmp_path / "src"
    lib = _import_from_folder(src, "trainer_lib_27", monkeypatch)
    model = lib.Trainer([np.ones(4), np.zeros(3)])
    weights = np.random.default_rng(1).random(1000)  # numpy's objects: first saved by model
    history = [{"epoch": i, "loss": 1.0 / (i + 1)} for i in range(100)]
    results = {"name": model.name, "accuracy": 0.93}  # model's own string object
    model_state = {"weights": weights, "step": 100}
    trainers = {"best": model, "runs": 3}  # holds the object that cannot come back
    namespace = {
        "model": model,
        "first_layer": model.layers[0],  # an array model holds
        "weights": weights,
        "history": history,
        "results": results,
        "model_state": model_state,
        "trainers": trainers,
        "later": [model.layers[0], 7],  # that array again, saved after first_layer
        "all_runs": [trainers, 1],  # holds what holds model
        "last": list(range(100)),
    }
    store = CheckpointStore(tmp_path / "checkpoints")
    assert store.save(namespace).skipped == []

    _a_fresh_process("trainer_lib_27", monkeypatch, src)
    shutil.rmtree(src)  # and the folder is gone: sys.path alone would not bring it back
    restored: dict = {}
    report = store.load(into=restored)
    why = {s.name: s.why for s in report.not_restored}
    assert set(why) == {"model", "trainers", "all_runs"}
    assert "trainer_lib_27.Trainer cannot be imported" in why["model"]
    assert why["trainers"] == "refers to an object of model, which could not be restored"
    assert why["all_runs"] == "refers to an object of trainers, which could not be restored"
    assert np.array_equal(restored["weights"], weights)
    assert restored["history"] == history
    assert restored["results"] == results
    assert restored["model_state"]["step"] == 100
    assert restored["model_state"]["weights"] is restored["weights"]
    assert np.array_equal(restored["first_layer"], np.ones(4))
    assert restored["later"][0] is restored["first_layer"]
    assert restored["last"] == list(range(100))
    assert set(report.variables) == set(namespace) - set(why)


def test_the_folders_a_notebook_put_on_sys_path_come_back_before_its_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_lowcost.kernel.checkpointing import KernelCheckpoints

    shell = _Shell()
    kept = KernelCheckpoints(shell, str(tmp_path / "checkpoints"), "cell")
    # The notebook's first cells: sys.path.insert(0, "../src"); from trainer_lib import ...
    src = tmp_path / "src"
    lib = _import_from_folder(src, "trainer_lib_27b", monkeypatch)
    sys.path.append(str(tmp_path / "extra"))
    shell.user_ns.update(model=lib.Trainer([1, 2]), weights=np.arange(5))
    kept.checkpoint()
    kept.store.close()

    _a_fresh_process("trainer_lib_27b", monkeypatch, src)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "extra")])
    started_with = list(sys.path)
    resumed = KernelCheckpoints(_Shell(), str(tmp_path / "checkpoints"), "cell")
    report = resumed.restore()
    assert report.not_restored == []
    model = resumed.shell.user_ns["model"]
    assert type(model).__name__ == "Trainer" and model.layers == [1, 2]
    assert sys.path == [str(src), *started_with, str(tmp_path / "extra")]
    # The resumed kernel's own checkpoints keep them (they are the notebook's additions).
    resumed.checkpoint()
    assert resumed.store.manifest(resumed.store.latest())["sys_path"] == {
        "front": [str(src)],
        "end": [str(tmp_path / "extra")],
    }
    resumed.store.close()


def test_small_variables_and_aliases_are_restored_each_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The small containers are saved together, in one stream: one of them that cannot be
    restored cost them all, and every variable after them (2,000 here)."""
    src = tmp_path / "src"
    lib = _import_from_folder(src, "trainer_lib_27c", monkeypatch)
    inner = ["shared"]
    namespace: dict = {f"small{i}": [i, str(i)] for i in range(100)}
    namespace["small40"] = [lib.Trainer([1]), inner]  # cannot come back
    namespace["small41"] = [inner]  # holds an object small40 holds
    namespace["small42"] = [namespace["small40"]]  # holds small40
    namespace["again"] = namespace["small40"]  # b = a
    for i in range(1000):
        namespace[f"array{i}"] = np.full(3, i)
        namespace[f"big_list{i}"] = list(range(i, i + 70))  # not small: a stream each
    namespace["everything"] = (namespace["small3"], namespace["array7"])
    store = CheckpointStore(tmp_path / "checkpoints")
    saved = store.save(namespace)
    assert saved.skipped == []
    assert store.manifest(store.latest())["batch"] is not None  # (saved together)

    _a_fresh_process("trainer_lib_27c", monkeypatch, src)
    restored: dict = {}
    report = store.load(into=restored)
    why = {s.name: s.why for s in report.not_restored}
    assert set(why) == {"small40", "small42", "again"}
    assert "trainer_lib_27c.Trainer cannot be imported" in why["small40"]
    assert why["small42"] == "refers to an object of small40, which could not be restored"
    assert why["again"] == "the same object as small40, which could not be restored"
    for name, value in namespace.items():
        if name not in why and name != "everything":
            assert np.array_equal(restored[name], value), name
    assert restored["small41"] == [["shared"]]
    assert restored["everything"][0] is restored["small3"]
    assert restored["everything"][1] is restored["array7"]


def test_open_files_are_reopened_at_their_position_or_reported(tmp_path: Path) -> None:
    """An open file came back as a StringIO of its contents, and nothing said so."""
    text = tmp_path / "data.csv"
    text.write_text("a,b\n1,2\n3,4\n")
    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(100)))
    reading = open(text)  # noqa: SIM115 (open across the checkpoint, as in a notebook)
    assert reading.readline() == "a,b\n"
    raw = open(binary, "rb")  # noqa: SIM115
    raw.read(10)
    updating = open(binary, "r+b")  # noqa: SIM115
    updating.seek(50)
    log = open(tmp_path / "train.log", "a")  # noqa: SIM115
    log.write("epoch 1\n")
    out = open(tmp_path / "out.txt", "w")  # noqa: SIM115
    out.write("written before the interruption\n")
    doomed = tmp_path / "doomed.txt"
    doomed.write_text("x")
    gone = open(doomed)  # noqa: SIM115
    with open(text) as done:
        pass
    namespace = {
        "reading": reading,
        "raw": raw,
        "updating": updating,
        "log": log,
        "out": out,
        "gone": gone,
        "done": done,
        "files": [reading, raw],
    }
    store = CheckpointStore(tmp_path / "checkpoints")
    assert store.save(namespace).skipped == []
    for file in namespace.values():
        if hasattr(file, "close"):
            file.close()
    doomed.unlink()

    restored: dict = {}
    report = store.load(into=restored)
    try:
        why = {s.name: s.why for s in report.not_restored}
        assert set(why) == {"out", "gone"}
        assert "no longer exists" in why["gone"] and "gone" not in restored
        assert restored["reading"].mode == "r"
        assert restored["reading"].readline() == "1,2\n"
        assert restored["raw"].read(3) == bytes([10, 11, 12])
        assert restored["files"][0] is restored["reading"]
        assert restored["updating"].tell() == 50 and restored["updating"].read(1) == b"2"
        restored["log"].write("epoch 2\n")
        restored["log"].flush()
        assert (tmp_path / "train.log").read_text() == "epoch 1\nepoch 2\n"
        # Reopening "w" would have emptied the file: reopened for reading, and said so.
        assert "read" in why["out"] and "'w'" in why["out"]
        assert (tmp_path / "out.txt").read_text() == "written before the interruption\n"
        assert restored["out"].readable() and not restored["out"].writable()
        assert restored["done"].closed and restored["done"].name == str(text)
    finally:
        for value in restored.values():
            if hasattr(value, "close"):
                value.close()
