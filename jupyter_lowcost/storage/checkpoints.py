"""Namespace checkpoints: a kernel's variables saved one by one, incrementally, atomically.

Called in the kernel by :mod:`jupyter_lowcost.kernel.checkpointing` (after cells, at a notice, from
``%lowcost checkpoint``) and by the tests and the benchmark directly.

Each variable is pickled on its own (protocol 5), so that one object that cannot be saved
is reported (name, type, why) while the others are saved. Large buffers (numpy arrays,
and the arrays inside pandas objects) leave the pickle stream out of band, without a
copy, and are written in chunks of :data:`CHUNK_SIZE`; a chunk that has not changed since
the previous checkpoint of the same variable is not written again, so ``big[0] = 1`` on a
large array rewrites one chunk. Which chunks changed: for large buffers, the pages written
since the last checkpoint, from :mod:`jupyter_lowcost.storage.write_watch` (the memory is not
read); otherwise, or where Linux cannot say, a CRC32 of each chunk against the last one.
Variables that are the same object (``b = a``), or objects that hold another variable's
object, are restored as one object; one that cannot be restored costs only the variables
that hold its objects (:mod:`jupyter_lowcost.storage.shared_memo`). Open files are saved
as their path, mode and position (:mod:`jupyter_lowcost.storage.open_files`).

A checkpoint directory holds::

    chunks/<id>           immutable blobs: buffer chunks, large pickle streams
    chunks/p<id>          packs: the small pickle streams (:mod:`jupyter_lowcost.storage.packs`)
    manifests/<seq>.json  one per checkpoint, written last, by an atomic rename

A process killed while writing leaves, at worst, chunk files that no manifest names; the
previous manifest and every chunk it names are untouched, so it loads whole. A machine
that goes (its page cache with it) cannot leave a manifest naming chunks that are not on
the disk either: every file is synced (``fdatasync``, by a syncer thread while the writer
goes on), then the chunks folder, before the manifest is written; the manifest is synced
before its rename, and the manifests folder after it. Only then does the write return:
the checkpoint counts (``%lowcost checkpoint``, the kernel's writer, a job's cell). A write that
fails (a full disk) fails the whole checkpoint with :class:`CheckpointWriteFailed`: the
files it wrote are deleted again and the previous checkpoint stays the latest. Every file
and directory is its owner's only (0600, 0700).
"""

from __future__ import annotations

import importlib
import io
import json
import marshal
import os
import pickle
import sys
import threading
import time
import types
import uuid
import warnings
import weakref
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..words import human_bytes, listed
from . import write_watch
from .atomic import sync_directory, sync_file, write_private
from .open_files import FILE_TYPES, noting_reopened, reduce_file
from .packs import (
    PACK_MAX,
    Pack,
    PackBuilder,
    PackSlice,
    digest,
    is_pack_slice,
    pack_of,
    packs_to_fold,
    read_pack,
    slice_name,
)
from .private import private_dir
from .shared_memo import Redirect, SharedMemo
from .shared_memo import error_text as _why

#: Buffers are written in chunks of this many bytes (a changed chunk is rewritten whole).
CHUNK_SIZE = 4 * 1024 * 1024
#: Checkpoints kept after each new one (older ones and their chunks are deleted).
KEEP = 3
#: Buffers of at least this many chunks have their writes watched (where Linux can).
WATCHED_CHUNKS = 4

_ATOMIC_TYPES = frozenset((int, float, complex, bool, str, bytes, type(None)))
_FROZEN = frozenset((tuple, frozenset))
#: Small containers (at most :data:`_SMALL_LENGTH` items) are pickled together, in one
#: call, when there are at least :data:`_BATCH_MIN` of them: 20,000 small lists pickled one
#: by one would cost the cell's reply about 150 ms at each snapshot.
_SMALL_CONTAINERS = frozenset((list, dict, set))
_SMALL_LENGTH = 64
_BATCH_MIN = 64


class CheckpointWriteFailed(OSError):
    """A checkpoint could not be written (a full disk, say): nothing of it was kept, and
    the previous checkpoint is still the latest."""


class StagingTooLarge(MemoryError):
    """A snapshot's copy of a buffer would not fit in the memory available: the caller
    writes the checkpoint from the variables themselves instead (:meth:`CheckpointStore.save`)."""


@dataclass
class Skipped:
    """A variable that was not saved, or not restored."""

    name: str
    type: str
    why: str


@dataclass
class SaveReport:
    """What one checkpoint saved (``%lowcost checkpoint`` prints it)."""

    checkpoint_id: str
    taken_at: float
    variables: list[str]
    bytes: int
    bytes_written: int
    seconds: float
    skipped: list[Skipped] = field(default_factory=list)
    #: Bytes of memory read to find what changed (CRC32s); watched buffers need next to
    #: none.
    bytes_compared: int = 0
    #: Of ``seconds``, the snapshot's (for a checkpoint written in the background, what
    #: the kernel's cell waited for).
    snapshot_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RestoreReport:
    """What one restore brought back (:meth:`CheckpointStore.load`; a resumed kernel
    sends :meth:`to_json` to the server, ``%lowcost`` prints :meth:`summary`)."""

    checkpoint_id: str
    taken_at: float
    variables: list[str]
    bytes: int
    seconds: float
    not_restored: list[Skipped] = field(default_factory=list)
    #: What the kernel saved of its history with the checkpoint (see ``save``), if any.
    history: dict[str, Any] | None = None
    #: The last cell the kernel started before it was lost (a resume sets it; None:
    #: unknown, or not a resume).
    last_execution_count: int | None = None

    #: At most this many of the variables that did not come back are named (to the
    #: server, in messages): the report stays small whatever the namespace.
    LISTED = 10
    #: Each name, type and reason sent is cut to this many characters.
    FIELD_CHARS = 200

    @property
    def execution_count(self) -> int | None:
        """The last cell the checkpoint holds whole (None: the checkpoint does not say)."""
        return self._count((self.history or {}).get("cell"))

    @property
    def taken_during(self) -> int | None:
        """The cell the checkpoint was taken in the middle of (a notice's), if any."""
        return self._count((self.history or {}).get("during"))

    def to_json(self) -> dict[str, Any]:
        """The report for ``POST kernels/<id>/restored``: counts, and the first
        :data:`LISTED` variables that did not come back (a few kB at most)."""

        def cut(text: str) -> str:
            return text if len(text) <= self.FIELD_CHARS else text[: self.FIELD_CHARS - 1] + "…"

        return {
            "checkpoint_id": self.checkpoint_id,
            "taken_at": self.taken_at,
            "variable_count": len(self.variables),
            "bytes": self.bytes,
            "seconds": self.seconds,
            "not_restored": [
                {"name": cut(s.name), "type": cut(s.type), "why": cut(s.why)}
                for s in self.not_restored[: self.LISTED]
            ],
            "not_restored_count": len(self.not_restored),
            "execution_count": self.execution_count,
            "taken_during": self.taken_during,
            "last_execution_count": self.last_execution_count,
        }

    def summary(self) -> str:
        """``14 variables, 2.1 GB; not restored: gen (generator)`` (the first
        :data:`LISTED`, then "and N more")."""
        text = f"{len(self.variables):,} variable{'s' if len(self.variables) != 1 else ''}, "
        text += human_bytes(self.bytes)
        if self.not_restored:
            names = [f"{s.name} ({s.type})" for s in self.not_restored[: self.LISTED]]
            text += "; not restored: " + listed(names, len(self.not_restored))
        return text

    @staticmethod
    def _count(value: Any) -> int | None:
        """An execution count from a checkpoint's history (None when it is not one)."""
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return value if ok else None


def type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


class _NamespacePickler(pickle.Pickler):
    """One pickler for every variable of a checkpoint: each variable is a pickle of its
    own (so one that fails is left out), and the memo is shared, so that an object held
    by several variables (a model's parameters and its optimizer) is saved once and comes
    back as one object."""

    def __init__(self, file: Redirect, buffers: list[Any]) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffers.append)
        #: id of a CPU tensor's numpy array -> (the array, the tensor): the tensor is what
        #: owns that memory from one checkpoint to the next.
        self.owners: dict[int, tuple[Any, Any]] = {}
        #: ids of the numpy arrays that are host copies made here (of GPU tensors): memory
        #: nothing else writes, which a snapshot need not copy again.
        self.copies: set[int] = set()

    def reducer_override(self, obj: Any) -> Any:
        """PyTorch tensors (and parameters) as numpy arrays on the host, so that their
        data leaves the stream out of band, without a copy for CPU tensors; a CUDA tensor
        is copied to the host and goes back to its device on restore. Functions the
        notebook defined as their code, which is bound again to the notebook's namespace
        on restore (not to copies of the globals they use). Open files as their path,
        mode and position (:func:`~jupyter_lowcost.storage.open_files.reduce_file`)."""
        if type(obj) is types.FunctionType and obj.__module__ == "__main__":
            return _reduce_notebook_function(obj)
        if type(obj) in FILE_TYPES:
            return reduce_file(obj)
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(obj, torch.Tensor):
            return NotImplemented
        if type(obj) not in (torch.Tensor, torch.nn.Parameter) or obj.is_sparse:
            return NotImplemented
        host = obj.detach().to("cpu")
        is_parameter = isinstance(obj, torch.nn.Parameter)
        try:
            array = host.numpy()
            dtype = None
        except (TypeError, RuntimeError):
            # bfloat16, float8 and other types numpy lacks: their raw bytes, and the
            # dtype and shape to view them as again.
            try:
                array = host.contiguous().reshape(-1).view(torch.uint8).numpy()
            except (TypeError, RuntimeError):
                return NotImplemented
            dtype = (str(host.dtype).removeprefix("torch."), tuple(host.shape))
        if obj.device.type != "cpu":
            self.copies.add(id(array))
        elif not obj.is_pinned() and not obj.is_shared():
            # (pinned memory is written by the GPU directly, shared memory by other
            # processes: a write watch would not see those writes)
            self.owners[id(array)] = (array, obj)
        return (
            _restore_tensor,
            (array, str(obj.device), obj.requires_grad, is_parameter, dtype),
        )


def _fallback_picklers() -> list[Any]:
    """cloudpickle, then dill, when installed: they save what pickle cannot (functions and
    classes defined in the notebook, lambdas). Each as a Pickler class that saves open
    files as :class:`_NamespacePickler` does (cloudpickle saves a file open for reading
    as a StringIO of its contents)."""
    found = []
    for module in ("cloudpickle", "dill"):
        if module not in _FALLBACKS:
            try:
                base = __import__(module).Pickler
            except (ImportError, AttributeError):
                _FALLBACKS[module] = None
            else:
                _FALLBACKS[module] = type(
                    f"{module}_with_files", (base,), {"reducer_override": _files_first}
                )
        if _FALLBACKS[module] is not None:
            found.append(_FALLBACKS[module])
    return found


_FALLBACKS: dict[str, Any] = {}


def _files_first(self: Any, obj: Any) -> Any:
    """``reducer_override`` of the fallback picklers: open files by :func:`~jupyter_lowcost.storage.open_files.reduce_file`,
    anything else as the pickler itself would."""
    if type(obj) in FILE_TYPES:
        return reduce_file(obj)
    parent = getattr(super(type(self), self), "reducer_override", None)
    return NotImplemented if parent is None else parent(obj)


def _fallback_dumps(pickler: Any, value: Any, buffers: list[Any]) -> bytes:
    """``value`` pickled by one of :func:`_fallback_picklers` (protocol 5, its large
    buffers out of band into ``buffers``)."""
    file = io.BytesIO()
    pickler(file, protocol=5, buffer_callback=buffers.append).dump(value)
    return file.getvalue()


@dataclass
class _SavedBuffer:
    """A buffer as the last checkpoint saved it (``CheckpointStore._previous``)."""

    #: [chunk id, CRC32 (None: not computed), length] per chunk
    chunks: list[list[Any]]
    #: the object that owns the memory (weak), and where the buffer starts
    owner: Any = None
    address: int = 0
    #: the page range under the write watch, and the CRC32s of the bytes of the buffer
    #: before and after it (partial pages, not watched)
    watched: tuple[int, int] | None = None
    edges: tuple[int, int] = (0, 0)


@dataclass
class _Unchanged:
    """An immutable variable as the last checkpoint saved it."""

    value: Any
    #: Its entry in the pack that holds it (:attr:`jupyter_lowcost.storage.packs.Pack.index`).
    entry: dict[str, Any]
    size: int
    #: That pack (set once the variable is written into it).
    pack: str = ""


@dataclass
class Snapshot:
    """A namespace as it was at one moment (:meth:`CheckpointStore.snapshot`), not yet
    written (:meth:`CheckpointStore.write`)."""

    taken_at: float
    started: float
    #: The manifest's fields other than the variables (kernel, notebook, history...).
    manifest: dict[str, Any]
    #: name -> entry, in the namespace's order (stream and chunks added by the write).
    entries: dict[str, Any] = field(default_factory=dict)
    #: name -> (pickle stream, [(buffer, owner, whether the buffer is a copy)]): to write.
    pending: dict[str, tuple[bytes, list[tuple[memoryview, Any, bool]]]] = field(
        default_factory=dict
    )
    #: Immutable variables whose entries the next snapshot may keep.
    unchanged: dict[str, _Unchanged] = field(default_factory=dict)
    #: Of those, the ones the last checkpoint wrote that this one keeps, by pack.
    kept_in: dict[str, list[str]] = field(default_factory=dict)
    #: The variables' names in the namespace's order, and the immutable ones (held: that
    #: is their snapshot; the write pickles them).
    order: list[str] = field(default_factory=list)
    immutable: dict[str, Any] = field(default_factory=dict)
    #: The small containers, pickled together first (the shared memo's first objects).
    batch: bytes | None = None
    skipped: list[Skipped] = field(default_factory=list)
    total: int = 0
    seconds: float = 0.0


class CheckpointStore:
    """One checkpoint directory: write checkpoints of a namespace, list them, load them.

    ``watch_writes=False`` finds changed chunks by their CRC32 only (tests compare both)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        chunk_size: int = CHUNK_SIZE,
        watch_writes: bool = True,
    ) -> None:
        self.root = Path(root)
        self.chunk_size = chunk_size
        self.chunks = self.root / "chunks"
        self.manifests = self.root / "manifests"
        private_dir(self.chunks)
        private_dir(self.manifests)
        # Files the checkpoint being written has added (deleted again if it fails).
        self._new_files: list[Path] = []
        # Per variable and buffer: its chunks in the last checkpoint, to write only the
        # chunks that changed.
        self._previous: dict[tuple[str, int], _SavedBuffer] = {}
        self._watch = write_watch.shared() if watch_writes else None
        # Pages written since the last checkpoint, per watched buffer (None: unknown).
        self._written: dict[tuple[str, int], list[tuple[int, int]] | None] = {}
        self._seen: set[tuple[str, int]] = set()
        self._committed = True
        self._compared = 0
        self._background: list[Any] = []
        self._fingerprinter = ThreadPoolExecutor(max_workers=1)
        #: Syncs the files a write adds to the disk, while the writer goes on.
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lowcost-sync")
        self._syncs: list[Any] = []
        self._pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
        self._memo_reset_pending = False
        #: Immutable variables of the last checkpoint written (see ``snapshot``).
        self._unchanged: dict[str, _Unchanged] = {}
        #: Per variable and buffer: the memory its last snapshot copied it into.
        self._staging: dict[tuple[str, int], memoryview] = {}
        #: Manifests read or written (they never change once written).
        self._manifest_cache: dict[str, dict[str, Any]] = {}
        self._chunk_sets: dict[str, set[str]] = {}
        #: Chunks that no kept manifest names are looked for in the whole directory once
        #: (what a killed writer left), then among the dropped manifests' chunks.
        self._swept = False
        self._pause: Callable[[], None] = _no_pause
        #: The packs the kept checkpoints name (read or written), and where the small
        #: streams in them are, by digest: a stream whose bytes are there is not written
        #: again (:mod:`jupyter_lowcost.storage.packs`).
        self._packs: dict[str, Pack] = {}
        self._slices: dict[bytes, str] = {}
        #: Pack files read by the load under way (each is read once).
        self._pack_bytes: dict[str, bytes] | None = None
        #: The load under way is into the namespace this store checkpoints (``adopt``),
        #: and the chunks of the buffers it restored.
        self._adopting = False
        self._to_fingerprint: list[list[list[Any]]] = []

    # -- writing -------------------------------------------------------------------------

    def save(
        self,
        namespace: Mapping[str, Any],
        kernel_id: str | None = None,
        manual: bool = False,
        notebook: str | None = None,
        history: dict[str, Any] | None = None,
        sys_path: dict[str, list[str]] | None = None,
    ) -> SaveReport:
        """Checkpoint ``namespace`` (name -> object) now; returns what was saved. ``history``
        (JSON) is kept with it as it is: the kernel's execution count and inputs.
        ``sys_path``: the folders the notebook added to ``sys.path``
        (:func:`sys_path_additions`), which ``load`` puts back.

        The last :data:`KEEP` automatic checkpoints are kept, and beside them the last
        :data:`KEEP` ``manual`` ones (``%lowcost checkpoint``), so that checkpoints taken
        after each cell do not push out the ones a person asked for."""
        return self.write(
            self.snapshot(namespace, kernel_id, manual, notebook, history, sys_path=sys_path)
        )

    def snapshot(
        self,
        namespace: Mapping[str, Any],
        kernel_id: str | None = None,
        manual: bool = False,
        notebook: str | None = None,
        history: dict[str, Any] | None = None,
        stage: bool = False,
        sys_path: dict[str, list[str]] | None = None,
    ) -> Snapshot:
        """The namespace as it is now, for :meth:`write`: each variable pickled (those of
        immutable values that are the same objects as at the last checkpoint are not
        pickled again), and with ``stage`` each out-of-band buffer copied, so that the
        write may run in another thread while the namespace changes (a kernel's next
        cell). Without ``stage`` the buffers are the variables' own memory: write at once.

        :class:`StagingTooLarge` when a copy would not fit in the memory available."""
        try:
            snapshot = self._snapshot(namespace, kernel_id, manual, notebook, history, stage)
            snapshot.manifest["sys_path"] = sys_path
            return snapshot
        finally:
            # The pickler's memo holds every object it saved: let them go now, not at the
            # next checkpoint (``del big`` in the next cell must free big's memory).
            self._pickler = None
            self._file = None
            self._buffers = []

    def _snapshot(
        self,
        namespace: Mapping[str, Any],
        kernel_id: str | None,
        manual: bool,
        notebook: str | None,
        history: dict[str, Any] | None,
        stage: bool,
    ) -> Snapshot:
        started = time.perf_counter()
        taken_at = time.time()
        self._start_watched_save()
        # Immutable values cannot change in place: holding them is their snapshot, and the
        # write pickles those that are not the same objects as last time. (20,000 small
        # variables would otherwise cost the cell's reply about 10 ms each time.)
        immutable = {
            name: value
            for name, value in namespace.items()
            if type(value) in _ATOMIC_TYPES or (type(value) in _FROZEN and _immutable(value))
        }
        mutable = [(n, v) for n, v in namespace.items() if n not in immutable]
        first_name: dict[int, str] = {}
        for name, value in mutable:
            first_name.setdefault(id(value), name)
        self._file = Redirect()
        self._buffers: list[Any] = []
        self._pickler = _NamespacePickler(self._file, self._buffers)
        self._memo_reset_pending = False
        snapshot = Snapshot(
            taken_at=taken_at,
            started=started,
            manifest={
                "kernel_id": kernel_id,
                "notebook": notebook,
                "taken_at": taken_at,
                "manual": manual,
                "history": history,
            },
        )
        snapshot.order = list(namespace)
        snapshot.immutable = immutable
        entries = snapshot.entries
        small = {
            name: value
            for name, value in mutable
            if type(value) in _SMALL_CONTAINERS
            and len(value) <= _SMALL_LENGTH
            and first_name[id(value)] == name
        }
        if len(small) >= _BATCH_MIN:
            snapshot.batch = self._pickle_batch(small)
            if snapshot.batch is not None:
                for name, value in small.items():
                    entries[name] = {"batch": True, "type": type_name(value)}
                snapshot.total += len(snapshot.batch)
        staged: set[tuple[str, int]] = set()
        for name, value in mutable:
            if name in entries:
                continue  # (in the batch)
            if first_name[id(value)] != name:
                entries[name] = {"alias_of": first_name[id(value)], "type": type_name(value)}
                continue
            if isinstance(value, types.ModuleType):
                entries[name] = {"module": value.__name__, "type": "module"}
                continue
            try:
                entry, data, buffers = self._pickle_variable(name, value)
            except Exception as err:  # any failure of any pickler: report it, go on
                snapshot.skipped.append(Skipped(name, type_name(value), _why(err)))
                continue
            if stage:
                buffers = [
                    (view if copy else self._stage((name, index), view, staged), None, True)
                    for index, (view, _, copy) in enumerate(buffers)
                ]
            entries[name] = entry
            snapshot.pending[name] = (data, buffers)
            snapshot.total += len(data) + sum(view.nbytes for view, _, _ in buffers)
        if stage:  # copies of buffers that are gone or moved: let their memory go
            for key in [k for k in self._staging if k not in staged]:
                del self._staging[key]
        # An alias of a variable that could not be saved cannot be restored either.
        lost = {s.name for s in snapshot.skipped}
        for name in [n for n, e in entries.items() if e.get("alias_of") in lost]:
            snapshot.skipped.append(
                Skipped(name, entries.pop(name)["type"], "alias of an unsaved object")
            )
        snapshot.seconds = time.perf_counter() - started
        return snapshot

    def write(self, snapshot: Snapshot, pause: Callable[[], None] | None = None) -> SaveReport:
        """Write a :meth:`snapshot` (in any thread, one write at a time, in the order the
        snapshots were taken): its streams, the chunks of its buffers that changed, then
        its manifest. A failure (:class:`CheckpointWriteFailed`) deletes what it wrote;
        the previous checkpoint stays the latest. ``pause`` is called between two pieces
        of the work (a kernel's writer waits there while a cell runs)."""
        self._new_files = []
        self._syncs = []
        self._pause = pause or _no_pause
        try:
            return self._write(snapshot)
        except CheckpointWriteFailed:
            futures_wait(self._syncs)
            for path in self._new_files:
                path.unlink(missing_ok=True)
            raise
        finally:
            self._new_files = []
            self._syncs = []
            self._pause = _no_pause

    def _write(self, snapshot: Snapshot) -> SaveReport:
        started = time.perf_counter()
        pack = PackBuilder()
        reuse = self._pickle_immutables(snapshot)
        written = 0
        entries = snapshot.entries
        batch = None
        if snapshot.batch is not None:
            stream_id, new = self._put_stream(snapshot.batch, pack, reuse)
            batch = {"stream": stream_id, "size": len(snapshot.batch)}
            written += new
        for number, (name, (data, buffers)) in enumerate(snapshot.pending.items()):
            if number % 256 == 0:
                self._pause()
            entry = entries[name]
            if name in snapshot.immutable and len(data) <= PACK_MAX:
                pack.add(data, name, entry)  # (named in the pack: see _packs_named)
                if (kept := snapshot.unchanged.get(name)) is not None:
                    kept.pack = pack.id
                written += len(data)
                continue
            entry["stream"], new = self._put_stream(data, pack, reuse)
            written += new
            saved_buffers = []
            for index, (view, owner, stable) in enumerate(buffers):
                chunks, new = self._save_buffer((name, index), view, owner, stable)
                saved_buffers.append({"size": view.nbytes, "chunks": chunks})
                written += new
            entry["buffers"] = saved_buffers
        if pack:
            self._write_atomically(self.chunks / pack.id, pack.content())
        # Durable before the manifest names them: the files, then their names.
        self._wait_for_syncs()
        if self._new_files:
            self._sync_directory(self.chunks)
        seq = self._next_seq()
        checkpoint_id = f"{seq:08d}"
        packs, named = self._packs_named(snapshot, pack)
        manifest = {
            "id": checkpoint_id,
            **snapshot.manifest,
            "bytes": snapshot.total,
            "count": len(entries),
            "skipped": [asdict(s) for s in snapshot.skipped],
            "batch": batch,
            "packs": packs,
        }
        self._write_atomically(
            self.manifests / f"{checkpoint_id}.json",
            _manifest_text(manifest, entries, named),
            sync_first=True,
        )
        # The checkpoint counts from here: its manifest's name is on the disk too.
        self._sync_directory(self.manifests)
        manifest["variables"] = entries
        self._manifest_cache[checkpoint_id] = manifest
        self._chunk_sets[checkpoint_id] = _files_written(snapshot, packs, named, batch)
        if pack:
            self._packs[pack.id] = pack.pack
        self._slices.update(reuse)
        self._finish_watched_save()
        self._unchanged = snapshot.unchanged
        self._collect_garbage()
        return SaveReport(
            checkpoint_id=checkpoint_id,
            taken_at=snapshot.taken_at,
            variables=list(entries),
            bytes=snapshot.total,
            bytes_written=written,
            seconds=snapshot.seconds + time.perf_counter() - started,
            skipped=list(snapshot.skipped),
            bytes_compared=self._compared,
            snapshot_seconds=snapshot.seconds,
        )

    def _pickle_immutables(self, snapshot: Snapshot) -> dict[bytes, str]:
        """The snapshot's immutable variables: each one that is the same object as at the
        last checkpoint keeps its entry (its stream is on disk); the others are pickled,
        each on its own (not in the shared memo, so that the next checkpoint can keep
        them while the variables around them change). Then every entry, in the namespace's order.

        Returns the small streams of the other variables that packs hold already (digest
        -> slice), less those of the packs the new one takes over
        (:func:`~jupyter_lowcost.storage.packs.packs_to_fold`)."""
        previous = self._unchanged
        same = {
            name: kept
            for name, value in snapshot.immutable.items()
            if (kept := previous.get(name)) is not None and kept.value is value
        }
        _yield_interpreter()
        reuse, used = self._small_streams_kept(snapshot)
        # The unchanged ones, by the pack that holds them.
        kept_in = snapshot.kept_in
        kept_bytes: dict[str, int] = {}
        for name, kept in same.items():
            kept_in.setdefault(kept.pack, []).append(name)
            kept_bytes[kept.pack] = kept_bytes.get(kept.pack, 0) + kept.size
        for pack_id, size in kept_bytes.items():
            used[pack_id] = used.get(pack_id, 0) + size
        _yield_interpreter()
        fold = packs_to_fold(used, {p: known.size for p, known in self._packs.items()})
        for pack_id in fold:
            kept_bytes.pop(pack_id, None)
            for name in kept_in.pop(pack_id, ()):
                del same[name]
        if fold:
            reuse = {key: s for key, s in reuse.items() if pack_of(s) not in fold}
        _yield_interpreter()
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
                snapshot.unchanged[name] = _Unchanged(value, entry, len(data))
        _yield_interpreter()
        pickled = snapshot.entries
        snapshot.entries = {
            name: plain[name] if name in plain else pickled[name]
            for name in snapshot.order
            if name in plain or name in pickled
        }
        _yield_interpreter()
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
            found = self._slices.get(key)
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
            known = self._packs.get(pack_id)
            if known is None:
                continue  # (not a pack of this store: their entries go in ``variables``)
            named.update(names)
            skip = [] if len(names) == len(known.index) else sorted(known.index.keys() - names)
            packs.append([pack_id, skip])
        _yield_interpreter()
        return packs, named

    def _stage(
        self, key: tuple[str, int], view: memoryview, staged: set[tuple[str, int]]
    ) -> memoryview:
        """A copy of ``view`` that the namespace's next changes do not touch, in memory
        kept for this buffer from one snapshot to the next (memory new to the process
        costs a fault per page the first time, which on some machines is far slower than
        the copy)."""
        copy = self._staging.get(key)
        if copy is None or copy.nbytes != view.nbytes:
            self._staging.pop(key, None)
            if view.nbytes > _memory_available() // 2:
                raise StagingTooLarge(
                    f"a copy of {human_bytes(view.nbytes)} would not fit in memory"
                )
            copy = _uninitialized(view.nbytes)
            self._staging[key] = copy
        staged.add(key)
        step = max(self.chunk_size, view.nbytes // (os.cpu_count() or 1) + 1)
        try:
            import numpy
        except ImportError:
            numpy = None
        if view.nbytes < 16 * self.chunk_size or numpy is None:
            copy[:] = view
        else:  # (numpy copies without the GIL: several threads copy faster than one)
            target = numpy.frombuffer(copy, dtype=numpy.uint8)
            source = numpy.frombuffer(view, dtype=numpy.uint8)

            def part(offset: int) -> None:
                numpy.copyto(target[offset : offset + step], source[offset : offset + step])

            list(self._pool.map(part, range(0, view.nbytes, step)))
        return copy

    def _start_watched_save(self) -> None:
        """Read (and clear) the written pages of every watched buffer, before any of the
        namespace is read: a write from now on is seen by the next checkpoint."""
        self._seen = set()
        self._compared = 0
        self._written = {}
        if not self._committed:
            # The last save stopped half way: the pages it cleared were not all saved.
            for saved in self._previous.values():
                self._unwatch(saved)
        self._committed = False
        for key, saved in self._previous.items():
            if saved.watched is not None and self._watch is not None:
                self._written[key] = self._watch.written(*saved.watched)

    def _finish_watched_save(self) -> None:
        """The checkpoint is written: forget the buffers it did not save."""
        for key in [k for k in self._previous if k not in self._seen]:
            self._unwatch(self._previous.pop(key))
        self._committed = True

    def _unwatch(self, saved: _SavedBuffer) -> None:
        if saved.watched is not None and self._watch is not None:
            self._watch.unwatch(*saved.watched, saved.owner() if saved.owner else None)
        saved.watched = None

    def _pickle_batch(self, small: dict[str, Any]) -> bytes | None:
        """The small containers, pickled together by the shared pickler before any other
        variable (so that the variables pickled after it share their objects, as one by
        one); None, with a fresh pickler, when one of them cannot be pickled, holds a large
        buffer or an object of a class defined in the notebook: each is then pickled on
        its own."""
        stream = io.BytesIO()
        self._file.target = stream
        self._buffers.clear()
        try:
            self._pickler.dump(small)
        except Exception:
            pass
        else:
            data = stream.getvalue()
            # (Not with a large buffer inside, nor with objects of classes the notebook
            # defined: the batch is restored before those classes are.)
            if not self._buffers and b"__main__" not in data:
                return data
        self._buffers.clear()
        self._pickler = _NamespacePickler(self._file, self._buffers)
        return None

    def _pickle_variable(
        self, name: str, value: Any
    ) -> tuple[dict[str, Any], bytes, list[tuple[memoryview, Any, bool]]]:
        """One variable's entry (without where it is stored), pickle stream, and
        out-of-band buffers as (memory, the object that owns it, whether it is a copy)."""
        stream = io.BytesIO()
        self._file.target = stream
        self._buffers.clear()
        pickler_name = "pickle"
        memo_reset = False
        try:
            if _defined_in_notebook(value):
                raise pickle.PicklingError("defined in the notebook: pickle saves a reference")
            # (functions of the notebook: see _NamespacePickler.reducer_override)
            self._pickler.dump(value)
            data = stream.getvalue()
            buffers = list(self._buffers)
            # After a failed dump the memo was emptied: load empties its memo here too.
            memo_reset, self._memo_reset_pending = self._memo_reset_pending, False
        except Exception as first_error:
            # What the failed dump added to the memo was never written, and the C pickler
            # cannot say which entries those are: a new pickler, with an empty memo.
            # (Variables saved after this point share objects among themselves, not with
            # earlier ones.)
            self._pickler = _NamespacePickler(self._file, self._buffers)
            self._memo_reset_pending = True
            data = b""
            for fallback in _fallback_picklers():
                try:
                    buffers = []
                    data = _fallback_dumps(fallback, value, buffers)
                    pickler_name = fallback.__name__.partition("_with_files")[0]
                    break
                except Exception:
                    continue
            if not data:
                raise first_error from None
        owners = self._pickler.owners
        views = []
        for buffer in buffers:
            view = buffer.raw()
            exporter = view.obj
            owner = owners[id(exporter)][1] if id(exporter) in owners else _memory_owner(exporter)
            views.append((view, owner, id(exporter) in self._pickler.copies))
        entry = {
            "type": type_name(value),
            "pickler": pickler_name,
            "buffers": [],
            "memo_reset": memo_reset,
        }
        return entry, data, views

    def _save_buffer(
        self, key: tuple[str, int], view: memoryview, owner: Any, stable: bool = False
    ) -> tuple[list[str], int]:
        """Write the chunks of ``view`` that changed since this buffer's last checkpoint.

        A buffer seen for the first time is written whole, without fingerprints (a full
        checkpoint costs what writing costs). A large one is then watched: the next
        checkpoint rewrites the chunks whose pages were written, and the first or last
        one when the bytes beside the watched pages changed. Others get the CRC32 of each
        chunk, computed in the background from the file just written (exactly what the
        chunk holds); the next checkpoint compares the memory with it. A ``stable`` buffer
        (a snapshot's copy, which nothing writes to) gets its CRC32s from memory at once."""
        self._seen.add(key)
        step = self.chunk_size
        spans = [
            (offset, min(step, view.nbytes - offset)) for offset in range(0, view.nbytes, step)
        ]
        address = _address(view)
        previous = self._previous.get(key)
        if previous is not None and len(previous.chunks) != len(spans):
            self._unwatch(previous)
            previous = None
        # The written pages can be trusted for the same memory of the same owner, watched
        # all along.
        pages = self._written.get(key)
        trusted = (
            previous is not None
            and pages is not None
            and address == previous.address
            and view.nbytes == sum(chunk[2] for chunk in previous.chunks)
            and owner is not None
            and previous.owner is not None
            and previous.owner() is owner
        )
        if previous is not None and not trusted:
            self._unwatch(previous)
        watched = previous.watched if trusted else self._start_watching(view, address, owner)
        # Before the memory is read: a write during this checkpoint is also seen next time.
        edges = self._edge_fingerprints(view, address, watched) if watched else (0, 0)
        # Chunk indexes known to have changed (None: compare each chunk's CRC32).
        changed = self._changed_chunks(previous, pages, edges, view) if trusted else None

        def one(index: int) -> tuple[str, int | None, int]:
            offset, length = spans[index]
            part = view[offset : offset + length]
            fingerprint = None
            if previous is not None:
                chunk_id, old_fingerprint, old_length = previous.chunks[index]
                path = self.chunks / chunk_id
                if changed is None and old_length == length and path.exists():
                    fingerprint = zlib.crc32(part)
                    if old_fingerprint is None:  # its background CRC did not run yet
                        old_fingerprint = zlib.crc32(path.read_bytes())
                    if old_fingerprint == fingerprint:
                        return chunk_id, fingerprint, 0
            if stable and fingerprint is None:
                fingerprint = zlib.crc32(part)
            chunk_id = uuid.uuid4().hex
            self._write_atomically(self.chunks / chunk_id, part)
            # (Live memory may have changed since its CRC32: the file's is computed later.)
            return chunk_id, fingerprint if stable else None, length

        if previous is not None and changed is None:
            self._compared += view.nbytes
        # Unchanged chunks of a watched buffer are kept here; the others go to the pool.
        results: list[Any] = [None] * len(spans)
        if changed is not None and previous is not None:
            for index, (chunk_id, fingerprint, _) in enumerate(previous.chunks):
                if index not in changed and (self.chunks / chunk_id).exists():
                    results[index] = (chunk_id, fingerprint, 0)
        pending = [index for index, result in enumerate(results) if result is None]
        if stable:
            # A snapshot's copy is written in the background while the user's cells run:
            # by this one thread, which leaves the other cores to them.
            for index in pending:
                self._pause()
                results[index] = one(index)
        else:
            jobs = [self._pool.submit(one, index) for index in pending]
            # Every write has ended before a failure is raised: a failed checkpoint then
            # deletes every file it wrote, none is still being written.
            futures_wait(jobs)
            for index, job in zip(pending, jobs):
                results[index] = job.result()
        chunks = [[c, f, spans[i][1]] for i, (c, f, _) in enumerate(results)]
        self._previous[key] = _SavedBuffer(
            chunks=chunks,
            owner=weakref.ref(owner) if watched else None,
            address=address or 0,
            watched=watched,
            edges=edges,
        )
        if watched is None and any(f is None for _, f, _ in chunks):
            self._background.append(self._fingerprinter.submit(self._fingerprint_files, chunks))
        return [c for c, _, _ in results], sum(n for _, _, n in results)

    def _start_watching(
        self, view: memoryview, address: int | None, owner: Any
    ) -> tuple[int, int] | None:
        """Watch the writes to a large buffer whose memory has an owner that can be
        followed (weakly) from one checkpoint to the next; None when it is not watched."""
        if self._watch is None or address is None or owner is None:
            return None
        if view.nbytes < WATCHED_CHUNKS * self.chunk_size:
            return None
        try:
            weakref.ref(owner)
        except TypeError:
            return None
        start, end = write_watch.page_span(address, view.nbytes)
        return (start, end) if self._watch.watch(start, end, owner) else None

    def _edge_fingerprints(
        self, view: memoryview, address: int | None, watched: tuple[int, int]
    ) -> tuple[int, int]:
        """CRC32 of the buffer's bytes before and after its watched pages."""
        head = watched[0] - (address or 0)
        tail = watched[1] - (address or 0)
        self._compared += head + (view.nbytes - tail)
        return zlib.crc32(view[:head]), zlib.crc32(view[tail:])

    def _changed_chunks(
        self,
        previous: _SavedBuffer,
        pages: list[tuple[int, int]],
        edges: tuple[int, int],
        view: memoryview,
    ) -> set[int]:
        """The chunks of a watched buffer with a written page, or changed edge bytes."""
        step = self.chunk_size
        last = (view.nbytes - 1) // step
        changed: set[int] = set()
        for start, end in pages:
            first_byte = max(0, start - previous.address)
            last_byte = min(view.nbytes, end - previous.address) - 1
            if last_byte >= first_byte:
                changed.update(range(first_byte // step, last_byte // step + 1))
        assert previous.watched is not None
        head = previous.watched[0] - previous.address  # bytes before the watched pages
        tail = previous.watched[1] - previous.address  # where the bytes after them start
        if edges[0] != previous.edges[0]:
            changed.update(range(max(0, head - 1) // step + 1))
        if edges[1] != previous.edges[1]:
            changed.update(range(min(tail, view.nbytes - 1) // step, last + 1))
        return changed

    def _fingerprint_files(self, chunks: list[list[Any]], gently: bool = False) -> None:
        """CRC32 of written chunk files (a background job of ``_save_buffer``, and of a
        restore: ``gently``, below the kernel's other threads)."""
        if gently:
            _lower_priority()
        for entry in chunks:
            if entry[1] is None:
                try:
                    entry[1] = zlib.crc32((self.chunks / entry[0]).read_bytes())
                except OSError:
                    return  # collected meanwhile: the next checkpoint rewrites it

    def _put_stream(
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
        self._write_atomically(path, data)
        return stream_id, len(data)

    def _write_atomically(self, path: Path, data: Any, sync_first: bool = False) -> None:
        """Write to a temporary name beside ``path`` and rename: never a half file. A
        failure leaves nothing behind and raises :class:`CheckpointWriteFailed`.

        The file is synced to the disk by the syncer thread meanwhile (the next files are
        written while this one goes to the disk; :meth:`_wait_for_syncs` waits for them),
        or, with ``sync_first``, before its rename (the manifest: once it is in place,
        the checkpoint counts)."""
        try:
            write_private(path, data, sync=sync_first)
        except OSError as err:
            raise self._failed_write(err) from err
        self._new_files.append(path)
        if not sync_first:
            self._syncs.append(self._syncer.submit(sync_file, path))

    def _wait_for_syncs(self) -> None:
        """Every file written so far is on the disk (:class:`CheckpointWriteFailed` if
        one cannot be)."""
        futures_wait(self._syncs)
        for job in self._syncs:
            error = job.exception()
            if isinstance(error, OSError):
                raise self._failed_write(error) from error
            if error is not None:
                raise error

    def _sync_directory(self, path: Path) -> None:
        """The names of the files written in ``path`` on the disk
        (:class:`CheckpointWriteFailed` if they cannot be)."""
        try:
            sync_directory(path)
        except OSError as err:
            raise self._failed_write(err) from err

    def _failed_write(self, err: OSError) -> CheckpointWriteFailed:
        return CheckpointWriteFailed(
            err.errno, f"could not write the checkpoint in {self.root}: {err.strerror or err}"
        )

    def _next_seq(self) -> int:
        ids = self.checkpoint_ids()
        return int(ids[-1]) + 1 if ids else 1

    def _collect_garbage(self) -> None:
        manifests = {i: self.manifest(i) for i in self.checkpoint_ids()}
        manual = [i for i, m in manifests.items() if m.get("manual")]
        automatic = [i for i, m in manifests.items() if not m.get("manual")]
        keep = set(manual[-KEEP:]) | set(automatic[-KEEP:])
        dropped = set(manifests) - keep
        for old in dropped:
            (self.manifests / f"{old}.json").unlink(missing_ok=True)
            self._manifest_cache.pop(old, None)
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
        for pack_id in [p for p in self._packs if p not in referenced]:
            del self._packs[pack_id]
        self._slices = {k: s for k, s in self._slices.items() if pack_of(s) in referenced}
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
            names = self._chunk_sets[checkpoint_id] = _chunks_of(manifest)
        return names

    # -- reading -------------------------------------------------------------------------

    def checkpoint_ids(self) -> list[str]:
        """Complete checkpoints, oldest first."""
        return sorted(p.stem for p in self.manifests.glob("*.json") if p.stem.isdigit())

    def latest(self) -> str | None:
        ids = self.checkpoint_ids()
        return ids[-1] if ids else None

    def manifest(self, checkpoint_id: str) -> dict[str, Any]:
        path = self.manifests / f"{checkpoint_id}.json"
        if not checkpoint_id.isdigit() or not path.exists():
            known = ", ".join(self.checkpoint_ids()) or "none"
            raise FileNotFoundError(f"no checkpoint {checkpoint_id!r} (kept: {known})")
        cached = self._manifest_cache.get(checkpoint_id)
        if cached is not None:
            return cached
        manifest = json.loads(path.read_text())
        self._expand(manifest)
        self._manifest_cache[checkpoint_id] = manifest
        return manifest

    def _expand(self, manifest: dict[str, Any]) -> None:
        """Add to a manifest read from disk the entries its packs hold (``packs``: what
        it takes of each). A pack that cannot be read is noted in ``unreadable``."""
        variables = manifest["variables"]
        for pack_id, skip in manifest.get("packs") or ():
            try:
                known = self._pack(pack_id)
            except (OSError, ValueError) as err:
                manifest.setdefault("unreadable", []).append(
                    f"pack {pack_id} cannot be read: {_why(err)}"
                )
                continue
            skipped = set(skip)
            for name, entry in known.index.items():
                if name not in skipped:
                    variables[name] = entry

    def _pack(self, pack_id: str) -> Pack:
        """A pack of this store, read the first time it is needed."""
        known = self._packs.get(pack_id)
        if known is None:
            if not pack_id.startswith("p") or "/" in pack_id:
                raise ValueError(f"{pack_id!r} is not a pack")
            data, known = read_pack(self.chunks / pack_id, (self._pack_bytes or {}).get(pack_id))
            self._packs[pack_id] = known
            if self._pack_bytes is not None:
                self._pack_bytes[pack_id] = data
        return known

    def _source(self, stream: str) -> Path | PackSlice:
        """Where a stream is: its file, or its slice of a pack."""
        if is_pack_slice(stream):
            return PackSlice(self.chunks, stream, self._pack_bytes)
        return self.chunks / stream

    def load(
        self,
        checkpoint_id: str | None = None,
        into: dict[str, Any] | None = None,
        adopt: bool = False,
    ) -> RestoreReport:
        """Restore a checkpoint (the latest by default) into ``into`` (a new dict if None).

        ``adopt``: ``into`` is the namespace this store checkpoints next (a kernel's
        restore, a resume): the next checkpoint reuses the files restored from for what
        did not change since, instead of writing everything again.

        The folders the notebook had added to ``sys.path`` (``save``'s ``sys_path``) are
        put back first, so that its modules import. Each variable comes back on its own:
        one that cannot be restored costs only the variables that hold its objects
        (:class:`~jupyter_lowcost.storage.shared_memo.SharedMemo`)."""
        started = time.perf_counter()
        checkpoint_id = checkpoint_id or self.latest()
        if checkpoint_id is None:
            raise FileNotFoundError(f"no checkpoint in {self.root}")
        global _function_globals
        self._pack_bytes = {}  # (each pack is read once, for the manifest and the load)
        try:
            manifest = self.manifest(checkpoint_id)
            entries: dict[str, Any] = manifest["variables"]
            namespace = {} if into is None else into
            _put_back_sys_path(manifest.get("sys_path"))
            _function_globals = into
            self._adopting = adopt
            with noting_reopened() as reopened:
                return self._load(checkpoint_id, manifest, entries, namespace, started, reopened)
        finally:
            _function_globals = None
            self._pack_bytes = None
            self._adopting = False
            # The CRC32s of the chunks restored from, from the files, once the restore is
            # done (it does not wait for them; the next checkpoint compares with them).
            for chunks in self._to_fingerprint:
                self._background.append(
                    self._fingerprinter.submit(self._fingerprint_files, chunks, True)
                )
            self._to_fingerprint = []

    def _load(
        self,
        checkpoint_id: str,
        manifest: dict[str, Any],
        entries: dict[str, Any],
        namespace: dict[str, Any],
        started: float,
        reopened: dict[int, tuple[Any, str]],
    ) -> RestoreReport:
        loaded: dict[str, Any] = {}
        failed: dict[str, Skipped] = {s["name"]: Skipped(**s) for s in manifest.get("skipped", [])}
        for why in manifest.get("unreadable", []):
            failed[why] = Skipped("(small variables)", "?", why)
        total = 0
        # In saved order: the shared memo of the pickler is rebuilt as it was.
        memo = SharedMemo()
        # The small containers, pickled together before every other variable.
        batch: dict[str, Any] = {}
        batch_failed: dict[str, str] = {}
        batch_error = "not in the checkpoint's small variables"
        if manifest.get("batch"):
            try:
                source = self._source(manifest["batch"]["stream"])
                batch, batch_failed = memo.load_batch(source)
                total += manifest["batch"]["size"]
                self._note_restored_stream(source)
            except Exception as err:
                batch_error = _why(err)
        for name, entry in entries.items():
            try:
                if "alias_of" in entry:
                    if entry["alias_of"] not in loaded:
                        raise pickle.UnpicklingError(
                            f"the same object as {entry['alias_of']}, which could not be restored"
                        )
                    value = loaded[entry["alias_of"]]
                elif "module" in entry:
                    value = __import__(entry["module"], fromlist=["_"])
                elif entry.get("batch"):
                    if name not in batch:
                        raise pickle.UnpicklingError(batch_failed.get(name, batch_error))
                    value = batch[name]
                else:
                    source = self._source(entry["stream"])
                    shared = entry["pickler"] == "pickle"
                    if shared and entry.get("memo_reset"):  # the pickler started afresh here
                        memo.reset()
                    try:
                        stream = source.read_bytes()
                    except Exception:
                        if shared:
                            memo.unreadable(name)
                        raise
                    restored: list[list[list[Any]]] = []

                    def read_buffers(
                        saved: list[dict[str, Any]] = entry["buffers"],
                        restored: list[list[list[Any]]] = restored,
                    ) -> list[Any]:
                        restored.clear()
                        views = []
                        for b in saved:
                            view, chunks = self._read_buffer(b)
                            views.append(view)
                            restored.append(chunks)
                        return views

                    if shared:
                        value = memo.load(name, source, stream, read_buffers)
                    else:
                        value = pickle.loads(stream, buffers=read_buffers())
                    total += len(stream) + sum(b["size"] for b in entry["buffers"])
                    self._note_restored(name, entry, value, source, stream, restored)
            except Exception as err:
                failed.setdefault(name, Skipped(name, entry.get("type", "?"), _why(err)))
                continue
            loaded[name] = value
            # At once: objects of classes the notebook defined are looked up in __main__
            # (the kernel's namespace) by the variables that follow.
            namespace[name] = value
        if reopened:
            # Files that did not come back as they were: said with what did not come back.
            for name, value in loaded.items():
                inside = value.values() if isinstance(value, dict) else value
                candidates = inside if isinstance(value, (list, tuple, dict)) else [value]
                notes = [reopened.pop(id(x))[1] for x in candidates if id(x) in reopened]
                if notes:
                    failed[name] = Skipped(name, entries[name].get("type", "?"), notes[0])
        return RestoreReport(
            checkpoint_id=checkpoint_id,
            taken_at=manifest["taken_at"],
            variables=list(loaded),
            bytes=total,
            seconds=time.perf_counter() - started,
            not_restored=list(failed.values()),
            history=manifest.get("history"),
        )

    def _note_restored(
        self,
        name: str,
        entry: dict[str, Any],
        value: Any,
        source: Path | PackSlice,
        stream: bytes,
        buffers: list[list[list[Any]]],
    ) -> None:
        """Remember what a restored variable's files hold, so that the next checkpoint
        writes only what changes after the restore (a resume costs no full rewrite): its
        buffers' chunks (their CRC32s are computed from the files in the background),
        its small stream's digest, and, for an
        immutable value kept in a pack, the value itself."""
        if not self._adopting:
            return
        for index, chunks in enumerate(buffers):
            old = self._previous.get((name, index))
            if old is not None:
                self._unwatch(old)
            self._previous[(name, index)] = _SavedBuffer(chunks=chunks)
            self._to_fingerprint.append(chunks)
        if not isinstance(source, PackSlice):
            return
        known = self._pack(source.pack_id)
        if known.index.get(name) is entry:
            if _immutable(value):
                self._unchanged[name] = _Unchanged(value, entry, len(stream), source.pack_id)
        else:
            self._slices[digest(stream)] = entry["stream"]

    def _note_restored_stream(self, source: Path | PackSlice) -> None:
        """The batch's stream, as :meth:`_note_restored` notes a variable's."""
        if self._adopting and isinstance(source, PackSlice):
            self._slices[digest(source.read_bytes())] = slice_name(
                source.pack_id, source.offset, source.length
            )

    def _read_buffer(self, saved: dict[str, Any]) -> tuple[memoryview, list[list[Any]]]:
        """A buffer read back from its chunks, in parallel, into memory that is not
        zero-filled first (the arrays of the restored objects live in it); and its
        chunks as the next checkpoint compares them ([id, CRC32 (None: not computed
        yet), length])."""
        size = saved["size"]
        view = _uninitialized(size)
        offsets = []
        offset = 0
        for chunk_id in saved["chunks"]:
            length = (self.chunks / chunk_id).stat().st_size
            offsets.append((chunk_id, offset, length))
            offset += length
        if offset != size:
            raise OSError(f"a buffer's chunks hold {offset} bytes instead of {size}")

        def read(job: tuple[str, int, int]) -> list[Any]:
            chunk_id, start, length = job
            with open(self.chunks / chunk_id, "rb", buffering=0) as file:
                done = 0
                while done < length:
                    n = file.readinto(view[start + done : start + length])
                    if not n:
                        raise OSError(f"chunk {chunk_id} is shorter than {length} bytes")
                    done += n
            return [chunk_id, None, length]

        return view, list(self._pool.map(read, offsets))

    def settle(self) -> float:
        """Wait for the background fingerprints of the last checkpoints; the seconds it
        took (the benchmark calls it; a kernel has the time between cells for them)."""
        started = time.perf_counter()
        for job in self._background:
            job.result()
        self._background.clear()
        return time.perf_counter() - started

    def close(self) -> None:
        for saved in self._previous.values():
            self._unwatch(saved)
        self._staging.clear()
        self._pool.shutdown(wait=False)
        self._fingerprinter.shutdown(wait=False)
        self._syncer.shutdown(wait=False)


def _restore_tensor(
    array: Any,
    device: str,
    requires_grad: bool,
    is_parameter: bool,
    dtype: tuple[str, tuple[int, ...]] | None = None,
) -> Any:
    """Rebuild a tensor saved by ``_NamespacePickler.reducer_override`` (``dtype``: the
    type and shape of a tensor saved as raw bytes)."""
    import torch

    tensor = torch.from_numpy(array)
    if dtype is not None:
        name, shape = dtype
        tensor = tensor.view(getattr(torch, name)).reshape(shape)
    if device != "cpu":
        if device.startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(
                f"a tensor saved on {device} is restored on the CPU: this instance has no CUDA",
                stacklevel=2,
            )
        else:
            tensor = tensor.to(device)
    if is_parameter:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(requires_grad) if requires_grad else tensor


def _address(view: memoryview) -> int | None:
    """Where the buffer's memory starts (for numpy arrays), or None."""
    interface = getattr(view.obj, "__array_interface__", None)
    if not isinstance(interface, dict) or not view.c_contiguous:
        return None
    data = interface.get("data")
    return data[0] if isinstance(data, tuple) else None


def _memory_owner(exporter: Any) -> Any:
    """The array that owns an array's memory: the last of its ``base`` arrays (a view or
    a transposed copy made for pickling is new at each checkpoint; the owner is not).
    None when that array's memory belongs to something else (a file mapping, a tensor):
    its writes are not watched."""
    owner = exporter
    while hasattr(getattr(owner, "base", None), "__array_interface__"):
        owner = owner.base
    return owner if getattr(owner, "base", None) is None else None


def _uninitialized(size: int) -> memoryview:
    """``size`` writable bytes, not zero-filled (numpy's ``empty`` when numpy is there)."""
    try:
        import numpy
    except ImportError:
        return memoryview(bytearray(size))
    return numpy.empty(size, dtype=numpy.uint8).data


def _defined_in_notebook(value: Any) -> bool:
    """Classes of the notebook itself: pickle would save only their name (cloudpickle or
    dill save them whole)."""
    return isinstance(value, type) and getattr(value, "__module__", None) == "__main__"


#: The namespace that restored notebook functions are bound to (``load``'s ``into``);
#: None: the ``__main__`` module's.
_function_globals: dict[str, Any] | None = None


def _reduce_notebook_function(function: types.FunctionType) -> tuple[Any, tuple[Any, ...]]:
    """A function defined in the notebook, as its code (marshal, tied to the Python
    version), defaults, closure and attributes; its globals are the namespace it is
    restored into, so that ``train()`` after a resume trains the restored ``model``."""
    closure = None
    if function.__closure__ is not None:
        closure = []
        for cell in function.__closure__:
            try:
                closure.append((True, cell.cell_contents))
            except ValueError:  # an empty cell (a name assigned later)
                closure.append((False, None))
    return (
        _restore_notebook_function,
        (
            tuple(sys.version_info[:2]),
            marshal.dumps(function.__code__),
            function.__name__,
            function.__qualname__,
            function.__defaults__,
            function.__kwdefaults__,
            closure,
            function.__doc__,
            function.__dict__ or None,
        ),
    )


def _restore_notebook_function(
    version: tuple[int, int],
    code: bytes,
    name: str,
    qualname: str,
    defaults: tuple[Any, ...] | None,
    kwdefaults: dict[str, Any] | None,
    closure: list[tuple[bool, Any]] | None,
    doc: str | None,
    attributes: dict[str, Any] | None,
) -> types.FunctionType:
    """Rebuild a function saved by :func:`_reduce_notebook_function`."""
    if tuple(version) != tuple(sys.version_info[:2]):
        raise pickle.UnpicklingError(
            f"a function of Python {version[0]}.{version[1]} cannot be restored in Python "
            f"{sys.version_info[0]}.{sys.version_info[1]}: run the cell that defines it again"
        )
    namespace = _function_globals
    if namespace is None:
        namespace = sys.modules["__main__"].__dict__
    cells = None
    if closure is not None:
        cells = tuple(
            types.CellType(value) if full else types.CellType() for full, value in closure
        )
    function = types.FunctionType(marshal.loads(code), namespace, name, defaults, cells)
    function.__qualname__ = qualname
    function.__kwdefaults__ = kwdefaults
    function.__doc__ = doc
    function.__module__ = "__main__"
    if attributes:
        function.__dict__.update(attributes)
    return function


def _no_pause() -> None:
    pass


def _lower_priority() -> None:
    """This thread yields the processor to the process's others (Linux: per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def _manifest_text(fields: dict[str, Any], entries: dict[str, Any], named: set[str]) -> str:
    """The manifest's JSON: ``fields`` and the variables' entries, but for the ``named``
    ones (their packs' indexes hold their entries, ``fields["packs"]`` says which)."""
    parts = [
        f"{json.dumps(name)}: {json.dumps(entry)}"
        for name, entry in entries.items()
        if name not in named
    ]
    _yield_interpreter()
    head = json.dumps(fields)
    return f'{head[:-1]}, "variables": {{{", ".join(parts)}}}}}'


def _files_written(
    snapshot: Snapshot, packs: list[list[Any]], named: set[str], batch: dict[str, Any] | None
) -> set[str]:
    """The files of ``chunks/`` a checkpoint just written names (what :func:`_chunks_of`
    reads from its manifest, without going through the variables it keeps by pack)."""
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


def _chunks_of(manifest: dict[str, Any]) -> set[str]:
    """The files of ``chunks/`` a manifest names (stream files, packs, buffer chunks)."""
    variables = manifest["variables"].values()
    names = {pack_of(entry["stream"]) for entry in variables if "stream" in entry}
    names.update(pack_id for pack_id, _ in manifest.get("packs") or ())
    if manifest.get("batch"):
        names.add(pack_of(manifest["batch"]["stream"]))
    for entry in variables:
        for buffer in entry.get("buffers") or ():
            names.update(buffer["chunks"])
    _yield_interpreter()
    return names


def _yield_interpreter() -> None:
    """Let another thread that waits for the interpreter have it now (the kernel's main
    thread, sending a cell's reply), not at the end of the switch interval (5 ms)."""
    time.sleep(0)


def _immutable(value: Any, depth: int = 0) -> bool:
    """A value no cell can change in place: numbers, strings, bytes, None, and tuples and
    frozensets of those (exact types: a subclass may add mutable state)."""
    kind = type(value)
    if kind in _ATOMIC_TYPES:
        return True
    if kind in _FROZEN and depth < 4 and len(value) <= 256:
        return all(_immutable(item, depth + 1) for item in value)
    return False


def _memory_available() -> int:
    """Bytes of memory available to new allocations (Linux's MemAvailable)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62  # unknown: assume it fits


def _is_fresh_temporary(path: Path) -> bool:
    """A temporary file another writer may still be writing (kept for an hour)."""
    return path.name.startswith(".") and time.time() - path.stat().st_mtime < 3600


def sys_path_additions(started_with: list[str]) -> dict[str, list[str]] | None:
    """The folders the notebook added to ``sys.path`` since the kernel started (with
    ``started_with``): those before the kernel's own first entry (``front``:
    ``sys.path.insert(0, ...)``) and the others (``end``); None when it added none. The
    kernel saves them with each checkpoint (:mod:`jupyter_lowcost.kernel.checkpointing`)."""
    own = set(started_with)
    front: list[str] = []
    end: list[str] = []
    seen_own = False
    for entry in sys.path:
        if entry in own:
            seen_own = True
        elif isinstance(entry, str) and entry not in front and entry not in end:
            (end if seen_own else front).append(entry)
    return {"front": front, "end": end} if front or end else None


def _put_back_sys_path(saved: Any) -> None:
    """Add back to ``sys.path`` the folders a checkpoint's notebook had added (``load``
    calls it before any variable is loaded, so that their modules import)."""
    if not isinstance(saved, dict):
        return
    wanted = {
        where: [p for p in saved.get(where) or () if isinstance(p, str) and p not in sys.path]
        for where in ("front", "end")
    }
    if wanted["front"] or wanted["end"]:
        sys.path[:0] = wanted["front"]
        sys.path.extend(wanted["end"])
        importlib.invalidate_caches()


def user_variables(user_ns: Mapping[str, Any], hidden: Mapping[str, Any]) -> dict[str, Any]:
    """The variables a person made in IPython: not IPython's own (``hidden``, unless the
    person gave the name another value), not ``_``-prefixed. One pass over ``user_ns``
    with one look into ``hidden`` per name: ``hidden`` grows by IPython's ``_iN`` at
    every cell, and a pass over it would make a long job's every checkpoint slower."""
    absent = object()
    return {
        name: value
        for name, value in user_ns.items()
        if name[:1] != "_" and name not in _IPYTHON_NAMES and hidden.get(name, absent) is not value
    }


_IPYTHON_NAMES = frozenset(("In", "Out", "exit", "quit", "get_ipython"))
