"""Notebooks whose outputs nbclient defines (issue 28, item 14), nbclient's run of them,
and the normaliser that makes a job's output notebook and nbclient's comparable.

Each notebook exercises one thing nbclient does that a notebook's outputs depend on: a
display id updated from a later cell, ipywidgets' ``Output`` capture, widget state saved
in the notebook, the ``skip-execution`` and ``raises-exception`` tags, one output per
stream message, ``language_info`` from the kernel, IPython history kept in memory, and a
kernelspec without ``name`` or named ``python``. Every one has, after the cells under
test, a cell that waits for a file (:func:`waiting_cell`): the tests interrupt a job's
instance there, and the job resumes at that cell on a new instance; then cells that run
after the resume (the notebook's ``after`` cells).

:func:`run_with_nbclient` runs a notebook with ``nbclient.NotebookClient`` in a
subprocess (a local ipykernel, IPython history in memory, widget state stored: nbclient's
defaults), the reference the jobs' output notebooks are compared with after
:func:`normalise`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

#: The first line of the cell that waits for the file ``go`` (a job's ``current_source``
#: says that the job runs it).
WAITING_LINE = "# waits for the file go: the test interrupts the job's instance here"

#: The MIME type of a widget's view in a cell's outputs, and of the notebook's state.
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

#: The notes a job adds to a cell's outputs (a stderr stream that starts so).
JOB_NOTE = "jupyter-lowcost:"

PYTHON3 = {"name": "python3", "display_name": "Python 3", "language": "python"}


def waiting_cell(go: Path) -> str:
    """A cell that waits until ``go`` exists, and prints nothing."""
    return (
        f"{WAITING_LINE}\n"
        "import pathlib, time\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n"
        "    time.sleep(0.05)\n"
    )


@dataclass(frozen=True)
class Case:
    """One behaviour: the cells that show it, the cells run after the wait (the resume),
    and the notebook's metadata (its kernelspec, a ``language_info`` to be replaced)."""

    name: str
    before: list[tuple[str, list[str]]]
    after: list[tuple[str, list[str]]]
    metadata: dict[str, Any] = field(default_factory=lambda: {"kernelspec": dict(PYTHON3)})

    def notebook(self, go: Path) -> dict[str, Any]:
        """The notebook, its waiting cell waiting for ``go`` (a markdown cell first)."""
        cells = [nbformat.v4.new_markdown_cell(f"# {self.name}")]
        for source, tags in self.before:
            cells.append(_code(source, tags))
        cells.append(_code(waiting_cell(go), []))
        for source, tags in self.after:
            cells.append(_code(source, tags))
        notebook = nbformat.v4.new_notebook(cells=cells)
        notebook.metadata = json.loads(json.dumps(self.metadata))
        return json.loads(json.dumps(notebook))


def _code(source: str, tags: list[str]) -> Any:
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def _plain(*sources: str) -> list[tuple[str, list[str]]]:
    return [(source, []) for source in sources]


AFTER_THE_WAIT = "print('after the wait')\n"

CASES = [
    # A display id: updated from the next cell (``handle.update``), shown again by a later
    # cell (both outputs then show the last), and updated after the resume.
    Case(
        "display_ids",
        before=_plain(
            "from IPython.display import display\nhandle = display('first', display_id=True)\n",
            "handle.update('updated by the next cell')\n",
            "display('shown by one cell', display_id='shared');\n",
            "display('shown again by the next: both outputs show this', display_id='shared');\n",
        ),
        after=_plain("handle.update('updated after the wait')\n"),
    ),
    # ipywidgets' Output captures what is printed and cleared inside ``with out:`` (the
    # cell's own outputs stay), and an exception raised inside it (the widget shows it;
    # the cell goes on, with no error of its own).
    Case(
        "widget_output",
        before=_plain(
            "import ipywidgets as widgets\n"
            "from IPython.display import clear_output, display\n"
            "out = widgets.Output()\n"
            "display(out)\n",
            "print('the cell prints this itself')\n"
            "with out:\n"
            "    print('captured, then cleared')\n"
            "    clear_output()\n"
            "    print('captured after the clear')\n",
            "with out:\n"
            "    raise ValueError('caught by the Output widget')\n"
            "print('the cell goes on after the widget caught it')\n",
        ),
        after=_plain(AFTER_THE_WAIT),
    ),
    # Widget state in the notebook's metadata: a slider, its value changed by a later cell.
    Case(
        "widget_state",
        before=_plain(
            "import ipywidgets as widgets\n"
            "slider = widgets.IntSlider(value=3, min=0, max=10, description='n')\n"
            "slider\n",
            "slider.value = 7\nprint('value', slider.value)\n",
        ),
        after=_plain(AFTER_THE_WAIT),
    ),
    # A cell tagged raises-exception raises and the notebook goes on; cells tagged
    # skip-execution (they would fail) do not run, before the wait or after it.
    Case(
        "tags",
        before=[
            (
                (
                    "print('this cell raises, and its tag lets the notebook go on')\n"
                    "raise RuntimeError('expected: the cell is tagged raises-exception')\n"
                ),
                ["raises-exception"],
            ),
            ("raise AssertionError('a cell tagged skip-execution ran')\n", ["skip-execution"]),
            ("print('the cell after the tagged ones')\n", []),
        ],
        after=[
            ("raise AssertionError('a cell tagged skip-execution ran')\n", ["skip-execution"]),
            (AFTER_THE_WAIT, []),
        ],
    ),
    # Stream messages apart in time are outputs apart (nbclient does not join them).
    Case(
        "streams",
        before=_plain(
            "import sys, time\n"
            "print('one')\nsys.stdout.flush()\ntime.sleep(0.3)\n"
            "print('two')\nsys.stdout.flush()\ntime.sleep(0.3)\n"
            "print('three, on stderr', file=sys.stderr)\nsys.stderr.flush()\ntime.sleep(0.3)\n"
            "print('four')\n",
        ),
        after=_plain(
            "import sys, time\nprint('five')\nsys.stdout.flush()\ntime.sleep(0.3)\nprint('six')\n",
        ),
    ),
    # language_info comes from the kernel: a wrong one in the notebook is replaced.
    Case(
        "language_info",
        before=_plain("print('hello')\n"),
        after=_plain(AFTER_THE_WAIT),
        metadata={
            "kernelspec": dict(PYTHON3),
            "language_info": {"name": "not-python", "version": "0.0"},
        },
    ),
    # The kernel keeps IPython's history in memory (nbclient's ``ipython_hist_file``),
    # not in the profile's SQLite file, on every instance.
    Case(
        "history",
        before=_plain("print(get_ipython().history_manager.hist_file)\n"),
        after=_plain("print(get_ipython().history_manager.hist_file)\n"),
    ),
    # A kernelspec without a name runs on the default kernel (python3).
    Case(
        "kernelspec_without_name",
        before=_plain("import sys\nprint('python', sys.version_info[0])\n"),
        after=_plain(AFTER_THE_WAIT),
        metadata={"kernelspec": {"display_name": "Python 3", "language": "python"}},
    ),
    # A kernelspec named "python" runs on python3 (jupyter_client's alias).
    Case(
        "kernelspec_python",
        before=_plain("import sys\nprint('python', sys.version_info[0])\n"),
        after=_plain(AFTER_THE_WAIT),
        metadata={"kernelspec": {"name": "python", "display_name": "Python", "language": "python"}},
    ),
]

CASES_BY_NAME = {case.name: case for case in CASES}


# -- nbclient's run --------------------------------------------------------------------

#: Run in a subprocess: ``python -c NBCLIENT_SCRIPT IN OUT FOLDER``. nbclient's defaults
#: (history in memory, widget state stored, timings recorded); the kernel from the
#: notebook's kernelspec, as nbclient picks it; errors only where a cell's tag allows.
NBCLIENT_SCRIPT = """
import json, sys
import nbclient, nbformat
source, target, folder = sys.argv[1:4]
with open(source) as handle:
    notebook = nbformat.from_dict(json.load(handle))
nbclient.NotebookClient(notebook, timeout=120, resources={"metadata": {"path": folder}}).execute()
with open(target, "w") as handle:
    json.dump(notebook, handle)
"""


async def run_with_nbclient(notebook: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``notebook`` executed by nbclient (in a subprocess, so that the test's event loop,
    where the Jupyter server runs, goes on), its kernel's working directory ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    source, target = folder / "nbclient-input.ipynb", folder / "nbclient-output.ipynb"
    source.write_text(json.dumps(notebook))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        NBCLIENT_SCRIPT,
        str(source),
        str(target),
        str(folder),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=150)
    assert process.returncode == 0, f"nbclient failed:\n{output.decode(errors='replace')}"
    return dict(json.loads(target.read_text()))


# -- the normaliser --------------------------------------------------------------------

#: Cell metadata that says when or where a cell ran, not what it gave.
RUN_METADATA = ("execution", "lowcost", "papermill", "collapsed", "scrolled")

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CELL_NUMBER = re.compile(r"(Cell )?In ?\[\d*\]")
KERNEL_FILE = re.compile(r"/[^\s\"']*/ipykernel_\d+/\d+\.py")


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _clean(text: str) -> str:
    """Colours, cell numbers and the kernel's per-process file names out of a text."""
    return KERNEL_FILE.sub("<cell file>", CELL_NUMBER.sub("In [N]", ANSI.sub("", text)))


def _is_job_note(output: dict[str, Any]) -> bool:
    return (
        output.get("output_type") == "stream"
        and output.get("name") == "stderr"
        and _text(output.get("text", "")).startswith(JOB_NOTE)
    )


class _ModelIds:
    """Widget model ids, renamed ``model-1``, ``model-2``... in the order first seen (the
    cells' outputs first, then the state, following the references between models)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def see(self, model_id: str) -> None:
        if model_id not in self.names:
            self.names[model_id] = f"model-{len(self.names) + 1}"

    def rename(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {self.rename_text(k): self.rename(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.rename(v) for v in value]
        if isinstance(value, str):
            return self.rename_text(value)
        return value

    def rename_text(self, text: str) -> str:
        if text in self.names:
            return self.names[text]
        if text.startswith("IPY_MODEL_") and text[10:] in self.names:
            return "IPY_MODEL_" + self.names[text[10:]]
        return text


def _view_ids(value: Any, found: Callable[[str], None]) -> None:
    """Every widget view's model id in ``value`` (an output's data), in order."""
    if isinstance(value, dict):
        view = value.get(WIDGET_VIEW)
        if isinstance(view, dict) and isinstance(view.get("model_id"), str):
            found(view["model_id"])
        for key in sorted(value):
            _view_ids(value[key], found)
    elif isinstance(value, list):
        for item in value:
            _view_ids(item, found)


def _references(value: Any) -> list[str]:
    """The ``IPY_MODEL_<id>`` references in a model's state, in a fixed order."""
    text = json.dumps(value, sort_keys=True)
    return re.findall(r'"IPY_MODEL_([^"]+)"', text)


def _masked(model: dict[str, Any]) -> str:
    """A model's state with every reference to another model masked (a sort key)."""
    return re.sub(r'"IPY_MODEL_[^"]*"', '"IPY_MODEL_"', json.dumps(model, sort_keys=True))


def _output(output: dict[str, Any]) -> dict[str, Any]:
    """One output, as it reads: no count, no transient part, texts joined and cleaned."""
    kind = output.get("output_type")
    if kind == "stream":
        return {"output_type": kind, "name": output.get("name"), "text": _text(output["text"])}
    if kind == "error":
        return {
            "output_type": kind,
            "ename": output.get("ename"),
            "evalue": output.get("evalue"),
            "traceback": [_clean(_text(line)) for line in output.get("traceback") or []],
        }
    data = {
        mime: (_text(value) if isinstance(value, (str, list)) else value)
        for mime, value in (output.get("data") or {}).items()
    }
    return {"output_type": kind, "data": data, "metadata": dict(output.get("metadata") or {})}


def normalise(notebook: dict[str, Any]) -> dict[str, Any]:
    """What of a notebook's run must be equal, whoever ran it: each cell's type, its
    metadata (tags) and outputs; the notebook's ``language_info`` and widget state.

    Dropped: execution counts (also ``In [N]`` in tracebacks), ``metadata.execution``
    timings, the ``lowcost`` metadata of jobs (cells and notebook) and ``papermill``'s,
    the notes a job adds (stderr outputs starting ``jupyter-lowcost:``), transient parts
    and cell ids; ANSI colours and the kernel's per-process file names in tracebacks.
    Widget model ids are renamed in the order first seen, in the outputs and in
    ``metadata.widgets`` alike; an Output widget's ``msg_id`` (the message it captures
    for, set only while a cell runs) is blanked."""
    ids = _ModelIds()
    cells = []
    for cell in notebook.get("cells", []):
        entry: dict[str, Any] = {
            "cell_type": cell["cell_type"],
            "metadata": {
                k: v for k, v in (cell.get("metadata") or {}).items() if k not in RUN_METADATA
            },
        }
        if cell["cell_type"] == "code":
            outputs = [o for o in cell.get("outputs") or [] if not _is_job_note(o)]
            entry["outputs"] = [_output(o) for o in outputs]
            _view_ids(entry["outputs"], ids.see)
        cells.append(entry)

    metadata = notebook.get("metadata") or {}
    state = dict(((metadata.get("widgets") or {}).get(WIDGET_STATE) or {}).get("state") or {})
    widgets = None
    if state:
        models = {key: dict(model) for key, model in state.items()}
        for model in models.values():
            inner = dict(model.get("state") or {})
            if "msg_id" in inner:
                inner["msg_id"] = ""
            if isinstance(inner.get("outputs"), list):
                inner["outputs"] = [_output(o) for o in inner["outputs"]]
            model["state"] = inner
        # (references first, from the models seen in the outputs; then the others, in an
        # order that does not depend on their ids)
        done: set[str] = set()
        while True:
            pending = [m for m in ids.names if m in models and m not in done]
            if not pending:
                unseen = [m for m in models if m not in ids.names]
                if not unseen:
                    break
                ids.see(min(unseen, key=lambda m: _masked(models[m])))
                continue
            for model_id in pending:
                done.add(model_id)
                for reference in _references(models[model_id]):
                    ids.see(reference)
                _view_ids(models[model_id], ids.see)  # (widgets shown in an Output)
        widgets = ids.rename(models)
        widgets = {
            "version_major": (metadata["widgets"][WIDGET_STATE]).get("version_major"),
            "state": dict(sorted(widgets.items())),
        }
    cells = [ids.rename(cell) for cell in cells]
    return {
        "cells": cells,
        "language_info": metadata.get("language_info"),
        "widgets": widgets,
    }


def cells_outputs(normalised: dict[str, Any]) -> list[Any]:
    """Each cell's normalised outputs (None for a markdown cell), with its tags."""
    return [
        (c["metadata"].get("tags"), c.get("outputs")) if c["cell_type"] == "code" else None
        for c in normalised["cells"]
    ]
