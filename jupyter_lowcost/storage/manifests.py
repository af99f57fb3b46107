"""The manifests of a checkpoint directory: which checkpoints there are, what each names,
and the cleanup of the old ones and of the files no kept one names.

One :class:`Manifests` per checkpoint directory
(:class:`~jupyter_lowcost.storage.checkpoints.CheckpointStore`): the write of a checkpoint
(:mod:`~jupyter_lowcost.storage.writing`) adds one (:meth:`Manifests.add`) and collects
the old ones (:meth:`Manifests.collect_garbage`); a restore
(:mod:`~jupyter_lowcost.storage.restore`) reads one and the streams it names
(:meth:`Manifests.source`). It also knows the packs the kept checkpoints name and where
the small streams in them are (:mod:`~jupyter_lowcost.storage.packs`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import checkpoint_dirs
from .format import KEEP, yield_interpreter
from .packs import Pack, PackSlice, is_pack_slice, pack_of, read_pack
from .shared_memo import error_text


class Manifests:
    """``manifests/<seq>.json`` and what they name in ``chunks/``."""

    def __init__(self, manifests: Path, chunks: Path) -> None:
        self.manifests = manifests
        self.chunks = chunks
        #: Manifests read or written (they never change once written).
        self._cache: dict[str, dict[str, Any]] = {}
        self._chunk_sets: dict[str, set[str]] = {}
        #: Chunks that no kept manifest names are looked for in the whole directory once
        #: (what a killed writer left), then among the dropped manifests' chunks.
        self._swept = False
        #: The packs the kept checkpoints name (read or written), and where the small
        #: streams in them are, by digest: a stream whose bytes are there is not written
        #: again.
        self.packs: dict[str, Pack] = {}
        self.slices: dict[bytes, str] = {}
        #: Pack files read by the load under way (each is read once; None: no load).
        self.pack_bytes: dict[str, bytes] | None = None

    def checkpoint_ids(self) -> list[str]:
        """Complete checkpoints, oldest first."""
        return checkpoint_dirs.checkpoint_ids(self.manifests)

    def latest(self) -> str | None:
        ids = self.checkpoint_ids()
        return ids[-1] if ids else None

    def next_id(self) -> str:
        ids = self.checkpoint_ids()
        return f"{int(ids[-1]) + 1 if ids else 1:08d}"

    def manifest(self, checkpoint_id: str) -> dict[str, Any]:
        path = self.manifests / f"{checkpoint_id}.json"
        if not checkpoint_id.isdigit() or not path.exists():
            known = ", ".join(self.checkpoint_ids()) or "none"
            raise FileNotFoundError(f"no checkpoint {checkpoint_id!r} (kept: {known})")
        cached = self._cache.get(checkpoint_id)
        if cached is not None:
            return cached
        manifest = json.loads(path.read_text())
        self._expand(manifest)
        self._cache[checkpoint_id] = manifest
        return manifest

    def add(self, manifest: dict[str, Any], files: set[str]) -> None:
        """A manifest just written (its ``variables`` whole), and the files of ``chunks/``
        it names."""
        self._cache[manifest["id"]] = manifest
        self._chunk_sets[manifest["id"]] = files

    def _expand(self, manifest: dict[str, Any]) -> None:
        """Add to a manifest read from disk the entries its packs hold (``packs``: what
        it takes of each). A pack that cannot be read is noted in ``unreadable``."""
        variables = manifest["variables"]
        for pack_id, skip in manifest.get("packs") or ():
            try:
                known = self.pack(pack_id)
            except (OSError, ValueError) as err:
                manifest.setdefault("unreadable", []).append(
                    f"pack {pack_id} cannot be read: {error_text(err)}"
                )
                continue
            skipped = set(skip)
            for name, entry in known.index.items():
                if name not in skipped:
                    variables[name] = entry

    def pack(self, pack_id: str) -> Pack:
        """A pack of this store, read the first time it is needed."""
        known = self.packs.get(pack_id)
        if known is None:
            if not pack_id.startswith("p") or "/" in pack_id:
                raise ValueError(f"{pack_id!r} is not a pack")
            data, known = read_pack(self.chunks / pack_id, (self.pack_bytes or {}).get(pack_id))
            self.packs[pack_id] = known
            if self.pack_bytes is not None:
                self.pack_bytes[pack_id] = data
        return known

    def source(self, stream: str) -> Path | PackSlice:
        """Where a stream is: its file, or its slice of a pack."""
        if is_pack_slice(stream):
            return PackSlice(self.chunks, stream, self.pack_bytes)
        return self.chunks / stream

    # -- cleanup -------------------------------------------------------------------------

    def collect_garbage(self) -> None:
        """Keep the last :data:`~jupyter_lowcost.storage.format.KEEP` automatic
        checkpoints and the last ``KEEP`` manual ones; delete the others, and the files
        of ``chunks/`` that no kept one names."""
        manifests = {i: self.manifest(i) for i in self.checkpoint_ids()}
        manual = [i for i, m in manifests.items() if m.get("manual")]
        automatic = [i for i, m in manifests.items() if not m.get("manual")]
        keep = set(manual[-KEEP:]) | set(automatic[-KEEP:])
        dropped = set(manifests) - keep
        for old in dropped:
            (self.manifests / f"{old}.json").unlink(missing_ok=True)
            self._cache.pop(old, None)
        try:
            self._collect_chunks(manifests, keep, dropped)
        finally:
            for old in dropped:
                self._chunk_sets.pop(old, None)

    def _collect_chunks(
        self, manifests: dict[str, dict[str, Any]], keep: set[str], dropped: set[str]
    ) -> None:
        referenced = set().union(*(self._chunks_named(i, manifests[i]) for i in keep))
        # (A stream is reused only from a pack a kept checkpoint names.)
        for pack_id in [p for p in self.packs if p not in referenced]:
            del self.packs[pack_id]
        self.slices = {k: s for k, s in self.slices.items() if pack_of(s) in referenced}
        if self._swept:
            candidates = set().union(*(self._chunks_named(i, manifests[i]) for i in dropped))
            for name in candidates - referenced:
                (self.chunks / name).unlink(missing_ok=True)
            return
        for path in self.chunks.iterdir():
            if path.name not in referenced and not _is_fresh_temporary(path):
                path.unlink(missing_ok=True)
        self._swept = True

    def _chunks_named(self, checkpoint_id: str, manifest: dict[str, Any]) -> set[str]:
        names = self._chunk_sets.get(checkpoint_id)
        if names is None:
            names = self._chunk_sets[checkpoint_id] = chunks_of(manifest)
        return names


def manifest_text(fields: dict[str, Any], entries: dict[str, Any], named: set[str]) -> str:
    """The manifest's JSON: ``fields`` and the variables' entries, but for the ``named``
    ones (their packs' indexes hold their entries, ``fields["packs"]`` says which)."""
    parts = [
        f"{json.dumps(name)}: {json.dumps(entry)}"
        for name, entry in entries.items()
        if name not in named
    ]
    yield_interpreter()
    head = json.dumps(fields)
    return f'{head[:-1]}, "variables": {{{", ".join(parts)}}}}}'


def chunks_of(manifest: dict[str, Any]) -> set[str]:
    """The files of ``chunks/`` a manifest names (stream files, packs, buffer chunks)."""
    variables = manifest["variables"].values()
    names = {pack_of(entry["stream"]) for entry in variables if "stream" in entry}
    names.update(pack_id for pack_id, _ in manifest.get("packs") or ())
    if manifest.get("batch"):
        names.add(pack_of(manifest["batch"]["stream"]))
    for entry in variables:
        for buffer in entry.get("buffers") or ():
            names.update(buffer["chunks"])
    yield_interpreter()
    return names


def _is_fresh_temporary(path: Path) -> bool:
    """A temporary file another writer may still be writing (kept for an hour)."""
    return path.name.startswith(".") and time.time() - path.stat().st_mtime < 3600
