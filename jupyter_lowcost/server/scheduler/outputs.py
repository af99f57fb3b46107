"""The output files of a finished job, where jupyter-scheduler's Download looks for them.

Who calls it: :mod:`.rows`, once our job has ended (the executed notebook comes from our
jobs service: its outputs, each cell's attempts, the job's cost and interruptions in the
metadata). ``GET scheduler/jobs/<id>/download_files`` then copies them from the staging
paths (``Scheduler.get_staging_paths``) into ``jobs/<name>-<id>/`` under the server's root.
Runs in a worker thread (the HTML export takes a while).

A format that cannot be written (nbconvert's templates not found, a full disk) does not
stop the others, nor the row: the problem comes back as a line the row shows, and the
executed notebook stays in our jobs service (``GET lowcost/api/jobs/<id>/output``).
"""

from __future__ import annotations

import os
from typing import Any

import nbformat
from nbconvert import HTMLExporter


def write_outputs(paths: dict[str, str], notebook: dict[str, Any]) -> list[str]:
    """Write the executed notebook as every format the job asked for (``ipynb``,
    ``html``) at its staging path; the problems, one line per format not written."""
    node = nbformat.from_dict(notebook)
    problems = []
    for fmt, path in paths.items():
        if fmt not in ("ipynb", "html"):  # ("input"; our environment offers only these two)
            continue
        try:
            _write(path, nbformat.writes(node) if fmt == "ipynb" else _html(node))
        except Exception as error:  # noqa: BLE001 (nbconvert raises many kinds: the row says it)
            problems.append(f"the {fmt} output could not be written: {error}")
    return problems


def _html(node: Any) -> str:
    """The notebook as nbconvert's HTML (its ``lab`` template)."""
    return str(HTMLExporter().from_notebook_node(node)[0])


def _write(path: str, text: str) -> None:
    """``text`` at ``path``, whole or not at all."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.partial"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
