"""What the store remembers of a buffer from one checkpoint to the next, what the write of
it must do, and where its memory is.

Used by :mod:`~jupyter_lowcost.storage.chunks` (:class:`~.chunks.BufferChunks` keeps a
:class:`SavedBuffer` per variable and buffer, and plans each write as a
:class:`StagingPlan`) and by :mod:`~jupyter_lowcost.storage.snapshots` (whose staged
copies carry their plan; :func:`memory_owner` finds whose memory a buffer is).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: A chunk as the next checkpoint compares it: [chunk id, CRC32 (None: not computed), length]
Chunk = list[Any]


@dataclass
class SavedBuffer:
    """A buffer as the last checkpoint saved it."""

    chunks: list[Chunk]
    #: the object that owns the memory (weak), and where the buffer starts
    owner: Any = None
    address: int = 0
    #: the page range under the write watch, and the CRC32s of the bytes of the buffer
    #: before and after it (partial pages, not watched)
    watched: tuple[int, int] | None = None
    edges: tuple[int, int] = (0, 0)
    #: That checkpoint rewrote at most half of the chunks the one before it saved.
    calm: bool = False


@dataclass
class StagingPlan:
    """What the write of one buffer must do, found before its memory is read
    (:meth:`BufferChunks.plan`)."""

    key: tuple[str, int]
    #: Indexes of the chunks that changed since the last checkpoint (None: unknown, so
    #: every chunk is compared with its CRC32, or written when there is none).
    changed: set[int] | None
    previous: SavedBuffer | None
    #: The owner of the memory, weakly (it is only needed while watched).
    owner: Callable[[], Any]
    address: int | None
    #: The page range watched from now on (None: not watched), and its edges' CRC32s.
    watched: tuple[int, int] | None
    edges: tuple[int, int]


def no_owner() -> None:
    """The owner of a buffer whose memory is not watched: none."""
    return None


def buffer_address(view: memoryview) -> int | None:
    """Where the buffer's memory starts (for numpy arrays), or None."""
    interface = getattr(view.obj, "__array_interface__", None)
    if not isinstance(interface, dict) or not view.c_contiguous:
        return None
    data = interface.get("data")
    return data[0] if isinstance(data, tuple) else None


def memory_owner(exporter: Any) -> Any:
    """The array that owns an array's memory: the last of its ``base`` arrays (a view or
    a transposed copy made for pickling is new at each checkpoint; the owner is not).
    None when that array's memory belongs to something else (a file mapping, a tensor):
    its writes are not watched."""
    owner = exporter
    while hasattr(getattr(owner, "base", None), "__array_interface__"):
        owner = owner.base
    return owner if getattr(owner, "base", None) is None else None


def lower_thread_priority() -> None:
    """This thread yields the processor to the process's others (Linux: per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass
