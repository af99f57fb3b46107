"""The checkpoint format's sizes, and what every part of the checkpoint store shares.

The constants are re-exported by :mod:`jupyter_lowcost.storage.checkpoints` (the store);
:func:`immutable` decides which variables a snapshot holds instead of pickling them
(:mod:`~jupyter_lowcost.storage.snapshots`, :mod:`~jupyter_lowcost.storage.writing`,
:mod:`~jupyter_lowcost.storage.restore`).
"""

from __future__ import annotations

import time
from typing import Any

#: Buffers are written in chunks of this many bytes (a changed chunk is rewritten whole).
CHUNK_SIZE = 4 * 1024 * 1024
#: Checkpoints kept after each new one (older ones and their chunks are deleted).
KEEP = 3
#: Buffers of at least this many chunks have their writes watched (where Linux can).
WATCHED_CHUNKS = 4

ATOMIC_TYPES = frozenset((int, float, complex, bool, str, bytes, type(None)))
FROZEN_TYPES = frozenset((tuple, frozenset))
#: Small containers (at most :data:`SMALL_LENGTH` items) are pickled together, in one
#: call, when there are at least :data:`BATCH_MIN` of them: 20,000 small lists pickled one
#: by one would cost the cell's reply about 150 ms at each snapshot.
SMALL_CONTAINERS = frozenset((list, dict, set))
SMALL_LENGTH = 64
BATCH_MIN = 64


def immutable(value: Any, depth: int = 0) -> bool:
    """A value no cell can change in place: numbers, strings, bytes, None, and tuples and
    frozensets of those (exact types: a subclass may add mutable state)."""
    kind = type(value)
    if kind in ATOMIC_TYPES:
        return True
    if kind in FROZEN_TYPES and depth < 4 and len(value) <= 256:
        return all(immutable(item, depth + 1) for item in value)
    return False


def type_name(value: Any) -> str:
    """A value's type as reports name it (``int``, ``numpy.ndarray``)."""
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def yield_interpreter() -> None:
    """Let another thread that waits for the interpreter have it now (the kernel's main
    thread, sending a cell's reply), not at the end of the switch interval (5 ms)."""
    time.sleep(0)


def error_text(err: BaseException) -> str:
    """An exception as a report says why: its message (its type without one), short."""
    text = str(err) or type(err).__name__
    return text if len(text) < 200 else text[:197] + "..."
