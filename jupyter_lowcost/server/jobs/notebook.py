"""A job's notebook: its parameters, its outputs as they come, and what its metadata says.

Called by :class:`~.runner.JobRunner`: :func:`prepare` once when the job is made,
:class:`CellOutputs` for every cell it runs, :func:`mark_cell` and :func:`job_metadata`
each time it saves the output notebook. Pure data (nbformat dicts); no I/O.
"""

from __future__ import annotations

import copy
from typing import Any

import nbformat

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


def read(content: Any) -> dict[str, Any]:
    """A notebook given as JSON (a dict), as nbformat 4, checked; ``ValueError`` says why
    it is not one."""
    if not isinstance(content, dict):
        raise ValueError("the notebook must be a JSON object (an .ipynb file's content)")
    try:
        notebook = nbformat.from_dict(copy.deepcopy(content))
        if notebook.get("nbformat", 4) < 4:
            notebook = nbformat.convert(notebook, 4)
        nbformat.validate(notebook)
    except Exception as err:  # nbformat's ValidationError, or a KeyError on a bad shape
        raise ValueError(f"not a notebook: {_first_line(err)}") from err
    return notebook


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
            f"{name} = {value!r}\n" for name, value in parameters.items()
        )
        injected = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
        where = next((i + 1 for i, cell in enumerate(cells) if PARAMETERS_TAG in _tags(cell)), 0)
        cells.insert(where, injected)
    notebook["cells"] = cells
    return notebook


def code_cells(notebook: dict[str, Any]) -> list[int]:
    """The positions of the code cells a job runs, in order (empty ones are skipped)."""
    return [
        i
        for i, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and _source(cell).strip()
    ]


def source(notebook: dict[str, Any], position: int) -> str:
    return _source(notebook["cells"][position])


def first_line(source: str, width: int = 80) -> str:
    """A cell's first line that says something (comments included), shortened."""
    line = next((x.strip() for x in source.splitlines() if x.strip()), "")
    return line if len(line) <= width else line[: width - 3] + "..."


class CellOutputs:
    """The outputs of one cell as its messages come, as JupyterLab would show them:
    consecutive streams of one name joined, ``clear_output`` (also ``wait=True``), and
    ``update_display_data`` on the outputs with that display id."""

    def __init__(self) -> None:
        self.outputs: list[dict[str, Any]] = []
        self._clear_on_next = False
        self._displays: dict[str, list[int]] = {}
        self.execution_count: int | None = None

    def add(self, msg_type: str, content: dict[str, Any]) -> None:
        if msg_type == "execute_input":
            self.execution_count = content.get("execution_count")
            return
        if msg_type == "clear_output":
            if content.get("wait"):
                self._clear_on_next = True
            else:
                self._clear()
            return
        if msg_type == "update_display_data":
            display_id = (content.get("transient") or {}).get("display_id")
            for index in self._displays.get(display_id, []):
                self.outputs[index]["data"] = content.get("data", {})
                self.outputs[index]["metadata"] = content.get("metadata", {})
            return
        if msg_type not in ("stream", "display_data", "execute_result", "error"):
            return
        if self._clear_on_next:
            self._clear()
        try:
            output = nbformat.v4.output_from_msg(
                {"header": {"msg_type": msg_type}, "content": content}
            )
        except (KeyError, ValueError):
            return
        last = self.outputs[-1] if self.outputs else None
        if (
            msg_type == "stream"
            and last is not None
            and last["output_type"] == "stream"
            and last["name"] == output["name"]
        ):
            last["text"] += output["text"]
            return
        display_id = (content.get("transient") or {}).get("display_id")
        if display_id:
            self._displays.setdefault(display_id, []).append(len(self.outputs))
        self.outputs.append(dict(output))

    def _clear(self) -> None:
        self.outputs = []
        self._displays = {}
        self._clear_on_next = False


def set_outputs(
    notebook: dict[str, Any], position: int, outputs: CellOutputs, execution_count: int | None
) -> None:
    """Put a cell's outputs (and its execution count) into the output notebook."""
    cell = notebook["cells"][position]
    cell["outputs"] = copy.deepcopy(outputs.outputs)
    cell["execution_count"] = execution_count


def mark_cell(notebook: dict[str, Any], position: int, metadata: dict[str, Any]) -> None:
    """Say in a cell's metadata (``lowcost``) where and when it ran."""
    notebook["cells"][position].setdefault("metadata", {})["lowcost"] = copy.deepcopy(metadata)


def note_output(text: str) -> dict[str, Any]:
    """A stderr output the job adds to a cell (a cell whose outputs were lost)."""
    return dict(nbformat.v4.new_output("stream", name="stderr", text=text))


def job_metadata(notebook: dict[str, Any], metadata: dict[str, Any]) -> None:
    """The job's summary in the notebook's metadata (``lowcost``): its id, placement,
    instances, interruptions, cost and savings."""
    notebook.setdefault("metadata", {})["lowcost"] = copy.deepcopy(metadata)


def _tags(cell: dict[str, Any]) -> list[str]:
    return list((cell.get("metadata") or {}).get("tags") or [])


def _source(cell: dict[str, Any]) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else str(text)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
