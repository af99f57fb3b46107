"""A job's kernel: each cell's checkpoint written while the next cell runs.

Called by ``KernelCheckpoints._after_cell`` (``checkpointing.py``, IPython's
``post_run_cell``, in the kernel's main thread) at the end of every cell of a job's
kernel, before the cell's reply goes out.

An ordinary kernel's cell end leaves its checkpoint pending when a write is in flight.
A job's cannot: its runner (``server/jobs/cell_checkpoints.py``) marks each cell done by
the checkpoint taken after it (the manifest's ``history.cell`` is the cell's execution
count), and resumes after an interruption at the first cell whose checkpoint is not on
disk. So a job's cell end

1. waits for the write in flight, the previous cell's, which goes on at once (a hurry,
   ``checkpoint_states.py``): it was written while this cell ran; the writer of a job's
   kernel does not pause for its cells, and runs below them (``background_writer.py``);
2. takes the store, snapshots the namespace with its buffers copied (the next cell may
   change them), and hands the snapshot to the writer thread: the reply goes out, and the
   next cell runs while the checkpoint is written. A copy too large for memory is
   written whole before the reply instead, as an ordinary kernel's is.

At most one write is in flight, so that when cell N+1 replies, cell N's checkpoint is on
disk (or failed: a full disk, said on stderr and to the server). A notice or a shutdown
takes no checkpoint in a job's kernel (it would hold half a cell, which the job runs
again): the write in flight goes on until the instance goes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .checkpointing import KernelCheckpoints


def checkpoint_after_job_cell(checkpoints: KernelCheckpoints) -> None:
    """The checkpoint after a job's cell that just ended: snapshot now, written in the
    writer thread (see the module's docstring). Returns once the snapshot is handed over
    (or written, or failed); raises what a failed whole write raises
    (``CheckpointWriteFailed``), which the caller says on stderr."""
    states = checkpoints.states
    states.hurry()  # WRITING -> HURRYING: the previous cell's write, unpaced
    checkpoints._lock.acquire()  # (released by the writer at its end: -> IDLE)
    states.take()  # IDLE -> TAKING
    handed = False
    try:
        # -> WRITING, or back to IDLE (a copy too large: written here; a failed write)
        handed = checkpoints._snapshot_and_hand_over(empty_too=True)
    finally:
        if not handed:
            states.give_back(release=checkpoints._lock.release)
