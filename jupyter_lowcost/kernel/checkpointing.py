"""Checkpoints inside a kernel: when to take them, restoring at start, telling the server.

``load_ipython_extension`` (every kernel a server with jupyter-lowcost starts) calls
:func:`install`; ``%lowcost checkpoint|restore|checkpoints`` call the installed
:class:`KernelCheckpoints`. The server says, in the kernel's environment, where the
checkpoints go (a directory the instance's loss cannot take: by default the Jupyter
server's data directory), when to take them, and whether this start is a resume.

A cell's reply does not wait for its checkpoint: after the cell, a snapshot of the
namespace is taken (its variables pickled, their large buffers copied; only what changed
costs anything) and a writer thread writes it while the next cells run. One write at a
time: a cell that ends while one is in flight leaves its checkpoint to the next cell's end,
or to a moment when the kernel has been idle for :data:`IDLE_DELAY` seconds, so that the
last state is always written soon. A shutdown and ``%lowcost checkpoint`` finish the
write in flight first; a notice does too when that write holds the newest state, and
otherwise stops it (what it wrote is deleted) and writes the newest state at once: the
notice's seconds go to the newest state first. A checkpoint the instance's loss
interrupts has no manifest, and the one before it is the latest: never a torn one.

Each checkpoint's history says after which cell it was taken (its execution count), and
the kernel notes in its checkpoint directory the cell it starts (:data:`LAST_CELL_FILE`):
a resumed kernel tells which cells' changes the checkpoint it came back from misses. A job's kernel writes
each cell's checkpoint before the reply: the job marks that cell done by it. A job's
kernel is asked for exactly the checkpoint after the last cell its runner saw complete
(never "the latest", see ``server/instances/launches.py``), and tells the runner what
came back (:func:`job_resume_state`).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import os
import sys
import threading
import time
from typing import Any

from .. import env
from ..storage.checkpoints import (
    CheckpointStore,
    CheckpointWriteFailed,
    RestoreReport,
    SaveReport,
    Snapshot,
    StagingTooLarge,
    sys_path_additions,
    user_variables,
)
from ..words import resume_point
from . import interruption, ipykernel_adapters
from .interruption import add_final_notice_callback

_installed: KernelCheckpoints | None = None

#: Seconds without a cell after which a checkpoint left pending by a busy writer is taken.
IDLE_DELAY = 1.0
#: The writer waits while a cell runs and for :data:`QUIET_AFTER_CELL` seconds after one
#: ends (its reply goes out, the next cell of a run of cells comes in), for at most this
#: many seconds in all per write: a quick run of cells has the machine to itself, a long
#: cell shares it with the write.
WRITER_PATIENCE = 2.0
QUIET_AFTER_CELL = 0.02
#: In the checkpoint directory: the execution count of the last cell the kernel started.
LAST_CELL_FILE = "last_cell"


class _GaveWay(CheckpointWriteFailed):
    """The background write in flight stops for a newer state's (at a notice): like any
    failed write, what it wrote is deleted and the checkpoint before it stays the latest."""


class KernelCheckpoints:
    """The checkpoints of this kernel's namespace."""

    def __init__(self, shell: Any, directory: str, when: str, job: bool = False) -> None:
        self.shell = shell
        #: The kernel runs a job's cells: a checkpoint after every cell and only there
        #: (a notice's or a shutdown's would hold half a cell, which the job runs again).
        self.job = job
        # No write watch: its page faults after each checkpoint slow every write to a large
        # array (4x for ``a += 1``); the writer compares CRC32s of its copy instead.
        self.store = CheckpointStore(directory, watch_writes=False)
        #: ``sys.path`` as the kernel started: what the notebook adds to it is saved with
        #: each checkpoint, and put back before a restore's variables load.
        self.sys_path_at_start = list(sys.path)
        self.when = when
        self.interval = float(when.split(":", 1)[1]) if when.startswith("interval:") else 0.0
        self.last_save: SaveReport | None = None
        self.last_restore: RestoreReport | None = None
        #: The last checkpoint that could not be written: (when, why); None after a success.
        self.last_failure: tuple[float, str] | None = None
        self._last_time = time.monotonic()
        #: Held while the store is used: by the main thread for a snapshot or a whole
        #: checkpoint, and by the writer thread for the background write it was handed.
        self._lock = threading.Lock()
        #: The snapshot the writer thread is writing (None: no write in flight).
        self.writing: Snapshot | None = None
        self._written = threading.Condition()
        #: A checkpoint is due but was not taken (the writer was busy).
        self._pending = False
        #: The main thread is taking a snapshot or a checkpoint (a notice's handler, which
        #: runs in that thread, then leaves it to finish).
        self._snapshotting = False
        self._cell_running = False
        #: Set while no cell runs (the writer waits on it), or when the write must finish.
        self._writer_may_go = threading.Event()
        self._writer_may_go.set()
        #: The write in flight must finish now (a notice, a shutdown, a checkpoint asked for).
        self._hurry = False
        self._writer_waited = 0.0
        self._piece_started = time.monotonic()
        self._last_cell_end = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: What the background checkpoints cost the cells (the benchmark reads them):
        #: the last snapshots' seconds, and the cell ends that left theirs pending.
        self.snapshot_seconds: collections.deque[float] = collections.deque(maxlen=1000)
        self.cells_left_pending = 0
        self._unhide_pending: dict[str, Any] = {}
        #: True once the kernel shuts down: IPython empties the namespace on the way out,
        #: and a notice then must not save that as the latest checkpoint.
        self.closing = False
        #: When the last notice's checkpoint was done with: written, failed, or nothing
        #: to write (the launcher approves Azure's event then).
        self.notice_handled_at: float | None = None
        self._notice_follows_write = False
        #: The write in flight must stop (a notice: a newer state comes first).
        self._give_way = False
        #: Cells started so far, and how many had started when the snapshot being
        #: written was taken: a cell since then may have changed the namespace.
        self._cells_started = 0
        self._writing_cells = 0
        #: How many cells had ended when the namespace of the latest checkpoint written
        #: was taken (-1: none written yet).
        self._saved_cells = -1
        #: The last cell that ended (its execution count), and the one running (None
        #: between cells): a checkpoint's history says after which cell it was taken.
        self._last_cell = max(0, int(getattr(shell, "execution_count", 1) or 1) - 1)
        self._running_cell: int | None = None
        self._last_cell_fd: int | None = None

    def namespace(self) -> dict[str, Any]:
        """The user's variables, restored ones included: a notice or a move before the
        first cell after a resume must save what came back, not an empty namespace."""
        self._unhide_restored()
        return user_variables(self.shell.user_ns, self.shell.user_ns_hidden)

    def checkpoint(self, manual: bool = False) -> SaveReport:
        """Save the namespace now (``manual``: asked by the user, kept longer).

        A checkpoint that cannot be written (a full disk) raises
        :class:`CheckpointWriteFailed`; nothing of it is left, the previous checkpoint
        stays the latest, and the server is told (an event, shown by JupyterLab)."""
        self._finish_write_first()
        with self._lock:  # (a background write in flight holds it until it is written)
            self._pending = False
            cells = self._ended_cells()
            namespace = self.namespace()
            self._last_time = time.monotonic()
            self._snapshotting = threading.current_thread() is threading.main_thread()
            try:
                report = self.store.save(namespace, **self._manifest_fields(namespace, manual))
            except CheckpointWriteFailed as err:
                self._failed(err)
                raise
            finally:
                self._snapshotting = False
            self._saved(report)
            self._saved_cells = cells
            return report

    def holds_everything(self) -> bool:
        """Does the latest checkpoint hold the namespace as it is now? Written (not
        failed) after the last cell that ended, with no cell running, no write in
        flight or left pending; a kernel of one's own with checkpoints on (a job's
        checkpoints are its runner's). Asked by the launcher of an instance being taken
        away, which then ends at once (``launcher._leave_when_saved``)."""
        return (
            self.when != "off"
            and not self.job
            and self.last_failure is None
            and not self._cell_running
            and not self._pending
            and self.writing is None
            and self._saved_cells == self._ended_cells()
        )

    def _ended_cells(self) -> int:
        """The cells that have ended (a snapshot during a cell holds half of it)."""
        return self._cells_started - int(self._cell_running)

    def _manifest_fields(self, namespace: dict[str, Any], manual: bool) -> dict[str, Any]:
        return {
            "kernel_id": os.environ.get(env.KERNEL_ID),
            "manual": manual,
            "notebook": os.environ.get(env.NOTEBOOK) or os.environ.get("JPY_SESSION_NAME"),
            "history": self.history(namespace),
            "sys_path": sys_path_additions(self.sys_path_at_start),
        }

    def _saved(self, report: SaveReport) -> None:
        if self.last_failure is not None:
            self.last_failure = None
            _tell_server_in_background({"ok": True, "checkpoint_id": report.checkpoint_id})
        self.last_save = report
        if self._notice_follows_write:
            self._notice_follows_write = False
            self.notice_handled_at = time.time()

    def _failed(self, err: CheckpointWriteFailed) -> None:
        first = self.last_failure is None
        self.last_failure = (time.time(), str(err))
        if self._notice_follows_write:
            self._notice_follows_write = False
            self.notice_handled_at = time.time()
        if first:
            _tell_server_in_background(self._failure_report(str(err)))

    def checkpoint_in_background(self) -> bool:
        """Snapshot the namespace now and write it in the writer thread (the caller, a
        cell's end, does not wait for the write). False when it was left pending: a
        write is in flight (or a notice's checkpoint is being taken); the next cell's end,
        or the kernel idle, takes it. A copy that would not fit in memory makes this a
        checkpoint written before returning."""
        # Pending before the try: a writer that finishes between the try and the return
        # sees it (after it released the lock), and has the idle kernel take it.
        self._pending = True
        if not self._lock.acquire(blocking=False):
            self.cells_left_pending += 1
            return False
        handed = False
        try:
            self._pending = False
            namespace = self.namespace()
            if not namespace and self.store.latest() is None:
                return True  # nothing made yet: no empty checkpoint to "restore" later
            self._last_time = time.monotonic()
            self._snapshotting = True
            try:
                snapshot = self.store.snapshot(
                    namespace, stage=True, **self._manifest_fields(namespace, False)
                )
            except StagingTooLarge as err:
                print(
                    f"jupyter_lowcost: {err}: this checkpoint is written before the cell ends",
                    file=sys.stderr,
                )
                self._snapshotting = False
                self._lock.release()
                handed = True
                self._quietly(self.checkpoint)
                return True
            finally:
                self._snapshotting = False
            self.writing = snapshot
            self._writing_cells = self._cells_started
            self._hurry = False
            self._give_way = False
            self._writer_waited = 0.0
            self._piece_started = time.monotonic()
            self.snapshot_seconds.append(snapshot.seconds)
            threading.Thread(
                target=self._write, args=(snapshot,), name="lowcost-checkpoint-writer", daemon=True
            ).start()
            handed = True  # the writer releases the lock
            return True
        finally:
            if not handed:
                self._lock.release()

    def _write(self, snapshot: Snapshot) -> None:
        """The writer thread: write the snapshot, then let the next checkpoint be taken."""
        try:
            # Below the kernel's own threads, so that the user's cells come first.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        # (a background snapshot is taken between cells: every cell started has ended)
        cells = self._writing_cells
        try:
            self._saved(self.store.write(snapshot, pause=self._wait_for_cell))
            self._saved_cells = cells
        except _GaveWay:
            pass  # (the notice's checkpoint of the newest state follows)
        except CheckpointWriteFailed as err:
            self._failed(err)
            self._report_failure(err)
        except Exception as err:
            print(f"jupyter_lowcost: checkpoint failed: {err}", file=sys.stderr)
        finally:
            with self._written:
                self.writing = None
                self._give_way = False
                self._lock.release()
                self._written.notify_all()
            if self._pending:
                self._take_when_idle()

    def _wait_for_cell(self) -> None:
        """The writer, between two pieces of its work: wait while a cell runs, and until
        one ended :data:`QUIET_AFTER_CELL` ago, for :data:`WRITER_PATIENCE` seconds in all;
        past that, while a cell runs, work a quarter of the time (a cell that reads and
        writes memory a lot would otherwise share the memory's bandwidth with the write).
        Raises :class:`_GaveWay` when a notice wants the newest state written instead."""
        worked = time.monotonic() - self._piece_started
        if self._give_way:
            raise _GaveWay("the write gave way to a newer checkpoint")
        try:
            while not self._hurry:
                started = time.monotonic()
                cell_runs = not self._writer_may_go.is_set()
                patient = self._writer_waited < WRITER_PATIENCE
                if cell_runs and patient:
                    self._writer_may_go.wait(WRITER_PATIENCE - self._writer_waited)
                elif cell_runs:
                    self._writer_may_go.wait(3 * worked)
                    return
                else:
                    quiet = QUIET_AFTER_CELL - (started - self._last_cell_end)
                    if quiet <= 0 or not patient:
                        return
                    time.sleep(quiet)
                self._writer_waited += time.monotonic() - started
        finally:
            self._piece_started = time.monotonic()

    def _finish_write_first(self) -> None:
        """The write in flight goes on at once, whatever cell runs (the caller waits for
        it: it holds the lock)."""
        self._hurry = True
        self._writer_may_go.set()

    def wait_for_write(self, timeout: float | None = None) -> bool:
        """Wait until no background write is in flight; False if one still is. The write
        goes on at once, whatever cell runs."""
        self._finish_write_first()
        with self._written:
            return self._written.wait_for(lambda: self.writing is None, timeout)

    def settle(self, timeout: float | None = None) -> bool:
        """Take a pending checkpoint now, and wait until no write is in flight: the last
        cell's state is then written, or its write failed. False if a write is still in
        flight after ``timeout`` seconds. Called in the kernel's main thread (a snapshot
        reads the namespace), by code the tests run silently (no cell end of its own)."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        if not self.wait_for_write(left()):
            return False
        if self._pending:
            self._quietly(self.checkpoint_in_background)
        return self.wait_for_write(left())

    def _take_when_idle(self) -> None:
        """Have the kernel's main thread take the pending checkpoint once no cell has run
        for :data:`IDLE_DELAY` seconds (a cell's end takes it sooner)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def when_idle() -> None:
            if not self._pending or self.closing or self._cell_running:
                return  # (the running cell's end takes it)
            wait = IDLE_DELAY - (time.monotonic() - self._last_cell_end)
            if wait > 0:
                loop.call_later(wait, when_idle)
                return
            self._quietly(self.checkpoint_in_background)

        try:
            loop.call_soon_threadsafe(when_idle)
        except RuntimeError:
            pass  # the loop is closed: the kernel is shutting down

    def history(self, namespace: dict[str, Any]) -> dict[str, Any]:
        """The kernel's execution count and inputs (``In``), and of its outputs (``Out``)
        those that are saved variables (by name) or plain JSON values: saved with each
        checkpoint, so that a resumed kernel counts on from where it was."""
        manager = getattr(self.shell, "history_manager", None)
        if manager is None:  # (not an IPython shell)
            return {}
        output_hist = dict(manager.output_hist)
        wanted = {id(value) for value in output_hist.values()}
        names = (
            {id(value): name for name, value in namespace.items() if id(value) in wanted}
            if wanted
            else {}
        )
        outputs: dict[str, Any] = {}
        for number, value in output_hist.items():
            if id(value) in names:
                outputs[str(number)] = {"variable": names[id(value)]}
            elif value is None or isinstance(value, (bool, int, float, str)):
                outputs[str(number)] = {"value": value}
        inputs = list(manager.input_hist_parsed)
        raw = list(manager.input_hist_raw)
        return {
            "execution_count": int(self.shell.execution_count),
            # The last cell whose changes this checkpoint holds whole, and the cell it is
            # taken in the middle of (a notice's, during a cell), if any.
            "cell": self._last_cell,
            "during": self._running_cell,
            "inputs": inputs,
            # (only when they differ: the resume takes the inputs for them otherwise, and
            # a long job's checkpoints then carry its inputs once)
            **({"raw_inputs": raw} if raw != inputs else {}),
            "outputs": outputs,
        }

    def resume_history(self, history: dict[str, Any] | None) -> None:
        """Go on from a checkpoint's history (a resume): the next cell gets the number it
        would have had, and ``In`` and ``Out`` hold what they held."""
        manager = getattr(self.shell, "history_manager", None)
        if not isinstance(history, dict) or manager is None or self.shell.execution_count > 1:
            return
        try:
            count = int(history["execution_count"])
            inputs = [str(x) for x in history.get("inputs") or [""]]
            raw = [str(x) for x in history.get("raw_inputs") or inputs]
        except (KeyError, TypeError, ValueError):
            return
        manager.input_hist_parsed[:] = inputs
        manager.input_hist_raw[:] = raw
        cell = history.get("cell")
        self._last_cell = cell if isinstance(cell, int) and cell >= 0 else max(0, count - 1)
        for number, saved in (history.get("outputs") or {}).items():
            if "variable" in saved and saved["variable"] in self.shell.user_ns:
                manager.output_hist[int(number)] = self.shell.user_ns[saved["variable"]]
            elif "value" in saved:
                manager.output_hist[int(number)] = saved["value"]
        self.shell.execution_count = max(count, 1)

    def _failure_report(self, error: str) -> dict[str, Any]:
        kept = self.store.latest()
        return {"ok": False, "error": error, "checkpoint_id": kept or ""}

    def restore(
        self, checkpoint_id: str | None = None, store: CheckpointStore | None = None
    ) -> RestoreReport:
        """Put a checkpoint's variables (the latest by default) back into the namespace:
        this kernel's, or another kernel's ``store`` (``%lowcost restore KERNEL``; this
        kernel's own checkpoints are untouched until its next one)."""
        self._finish_write_first()
        with self._lock:
            report = (store or self.store).load(
                checkpoint_id, into=self.shell.user_ns, adopt=store is None
            )
            self._unhide({name: self.shell.user_ns[name] for name in report.variables})
            self.last_restore = report
            return report

    def _unhide(self, restored: dict[str, Any]) -> None:
        """Restored variables are the user's, also for %who and for the next checkpoint.

        A restore at start runs before IPython hides its initial namespace from the user
        (``user_ns_hidden``, filled after extensions load), so this runs again just before
        the first cell too."""
        first = not self._unhide_pending
        self._unhide_pending = {**self._unhide_pending, **restored}
        self._unhide_restored()
        if first:

            def before_first_cell(*args: Any) -> None:
                self.shell.events.unregister("pre_run_cell", before_first_cell)
                self._unhide_restored()
                self._unhide_pending = {}

            self.shell.events.register("pre_run_cell", before_first_cell)

    def _unhide_restored(self) -> None:
        """Unhide what the last restore brought back, if IPython has hidden it since."""
        hidden = self.shell.user_ns_hidden
        for name, value in self._unhide_pending.items():
            if name in hidden and hidden[name] is value and self.shell.user_ns.get(name) is value:
                del hidden[name]

    def _before_cell(self, info: Any = None) -> None:
        self._cell_running = True
        self._cells_started += 1
        if getattr(info, "store_history", True):  # (a cell with an execution count)
            self._running_cell = self._last_cell + 1
            self._note_last_cell(self._running_cell)
        if not interruption.notice and not self.closing:
            self._writer_may_go.clear()

    def _after_cell(self, result: Any = None) -> None:
        self._cell_running = False
        count = getattr(result, "execution_count", None)
        if isinstance(count, int):
            self._last_cell = count
        elif self._running_cell is not None:
            self._last_cell = self._running_cell
        self._running_cell = None
        self._writer_may_go.set()
        self._last_cell_end = time.monotonic()
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                pass  # (not in ipykernel: a pending checkpoint waits for the next cell)
        if (
            self.when == "cell"
            or self._pending
            or (self.interval and time.monotonic() - self._last_time >= self.interval)
        ):
            if self.job:
                # A job's every cell has one before its reply: it marks the cell done,
                # variables or not.
                self._quietly(self.checkpoint)
            else:
                self._quietly(self.checkpoint_in_background)

    def _at_notice(self, notice: Any) -> None:
        """The final notice callback (the signal handler, in the main thread): checkpoint
        the newest state within the notice's seconds.

        A background write of an older state (a cell has started since its snapshot)
        gives way: it stops at its next piece, what it wrote is deleted, and the newest
        state is written at once; the checkpoint before the stopped one stays the latest
        until the newest is complete (if the instance goes first, the resume says which
        cells were lost). A write of the newest state is finished first (within the
        notice, less a second), then checkpointed again (cheap: nothing changed)."""
        # Not once the kernel is shutting down (its last checkpoint is taken), and never an
        # empty namespace over the latest checkpoint: a notice that comes while the
        # process exits sees what IPython has emptied, not what the user made. A notice
        # that comes during a snapshot (this thread's) lets it finish: its write follows.
        if self._snapshotting:
            # (its write, once done, marks the notice handled: _saved, _failed)
            self._notice_follows_write = True
            return
        if self.when != "off" and not self.job and not self.closing and self.namespace():
            left = getattr(notice, "seconds_left", None)  # (None: no deadline known)
            if self.writing is not None and self._newer_than_writing():
                self._give_way = True
                # (it stops within a piece of its work: a chunk, 256 variables)
                self.wait_for_write(left)
                self._quietly(self.checkpoint)
            # The write in flight first (it holds the lock), within the notice.
            elif self.wait_for_write(None if left is None else max(0.0, left - 1.0)):
                self._quietly(self.checkpoint)
        self.notice_handled_at = time.time()

    def _newer_than_writing(self) -> bool:
        """Has the namespace moved on since the snapshot being written (a cell started
        since, or a checkpoint left pending)?"""
        return self._pending or self._cells_started != self._writing_cells

    def _note_last_cell(self, count: int) -> None:
        """Note, in the checkpoint directory, the cell that starts (a resume compares it
        with its checkpoint's). One small write in place per cell; never fails a cell."""
        if self.when == "off" or self.job:
            return
        try:
            if self._last_cell_fd is None:
                path = self.store.root / LAST_CELL_FILE
                self._last_cell_fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.pwrite(self._last_cell_fd, f"{count:>20}\n".encode(), 0)
        except OSError:
            pass

    def last_cell_started(self) -> int | None:
        """The last cell a kernel of this checkpoint directory started (a resume reads it
        before its first cell); None if none is noted."""
        try:
            text = (self.store.root / LAST_CELL_FILE).read_text()
            count = int(text.strip())
        except (OSError, ValueError):
            return None
        return count if count >= 0 else None

    def _at_shutdown(self) -> None:
        # A move shuts the kernel down gracefully: what it had goes with it. (Not at
        # interpreter exit: IPython empties the namespace before that.)
        if self.when != "off" and not self.job and not self.closing and self.namespace():
            self._quietly(self.checkpoint)  # (after the write in flight)
        self.closing = True

    def hook_shutdown(self) -> None:
        """Checkpoint when the kernel receives its shutdown request (ipykernel)."""
        kernel = getattr(self.shell, "kernel", None)
        if kernel is not None:
            ipykernel_adapters.before_shutdown(kernel, self._at_shutdown)

    def _quietly(self, action: Any) -> None:
        try:
            action()
        except CheckpointWriteFailed as err:
            self._report_failure(err)
        except Exception as err:  # a checkpoint that fails must not break the user's cell
            print(f"jupyter_lowcost: checkpoint failed: {err}", file=sys.stderr)

    def _report_failure(self, err: CheckpointWriteFailed) -> None:
        kept = self.store.latest()
        print(
            f"jupyter_lowcost: checkpoint failed: {err}; "
            + (f"checkpoint {kept} is kept" if kept else "there is no earlier checkpoint"),
            file=sys.stderr,
        )

    def status(self) -> str:
        """The lines ``%lowcost`` adds about checkpoints."""
        lines = []
        if self.last_failure is not None:
            when, why = self.last_failure
            kept = self.store.latest()
            lines.append(
                f"Checkpoints are failing ({time.time() - when:.0f} s ago): {why}. "
                + (
                    f"An interruption now resumes from checkpoint {kept}."
                    if kept
                    else "An interruption now loses the variables."
                )
            )
        if self.last_restore is not None:
            r = self.last_restore
            where, lost = resume_point(r.execution_count, r.taken_during, r.last_execution_count)
            lines.append(
                f"Resumed from checkpoint {r.checkpoint_id}: {r.summary()}."
                + (
                    f" The kernel is back {where}" + (f": {lost}." if lost else ".")
                    if where
                    else ""
                )
            )
        if self.writing is not None:
            lines.append(
                "A checkpoint is being written in the background (taken "
                f"{time.time() - self.writing.taken_at:.0f} s ago)."
            )
        if self.last_save is not None:
            s = self.last_save
            ago = time.time() - s.taken_at
            lines.append(
                f"Last checkpoint {s.checkpoint_id}, {ago:.0f} s ago: {len(s.variables)} "
                f"variables, {s.bytes / 1e6:.1f} MB"
                + (f"; not saved: {', '.join(x.name for x in s.skipped)}" if s.skipped else "")
                + "."
            )
        elif self.writing is None:
            lines.append(f"No checkpoint yet (checkpoints: {self.when}).")
        return "\n".join(lines)


def install(shell: Any) -> KernelCheckpoints | None:
    """Set up checkpoints in this kernel from the environment; restore if it is a resume."""
    global _installed
    directory = os.environ.get(env.CHECKPOINT_DIR)
    if not directory or _installed is not None:
        return _installed
    job = bool(os.environ.get(env.JOB))
    when = "cell" if job else os.environ.get(env.CHECKPOINTS, "cell")
    checkpoints = KernelCheckpoints(shell, directory, when, job=job)
    _installed = checkpoints
    failing = os.environ.pop(env.CHECKPOINTS_FAILING, "")
    if failing:
        checkpoints.last_failure = (time.time(), failing)
    restore = os.environ.pop(env.RESTORE, "")
    if restore and checkpoints.store.latest():
        try:
            last_cell = checkpoints.last_cell_started()  # (before this kernel's first cell)
            report = checkpoints.restore(None if restore == "1" else restore)
            report.last_execution_count = last_cell
            checkpoints.resume_history(report.history)
        except Exception as err:
            print(f"jupyter_lowcost: could not restore the checkpoint: {err}", file=sys.stderr)
        else:
            _tell_server(report)
    # (atexit runs the last registered first: this before IPython empties the namespace)
    atexit.register(setattr, checkpoints, "closing", True)
    shell.events.register("pre_run_cell", checkpoints._before_cell)
    shell.events.register("post_run_cell", checkpoints._after_cell)
    add_final_notice_callback(checkpoints._at_notice)
    checkpoints.hook_shutdown()
    return checkpoints


def installed() -> KernelCheckpoints | None:
    return _installed


#: At most this many of the variables that did not come back are named in
#: :func:`job_resume_state` (its answer goes over the kernel's own connection).
JOB_RESUME_LISTED = 200


def job_resume_state() -> dict[str, Any]:
    """What this kernel restored at its start, for a job's runner: the checkpoint's id
    (None: nothing was restored) and the variables that did not come back (name, type,
    why: the first :data:`JOB_RESUME_LISTED`, and how many in all).

    The runner asks for it after each relaunch, as a ``user_expressions`` of a silent
    request on the kernel's own connection (``server/jobs/execution.py``): its resume
    point does not depend on the ``restored`` report, which is bounded and may not
    arrive. A silent request runs no cell: no checkpoint, no execution count."""
    report = _installed.last_restore if _installed is not None else None
    if report is None:
        return {"checkpoint_id": None, "not_restored": [], "not_restored_count": 0}
    return {
        "checkpoint_id": report.checkpoint_id,
        "not_restored": [
            {"name": s.name, "type": s.type, "why": s.why}
            for s in report.not_restored[:JOB_RESUME_LISTED]
        ],
        "not_restored_count": len(report.not_restored),
    }


def _tell_server_in_background(report: dict[str, Any]) -> None:
    """Say that checkpoints fail (or work again), without holding up the user's cell."""

    def tell() -> None:
        try:
            from .client import LowCostClient

            LowCostClient.from_environment().report_checkpoint(report)
        except Exception as err:
            print(f"jupyter_lowcost: could not report the checkpoint: {err}", file=sys.stderr)

    threading.Thread(target=tell, name="lowcost-checkpoint-report", daemon=True).start()


def _tell_server(report: RestoreReport) -> None:
    """Say what came back (the server emits it as an event for JupyterLab)."""
    try:
        from .client import LowCostClient

        LowCostClient.from_environment().report_restored(report.to_json())
    except Exception as err:
        print(f"jupyter_lowcost: could not report the restore: {err}", file=sys.stderr)
