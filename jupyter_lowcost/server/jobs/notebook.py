"""A job's notebook: its parameters, its outputs as they come, and what its metadata says.

Called by the ``POST jobs`` handler (:func:`read`, :func:`check_parameter_name`), by
:class:`~.service.Jobs` (:func:`prepare` once when the job is made) and by
:class:`~.runner.JobRunner`: :func:`code_cells` to know what it runs, :func:`mark_cell`
and :func:`job_metadata` each time it saves the output notebook (the cells' outputs are
nbclient's, see ``execution.py``). Pure data (nbformat dicts); no I/O.
"""

from __future__ import annotations

import copy
import keyword
import math
from typing import Any

import nbformat
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
#: How deep a job's notebook may nest (lists and objects): far more than notebooks
#: have, far less than Python's recursion limit, which nbformat and copies hit.
MAX_DEPTH = 100


class NotANotebook(ValueError):
    """What :func:`read` says of what is not a notebook, in plain words."""


def read(content: Any) -> dict[str, Any]:
    """A notebook given as JSON (a dict), as nbformat 4, checked; :class:`NotANotebook`
    (a ``ValueError``) says in plain words why it is not one (called by the ``POST jobs``
    handler)."""
    if not isinstance(content, dict):
        raise NotANotebook("the notebook must be a JSON object (an .ipynb file's content)")
    if _depth(content) > MAX_DEPTH:
        raise NotANotebook(
            f"not a notebook Jupyter can read: it is nested too deeply (more than {MAX_DEPTH} "
            "levels of lists and objects)"
        )
    _check_shape(content)
    try:
        notebook = nbformat.from_dict(copy.deepcopy(content))
        if notebook["nbformat"] < 4:
            notebook = nbformat.convert(notebook, 4)
        _validate(notebook)
    except RecursionError:
        raise NotANotebook("not a notebook Jupyter can read: it is nested too deeply") from None
    except nbformat.ValidationError as err:
        where = _json_path(getattr(err, "absolute_path", ()))
        what = _first_line(getattr(err, "message", None) or err)
        raise NotANotebook(
            f"not a valid notebook: {where + ': ' if where else ''}{_shorten(what)}"
        ) from err
    except Exception as err:  # (nbformat's conversions raise KeyError, TypeError...)
        raise NotANotebook(
            f"not a notebook Jupyter can read: {_shorten(_first_line(err))}"
        ) from err
    return notebook


def _validate(notebook: Any) -> None:
    """nbformat's validation, but for the notebook's ``kernelspec``: one without a
    ``name`` or ``display_name`` is run, as nbclient and papermill run it (the job's
    handler picks the kernel), and kept as it is."""
    spec = notebook.get("metadata", {}).get("kernelspec")
    if spec is None:
        nbformat.validate(notebook)
        return
    checked = copy.copy(notebook)
    checked["metadata"] = {k: v for k, v in notebook["metadata"].items() if k != "kernelspec"}
    nbformat.validate(checked)


def _depth(value: Any) -> int:
    """How deep lists and objects nest in ``value`` (without recursion: nbformat, copies
    and saves recurse, and would fail later, far from the request)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH:
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def _check_shape(content: dict[str, Any]) -> None:
    """What nbformat assumes before it validates (its own errors on these are raw: a
    ``KeyError: 'cells'``, ``(None, None)``): a version, and the fields of that version."""
    version = content.get("nbformat")
    if "nbformat" not in content:
        raise NotANotebook(
            'not a notebook: it has no "nbformat" field (an .ipynb file has "nbformat": 4)'
        )
    if not isinstance(version, int) or isinstance(version, bool) or version not in (3, 4):
        raise NotANotebook(
            f"not a notebook Jupyter can read: nbformat {_shorten(repr(version))} "
            "(this server reads versions 4 and 3)"
        )
    minor = content.get("nbformat_minor", 0)
    if not isinstance(minor, int) or isinstance(minor, bool) or minor < 0:
        raise NotANotebook(
            f"not a valid notebook: nbformat_minor must be a whole number, "
            f"not {_shorten(repr(minor))}"
        )
    if version == 4:
        fields = {"cells": list, "metadata": dict}
    else:
        fields = {"worksheets": list, "metadata": dict}
    for name, kind in fields.items():
        if not isinstance(content.get(name), kind):
            wanted = "a list" if kind is list else "a JSON object"
            found = "missing" if name not in content else f"not {wanted}"
            raise NotANotebook(
                f"not a valid notebook: its {name!r} is {found} (it must be {wanted})"
            )
    items = content["cells"] if version == 4 else content["worksheets"]
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            kind = "cell" if version == 4 else "worksheet"
            raise NotANotebook(f"not a valid notebook: {kind} {index} is not a JSON object")
        if version == 4 and item.get("cell_type") not in ("code", "markdown", "raw"):
            raise NotANotebook(
                f"not a valid notebook: cell {index}'s cell_type is "
                f"{_shorten(repr(item.get('cell_type')), 40)}, not code, markdown or raw"
            )


def kernel_name(asked: str | None, notebook: Any, default: str, installed: Any) -> str:
    """The kernelspec a job runs on: the one asked for, else the notebook's, else the
    server's default, as nbclient picks it: a kernelspec without a ``name`` (or not an
    object) gets the default, and ``python`` (jupyter_client's own alias) is the Python
    kernel when no kernelspec has that name."""
    spec = (notebook.get("metadata") or {}).get("kernelspec")
    name = asked or (spec.get("name") if isinstance(spec, dict) else None)
    if not isinstance(name, str) or not name:
        return default
    if name == "python" and name not in installed:
        return NATIVE_KERNEL_NAME
    return name


def check_parameter_name(name: str) -> str | None:
    """Why ``name`` cannot be a job's parameter (None: it can). Called by the ``POST
    jobs`` handler; the schema already holds names to ``[A-Za-z_][A-Za-z0-9_]*``.

    Refused: Python's keywords (``class = 1`` is a syntax error), and Python's own
    dunder names (``__debug__ = 1`` is a syntax error; ``__builtins__ = 1`` takes every
    builtin away from the notebook)."""
    if keyword.iskeyword(name):
        return f"parameter name {name!r} is a Python keyword"
    if len(name) > 4 and name.startswith("__") and name.endswith("__"):
        return f"parameter name {name!r} is one of Python's own names (a __dunder__ name)"
    return None


def python_literal(value: Any) -> str:
    """A JSON value as Python source that makes it again, as papermill writes it: NaN and
    the infinities as ``float('nan')``, ``float('inf')``, ``float('-inf')`` (their repr,
    ``nan``, is a NameError)."""
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return "float('nan')"
        return "float('inf')" if value > 0 else "float('-inf')"
    if isinstance(value, dict):
        items = ", ".join(f"{python_literal(k)}: {python_literal(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list):
        return "[" + ", ".join(python_literal(v) for v in value) + "]"
    return repr(value)


def prepare(notebook: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """The notebook a job runs: outputs cleared, and the parameters (if any) injected as
    papermill does, in a cell tagged ``injected-parameters`` right after the cell tagged
    ``parameters`` (at the top when there is none)."""
    notebook = copy.deepcopy(notebook)
    cells = [c for c in notebook["cells"] if INJECTED_TAG not in _tags(c)]
    for cell in cells:
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
            cell.get("metadata", {}).pop("lowcost", None)
    if parameters:
        source = "# Parameters\n" + "".join(
            f"{name} = {python_literal(value)}\n" for name, value in parameters.items()
        )
        injected = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
        if (notebook.get("nbformat", 4), notebook.get("nbformat_minor", 0)) < (4, 5):
            del injected["id"]  # (cell ids came with nbformat 4.5: older ones refuse them)
        where = next((i + 1 for i, cell in enumerate(cells) if PARAMETERS_TAG in _tags(cell)), 0)
        cells.insert(where, injected)
    notebook["cells"] = cells
    return notebook


#: The tag of cells a job does not run (nbclient's and papermill's ``skip-execution``).
SKIP_TAG = "skip-execution"


def code_cells(notebook: dict[str, Any]) -> list[int]:
    """The positions of the code cells a job runs, in order: not the empty ones, nor the
    ones tagged ``skip-execution`` (as nbclient skips them)."""
    return [
        i
        for i, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and _source(cell).strip() and SKIP_TAG not in _tags(cell)
    ]


def source(notebook: dict[str, Any], position: int) -> str:
    return _source(notebook["cells"][position])


def first_line(source: str, width: int = 80) -> str:
    """A cell's first line that says something (comments included), shortened."""
    line = next((x.strip() for x in source.splitlines() if x.strip()), "")
    return line if len(line) <= width else line[: width - 3] + "..."


def mark_cell(notebook: dict[str, Any], position: int, metadata: dict[str, Any]) -> None:
    """Say in a cell's metadata (``lowcost``) where and when it ran."""
    notebook["cells"][position].setdefault("metadata", {})["lowcost"] = copy.deepcopy(metadata)


def note_output(text: str) -> dict[str, Any]:
    """A stderr output the job adds to a cell (a cell whose outputs were lost)."""
    return nbformat.v4.new_output("stream", name="stderr", text=text)


def job_metadata(notebook: dict[str, Any], metadata: dict[str, Any]) -> None:
    """The job's summary in the notebook's metadata (``lowcost``): its id, placement,
    instances, interruptions, cost and savings."""
    notebook.setdefault("metadata", {})["lowcost"] = copy.deepcopy(metadata)


def _tags(cell: dict[str, Any]) -> list[str]:
    return list((cell.get("metadata") or {}).get("tags") or [])


def _source(cell: dict[str, Any]) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else str(text)


def _json_path(parts: Any) -> str:
    """``cells[0].source``: where in the notebook (nbformat's error path)."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _shorten(text: str, width: int = 200) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _first_line(err: BaseException | str) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
