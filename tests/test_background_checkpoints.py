"""Checkpoints after a cell are written in the background: what the cell's reply no longer
waits for, and what must still hold (kernel/checkpointing.py, storage/checkpoints.py).

The store's snapshot is consistent (a change after it is not in the checkpoint), unchanged
immutable variables are not pickled again, a write in flight is finished before a notice's
checkpoint, a cell end during a write leaves its checkpoint to a later one (the next cell
end, or the kernel idle), and a kernel killed in the middle of a write resumes from the
checkpoint before it, whole.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from extension_kernel import ExtensionKernel

from jupyter_lowcost.kernel import checkpointing, interruption
from jupyter_lowcost.kernel.checkpointing import KernelCheckpoints
from jupyter_lowcost.storage import checkpoints as store_module
from jupyter_lowcost.storage.checkpoints import CheckpointStore, StagingTooLarge


class _Shell:
    """What KernelCheckpoints uses of an IPython shell."""

    def __init__(self, **variables: object) -> None:
        self.user_ns: dict = dict(variables)
        self.user_ns_hidden: dict = {}


class _HeldWrites:
    """Makes a store's background writes wait until the test lets them go."""

    def __init__(self, store: CheckpointStore) -> None:
        self.started = threading.Event()
        self.go = threading.Event()
        original = store.write

        def write(snapshot: Any, pause: Any = None) -> Any:
            self.started.set()
            assert self.go.wait(30), "the test never let the write go"
            return original(snapshot, pause)

        store.write = write  # type: ignore[method-assign]


def _a_write_in_flight(tmp_path: Path) -> tuple[_Shell, KernelCheckpoints, _HeldWrites]:
    """A kernel's checkpoints (``x = 1``) after a cell whose write the test holds."""
    shell = _Shell(x=1)
    kept = KernelCheckpoints(shell, str(tmp_path), "cell")
    held = _HeldWrites(kept.store)
    kept._after_cell()
    assert held.started.wait(10)
    return shell, kept, held


def _restored(directory: Path, checkpoint_id: str | None = None) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    CheckpointStore(directory).load(checkpoint_id, into=namespace)
    return namespace


def _call_with_timeout(action: Any, timeout: float = 10) -> None:
    """Run ``action`` in a thread; fail if it has not returned within ``timeout`` (a cell
    end that waits for the write would hang here)."""
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as err:  # (re-raised in the test's thread)
            errors.append(err)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout), f"{action} waited for the checkpoint's write"
    if errors:
        raise errors[0]


def test_a_snapshot_is_what_the_namespace_was_when_it_was_taken(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, chunk_size=1024 * 1024, watch_writes=False)
    big = np.arange(8 * 1024 * 1024, dtype=np.int64)  # 64 MiB
    config = {"lr": 0.1}
    snapshot = store.snapshot({"big": big, "config": config}, stage=True)
    big += 1  # the next cell, while the write has not started
    config["lr"] = 0.2
    store.write(snapshot)
    big[5] = -1
    store.write(store.snapshot({"big": big, "config": config}, stage=True))
    first, second = store.checkpoint_ids()
    old = _restored(tmp_path, first)
    assert old["config"] == {"lr": 0.1}
    assert old["big"][0] == 0 and old["big"][-1] == 8 * 1024 * 1024 - 1
    new = _restored(tmp_path, second)
    assert new["config"] == {"lr": 0.2}
    assert new["big"][5] == -1 and new["big"][6] == 7
    store.close()


def test_only_changed_chunks_of_a_staged_buffer_are_written_again(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, chunk_size=1024 * 1024, watch_writes=False)
    big = np.zeros(4 * 1024 * 1024, dtype=np.float64)  # 32 MiB, 32 chunks
    store.write(store.snapshot({"big": big}, stage=True))
    big[123_456] = 7.0
    report = store.write(store.snapshot({"big": big}, stage=True))
    assert report.bytes_written <= 1024 * 1024 + 4096  # one chunk (and a small stream)
    assert _restored(tmp_path)["big"][123_456] == 7.0
    store.close()


def test_unchanged_immutable_variables_are_not_pickled_again(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    namespace: dict[str, Any] = {f"v{i}": (i, float(i), f"s{i}")[i % 3] for i in range(20000)}
    namespace["items"] = [1, 2]
    namespace["pair"] = (1, "a")
    store.save(namespace)
    for step in range(5):  # more checkpoints than are kept: old streams must stay
        namespace[f"v{step}"] = f"changed {step}"
        namespace["items"].append(step)  # mutable, changed in place
        snapshot = store.snapshot(namespace)
        store.write(snapshot)
        # Pickled: the changed variable and the mutable one; not the 20,000 others.
        assert set(snapshot.pending) == {f"v{step}", "items"}
    restored = _restored(tmp_path)
    assert restored["items"] == [1, 2, 0, 1, 2, 3, 4]
    assert restored["pair"] == (1, "a")
    assert [restored[f"v{i}"] for i in range(5)] == [f"changed {i}" for i in range(5)]
    assert all(restored[f"v{i}"] == namespace[f"v{i}"] for i in range(20000))
    store.close()


def test_small_containers_are_pickled_together_and_keep_what_they_share(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(tmp_path)
    namespace: dict[str, Any] = {f"row{i}": [i, str(i)] for i in range(200)}
    namespace["layers"] = [64, 32]
    namespace["config"] = {"layers": namespace["layers"], "lr": 0.1}
    namespace["model"] = SimpleNamespace(config=namespace["config"], weights=list(range(500)))
    store.save(namespace)
    namespace["row7"].append("changed in place")
    report = store.save(namespace)
    manifest = store.manifest(report.checkpoint_id)
    assert manifest["batch"] is not None and manifest["variables"]["row3"] == {
        "batch": True,
        "type": "list",
    }
    restored = _restored(tmp_path)
    assert restored["row7"] == [7, "7", "changed in place"]
    assert [restored[f"row{i}"] for i in range(200) if i != 7] == [
        [i, str(i)] for i in range(200) if i != 7
    ]
    # One object, as in the kernel: the model's config is the config variable.
    assert restored["model"].config is restored["config"]
    assert restored["config"]["layers"] is restored["layers"]
    store.close()


def test_small_containers_that_cannot_go_together_are_pickled_one_by_one(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(tmp_path)
    namespace: dict[str, Any] = {f"row{i}": [i] for i in range(100)}
    namespace["with_generator"] = [1, (x for x in range(3))]
    report = store.save(namespace)
    assert store.manifest(report.checkpoint_id)["batch"] is None
    assert [s.name for s in report.skipped] == ["with_generator"]
    restored = _restored(tmp_path)
    assert restored["row99"] == [99] and "with_generator" not in restored

    # Objects of a class the notebook defined: restored after that class, in order. (As in
    # a kernel, where the notebook's namespace is __main__'s.)
    del namespace["with_generator"]
    import __main__

    saved_main = dict(vars(__main__))
    try:
        exec("class Point:\n    def __init__(self, x): self.x = x\n", vars(__main__))
        points = {"Point": vars(__main__)["Point"], "points": [vars(__main__)["Point"](1)]}
        report = store.save({**points, **namespace})
        assert store.manifest(report.checkpoint_id)["batch"] is None
        del vars(__main__)["Point"]  # a new kernel
        CheckpointStore(tmp_path).load(into=vars(__main__))
        assert [p.x for p in vars(__main__)["points"]] == [1]
        assert vars(__main__)["row5"] == [5]
    finally:
        for name in set(vars(__main__)) - set(saved_main):
            del vars(__main__)[name]
        vars(__main__).update(saved_main)

    namespace["with_array"] = [np.arange(1024 * 1024)]  # a large buffer: out of band
    report = store.save(namespace)
    manifest = store.manifest(report.checkpoint_id)
    assert manifest["batch"] is None
    assert manifest["variables"]["with_array"]["buffers"][0]["size"] == 8 * 1024 * 1024
    assert _restored(tmp_path)["with_array"][0][-1] == 1024 * 1024 - 1
    store.close()


def test_a_notebook_function_after_a_restore_uses_the_restored_variables(
    tmp_path: Path,
) -> None:
    # (It used to come back with copies of the globals it used: after a resume, train()
    # trained a copy of the model, and the notebook's own model stayed as it was.)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(
        "counter = [0]\n"
        "def bump(by=1):\n"
        "    counter[0] += by\n"
        "    return counter[0]\n"
        "def outer():\n"
        "    seen = []\n"
        "    def inner(x):\n"
        "        seen.append(x)\n"
        "        return len(seen)\n"
        "    return inner\n"
        "keep = outer()\n"
        "keep(1)\n",
        namespace,
    )
    store = CheckpointStore(tmp_path)
    saved = store.save({k: namespace[k] for k in ("counter", "bump", "keep")})
    assert saved.skipped == []
    restored: dict[str, Any] = {"__name__": "__main__"}
    store.load(into=restored)
    assert restored["bump"](2) == 2
    assert restored["counter"] == [2]  # the restored variable, not a copy
    assert restored["bump"].__globals__ is restored
    assert restored["keep"](5) == 2  # its closure came back with it
    store.close()


def test_a_cell_end_does_not_wait_for_the_write(tmp_path: Path) -> None:
    shell = _Shell(x=1)
    kept = KernelCheckpoints(shell, str(tmp_path), "cell")
    held = _HeldWrites(kept.store)
    _call_with_timeout(kept._after_cell)
    assert held.started.wait(10)
    assert kept.writing is not None and kept.store.latest() is None
    held.go.set()
    assert kept.wait_for_write(30)
    assert kept.store.latest() is not None and kept.last_save is not None
    assert _restored(tmp_path) == {"x": 1}
    kept.store.close()


def test_a_cell_end_during_a_write_leaves_its_checkpoint_to_the_next(tmp_path: Path) -> None:
    shell, kept, held = _a_write_in_flight(tmp_path)
    shell.user_ns["x"] = 2
    _call_with_timeout(kept._after_cell)  # a write is in flight: nothing waits for it
    assert kept.cells_left_pending == 1
    held.go.set()
    assert kept.wait_for_write(30)
    assert _restored(tmp_path) == {"x": 1}
    shell.user_ns["x"] = 3
    kept._after_cell()  # the next cell end takes the pending one
    assert kept.wait_for_write(30)
    assert _restored(tmp_path) == {"x": 3}
    assert len(kept.store.checkpoint_ids()) == 2
    kept.store.close()


def _last_cell_in_the_loop(kept: KernelCheckpoints, last_cell: Any) -> None:
    """Run ``last_cell`` in an asyncio loop (as ipykernel runs cells: the kernel finds the
    loop), then leave the kernel idle until its second checkpoint is written (15 s at
    most; the test then checks what was written)."""

    async def cells() -> None:
        last_cell()
        for _ in range(300):  # no more cells: the idle kernel writes the pending one
            if len(kept.store.checkpoint_ids()) == 2 and kept.writing is None:
                return
            await asyncio.sleep(0.05)

    asyncio.run(cells())


def test_a_pending_checkpoint_is_taken_once_the_kernel_is_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpointing, "IDLE_DELAY", 0.2)
    shell, kept, held = _a_write_in_flight(tmp_path)

    def last_cell() -> None:
        shell.user_ns["x"] = 2
        kept._after_cell()  # its checkpoint is left pending
        held.go.set()

    _last_cell_in_the_loop(kept, last_cell)
    assert kept.store.checkpoint_ids() and _restored(tmp_path) == {"x": 2}
    kept.store.close()


class _WriterFinishesDuringTheTry:
    """The kernel's lock, as the writer thread finishing at the worst moment sees it: a
    cell end's try of the lock fails, and the writer then releases it and ends, before
    that cell end's next step."""

    def __init__(self, lock: Any, held: _HeldWrites) -> None:
        self.lock, self.held, self.armed = lock, held, True

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self.lock.acquire(blocking, timeout)
        if not got and not blocking and self.armed:
            self.armed = False
            self.held.go.set()
            for thread in threading.enumerate():
                if thread.name == "lowcost-checkpoint-writer":
                    thread.join(30)
        return got

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_a_write_that_ends_as_a_cell_end_finds_it_leaves_the_idle_kernel_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody took the last cell's checkpoint when the writer ended between a cell end's
    failed try of the lock and its marking the checkpoint pending: it was lost until
    another cell ran."""
    monkeypatch.setattr(checkpointing, "IDLE_DELAY", 0.2)
    shell, kept, held = _a_write_in_flight(tmp_path)
    kept._lock = _WriterFinishesDuringTheTry(kept._lock, held)  # type: ignore[assignment]

    def last_cell() -> None:
        shell.user_ns["x"] = 2
        kept._after_cell()  # the writer ends as this tries the lock
        assert kept.writing is None  # (the writer did end there)

    _last_cell_in_the_loop(kept, last_cell)
    assert _restored(tmp_path) == {"x": 2}
    kept.store.close()


def test_settle_writes_the_pending_checkpoint_and_waits_for_it(tmp_path: Path) -> None:
    shell, kept, held = _a_write_in_flight(tmp_path)
    shell.user_ns["x"] = 2
    kept._after_cell()  # left pending: no asyncio loop here, nobody would take it
    threading.Timer(0.2, held.go.set).start()
    assert kept.settle(30)
    assert kept.writing is None and not kept._pending
    assert _restored(tmp_path) == {"x": 2}
    kept.store.close()


def _a_notice(seconds: float) -> interruption.Notice:
    notice = interruption.Notice()
    notice.deadline = time.time() + seconds
    notice._event.set()
    return notice


def test_a_notice_finishes_the_write_of_the_newest_state_then_checkpoints(
    tmp_path: Path,
) -> None:
    _, kept, held = _a_write_in_flight(tmp_path)  # (no cell since: the newest state)
    threading.Timer(0.3, held.go.set).start()
    kept._at_notice(_a_notice(30))  # (the signal handler, in the main thread)
    first, second = kept.store.checkpoint_ids()
    assert _restored(tmp_path, first) == _restored(tmp_path, second) == {"x": 1}
    kept.store.close()


def test_the_checkpoints_hold_everything_only_once_the_last_ended_cell_is_written(
    tmp_path: Path,
) -> None:
    """What lets the launcher of an instance being taken away end it early (a pod): the
    latest checkpoint written holds every cell that ended, none runs, none is in flight."""
    shell = _Shell(x=1)
    kept = KernelCheckpoints(shell, str(tmp_path), "cell")
    held = _HeldWrites(kept.store)
    assert not kept.holds_everything()  # (nothing written yet)
    kept._before_cell()
    kept._after_cell()
    assert held.started.wait(10)
    assert not kept.holds_everything()  # (its write is in flight)
    held.go.set()
    assert kept.wait_for_write(30)
    assert kept.holds_everything()
    # A notice during a cell: its checkpoint holds half of the cell, not the cell.
    kept._before_cell()
    shell.user_ns["y"] = 2
    kept._at_notice(_a_notice(30))
    assert _restored(tmp_path) == {"x": 1, "y": 2}
    assert not kept.holds_everything()
    # The cell ends: its own checkpoint (written during the notice) holds it.
    kept._after_cell()
    assert kept.wait_for_write(30)
    assert kept.holds_everything()
    # A failed write: the latest checkpoint is older than the namespace.
    kept.last_failure = (time.time(), "No space left on device")
    assert not kept.holds_everything()
    kept.store.close()


class _WriteHeldMidway:
    """Holds a store's background write after ``pieces`` pieces of its work (its pauses:
    one before each chunk of a buffer), until the test lets it go."""

    def __init__(self, store: CheckpointStore, pieces: int) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()
        original = store.write

        def write(snapshot: Any, pause: Any = None) -> Any:
            done = 0

            def held_pause() -> None:
                nonlocal done
                done += 1
                if done == pieces:
                    self.reached.set()
                    assert self.go.wait(30), "the test never let the write go"
                if pause is not None:
                    pause()

            return original(snapshot, held_pause)

        store.write = write  # type: ignore[method-assign]


def test_a_notice_during_the_write_of_an_older_state_writes_the_newest_first(
    tmp_path: Path,
) -> None:
    """A notice used to wait for the write in flight, of the state before the last cells,
    for the notice's time less a second: a large write did not make it, nor did the last
    cells. The write in flight gives way: the newest state is written at once."""
    shell = _Shell(x=1)
    kept = KernelCheckpoints(shell, str(tmp_path), "cell")
    kept.store.chunk_size = 1024 * 1024
    kept.checkpoint()
    shell.user_ns["big"] = np.arange(4 * 1024 * 1024, dtype=np.int64)  # 32 chunks
    held = _WriteHeldMidway(kept.store, pieces=10)
    kept._before_cell()
    kept._after_cell()  # the cell that made big: its write goes on in the background
    assert held.reached.wait(10) and kept.writing is not None
    kept._before_cell()  # the next cell runs when the notice comes
    shell.user_ns["x"] = 2
    threading.Timer(0.2, held.go.set).start()
    kept._at_notice(_a_notice(30))
    assert kept.writing is None and kept.notice_handled_at is not None
    first, second = kept.store.checkpoint_ids()
    assert _restored(tmp_path, first) == {"x": 1}
    newest = _restored(tmp_path, second)
    assert newest["x"] == 2 and newest["big"][-1] == 4 * 1024 * 1024 - 1
    # Nothing is left of the write that gave way (its chunks are deleted).
    named = set().union(
        *(store_module._chunks_of(kept.store.manifest(i)) for i in kept.store.checkpoint_ids())
    )
    assert {n for n in os.listdir(tmp_path / "chunks") if not n.startswith(".")} == named
    kept.store.close()


def test_a_notice_too_close_to_its_deadline_leaves_the_write_in_flight(
    tmp_path: Path,
) -> None:
    shell, kept, held = _a_write_in_flight(tmp_path)
    notice = interruption.Notice()
    notice.deadline = time.time() + 0.5  # no time to wait for the write
    notice._event.set()
    _call_with_timeout(lambda: kept._at_notice(notice))
    held.go.set()
    assert kept.wait_for_write(30)
    assert kept.store.checkpoint_ids() == ["00000001"]  # the one in flight, whole
    kept.store.close()


def test_a_copy_too_large_for_memory_is_written_before_the_cell_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(store_module, "_memory_available", lambda: 1024 * 1024)
    store = CheckpointStore(tmp_path / "store")
    with pytest.raises(StagingTooLarge, match="would not fit in memory"):
        store.snapshot({"big": np.zeros(1024 * 1024)}, stage=True)
    store.close()
    shell = _Shell(big=np.ones(1024 * 1024))
    kept = KernelCheckpoints(shell, str(tmp_path / "kernel"), "cell")
    kept._after_cell()
    assert kept.writing is None and kept.store.latest() is not None
    assert _restored(tmp_path / "kernel")["big"].sum() == 1024 * 1024
    assert "written before the cell ends" in capfd.readouterr().err
    kept.store.close()


# -- a job's kernel (issue 32) --------------------------------------------------------------


def test_a_job_cell_end_hands_its_write_over_and_the_next_waits_for_it(tmp_path: Path) -> None:
    """A job's cell end does not wait for its own checkpoint's write, but the next cell's
    end waits for it (not left pending): every cell gets its own checkpoint, each the
    state at its cell's end, and the snapshot does not see what the next cell changes."""
    shell = _Shell(big=np.zeros(1024 * 1024), x=1)
    kept = KernelCheckpoints(shell, str(tmp_path), "cell", job=True)
    held = _HeldWrites(kept.store)
    _call_with_timeout(kept._after_cell)  # (held: its write is in flight)
    assert held.started.wait(10)
    assert kept.writing is not None and kept.store.latest() is None
    kept._before_cell()
    assert not kept.states.cell_holds_writer()  # (a job's writer never pauses for a cell)
    shell.user_ns["x"] = 2
    shell.user_ns["big"][0] = 5.0  # (the next cell changes the buffer the snapshot copied)
    second = threading.Thread(target=kept._after_cell, daemon=True)
    second.start()
    second.join(0.3)
    assert second.is_alive()  # its end waits for the write in flight
    assert kept.cells_left_pending == 0
    held.go.set()
    second.join(30)
    assert not second.is_alive()
    assert kept.wait_for_write(30)
    first_id, second_id = kept.store.checkpoint_ids()
    first, latest = _restored(tmp_path, first_id), _restored(tmp_path, second_id)
    assert first["x"] == 1 and first["big"][0] == 0.0
    assert latest["x"] == 2 and latest["big"][0] == 5.0
    kept.store.close()


def test_a_job_cell_end_checkpoints_an_empty_namespace_too(tmp_path: Path) -> None:
    """Its runner marks each cell done by its checkpoint: one even with no variables."""
    kept = KernelCheckpoints(_Shell(), str(tmp_path), "cell", job=True)
    kept._after_cell()
    assert kept.wait_for_write(30)
    assert len(kept.store.checkpoint_ids()) == 1
    kept.store.close()


def test_a_job_copy_too_large_for_memory_is_written_before_the_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(store_module, "_memory_available", lambda: 1024 * 1024)
    kept = KernelCheckpoints(_Shell(big=np.ones(1024 * 1024)), str(tmp_path), "cell", job=True)
    kept._after_cell()
    assert kept.writing is None and kept.store.latest() is not None
    assert "written before the cell ends" in capfd.readouterr().err
    kept.store.close()


# -- a real kernel -------------------------------------------------------------------------


def _manifest_count(directory: Path) -> int:
    return len(list((directory / "manifests").glob("*.json")))


def test_a_kernel_killed_during_a_background_write_resumes_from_the_one_before(
    tmp_path: Path,
) -> None:
    kernel = ExtensionKernel(tmp_path)
    try:
        kernel.run("x = 1")
        deadline = time.monotonic() + 60
        while _manifest_count(tmp_path) < 1:
            assert time.monotonic() < deadline, "the first checkpoint was never written"
            time.sleep(0.05)
        kernel.run("import numpy as np\nbig = np.ones(64 * 1024 * 1024)\nx = 2")  # 512 MiB
        # The reply came; the write of 512 MiB waits while the next cell runs.
        state = kernel.run(
            "from jupyter_lowcost.kernel.checkpointing import installed\n"
            "print(installed().writing is not None, installed().store.latest())"
        )
        assert state.split() == ["True", "00000001"]
        kernel.send("import time; time.sleep(30)")
        time.sleep(0.5)
    finally:
        kernel.stop(kill=True)  # during the write
    store = CheckpointStore(tmp_path)
    assert store.checkpoint_ids() == ["00000001"]
    assert _restored(tmp_path) == {"x": 1}
    # The next kernel's first write deletes what the killed one left half written.
    store.save({"x": 3})
    named = set().union(
        *(store_module._chunks_of(store.manifest(i)) for i in store.checkpoint_ids())
    )
    assert {n for n in os.listdir(tmp_path / "chunks") if not n.startswith(".")} <= named
    store.close()
