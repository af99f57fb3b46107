"""The kernel's cells as its checkpoints record them: after which cell each was taken, the
cell each kernel starts, and ``In`` and ``Out``, so that a resumed kernel counts on.

``KernelCheckpoints`` (``checkpointing.py``) keeps one :class:`CellHistory`: IPython's cell
hooks call :meth:`~CellHistory.cell_started` and :meth:`~CellHistory.cell_ended`, each
checkpoint saves :meth:`~CellHistory.saved`, and a resume reads
:meth:`~CellHistory.last_started` before its first cell, then calls
:meth:`~CellHistory.resume` with the history its checkpoint came back with.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: In the checkpoint directory: the execution count of the last cell the kernel started.
LAST_CELL_FILE = "last_cell"


class CellHistory:
    """The last cell that ended (its execution count), and the one running (None between
    cells): a checkpoint's history says after which cell it was taken."""

    def __init__(self, shell: Any, directory: Path, note_cells: bool) -> None:
        self.shell = shell
        self.directory = directory
        #: Note each cell that starts in ``directory`` (not for a job, nor checkpoints off).
        self.note_cells = note_cells
        self.last_cell = max(0, int(getattr(shell, "execution_count", 1) or 1) - 1)
        self.running_cell: int | None = None
        self._last_cell_fd: int | None = None

    def cell_started(self, info: Any = None) -> None:
        if getattr(info, "store_history", True):  # (a cell with an execution count)
            self.running_cell = self.last_cell + 1
            self._note_started(self.running_cell)

    def cell_ended(self, result: Any = None) -> None:
        count = getattr(result, "execution_count", None)
        if isinstance(count, int):
            self.last_cell = count
        elif self.running_cell is not None:
            self.last_cell = self.running_cell
        self.running_cell = None

    def _note_started(self, count: int) -> None:
        """Note, in the checkpoint directory, the cell that starts (a resume compares it
        with its checkpoint's). One small write in place per cell; never fails a cell."""
        if not self.note_cells:
            return
        try:
            if self._last_cell_fd is None:
                path = self.directory / LAST_CELL_FILE
                self._last_cell_fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.pwrite(self._last_cell_fd, f"{count:>20}\n".encode(), 0)
        except OSError:
            pass

    def last_started(self) -> int | None:
        """The last cell a kernel of this checkpoint directory started (a resume reads it
        before its first cell); None if none is noted."""
        try:
            text = (self.directory / LAST_CELL_FILE).read_text()
            count = int(text.strip())
        except (OSError, ValueError):
            return None
        return count if count >= 0 else None

    def saved(self, namespace: dict[str, Any]) -> dict[str, Any]:
        """The kernel's execution count and inputs (``In``), and of its outputs (``Out``)
        those that are saved variables (by name) or plain JSON values: saved with each
        checkpoint, so that a resumed kernel counts on from where it was."""
        manager = getattr(self.shell, "history_manager", None)
        if manager is None:  # (not an IPython shell)
            return {}
        inputs = list(manager.input_hist_parsed)
        raw = list(manager.input_hist_raw)
        return {
            "execution_count": int(self.shell.execution_count),
            # The last cell whose changes this checkpoint holds whole, and the cell it is
            # taken in the middle of (a notice's, during a cell), if any.
            "cell": self.last_cell,
            "during": self.running_cell,
            "inputs": inputs,
            # (only when they differ: the resume takes the inputs for them otherwise, and
            # a long job's checkpoints then carry its inputs once)
            **({"raw_inputs": raw} if raw != inputs else {}),
            "outputs": _outputs(dict(manager.output_hist), namespace),
        }

    def resume(self, history: dict[str, Any] | None) -> None:
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
        self.last_cell = cell if isinstance(cell, int) and cell >= 0 else max(0, count - 1)
        for number, saved in (history.get("outputs") or {}).items():
            if "variable" in saved and saved["variable"] in self.shell.user_ns:
                manager.output_hist[int(number)] = self.shell.user_ns[saved["variable"]]
            elif "value" in saved:
                manager.output_hist[int(number)] = saved["value"]
        self.shell.execution_count = max(count, 1)


def _outputs(output_hist: dict[int, Any], namespace: dict[str, Any]) -> dict[str, Any]:
    """Of ``Out``, what a checkpoint can bring back: a saved variable (by name) or a plain
    JSON value."""
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
    return outputs
