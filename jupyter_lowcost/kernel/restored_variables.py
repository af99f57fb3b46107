"""Restored variables are the user's: IPython must not hide them from ``%who`` nor from the
next checkpoint.

``KernelCheckpoints`` (``checkpointing.py``) calls :meth:`RestoredVariables.add` after each
restore, and :meth:`RestoredVariables.unhide` before it reads the namespace for a checkpoint.
"""

from __future__ import annotations

from typing import Any


class RestoredVariables:
    """What the last restores brought back, until the first cell has run.

    A restore at start runs before IPython hides its initial namespace from the user
    (``user_ns_hidden``, filled after extensions load), so they are unhidden again just
    before the first cell, and before a notice's or a move's checkpoint until then."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self._pending: dict[str, Any] = {}

    def add(self, restored: dict[str, Any]) -> None:
        first = not self._pending
        self._pending = {**self._pending, **restored}
        self.unhide()
        if first:
            self.shell.events.register("pre_run_cell", self._before_first_cell)

    def _before_first_cell(self, *args: Any) -> None:
        self.shell.events.unregister("pre_run_cell", self._before_first_cell)
        self.unhide()
        self._pending = {}

    def unhide(self) -> None:
        """Unhide what the last restores brought back, if IPython has hidden it since."""
        hidden = self.shell.user_ns_hidden
        for name, value in self._pending.items():
            if name in hidden and hidden[name] is value and self.shell.user_ns.get(name) is value:
                del hidden[name]
