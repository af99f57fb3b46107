"""Functions the notebook defined, saved as their code and restored bound to the namespace
they are restored into.

:class:`~jupyter_lowcost.storage.pickling.NamespacePickler` saves such a function with
:func:`reduce_notebook_function`: its code (marshal, tied to the Python version),
defaults, closure and attributes, not its globals (the notebook's namespace). The
unpickler of a restore (:class:`NamespaceUnpickler`, used by
:class:`~jupyter_lowcost.storage.shared_memo.SharedMemo`) is given the namespace it
restores into, and binds the restorer the stream names to it, so that ``train()`` after a
resume trains the restored ``model``.

Why not a persistent id for the namespace (``persistent_id``/``persistent_load``): pickle
calls a pickler's ``persistent_id`` for every object it saves, which made the snapshot of
a namespace of many small objects more than twice as slow (the time a cell's reply
waits); and one set only once a notebook function is met is not seen by the dump under
way from Python 3.13 on. The stream names the restorer instead, as before; checkpoints
written before this module existed name it ``jupyter_lowcost.storage.checkpoints.
_restore_notebook_function`` (:data:`RESTORERS`), which that module keeps importable.
"""

from __future__ import annotations

import marshal
import pickle
import sys
import types
from typing import Any

#: Where the streams name the restorer of notebook functions: this module's, and the one
#: of checkpoints written before it existed (the same function, kept under that name).
RESTORERS = frozenset(
    (
        (__name__, "restore_notebook_function"),
        ("jupyter_lowcost.storage.checkpoints", "_restore_notebook_function"),
    )
)


def reduce_notebook_function(function: types.FunctionType) -> tuple[Any, tuple[Any, ...]]:
    """A function defined in the notebook, as :func:`restore_notebook_function` rebuilds
    it: its code, defaults, closure and attributes; its globals are the namespace it is
    restored into."""
    closure = None
    if function.__closure__ is not None:
        closure = []
        for cell in function.__closure__:
            try:
                closure.append((True, cell.cell_contents))
            except ValueError:  # an empty cell (a name assigned later)
                closure.append((False, None))
    return (
        restore_notebook_function,
        (
            tuple(sys.version_info[:2]),
            marshal.dumps(function.__code__),
            function.__name__,
            function.__qualname__,
            function.__defaults__,
            function.__kwdefaults__,
            closure,
            function.__doc__,
            function.__dict__ or None,
        ),
    )


def restore_notebook_function(*saved: Any) -> types.FunctionType:
    """Rebuild a function saved by :func:`reduce_notebook_function`, bound to the
    ``__main__`` module's namespace: what a plain unpickler gets; a
    :class:`NamespaceUnpickler` binds it to the namespace it restores into instead."""
    return restore_into(main_namespace(), *saved)


def restore_into(
    namespace: dict[str, Any],
    version: tuple[int, int],
    code: bytes,
    name: str,
    qualname: str,
    defaults: tuple[Any, ...] | None,
    kwdefaults: dict[str, Any] | None,
    closure: list[tuple[bool, Any]] | None,
    doc: str | None,
    attributes: dict[str, Any] | None,
) -> types.FunctionType:
    """Rebuild a function saved by :func:`reduce_notebook_function`, bound to
    ``namespace``."""
    if tuple(version) != tuple(sys.version_info[:2]):
        raise pickle.UnpicklingError(
            f"a function of Python {version[0]}.{version[1]} cannot be restored in Python "
            f"{sys.version_info[0]}.{sys.version_info[1]}: run the cell that defines it again"
        )
    cells = None
    if closure is not None:
        cells = tuple(
            types.CellType(value) if full else types.CellType() for full, value in closure
        )
    function = types.FunctionType(marshal.loads(code), namespace, name, defaults, cells)
    function.__qualname__ = qualname
    function.__kwdefaults__ = kwdefaults
    function.__doc__ = doc
    function.__module__ = "__main__"
    if attributes:
        function.__dict__.update(attributes)
    return function


def main_namespace() -> dict[str, Any]:
    """Where notebook functions are bound when a restore names no namespace."""
    return sys.modules["__main__"].__dict__


class NamespaceUnpickler(pickle.Unpickler):
    """An Unpickler that restores the notebook's functions into ``namespace`` (None: the
    ``__main__`` module's, looked up when a function is restored)."""

    def __init__(self, file: Any, buffers: Any, namespace: dict[str, Any] | None) -> None:
        super().__init__(file, buffers=buffers)
        self.namespace = namespace

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in RESTORERS:
            return self._restore_function
        return super().find_class(module, name)

    def _restore_function(self, *saved: Any) -> types.FunctionType:
        namespace = main_namespace() if self.namespace is None else self.namespace
        return restore_into(namespace, *saved)
