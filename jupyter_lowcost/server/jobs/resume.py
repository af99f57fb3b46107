"""What a resumed job says about the variables its kernel did not get back.

Called by :class:`~.runner.JobRunner` after each resume. A variable that could not be
checkpointed (a generator, ``ip = get_ipython()``, a comm, a widget) or restored is
missing in the resumed kernel; the cell that made it ran before the interruption and does
not run again, so a later cell that uses it fails with a ``NameError``. The job says so
where its user looks (its log, its interruption, a note on the cell it resumed at, the
CLI), with the cell that defines each variable.
"""

from __future__ import annotations

import ast
import functools
from typing import Any

#: At most this many of the variables that did not come back are named, one line each.
LISTED = 20


def describe_missing(
    missing: list[dict[str, Any]], count: int, sources: list[str], done: int, before: str
) -> list[str]:
    """One line per variable that did not come back (the first :data:`LISTED` of
    ``missing``, ``count`` in all): ``gen (generator) was not restored; it is defined in
    cell 3, which ran before the interruption: the job will fail if a later cell uses
    it``. ``sources``: the job's code cells (cell ``n`` is ``sources[n - 1]``);
    ``done``: the cells that ran before (the job resumes at ``done + 1``); ``before``:
    what they ran before ("the interruption")."""
    lines = []
    for item in missing[:LISTED]:
        name, kind = str(item.get("name", "?")), str(item.get("type", "?"))
        cell = defining_cell(sources, name, done)
        if cell is not None:
            lines.append(
                f"{name} ({kind}) was not restored; it is defined in cell {cell}, which ran "
                f"{before}: the job will fail if a later cell uses it"
            )
        else:
            why = str(item.get("why") or "").strip()
            lines.append(f"{name} ({kind}) was not restored" + (f": {why}" if why else ""))
    shown = min(len(missing), LISTED)
    if count > shown:
        more = count - shown
        lines.append(f"and {more:,} more variable{'s' if more != 1 else ''} not restored")
    return lines


def defining_cell(sources: list[str], name: str, done: int) -> int | None:
    """The last of the cells ``1..done`` whose code binds ``name`` at its top level
    (an assignment, ``for``, ``with ... as``, ``def``, ``class``, ``import``); None when
    none does (the variable came from elsewhere: ``exec``, a magic, a module)."""
    for number in range(min(done, len(sources)), 0, -1):
        if name in defined_names(sources[number - 1]):
            return number
    return None


@functools.lru_cache(maxsize=4096)
def defined_names(source: str) -> frozenset[str]:
    """The names a cell's code binds in the notebook's namespace (not those local to its
    functions, classes and comprehensions). IPython's syntax (magics, ``!``) is turned
    into Python first; a cell that is not Python binds none."""
    try:
        tree = ast.parse(_python(source))
    except (SyntaxError, ValueError):
        return frozenset()
    finder = _Bindings()
    finder.visit(tree)
    return frozenset(finder.names)


class _Bindings(ast.NodeVisitor):
    """Collects the names bound in a module's own scope."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self.names.add(node.id)

    def _defines(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.names.add(node.name)
        for decorator in node.decorator_list:  # (evaluated in the cell's scope)
            self.visit(decorator)

    visit_FunctionDef = _defines
    visit_AsyncFunctionDef = _defines
    visit_ClassDef = _defines

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.names.add(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_Lambda(self, node: ast.Lambda) -> None:
        pass  # (its own scope)

    def _comprehension(self, node: ast.AST) -> None:
        # Only a walrus inside binds in the cell's scope.
        for inner in ast.walk(node):
            if isinstance(inner, ast.NamedExpr) and isinstance(inner.target, ast.Name):
                self.names.add(inner.target.id)

    visit_ListComp = _comprehension
    visit_SetComp = _comprehension
    visit_DictComp = _comprehension
    visit_GeneratorExp = _comprehension


def _python(source: str) -> str:
    """A cell's code as IPython runs it (magics and shell escapes become calls)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # (a server without IPython: plain Python cells still parse)
        return source
    try:
        return str(TransformerManager().transform_cell(source))
    except (SyntaxError, ValueError, TypeError, IndexError):
        return source
