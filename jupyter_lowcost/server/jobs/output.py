"""A job's output notebook on disk and at its output path, at a per-cell cost that does not
grow with the notebook, and never written in the server's event loop.

Owned by :class:`~.runner.JobRunner`, one per job it runs. As each cell ends, the runner
calls :meth:`OutputWriter.note` with the cells whose outputs changed (the cell, and an
earlier one whose display a later cell updated): copies of those cells and of the
notebook's metadata are appended to the job's journal (``storage/jobs.py``) at once, so a
completed cell is on disk before the job counts it, at the cost of that cell alone. A
background task then writes the whole notebook (``output.ipynb``, and the copy at the
job's ``output_path``) in a worker thread, from a copy of its own kept as each cell's JSON
text (a write serializes the changed cells, then joins: the bytes are what
``nbformat.write`` gives), at most once a second and no more than a fifth of the time (a
write that took 0.3 s waits 1.2 s before the next), so a long notebook's writes take a
bounded share of the machine however many cells end meanwhile.
:meth:`OutputWriter.flush` writes everything at the job's end.

The copy at the output path goes through the server's contents manager when it keeps no
files here or has save hooks or its own ``save`` (S3, jupytext): its save then runs in
the event loop, as Jupyter's own saves do. Jupyter's file managers get the same bytes as
``output.ipynb``, written in the worker thread, atomically, over a regular file only
(a FIFO would block the writer for ever).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import stat
import time
import uuid
from collections.abc import Callable
from typing import Any

from jupyter_server.services.contents.filemanager import (
    AsyncFileContentsManager,
    FileContentsManager,
)
from jupyter_server.services.contents.largefilemanager import (
    AsyncLargeFileManager,
    LargeFileManager,
)
from nbformat import from_dict
from nbformat.v4.rwbase import split_lines

from ...storage.atomic import replacing
from ...storage.jobs import JobStore
from . import contents as job_contents

#: The least time between two full writes of a running job's notebook, in seconds.
MIN_SECONDS_BETWEEN_WRITES = 1.0
#: A full write that took T seconds waits this many times T before the next.
SPACING = 4.0

#: The contents managers whose ``save`` of a notebook is a plain write of its file (no
#: more than what :func:`_write_file` does, less signing: a job's outputs are not trusted).
_FILE_SAVES = tuple(
    cls.save
    for cls in (
        FileContentsManager,
        AsyncFileContentsManager,
        LargeFileManager,
        AsyncLargeFileManager,
    )
)


class OutputWriter:
    """Writes one job's output notebook (see the module's docstring)."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        contents_manager: Any,
        output_path: str | None,
        on_error: Callable[[str], None],
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.contents_manager = contents_manager
        self.output_path = output_path
        #: Called with what went wrong writing the copy at the output path.
        self.on_error = on_error
        #: Why the last write at the output path failed (None: it worked, or none yet).
        self.contents_error: str | None = None
        #: Changes noted since the last full write began: cells by position, metadata.
        self._cells: dict[int, Any] = {}
        self._metadata: Any = None
        #: The journal's lines since the last full write began.
        self._lines: list[bytes] = []
        #: The worker thread's own notebook, as JSON: each cell's text, and the rest
        #: (read from disk by its first write; a write serializes the changed cells only).
        self._document: _Document | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def note(self, notebook: Any, positions: set[int]) -> None:
        """Cells ``positions`` of ``notebook`` (and its metadata) changed: journal them
        now (raises ``OSError`` when that fails), write the whole notebook soon. Called in
        the event loop; costs what those cells and the metadata hold."""
        cells = {p: copy.deepcopy(notebook["cells"][p]) for p in sorted(positions)}
        metadata = copy.deepcopy(notebook["metadata"])
        line = self.store.change_line(cells, metadata)
        self.store.append_change(self.job_id, line)
        self._lines.append(line)
        self._cells.update(cells)
        self._metadata = metadata
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._keep_writing())

    async def flush(self) -> None:
        """Write the whole notebook now, and the copy at the output path (even when
        nothing changed: the job's end reports whether that copy is there)."""
        async with self._lock:
            await self._write(contents=True)

    def stop(self) -> None:
        """The runner stops (the job ended, or the server stops): no more background
        writes (what was noted is in the journal)."""
        if self._task is not None:
            self._task.cancel()

    async def _keep_writing(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            started = time.monotonic()
            async with self._lock:
                if self._lines or self._cells:
                    await self._write(contents=True)
            took = time.monotonic() - started
            await asyncio.sleep(max(MIN_SECONDS_BETWEEN_WRITES, SPACING * took))

    async def _write(self, contents: bool) -> None:
        """One full write: the changes so far applied to the thread's notebook, written as
        ``output.ipynb`` (and at the output path), then the journal keeps only what came
        in meanwhile. Called with the lock held."""
        cells, metadata = self._cells, self._metadata
        self._cells, self._metadata = {}, None
        written = len(self._lines)
        data = await asyncio.to_thread(self._write_full, cells, metadata)
        self._lines = self._lines[written:]
        self.store.rewrite_changes(self.job_id, self._lines)
        if contents and self.output_path:
            await self._write_contents(data)

    def _write_full(self, cells: dict[int, Any], metadata: Any) -> bytes:
        """(worker thread) Apply the changes to the thread's notebook and write it."""
        if self._document is None:
            self._document = _Document(self.store.output(self.job_id))  # (journal applied)
        for position, cell in cells.items():
            self._document.set_cell(position, cell)
        if metadata is not None:
            self._document.rest["metadata"] = metadata
        data = self._document.encode()
        self.store.write_output(self.job_id, data)
        return data

    async def _write_contents(self, data: bytes) -> None:
        """The copy at the output path; a failure is noted (the job's end says it)."""
        manager, path = self.contents_manager, self.output_path or ""
        try:
            where = job_contents.os_path(manager, path) if _plain_file_saves(manager) else None
            if where is not None:
                await asyncio.to_thread(_write_file, where, path, data)
            else:
                notebook = await asyncio.to_thread(json.loads, data)
                await job_contents.save(manager, notebook, path)
            self.contents_error = None
        except Exception as err:  # noqa: BLE001 (any failure: the job says it)
            self.contents_error = str(err) or type(err).__name__
            self.on_error(self.contents_error)


class _Document:
    """A notebook kept as the text of each of its cells, in nbformat's own layout (keys
    sorted, one-space indents, multi-line strings as lists of lines: what
    ``nbformat.write`` gives), so that writing it again costs the changed cells'
    serialization and a join, not the whole notebook's serialization."""

    def __init__(self, notebook: dict[str, Any]) -> None:
        self.rest = {k: v for k, v in notebook.items() if k != "cells"}
        self.cells = [_cell_text(cell) for cell in notebook.get("cells") or []]

    def set_cell(self, position: int, cell: Any) -> None:
        if 0 <= position < len(self.cells):
            self.cells[position] = _cell_text(cell)

    def encode(self) -> bytes:
        marker = f"cells-{uuid.uuid4().hex}"
        text = _dumps({**self.rest, "cells": marker})
        cells = "[\n" + ",\n".join(self.cells) + "\n ]" if self.cells else "[]"
        return (text.replace(json.dumps(marker), cells, 1) + "\n").encode()


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False)


def _cell_text(cell: Any) -> str:
    """A cell's JSON as it stands in a notebook written by nbformat (two levels in)."""
    (cell,) = split_lines(from_dict({"cells": [cell]})).cells  # (from_dict copies)
    return "\n".join("  " + line for line in _dumps(cell).splitlines())


def _plain_file_saves(manager: Any) -> bool:
    """Whether the contents manager's save of a notebook is only the write of its file
    here: one of Jupyter's file managers, with no save hook configured."""
    if type(manager).save not in _FILE_SAVES:
        return False
    hooks = (
        getattr(manager, "pre_save_hook", None),
        getattr(manager, "post_save_hook", None),
        getattr(manager, "_pre_save_hooks", None),
        getattr(manager, "_post_save_hooks", None),
    )
    return not any(hooks)


def _write_file(where: str, path: str, data: bytes) -> None:
    """(worker thread) Replace the file at ``where`` (contents path ``path``) with
    ``data``, atomically, only over a regular file (or none), keeping its permissions."""
    problem = job_contents.file_problem_at(where)
    if problem is not None:
        raise ValueError(f"{path} {problem}")
    try:
        mode = stat.S_IMODE(os.stat(where).st_mode)
    except FileNotFoundError:
        mode = None
    with replacing(where) as temporary:
        with open(temporary, "xb") as file:
            file.write(data)
        if mode is not None:
            os.chmod(temporary, mode)
