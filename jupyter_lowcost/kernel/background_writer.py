"""The writer thread's pace: how a background checkpoint's write shares the machine with the
cells that run meanwhile.

``KernelCheckpoints`` (``checkpointing.py``) starts the writer thread once it has handed it
a snapshot; the thread calls :func:`lower_priority`, then writes the snapshot with a
:class:`WriterPacing`'s :meth:`~WriterPacing.pause` between two pieces of its work (a chunk
of a buffer, 256 variables). The pauses follow the phase and the cells that
``CheckpointStates`` (``checkpoint_states.py``) records. A job's cells never hold the
writer: it writes, below them, while the next cell runs, whose end waits for it
(``job_cells.py``).
"""

from __future__ import annotations

import os
import threading
import time

from ..storage.checkpoints import CheckpointWriteFailed
from .checkpoint_states import CheckpointStates

#: The writer waits while a cell runs and for :data:`QUIET_AFTER_CELL` seconds after one
#: ends (its reply goes out, the next cell of a run of cells comes in), for at most this
#: many seconds in all per write: a quick run of cells has the machine to itself, a long
#: cell shares it with the write.
WRITER_PATIENCE = 2.0
QUIET_AFTER_CELL = 0.02


class GaveWay(CheckpointWriteFailed):
    """The background write in flight stops for a newer state's (at a notice): like any
    failed write, what it wrote is deleted and the checkpoint before it stays the latest."""


def lower_priority() -> None:
    """The writer thread runs below the kernel's own threads, so that the cells come first."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


class WriterPacing:
    """The pauses of one background write."""

    def __init__(self, states: CheckpointStates) -> None:
        self.states = states
        self.waited = 0.0
        self.piece_started = time.monotonic()

    def pause(self) -> None:
        """Between two pieces of the write: wait while a cell runs, and until one ended
        :data:`QUIET_AFTER_CELL` ago, for :data:`WRITER_PATIENCE` seconds in all; past
        that, while a cell runs, work a quarter of the time (a cell that reads and writes
        memory a lot would otherwise share the memory's bandwidth with the write). No
        pause once hurried. Raises :class:`GaveWay` when a notice wants the newest state
        written instead."""
        worked = time.monotonic() - self.piece_started
        if self.states.giving_way():
            raise GaveWay("the write gave way to a newer checkpoint")
        try:
            while not self.states.hurried():
                started = time.monotonic()
                cell_runs = self.states.cell_holds_writer()
                patient = self.waited < WRITER_PATIENCE
                if cell_runs and patient:
                    self.states.wait_for_cell_to_let_go(WRITER_PATIENCE - self.waited)
                elif cell_runs:
                    self.states.wait_for_cell_to_let_go(3 * worked)
                    return
                else:
                    quiet = QUIET_AFTER_CELL - (started - self.states.last_cell_end)
                    if quiet <= 0 or not patient:
                        return
                    time.sleep(quiet)
                self.waited += time.monotonic() - started
        finally:
            self.piece_started = time.monotonic()
