"""The write of a checkpoint: a snapshot's streams, the chunks of its buffers that changed,
then its manifest, each file durable before the manifest names it.

One :class:`CheckpointWriter` per checkpoint directory
(:class:`~jupyter_lowcost.storage.checkpoints.CheckpointStore`, whose ``write`` it is),
writing a :class:`~jupyter_lowcost.storage.snapshots.Snapshot` in any thread, one at a
time. Small streams go into a pack (:mod:`~jupyter_lowcost.storage.packs`), and a small
stream a kept pack holds already is not written again; an immutable variable that is the
same object as at the last checkpoint keeps its entry in the pack that holds it.
"""

from __future__ import annotations

import pickle
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .chunks import BufferChunks
from .durable_writes import CheckpointWriteFailed, DurableWrites
from .format import type_name, yield_interpreter
from .manifests import Manifests, manifest_text
from .packs import PACK_MAX, PackBuilder, digest, pack_of, packs_to_fold
from .reports import SaveReport
from .snapshots import Snapshot, Unchanged
from .staging import StagedChunks


class CheckpointWriter:
    """Writes the snapshots of one checkpoint directory."""

    def __init__(
        self, chunks: Path, files: DurableWrites, buffers: BufferChunks, manifests: Manifests
    ) -> None:
        self.chunks = chunks
        self._files = files
        self._buffers = buffers
        self._manifests = manifests
        #: Immutable variables of the last checkpoint written (or restored from).
        self.unchanged: dict[str, Unchanged] = {}

    def write(self, snapshot: Snapshot, pause: Callable[[], None] | None = None) -> SaveReport:
        """Write ``snapshot``; a failure (:class:`CheckpointWriteFailed`) deletes what it
        wrote. ``pause`` is called between two pieces of the work."""
        self._files.begin(pause)
        try:
            # (A kernel's writer starts once the cell's reply is out: the first piece of
            # the work holds the interpreter for milliseconds.)
            self._files.pause()
            return self._write(snapshot)
        except CheckpointWriteFailed:
            self._files.discard()
            raise
        finally:
            self._files.end()

    def _write(self, snapshot: Snapshot) -> SaveReport:
        started = time.perf_counter()
        pack = PackBuilder()
        reuse = self._pickle_immutables(snapshot)
        batch, written = self._write_streams_and_buffers(snapshot, pack, reuse)
        if pack:
            self._files.write(self.chunks / pack.id, pack.content())
        self._make_files_durable()
        manifest, files = self._write_manifest(snapshot, pack, batch)
        # The checkpoint counts from here: remember what it holds, drop the old ones.
        self._manifests.add(manifest, files)
        if pack:
            self._manifests.packs[pack.id] = pack.pack
        self._manifests.slices.update(reuse)
        self._buffers.finish_save()
        self.unchanged = snapshot.unchanged
        self._manifests.collect_garbage()
        return SaveReport(
            checkpoint_id=manifest["id"],
            taken_at=snapshot.taken_at,
            variables=list(snapshot.entries),
            bytes=snapshot.total,
            bytes_written=written,
            seconds=snapshot.seconds + time.perf_counter() - started,
            skipped=list(snapshot.skipped),
            bytes_compared=self._buffers.compared,
            snapshot_seconds=snapshot.seconds,
        )

    def _write_streams_and_buffers(
        self, snapshot: Snapshot, pack: PackBuilder, reuse: dict[bytes, str]
    ) -> tuple[dict[str, Any] | None, int]:
        """The batch's stream, then each variable's stream (small immutable ones into
        ``pack``, named there) and buffers; returns the batch's entry and the bytes
        written."""
        written = 0
        batch = None
        if snapshot.batch is not None:
            stream_id, new = self.put_stream(snapshot.batch, pack, reuse)
            batch = {"stream": stream_id, "size": len(snapshot.batch)}
            written += new
        for number, (name, (data, buffers)) in enumerate(snapshot.pending.items()):
            if number % 256 == 0:
                self._files.pause()
            entry = snapshot.entries[name]
            if name in snapshot.immutable and len(data) <= PACK_MAX:
                pack.add(data, name, entry)  # (named in the pack: see _packs_named)
                if (kept := snapshot.unchanged.get(name)) is not None:
                    kept.pack = pack.id
                written += len(data)
                continue
            entry["stream"], new = self.put_stream(data, pack, reuse)
            written += new
            saved_buffers = []
            for index, (view, owner, stable) in enumerate(buffers):
                if isinstance(view, StagedChunks):  # (the chunks a staged snapshot copied)
                    chunks, new = self._buffers.save_staged(view)
                else:
                    chunks, new = self._buffers.save_buffer((name, index), view, owner, stable)
                saved_buffers.append({"size": view.nbytes, "chunks": chunks})
                written += new
            entry["buffers"] = saved_buffers
        return batch, written

    def _make_files_durable(self) -> None:
        """Durable before the manifest names them: the files, then their names."""
        self._files.wait_for_syncs()
        if self._files.wrote_files:
            self._files.sync_directory(self.chunks)

    def _write_manifest(
        self, snapshot: Snapshot, pack: PackBuilder, batch: dict[str, Any] | None
    ) -> tuple[dict[str, Any], set[str]]:
        """Write the checkpoint's manifest, synced, then its name; returns it (its
        variables whole) and the files of ``chunks/`` it names."""
        checkpoint_id = self._manifests.next_id()
        packs, named = self._packs_named(snapshot, pack)
        manifest = {
            "id": checkpoint_id,
            **snapshot.manifest,
            "bytes": snapshot.total,
            "count": len(snapshot.entries),
            "skipped": [asdict(s) for s in snapshot.skipped],
            "batch": batch,
            "packs": packs,
        }
        manifests = self._manifests.manifests
        self._files.write(
            manifests / f"{checkpoint_id}.json",
            manifest_text(manifest, snapshot.entries, named),
            sync_first=True,
        )
        self._files.sync_directory(manifests)
        manifest["variables"] = snapshot.entries
        return manifest, files_written(snapshot, packs, named, batch)

    def _pickle_immutables(self, snapshot: Snapshot) -> dict[bytes, str]:
        """The snapshot's immutable variables: each one that is the same object as at the
        last checkpoint keeps its entry (its stream is on disk); the others are pickled,
        each on its own (not in the shared memo, so that the next checkpoint can keep
        them while the variables around them change). Then every entry, in the namespace's order.

        Returns the small streams of the other variables that packs hold already (digest
        -> slice), less those of the packs the new one takes over
        (:func:`~jupyter_lowcost.storage.packs.packs_to_fold`)."""
        previous = self.unchanged
        same = {
            name: kept
            for name, value in snapshot.immutable.items()
            if (kept := previous.get(name)) is not None and kept.value is value
        }
        yield_interpreter()
        reuse, used = self._small_streams_kept(snapshot)
        # The unchanged ones, by the pack that holds them.
        kept_in = snapshot.kept_in
        kept_bytes: dict[str, int] = {}
        for name, kept in same.items():
            kept_in.setdefault(kept.pack, []).append(name)
            kept_bytes[kept.pack] = kept_bytes.get(kept.pack, 0) + kept.size
        for pack_id, size in kept_bytes.items():
            used[pack_id] = used.get(pack_id, 0) + size
        yield_interpreter()
        fold = packs_to_fold(used, {p: known.size for p, known in self._manifests.packs.items()})
        for pack_id in fold:
            kept_bytes.pop(pack_id, None)
            for name in kept_in.pop(pack_id, ()):
                del same[name]
        if fold:
            reuse = {key: s for key, s in reuse.items() if pack_of(s) not in fold}
        yield_interpreter()
        snapshot.unchanged.update(same)
        snapshot.total += sum(kept_bytes.values())
        plain = {name: kept.entry for name, kept in same.items()}
        for name, value in snapshot.immutable.items():
            if name in same:
                continue
            data = pickle.dumps(value, protocol=5)
            entry = {"type": type_name(value), "pickler": "plain", "buffers": []}
            snapshot.pending[name] = (data, [])
            plain[name] = entry
            snapshot.total += len(data)
            # (kept by reference, in its pack: the same object again is not pickled again)
            if len(data) <= PACK_MAX:
                snapshot.unchanged[name] = Unchanged(value, entry, len(data))
        yield_interpreter()
        pickled = snapshot.entries
        snapshot.entries = {
            name: plain[name] if name in plain else pickled[name]
            for name in snapshot.order
            if name in plain or name in pickled
        }
        yield_interpreter()
        return reuse

    def _small_streams_kept(self, snapshot: Snapshot) -> tuple[dict[bytes, str], dict[str, int]]:
        """Of the snapshot's small streams still to write (the batch, the variables'),
        those a kept pack holds (digest -> slice), and how many bytes of each pack that
        makes."""
        reuse: dict[bytes, str] = {}
        used: dict[str, int] = {}
        streams = [data for data, _ in snapshot.pending.values()]
        if snapshot.batch is not None:
            streams.append(snapshot.batch)
        for data in streams:
            if len(data) > PACK_MAX:
                continue
            key = digest(data)
            found = self._manifests.slices.get(key)
            if found is not None and key not in reuse:
                reuse[key] = found
                used[pack_of(found)] = used.get(pack_of(found), 0) + len(data)
        return reuse, used

    def _packs_named(
        self, snapshot: Snapshot, pack: PackBuilder
    ) -> tuple[list[list[Any]], set[str]]:
        """How the manifest names its plain variables that are in packs: per pack, the
        names in it that the checkpoint does not take from it ([pack, [names]]); and the
        names so named (the manifest's ``variables`` leave them out). They are the
        unchanged ones, by their packs (``snapshot.kept_in``), and the new pack's."""
        named: set[str] = set(pack.pack.index)
        packs: list[list[Any]] = [[pack.id, []]] if pack.pack.index else []
        for pack_id, names in snapshot.kept_in.items():
            known = self._manifests.packs.get(pack_id)
            if known is None:
                continue  # (not a pack of this store: their entries go in ``variables``)
            named.update(names)
            skip = [] if len(names) == len(known.index) else sorted(known.index.keys() - names)
            packs.append([pack_id, skip])
        yield_interpreter()
        return packs, named

    def put_stream(
        self, data: bytes, pack: PackBuilder, reuse: dict[bytes, str]
    ) -> tuple[str, int]:
        """Store a pickle stream; an identical one already stored is reused (not rewritten).
        A small one goes into ``pack`` unless ``reuse`` (digest -> slice) has its bytes.
        Returns its id and the bytes written."""
        if len(data) <= PACK_MAX:
            key = digest(data)
            found = reuse.get(key)
            if found is not None:
                return found, 0
            stream = reuse[key] = pack.add(data)
            return stream, len(data)
        stream_id = f"s{zlib.crc32(data):08x}{len(data):x}"
        path = self.chunks / stream_id
        if path.exists():
            if path.read_bytes() == data:
                return stream_id, 0
            stream_id = f"s{uuid.uuid4().hex}"  # same fingerprint, other content
            path = self.chunks / stream_id
        self._files.write(path, data)
        return stream_id, len(data)


def files_written(
    snapshot: Snapshot, packs: list[list[Any]], named: set[str], batch: dict[str, Any] | None
) -> set[str]:
    """The files of ``chunks/`` a checkpoint just written names (what
    :func:`~jupyter_lowcost.storage.manifests.chunks_of` reads from its manifest, without
    going through the variables it keeps by pack)."""
    files = {pack_id for pack_id, _ in packs}
    files.update(snapshot.kept_in)
    if batch is not None:
        files.add(pack_of(batch["stream"]))
    entries = snapshot.entries
    for name in snapshot.pending:
        entry = entries.get(name)
        if entry is None or name in named:
            continue
        if "stream" in entry:
            files.add(pack_of(entry["stream"]))
        for buffer in entry.get("buffers") or ():
            files.update(buffer["chunks"])
    return files
