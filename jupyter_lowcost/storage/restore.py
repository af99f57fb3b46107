"""The restore of a checkpoint: each variable back from its stream and chunks, on its own,
into the namespace asked for.

:func:`restore` is :meth:`~jupyter_lowcost.storage.checkpoints.CheckpointStore.load`. The
streams of the shared pickler are loaded in saved order by one
:class:`~jupyter_lowcost.storage.shared_memo.SharedMemo`, given the namespace, so that an
object several variables hold comes back as one, functions the notebook defined are bound
to that namespace (:mod:`~jupyter_lowcost.storage.notebook_functions`), and one variable
that cannot be restored costs only the variables that hold its objects. A restore into
the namespace the store checkpoints next (``adopt``) hands what it read to the store, so
that the next checkpoint writes only what changes after it.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

from .chunks import BufferChunks, Chunk
from .format import immutable
from .manifests import Manifests
from .open_files import noting_reopened
from .packs import PackSlice, digest, slice_name
from .reports import RestoreReport, Skipped
from .shared_memo import SharedMemo
from .shared_memo import error_text as _why
from .snapshots import Unchanged
from .user_namespace import put_back_sys_path
from .writing import CheckpointWriter


def restore(
    manifests: Manifests,
    buffers: BufferChunks,
    writer: CheckpointWriter,
    checkpoint_id: str,
    into: dict[str, Any] | None,
    adopt: bool,
) -> RestoreReport:
    """Restore ``checkpoint_id`` into ``into`` (a new dict if None; its notebook functions
    are then bound to ``__main__``'s namespace). ``adopt``: ``into`` is the namespace the
    store checkpoints next."""
    started = time.perf_counter()
    manifests.pack_bytes = {}  # (each pack is read once, for the manifest and the load)
    try:
        manifest = manifests.manifest(checkpoint_id)
        put_back_sys_path(manifest.get("sys_path"))
        loading = _Restore(manifests, buffers, writer, into, adopt)
        with noting_reopened() as reopened:
            return loading.run(checkpoint_id, manifest, started, reopened)
    finally:
        manifests.pack_bytes = None
        buffers.fingerprint_adopted()


class _Restore:
    """One restore: its shared memo, what it loaded and what it could not."""

    def __init__(
        self,
        manifests: Manifests,
        buffers: BufferChunks,
        writer: CheckpointWriter,
        into: dict[str, Any] | None,
        adopt: bool,
    ) -> None:
        self._manifests = manifests
        self._buffers = buffers
        self._writer = writer
        self._adopting = adopt
        self.namespace: dict[str, Any] = {} if into is None else into
        # In saved order: the shared memo of the pickler is rebuilt as it was.
        self._memo = SharedMemo(into)
        self.loaded: dict[str, Any] = {}
        self.total = 0
        # The small containers, pickled together before every other variable.
        self._batch: dict[str, Any] = {}
        self._batch_failed: dict[str, str] = {}
        self._batch_error = "not in the checkpoint's small variables"

    def run(
        self,
        checkpoint_id: str,
        manifest: dict[str, Any],
        started: float,
        reopened: dict[int, tuple[Any, str]],
    ) -> RestoreReport:
        entries: dict[str, Any] = manifest["variables"]
        failed = {s["name"]: Skipped(**s) for s in manifest.get("skipped", [])}
        for why in manifest.get("unreadable", []):
            failed[why] = Skipped("(small variables)", "?", why)
        if manifest.get("batch"):
            self._load_batch(manifest["batch"])
        for name, entry in entries.items():
            try:
                value = self._load_variable(name, entry)
            except Exception as err:
                failed.setdefault(name, Skipped(name, entry.get("type", "?"), _why(err)))
                continue
            self.loaded[name] = value
            # At once: objects of classes the notebook defined are looked up in __main__
            # (the kernel's namespace) by the variables that follow.
            self.namespace[name] = value
        if reopened:
            self._note_reopened_files(entries, failed, reopened)
        return RestoreReport(
            checkpoint_id=checkpoint_id,
            taken_at=manifest["taken_at"],
            variables=list(self.loaded),
            bytes=self.total,
            seconds=time.perf_counter() - started,
            not_restored=list(failed.values()),
            history=manifest.get("history"),
        )

    def _load_batch(self, saved: dict[str, Any]) -> None:
        """The small containers (the memo's first stream); why not, if it fails."""
        try:
            source = self._manifests.source(saved["stream"])
            self._batch, self._batch_failed = self._memo.load_batch(source)
            self.total += saved["size"]
            self._note_restored_stream(source)
        except Exception as err:
            self._batch_error = _why(err)

    def _load_variable(self, name: str, entry: dict[str, Any]) -> Any:
        """One variable: the same object as an earlier one, a module, one of the small
        containers, or from its own stream and buffers."""
        if "alias_of" in entry:
            if entry["alias_of"] not in self.loaded:
                raise pickle.UnpicklingError(
                    f"the same object as {entry['alias_of']}, which could not be restored"
                )
            return self.loaded[entry["alias_of"]]
        if "module" in entry:
            return __import__(entry["module"], fromlist=["_"])
        if entry.get("batch"):
            if name not in self._batch:
                raise pickle.UnpicklingError(self._batch_failed.get(name, self._batch_error))
            return self._batch[name]
        return self._load_stream(name, entry)

    def _load_stream(self, name: str, entry: dict[str, Any]) -> Any:
        """A variable from its stream (of the shared pickler, or of another) and its
        buffers, read from their chunks."""
        source = self._manifests.source(entry["stream"])
        shared = entry["pickler"] == "pickle"
        if shared and entry.get("memo_reset"):  # the pickler started afresh here
            self._memo.reset()
        try:
            stream = source.read_bytes()
        except Exception:
            if shared:
                self._memo.unreadable(name)
            raise
        restored: list[list[Chunk]] = []

        def read_buffers() -> list[Any]:
            restored.clear()
            views = []
            for saved in entry["buffers"]:
                view, chunks = self._buffers.read_buffer(saved)
                views.append(view)
                restored.append(chunks)
            return views

        if shared:
            value = self._memo.load(name, source, stream, read_buffers)
        else:
            value = pickle.loads(stream, buffers=read_buffers())
        self.total += len(stream) + sum(b["size"] for b in entry["buffers"])
        self._note_restored(name, entry, value, source, stream, restored)
        return value

    def _note_restored(
        self,
        name: str,
        entry: dict[str, Any],
        value: Any,
        source: Path | PackSlice,
        stream: bytes,
        buffers: list[list[Chunk]],
    ) -> None:
        """Remember what a restored variable's files hold, so that the next checkpoint
        writes only what changes after the restore (a resume costs no full rewrite): its
        buffers' chunks (their CRC32s are computed from the files in the background),
        its small stream's digest, and, for an
        immutable value kept in a pack, the value itself."""
        if not self._adopting:
            return
        for index, chunks in enumerate(buffers):
            self._buffers.adopt((name, index), chunks)
        if not isinstance(source, PackSlice):
            return
        known = self._manifests.pack(source.pack_id)
        if known.index.get(name) is entry:
            if immutable(value):
                self._writer.unchanged[name] = Unchanged(value, entry, len(stream), source.pack_id)
        else:
            self._manifests.slices[digest(stream)] = entry["stream"]

    def _note_restored_stream(self, source: Path | PackSlice) -> None:
        """The batch's stream, as :meth:`_note_restored` notes a variable's."""
        if self._adopting and isinstance(source, PackSlice):
            self._manifests.slices[digest(source.read_bytes())] = slice_name(
                source.pack_id, source.offset, source.length
            )

    def _note_reopened_files(
        self,
        entries: dict[str, Any],
        failed: dict[str, Skipped],
        reopened: dict[int, tuple[Any, str]],
    ) -> None:
        """Files that did not come back as they were: said with what did not come back."""
        for name, value in self.loaded.items():
            inside = value.values() if isinstance(value, dict) else value
            candidates = inside if isinstance(value, (list, tuple, dict)) else [value]
            notes = [reopened.pop(id(x))[1] for x in candidates if id(x) in reopened]
            if notes:
                failed[name] = Skipped(name, entries[name].get("type", "?"), notes[0])
