"""What a checkpoint store tells its callers: the reports of a save and of a restore.

Built by :mod:`~jupyter_lowcost.storage.writing` and :mod:`~jupyter_lowcost.storage.restore`;
re-exported by :mod:`jupyter_lowcost.storage.checkpoints`, where the kernel
(:mod:`jupyter_lowcost.kernel.checkpointing`) and ``%lowcost`` take them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..words import human_bytes, listed


@dataclass
class Skipped:
    """A variable that was not saved, or not restored."""

    name: str
    type: str
    why: str


@dataclass
class SaveReport:
    """What one checkpoint saved (``%lowcost checkpoint`` prints it)."""

    checkpoint_id: str
    taken_at: float
    variables: list[str]
    bytes: int
    bytes_written: int
    seconds: float
    skipped: list[Skipped] = field(default_factory=list)
    #: Bytes of memory read to find what changed (CRC32s); watched buffers need next to
    #: none.
    bytes_compared: int = 0
    #: Of ``seconds``, the snapshot's (for a checkpoint written in the background, what
    #: the kernel's cell waited for).
    snapshot_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RestoreReport:
    """What one restore brought back (:meth:`~jupyter_lowcost.storage.checkpoints.CheckpointStore.load`; a resumed kernel
    sends :meth:`to_json` to the server, ``%lowcost`` prints :meth:`summary`)."""

    checkpoint_id: str
    taken_at: float
    variables: list[str]
    bytes: int
    seconds: float
    not_restored: list[Skipped] = field(default_factory=list)
    #: What the kernel saved of its history with the checkpoint (see ``save``), if any.
    history: dict[str, Any] | None = None
    #: The last cell the kernel started before it was lost (a resume sets it; None:
    #: unknown, or not a resume).
    last_execution_count: int | None = None

    #: At most this many of the variables that did not come back are named (to the
    #: server, in messages): the report stays small whatever the namespace.
    LISTED = 10
    #: Each name, type and reason sent is cut to this many characters.
    FIELD_CHARS = 200

    @property
    def execution_count(self) -> int | None:
        """The last cell the checkpoint holds whole (None: the checkpoint does not say)."""
        return self._count((self.history or {}).get("cell"))

    @property
    def taken_during(self) -> int | None:
        """The cell the checkpoint was taken in the middle of (a notice's), if any."""
        return self._count((self.history or {}).get("during"))

    def to_json(self) -> dict[str, Any]:
        """The report for ``POST kernels/<id>/restored``: counts, and the first
        :data:`LISTED` variables that did not come back (a few kB at most)."""

        def cut(text: str) -> str:
            return text if len(text) <= self.FIELD_CHARS else text[: self.FIELD_CHARS - 1] + "…"

        return {
            "checkpoint_id": self.checkpoint_id,
            "taken_at": self.taken_at,
            "variable_count": len(self.variables),
            "bytes": self.bytes,
            "seconds": self.seconds,
            "not_restored": [
                {"name": cut(s.name), "type": cut(s.type), "why": cut(s.why)}
                for s in self.not_restored[: self.LISTED]
            ],
            "not_restored_count": len(self.not_restored),
            "execution_count": self.execution_count,
            "taken_during": self.taken_during,
            "last_execution_count": self.last_execution_count,
        }

    def summary(self) -> str:
        """``14 variables, 2.1 GB; not restored: gen (generator)`` (the first
        :data:`LISTED`, then "and N more")."""
        text = f"{len(self.variables):,} variable{'s' if len(self.variables) != 1 else ''}, "
        text += human_bytes(self.bytes)
        if self.not_restored:
            names = [f"{s.name} ({s.type})" for s in self.not_restored[: self.LISTED]]
            text += "; not restored: " + listed(names, len(self.not_restored))
        return text

    @staticmethod
    def _count(value: Any) -> int | None:
        """An execution count from a checkpoint's history (None when it is not one)."""
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return value if ok else None
