"""The output files of a finished job, where jupyter-scheduler's Download looks for them.

Who calls it: :mod:`.rows`, once our job has ended (the executed notebook comes from our
jobs service: its outputs, each cell's attempts, the job's cost and interruptions in the
metadata). ``GET scheduler/jobs/<id>/download_files`` then copies them from the staging
paths (``Scheduler.get_staging_paths``) into ``jobs/<name>-<id>/`` under the server's root.
Runs in a worker thread (the HTML export takes a while).
"""

from __future__ import annotations

import os
from typing import Any

import nbformat
from nbconvert import HTMLExporter


def write_outputs(paths: dict[str, str], notebook: dict[str, Any]) -> list[str]:
    """Write the executed notebook as every format the job asked for (``ipynb``,
    ``html``) at its staging path; the paths written."""
    node = nbformat.from_dict(notebook)
    written = []
    for fmt, path in paths.items():
        if fmt == "input":
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if fmt == "ipynb":
            text = nbformat.writes(node)
        elif fmt == "html":
            text = HTMLExporter().from_notebook_node(node)[0]
        else:  # (our environment offers only these two)
            continue
        temporary = f"{path}.partial"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
        written.append(path)
    return written
