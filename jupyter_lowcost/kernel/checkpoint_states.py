"""Who may use a kernel's checkpoint store, and when: the states of its checkpoints, in one place.

:class:`CheckpointStates` is driven by ``KernelCheckpoints`` (``checkpointing.py``) from
the threads that take and write a kernel's checkpoints:

- the kernel's main thread: IPython's cell hooks (a cell starts; a cell ends, and its
  checkpoint is due; a job's cell ends, ``job_cells.py``), ``%lowcost checkpoint`` and
  ``restore``, the idle kernel taking a
  pending checkpoint, and the notice's handler (a signal handler: it interrupts whatever
  the main thread was doing, so it never waits for that thread);
- the writer thread, which writes one snapshot in the background and pauses for the cells
  (``background_writer.py``);
- ipykernel's shutdown handler (a whole checkpoint before the kernel goes);
- the launcher's thread, which asks whether the latest checkpoint holds everything.

The store itself is used by one thread at a time: the one holding ``KernelCheckpoints._lock``.
The phase says who that is and what it does; the transitions that give the store back
release that lock themselves, so that the phase and the lock always agree:

==============  ===============================================  ==============
phase           event (caller)                                   new phase
==============  ===============================================  ==============
IDLE            store taken: a snapshot, a whole checkpoint, or  TAKING
                a restore (any kernel thread, lock acquired)
TAKING          snapshot handed to the writer (cell end, idle)   WRITING
TAKING          store given back (checkpoint written or failed,  IDLE
                nothing to write, restore done)
WRITING         hurry: a notice, a shutdown, ``%lowcost          HURRYING
                checkpoint``, ``settle``, a job's cell end
                (the caller waits)
WRITING,        give way: a notice, when a cell started since    GIVING_WAY
HURRYING        the snapshot or a checkpoint is pending
WRITING,        write ended: written, failed, or given way       IDLE
HURRYING,       (the writer thread)
GIVING_WAY
==============  ===============================================  ==============

Who writes: nobody in IDLE; the taking thread in TAKING; the writer thread otherwise, which
pauses for the cells in WRITING, goes on without pausing in HURRYING, and stops at its next
piece in GIVING_WAY (what it wrote is deleted). A new write may start only from IDLE: a
cell's end that finds the store held leaves its checkpoint pending (the next cell's end, or
the idle kernel once the write has ended, takes it); a job's cell end instead hurries the
write and waits for the store (each job cell has a checkpoint of its own), then goes
IDLE -> TAKING -> WRITING like any other. A hurry in IDLE or TAKING changes no phase (the
next write starts paced). A job's cells never hold the writer (it does not pause for them).

Events that change no phase: a cell starts (it holds the writer, which pauses while it
runs, unless a notice has come or the kernel is closing), a cell ends (it lets the writer
go), a hurry (lets the writer go for the rest of the running cell), a checkpoint is due
(pending), and a notice while its own thread holds the store (TAKING): it cannot wait for
that thread, so it is deferred, and handled when the store is given back or the write it
was handed ends.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

from ..storage.checkpoints import Snapshot


class Phase(enum.Enum):
    IDLE = "idle"
    TAKING = "taking"
    WRITING = "writing"
    HURRYING = "hurrying"
    GIVING_WAY = "giving way"


#: The phases in which the writer thread holds the store.
WRITER_PHASES = frozenset({Phase.WRITING, Phase.HURRYING, Phase.GIVING_WAY})


class CheckpointStates:
    """The phase of a kernel's checkpoints and what it depends on, behind one lock.

    Every method is one transition or one question, made under that lock (reentrant: the
    notice's handler may run in the main thread while it is inside one)."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.RLock())
        self.phase = Phase.IDLE
        #: The snapshot the writer thread is writing (None outside the writer's phases).
        self.writing: Snapshot | None = None
        self._taker: int | None = None
        #: A checkpoint is due but was not taken (the store was held).
        self.pending = False
        self.cell_running = False
        #: The running cell holds the writer (it pauses until the cell ends).
        self._cell_holds_writer = False
        self.last_cell_end = time.monotonic()
        #: Cells started so far, and how many had started when the snapshot being
        #: written was taken: a cell since then may have changed the namespace.
        self._cells_started = 0
        self._writing_cells = 0
        #: How many cells had ended when the namespace of the latest checkpoint written
        #: was taken (-1: none written yet).
        self._saved_cells = -1
        self._notice_deferred = False
        #: When the last notice's checkpoint was done with: written, failed, or nothing
        #: to write (the launcher approves Azure's event then).
        self.notice_handled_at: float | None = None

    # -- cells (IPython's hooks, in the main thread) ----------------------------------------

    def cell_started(self, writer_pauses: bool) -> None:
        with self._changed:
            self.cell_running = True
            self._cells_started += 1
            if writer_pauses:
                self._cell_holds_writer = True

    def cell_ended(self) -> None:
        with self._changed:
            self.cell_running = False
            self._cell_holds_writer = False
            self.last_cell_end = time.monotonic()
            self._changed.notify_all()

    def ended_cells(self) -> int:
        """The cells that have ended (a snapshot during a cell holds half of it)."""
        with self._changed:
            return self._cells_started - int(self.cell_running)

    # -- the store: taken, handed to the writer, given back --------------------------------

    def due(self) -> None:
        """A checkpoint is due (set before trying the store: a writer that ends meanwhile
        sees it, and has the idle kernel take it)."""
        with self._changed:
            self.pending = True

    def take(self) -> None:
        """IDLE -> TAKING: this thread has acquired the store's lock."""
        with self._changed:
            self.phase = Phase.TAKING
            self._taker = threading.get_ident()
            self.pending = False

    def hand_to_writer(self, snapshot: Snapshot) -> None:
        """TAKING -> WRITING: the writer thread now holds the store (and releases it)."""
        with self._changed:
            self.phase = Phase.WRITING
            self._taker = None
            self.writing = snapshot
            self._writing_cells = self._cells_started

    def saved(self, cells: int) -> None:
        """A whole checkpoint (TAKING) holds the namespace after ``cells`` ended cells."""
        with self._changed:
            self._saved_cells = cells

    def give_back(self, release: Callable[[], None]) -> None:
        """TAKING -> IDLE: ``release`` the store's lock; a deferred notice is handled."""
        with self._changed:
            self.phase = Phase.IDLE
            self._taker = None
            self.writing = None  # (a writer thread that could not start)
            release()
            self._handle_deferred_notice()
            self._changed.notify_all()

    def write_ended(self, written: bool, release: Callable[[], None]) -> bool:
        """WRITING, HURRYING, GIVING_WAY -> IDLE: the writer ``release``s the store's lock
        (``written``: its snapshot is the latest checkpoint). True if a checkpoint is
        pending: the idle kernel is to take it."""
        with self._changed:
            if written:
                self._saved_cells = self._writing_cells
            self.phase = Phase.IDLE
            self.writing = None
            release()
            self._handle_deferred_notice()
            self._changed.notify_all()
            return self.pending

    def wait_until_written(self, timeout: float | None) -> bool:
        """Wait until the writer holds the store no more; False after ``timeout``."""
        with self._changed:
            return self._changed.wait_for(lambda: self.phase not in WRITER_PHASES, timeout)

    # -- the writer's pace ----------------------------------------------------------------

    def hurry(self) -> None:
        """The write in flight goes on at once, whatever cell runs (WRITING -> HURRYING)."""
        with self._changed:
            self._cell_holds_writer = False
            if self.phase is Phase.WRITING:
                self.phase = Phase.HURRYING
            self._changed.notify_all()

    def hurried(self) -> bool:
        with self._changed:
            return self.phase in (Phase.HURRYING, Phase.GIVING_WAY)

    def cell_holds_writer(self) -> bool:
        with self._changed:
            return self._cell_holds_writer

    def wait_for_cell_to_let_go(self, timeout: float) -> None:
        """The writer waits until the running cell ends, or a hurry, or ``timeout``."""
        with self._changed:
            self._changed.wait_for(
                lambda: not self._cell_holds_writer or self.phase is not Phase.WRITING, timeout
            )

    # -- a notice ---------------------------------------------------------------------------

    def defer_notice(self) -> bool:
        """A notice in the thread that holds the store (TAKING): it is handled once the
        store is given back, or once the write handed over ends. False otherwise."""
        with self._changed:
            if self.phase is not Phase.TAKING or self._taker != threading.get_ident():
                return False
            self._notice_deferred = True
            return True

    def give_way_if_older(self) -> bool:
        """The write in flight holds an older state than the namespace's (a cell started
        since its snapshot, or a checkpoint is pending): it is to stop (-> GIVING_WAY)."""
        with self._changed:
            older = self.pending or self._cells_started != self._writing_cells
            if self.phase in WRITER_PHASES and older:
                self.phase = Phase.GIVING_WAY
                self._changed.notify_all()
                return True
            return False

    def giving_way(self) -> bool:
        with self._changed:
            return self.phase is Phase.GIVING_WAY

    def notice_handled(self) -> None:
        with self._changed:
            self.notice_handled_at = time.time()

    def _handle_deferred_notice(self) -> None:
        if self._notice_deferred:
            self._notice_deferred = False
            self.notice_handled_at = time.time()

    # -- what the latest checkpoint holds -------------------------------------------------

    def holds_every_ended_cell(self) -> bool:
        """Was the latest checkpoint written after the last cell that ended, with no cell
        running, no write in flight or left pending?"""
        with self._changed:
            return (
                not self.cell_running
                and not self.pending
                and self.phase not in WRITER_PHASES
                and self._saved_cells == self._cells_started
            )
