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
interrupts has no manifest, and the one before it is the latest: never a torn one. Who
may use the store when is said in one place: ``checkpoint_states.py``.

Each checkpoint's history says after which cell it was taken (its execution count), and
the kernel notes in its checkpoint directory the cell it starts (:data:`LAST_CELL_FILE`,
``cell_history.py``): a resumed kernel tells which cells' changes the checkpoint it came
back from misses. A job's kernel checkpoints after every cell and only there, each
written while the next cell runs (``job_cells.py``); its runner marks a cell done once
that cell's checkpoint is on disk. It is asked for exactly the checkpoint after the last
cell its runner saw done (never "the latest", see ``server/instances/launches.py``), and
tells the runner what came back (:func:`job_resume_state`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .. import env
from ..storage.checkpoints import (
    CheckpointStore,
    CheckpointWriteFailed,
    NamespaceReader,
    RestoreReport,
    SaveReport,
    Snapshot,
    StagingTooLarge,
    VariableSplit,
    sys_path_additions,
)
from . import (
    background_writer,
    checkpoint_reports,
    interruption,
    job_cells,
    kernel_hooks,
)
from .background_writer import QUIET_AFTER_CELL, WRITER_PATIENCE, GaveWay, WriterPacing
from .cell_history import LAST_CELL_FILE, CellHistory
from .checkpoint_reports import JOB_RESUME_LISTED
from .checkpoint_states import CheckpointStates
from .restored_variables import RestoredVariables

__all__ = [
    "IDLE_DELAY",
    "JOB_RESUME_LISTED",
    "LAST_CELL_FILE",
    "QUIET_AFTER_CELL",
    "WRITER_PATIENCE",
    "KernelCheckpoints",
    "install",
    "installed",
    "job_resume_state",
]

_installed: KernelCheckpoints | None = None

#: Seconds without a cell after which a checkpoint left pending by a busy writer is taken.
IDLE_DELAY = 1.0


class KernelCheckpoints:
    """The checkpoints of this kernel's namespace."""

    def __init__(self, shell: Any, directory: str, when: str, job: bool = False) -> None:
        self.shell = shell
        #: The kernel runs a job's cells: a checkpoint after every cell and only there
        #: (a notice's or a shutdown's would hold half a cell, which the job runs again).
        self.job = job
        # Writes are watched only in the arrays cells change little: a watched page
        # faults at its first write after each checkpoint (``a += 1`` on a large array:
        # ten times slower), so an array rewritten whole is copied and compared instead.
        self.store = CheckpointStore(directory, watch_first_save=False)
        #: Reads the namespace at each snapshot in time that grows with what changed.
        self.reader = NamespaceReader()
        self._split: VariableSplit | None = None
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
        #: The store's lock, held by whoever uses the store: a kernel thread for a
        #: snapshot, a whole checkpoint or a restore, the writer thread for the background
        #: write it was handed. Who that is, and what may happen meanwhile: ``states``.
        self._lock = threading.Lock()
        self.states = CheckpointStates()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: What the background checkpoints cost the cells (the benchmark reads them):
        #: the last snapshots' seconds, and the cell ends that left theirs pending.
        self.snapshot_seconds: collections.deque[float] = collections.deque(maxlen=1000)
        self.cells_left_pending = 0
        #: What the last restores brought back (unhidden for the next checkpoint).
        self.restored = RestoredVariables(shell)
        #: True once the kernel shuts down: IPython empties the namespace on the way out,
        #: and a notice then must not save that as the latest checkpoint.
        self.closing = False
        #: After which cell each checkpoint is taken, and ``In``/``Out`` saved with it.
        self.cells = CellHistory(shell, self.store.root, note_cells=when != "off" and not job)

    @property
    def writing(self) -> Snapshot | None:
        """The snapshot the writer thread is writing (None: no write in flight)."""
        return self.states.writing

    @property
    def notice_handled_at(self) -> float | None:
        """When the last notice's checkpoint was done with: written, failed, or nothing
        to write (the launcher approves Azure's event then)."""
        return self.states.notice_handled_at

    @property
    def _pending(self) -> bool:
        """A checkpoint is due but was not taken (the store was held)."""
        return self.states.pending

    def namespace(self) -> dict[str, Any]:
        """The user's variables, restored ones included: a notice or a move before the
        first cell after a resume must save what came back, not an empty namespace."""
        self.restored.unhide()
        self._split = self.reader.read(self.shell.user_ns, self.shell.user_ns_hidden)
        return self._split.variables

    def _split_of(self, namespace: dict[str, Any]) -> VariableSplit | None:
        """``namespace`` sorted as the last :meth:`namespace` read it (None: another)."""
        split = self._split
        return split if split is not None and split.variables is namespace else None

    # -- taking checkpoints -------------------------------------------------------------

    def checkpoint(self, manual: bool = False) -> SaveReport:
        """Save the namespace now (``manual``: asked by the user, kept longer).

        A checkpoint that cannot be written (a full disk) raises
        :class:`CheckpointWriteFailed`; nothing of it is left, the previous checkpoint
        stays the latest, and the server is told (an event, shown by JupyterLab)."""
        with self._store_taken():  # (after the background write in flight, if any)
            return self._save(manual)

    @contextlib.contextmanager
    def _store_taken(self) -> Iterator[None]:
        """Hold the store in this thread, once the write in flight (hurried) is written."""
        self.states.hurry()
        self._lock.acquire()
        self.states.take()
        try:
            yield
        finally:
            self.states.give_back(release=self._lock.release)

    def _save(self, manual: bool = False) -> SaveReport:
        """A whole checkpoint, written in this thread (which holds the store)."""
        cells = self.states.ended_cells()
        namespace = self.namespace()
        self._last_time = time.monotonic()
        try:
            report = self.store.save(
                namespace,
                split=self._split_of(namespace),
                **self._manifest_fields(namespace, manual),
            )
        except CheckpointWriteFailed as err:
            self._failed(err)
            raise
        self._saved(report)
        self.states.saved(cells)
        return report

    def holds_everything(self) -> bool:
        """Does the latest checkpoint hold the namespace as it is now? Written (not
        failed) after the last cell that ended, with no cell running, no write in
        flight or left pending; a kernel of one's own with checkpoints on (a job's
        checkpoints are its runner's). Asked by the launcher of an instance being taken
        away, which then ends at once (``instance/notice_sources.py``'s ``_leave_when_saved``)."""
        return (
            self.when != "off"
            and not self.job
            and self.last_failure is None
            and self.states.holds_every_ended_cell()
        )

    def _manifest_fields(self, namespace: dict[str, Any], manual: bool) -> dict[str, Any]:
        return {
            "kernel_id": os.environ.get(env.KERNEL_ID),
            "manual": manual,
            "notebook": os.environ.get(env.NOTEBOOK) or os.environ.get("JPY_SESSION_NAME"),
            "history": self.cells.saved(namespace),
            "sys_path": sys_path_additions(self.sys_path_at_start),
        }

    def _saved(self, report: SaveReport) -> None:
        if self.last_failure is not None:
            self.last_failure = None
            checkpoint_reports.tell_server_in_background(
                {"ok": True, "checkpoint_id": report.checkpoint_id}
            )
        self.last_save = report

    def _failed(self, err: CheckpointWriteFailed) -> None:
        first = self.last_failure is None
        self.last_failure = (time.time(), str(err))
        if first:
            report = checkpoint_reports.failure_report(self.store, str(err))
            checkpoint_reports.tell_server_in_background(report)

    def checkpoint_in_background(self) -> bool:
        """Snapshot the namespace now and write it in the writer thread (the caller, a
        cell's end, does not wait for the write). False when it was left pending: a
        write is in flight (or a notice's checkpoint is being taken); the next cell's end,
        or the kernel idle, takes it. A copy that would not fit in memory makes this a
        checkpoint written before returning."""
        self.states.due()  # (before the try: a writer that ends meanwhile sees it)
        if not self._lock.acquire(blocking=False):
            self.cells_left_pending += 1
            return False
        handed = False
        try:
            self.states.take()
            handed = self._snapshot_and_hand_over()
        finally:
            if not handed:
                self.states.give_back(release=self._lock.release)
        return True

    def _snapshot_and_hand_over(self, empty_too: bool = False) -> bool:
        """Snapshot the namespace and start the writer thread on it (which then holds the
        store: True). False when nothing was handed over: nothing to save yet (unless
        ``empty_too``: a job's cell), or a copy too large for memory, written whole here
        instead."""
        namespace = self.namespace()
        if not namespace and not empty_too and self.store.latest() is None:
            return False  # nothing made yet: no empty checkpoint to "restore" later
        self._last_time = time.monotonic()
        try:
            snapshot = self.store.snapshot(
                namespace,
                stage=True,
                split=self._split_of(namespace),
                copy_later=True,
                **self._manifest_fields(namespace, False),
            )
        except StagingTooLarge as err:
            print(
                f"jupyter_lowcost: {err}: this checkpoint is written before the cell ends",
                file=sys.stderr,
            )
            self._quietly(self._save)
            return False
        self.snapshot_seconds.append(snapshot.seconds)
        self.states.hand_to_writer(snapshot)
        threading.Thread(
            target=self._write, args=(snapshot,), name="lowcost-checkpoint-writer", daemon=True
        ).start()
        return True

    def _write(self, snapshot: Snapshot) -> None:
        """The writer thread: write the snapshot, then let the next checkpoint be taken."""
        background_writer.lower_priority()
        written = False
        try:
            self._saved(self.store.write(snapshot, pause=WriterPacing(self.states).pause))
            written = True
        except GaveWay:
            pass  # (the notice's checkpoint of the newest state follows)
        except CheckpointWriteFailed as err:
            self._failed(err)
            checkpoint_reports.print_failure(self.store, err)
        except Exception as err:
            print(f"jupyter_lowcost: checkpoint failed: {err}", file=sys.stderr)
        finally:
            if self.states.write_ended(written, release=self._lock.release):
                self._take_when_idle()

    def wait_for_write(self, timeout: float | None = None) -> bool:
        """Wait until no background write is in flight; False if one still is. The write
        goes on at once, whatever cell runs."""
        self.states.hurry()
        return self.states.wait_until_written(timeout)

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
        if self.states.pending:
            self._quietly(self.checkpoint_in_background)
        return self.wait_for_write(left())

    def _take_when_idle(self) -> None:
        """Have the kernel's main thread take the pending checkpoint once no cell has run
        for :data:`IDLE_DELAY` seconds (a cell's end takes it sooner)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def when_idle() -> None:
            if not self.states.pending or self.closing or self.states.cell_running:
                return  # (the running cell's end takes it)
            wait = IDLE_DELAY - (time.monotonic() - self.states.last_cell_end)
            if wait > 0:
                loop.call_later(wait, when_idle)
                return
            self._quietly(self.checkpoint_in_background)

        try:
            loop.call_soon_threadsafe(when_idle)
        except RuntimeError:
            pass  # the loop is closed: the kernel is shutting down

    # -- restoring ----------------------------------------------------------------------

    def restore(
        self, checkpoint_id: str | None = None, store: CheckpointStore | None = None
    ) -> RestoreReport:
        """Put a checkpoint's variables (the latest by default) back into the namespace:
        this kernel's, or another kernel's ``store`` (``%lowcost restore KERNEL``; this
        kernel's own checkpoints are untouched until its next one)."""
        with self._store_taken():
            report = (store or self.store).load(
                checkpoint_id, into=self.shell.user_ns, adopt=store is None
            )
            self.restored.add({name: self.shell.user_ns[name] for name in report.variables})
            self.last_restore = report
            return report

    # -- IPython's and ipykernel's hooks, and the notice's ------------------------------

    def before_user_code(self, *args: Any) -> None:
        """Before any of the user's code runs again (each request on the shell channel,
        IPython's ``pre_execute``): the last snapshot's copies, which background threads
        make while the cell's reply goes out, are whole."""
        self.store.wait_for_copies()

    def _before_cell(self, info: Any = None) -> None:
        """IPython's ``pre_run_cell``: the writer pauses while the cell runs (not once a
        notice has come or the kernel closes: then the write comes first; never in a job's
        kernel, whose next cell's end waits for the write: see ``job_cells.py``)."""
        pauses = not interruption.notice and not self.closing and not self.job
        self.states.cell_started(writer_pauses=pauses)
        self.cells.cell_started(info)

    def _after_cell(self, result: Any = None) -> None:
        """IPython's ``post_run_cell``: the cell's checkpoint, if one is due."""
        self.states.cell_ended()
        self.cells.cell_ended(result)
        self._find_loop()
        if not self._checkpoint_due():
            return
        if self.job:
            # A job's every cell has its own, variables or not: its runner marks the cell
            # done by it. Snapshot now, written while the next cell runs.
            self._quietly(lambda: job_cells.checkpoint_after_job_cell(self))
        else:
            self._quietly(self.checkpoint_in_background)

    def _find_loop(self) -> None:
        """The kernel's asyncio loop, where the idle kernel takes a pending checkpoint."""
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                pass  # (not in ipykernel: a pending checkpoint waits for the next cell)

    def _checkpoint_due(self) -> bool:
        return (
            self.when == "cell"
            or self.states.pending
            or bool(self.interval and time.monotonic() - self._last_time >= self.interval)
        )

    def _at_notice(self, notice: Any) -> None:
        """The final notice callback (the signal handler, in the main thread): checkpoint
        the newest state within the notice's seconds.

        A notice that comes while this thread holds the store (a snapshot, a whole
        checkpoint) lets it finish: the write that follows is the notice's. Not once the
        kernel is shutting down (its last checkpoint is taken), and never an empty
        namespace over the latest checkpoint: a notice that comes while the process exits
        sees what IPython has emptied, not what the user made."""
        if self.states.defer_notice():
            return
        if self.when != "off" and not self.job and not self.closing and self.namespace():
            self._checkpoint_newest_state(getattr(notice, "seconds_left", None))
        self.states.notice_handled()

    def _checkpoint_newest_state(self, left: float | None) -> None:
        """Within ``left`` seconds (None: no deadline known). A background write of an
        older state (a cell has started since its snapshot) gives way: it stops at its next
        piece (a chunk, 256 variables), what it wrote is deleted, and the newest state is
        written at once; the checkpoint before the stopped one stays the latest until the
        newest is complete (if the instance goes first, the resume says which cells were
        lost). A write of the newest state is finished first (within the notice, less a
        second), then checkpointed again (cheap: nothing changed)."""
        if self.states.give_way_if_older():
            self.wait_for_write(left)
            self._quietly(self.checkpoint)
        elif self.wait_for_write(None if left is None else max(0.0, left - 1.0)):
            self._quietly(self.checkpoint)

    def _at_shutdown(self) -> None:
        # A move shuts the kernel down gracefully: what it had goes with it. (Not at
        # interpreter exit: IPython empties the namespace before that.)
        if self.when != "off" and not self.job and not self.closing and self.namespace():
            self._quietly(self.checkpoint)  # (after the write in flight)
        self.closing = True

    def _quietly(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except CheckpointWriteFailed as err:
            checkpoint_reports.print_failure(self.store, err)
        except Exception as err:  # a checkpoint that fails must not break the user's cell
            print(f"jupyter_lowcost: checkpoint failed: {err}", file=sys.stderr)

    def status(self) -> str:
        """The lines ``%lowcost`` adds about checkpoints."""
        return checkpoint_reports.describe(self)


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
        _restore_at_start(checkpoints, None if restore == "1" else restore)
    kernel_hooks.hook_into_the_kernel(shell, checkpoints)
    return checkpoints


def _restore_at_start(checkpoints: KernelCheckpoints, checkpoint_id: str | None) -> None:
    """A resume: the checkpoint's variables and history back, and the server told."""
    try:
        last_cell = checkpoints.cells.last_started()  # (before this kernel's first cell)
        report = checkpoints.restore(checkpoint_id)
        report.last_execution_count = last_cell
        checkpoints.cells.resume(report.history)
    except Exception as err:
        print(f"jupyter_lowcost: could not restore the checkpoint: {err}", file=sys.stderr)
    else:
        checkpoint_reports.tell_server_restored(report)


def installed() -> KernelCheckpoints | None:
    return _installed


def job_resume_state() -> dict[str, Any]:
    """What this kernel restored at its start, for a job's runner (its relaunches ask for it
    on the kernel's own connection, ``server/jobs/execution.py``)."""
    return checkpoint_reports.job_resume_state(_installed.last_restore if _installed else None)
