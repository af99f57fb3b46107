"""A snapshot: a namespace as it was at one moment, each variable pickled, not yet written.

:func:`take_snapshot` is called by
:meth:`~jupyter_lowcost.storage.checkpoints.CheckpointStore.snapshot` (in the kernel's main
thread, between cells); the :class:`Snapshot` it returns is written by
:mod:`~jupyter_lowcost.storage.writing`, in any thread. Every variable is pickled by one
:class:`~jupyter_lowcost.storage.pickling.NamespacePickler` whose memo is shared (an object
several variables hold is saved once), each into a stream of its own (one that fails is
left out and reported).
"""

from __future__ import annotations

import io
import pickle
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .chunks import BufferChunks, memory_owner
from .format import (
    BATCH_MIN,
    SMALL_CONTAINERS,
    SMALL_LENGTH,
    type_name,
)
from .namespace_reader import VariableSplit, split_variables
from .pickling import NamespacePickler, defined_in_notebook, fallback_dumps, fallback_picklers
from .reports import Skipped
from .shared_memo import Redirect
from .shared_memo import error_text as _why
from .staging import StagedChunks, Staging

#: A variable's out-of-band buffers: (memory, the object that owns it, whether it is a
#: copy); in a staged snapshot, the chunks it copied (:class:`StagedChunks`), no owner.
Buffers = list[tuple[Any, Any, bool]]


@dataclass
class Unchanged:
    """An immutable variable as the last checkpoint saved it."""

    value: Any
    #: Its entry in the pack that holds it (:attr:`jupyter_lowcost.storage.packs.Pack.index`).
    entry: dict[str, Any]
    size: int
    #: That pack (set once the variable is written into it).
    pack: str = ""


@dataclass
class Snapshot:
    """A namespace as it was at one moment
    (:meth:`~jupyter_lowcost.storage.checkpoints.CheckpointStore.snapshot`), not yet
    written (:meth:`~jupyter_lowcost.storage.checkpoints.CheckpointStore.write`)."""

    taken_at: float
    started: float
    #: The manifest's fields other than the variables (kernel, notebook, history...).
    manifest: dict[str, Any]
    #: name -> entry, in the namespace's order (stream and chunks added by the write).
    entries: dict[str, Any] = field(default_factory=dict)
    #: name -> (pickle stream, [(buffer, owner, whether the buffer is a copy)]): to write.
    pending: dict[str, tuple[bytes, Buffers]] = field(default_factory=dict)
    #: Immutable variables whose entries the next snapshot may keep.
    unchanged: dict[str, Unchanged] = field(default_factory=dict)
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


def take_snapshot(
    namespace: Mapping[str, Any],
    fields: dict[str, Any],
    staging: Staging | None,
    started: float,
    chunks: BufferChunks,
    split: VariableSplit | None = None,
) -> Snapshot:
    """``namespace`` as it is now: the immutable values held, the small containers
    pickled together, every other variable pickled on its own (an alias of another as
    its name, a module as its name). With ``staging``, the out-of-band buffers are copied
    (:class:`~jupyter_lowcost.storage.staging.StagingTooLarge` when a copy would not fit
    in memory): of each, only the chunks that changed since its last checkpoint
    (``chunks``, the store's), where its writes are watched. Without ``staging``, the
    buffers are the variables' own memory. ``fields``: the manifest's other fields; ``started``:
    when the snapshot began (:func:`time.perf_counter`). ``split``: ``namespace`` sorted
    into immutable variables and the others already
    (:class:`~jupyter_lowcost.storage.namespace_reader.NamespaceReader`)."""
    snapshot = Snapshot(
        taken_at=fields["taken_at"], started=started, manifest=fields, order=list(namespace)
    )
    # Immutable values cannot change in place: holding them is their snapshot, and the
    # write pickles those that are not the same objects as last time. (20,000 small
    # variables would otherwise cost the cell's reply about 10 ms each time.)
    # (``split``: sorted already, by the kernel's NamespaceReader)
    split = split or split_variables(namespace)
    snapshot.immutable, mutable = split.immutable, split.mutable
    first_name: dict[int, str] = {}
    for name, value in mutable:
        first_name.setdefault(id(value), name)
    pickling = _VariablePickling()
    _pickle_small_containers(snapshot, pickling, mutable, first_name)
    staged: set[tuple[str, int]] = set()
    for name, value in mutable:
        if name not in snapshot.entries:  # (else in the batch)
            _add_variable(snapshot, pickling, name, value, first_name, staging, staged, chunks)
    if staging is not None:  # copies of buffers that are gone or moved: let their memory go
        staging.keep_only(staged)
    _skip_aliases_of_lost(snapshot)
    snapshot.seconds = time.perf_counter() - started
    return snapshot


def _pickle_small_containers(
    snapshot: Snapshot,
    pickling: _VariablePickling,
    mutable: list[tuple[str, Any]],
    first_name: dict[int, str],
) -> None:
    """The small containers, pickled together into ``snapshot.batch`` when there are
    enough of them (each is then an entry ``{"batch": True}``)."""
    small = {
        name: value
        for name, value in mutable
        if type(value) in SMALL_CONTAINERS
        and len(value) <= SMALL_LENGTH
        and first_name[id(value)] == name
    }
    if len(small) < BATCH_MIN:
        return
    snapshot.batch = pickling.pickle_batch(small)
    if snapshot.batch is not None:
        for name, value in small.items():
            snapshot.entries[name] = {"batch": True, "type": type_name(value)}
        snapshot.total += len(snapshot.batch)


def _add_variable(
    snapshot: Snapshot,
    pickling: _VariablePickling,
    name: str,
    value: Any,
    first_name: dict[int, str],
    staging: Staging | None,
    staged: set[tuple[str, int]],
    chunks: BufferChunks,
) -> None:
    """One variable's entry: an alias of an earlier variable, a module, or its pickle
    stream and buffers (copied with ``staging``); or why it was skipped."""
    entries = snapshot.entries
    if first_name[id(value)] != name:
        entries[name] = {"alias_of": first_name[id(value)], "type": type_name(value)}
        return
    if isinstance(value, types.ModuleType):
        entries[name] = {"module": value.__name__, "type": "module"}
        return
    try:
        entry, data, buffers = pickling.pickle_variable(value)
    except Exception as err:  # any failure of any pickler: report it, go on
        snapshot.skipped.append(Skipped(name, type_name(value), _why(err)))
        return
    if staging is not None:
        buffers = [
            (
                view if copy else _stage(staging, chunks, (name, index), view, owner, staged),
                None,
                True,
            )
            for index, (view, owner, copy) in enumerate(buffers)
        ]
    entries[name] = entry
    snapshot.pending[name] = (data, buffers)
    snapshot.total += len(data) + sum(view.nbytes for view, _, _ in buffers)


def _stage(
    staging: Staging,
    chunks: BufferChunks,
    key: tuple[str, int],
    view: memoryview,
    owner: Any,
    staged: set[tuple[str, int]],
) -> StagedChunks:
    """A buffer's copy in a staged snapshot: the chunks that changed since its last
    checkpoint where that is known (its writes are watched, ``chunks``), else all of
    them, each copied as it is now."""
    plan = chunks.plan(key, view, owner)
    if plan.changed is not None:
        indexes, keep = sorted(plan.changed), True
    else:
        indexes = list(range(-(-view.nbytes // staging.chunk_size)))
        # A buffer watched from now on: the next snapshots copy what changed, so this
        # whole copy is let go once written.
        keep = plan.watched is None
    return StagedChunks(view.nbytes, staging.stage_chunks(key, view, indexes, keep, staged), plan)


def _skip_aliases_of_lost(snapshot: Snapshot) -> None:
    """An alias of a variable that could not be saved cannot be restored either."""
    lost = {s.name for s in snapshot.skipped}
    entries = snapshot.entries
    for name in [n for n, e in entries.items() if e.get("alias_of") in lost]:
        snapshot.skipped.append(
            Skipped(name, entries.pop(name)["type"], "alias of an unsaved object")
        )


class _VariablePickling:
    """The shared pickler of one snapshot, and the file and buffers it writes to (the
    current variable's). Its memo holds every object it saved: it lives as long as the
    snapshot is being taken (``del big`` in the next cell must free big's memory)."""

    def __init__(self) -> None:
        self.file = Redirect()
        self.buffers: list[Any] = []
        self.pickler = NamespacePickler(self.file, self.buffers)
        #: The pickler started afresh after a failed dump: the next stream says so.
        self.memo_reset_pending = False

    def pickle_batch(self, small: dict[str, Any]) -> bytes | None:
        """The small containers, pickled together by the shared pickler before any other
        variable (so that the variables pickled after it share their objects, as one by
        one); None, with a fresh pickler, when one of them cannot be pickled, holds a large
        buffer or an object of a class defined in the notebook: each is then pickled on
        its own."""
        stream = io.BytesIO()
        self.file.target = stream
        self.buffers.clear()
        try:
            self.pickler.dump(small)
        except Exception:
            pass
        else:
            data = stream.getvalue()
            # (Not with a large buffer inside, nor with objects of classes the notebook
            # defined: the batch is restored before those classes are.)
            if not self.buffers and b"__main__" not in data:
                return data
        self.buffers.clear()
        self.pickler = NamespacePickler(self.file, self.buffers)
        return None

    def pickle_variable(self, value: Any) -> tuple[dict[str, Any], bytes, Buffers]:
        """One variable's entry (without where it is stored), pickle stream, and
        out-of-band buffers as (memory, the object that owns it, whether it is a copy)."""
        pickler_name = "pickle"
        memo_reset = False
        try:
            data, buffers = self._dump_shared(value)
            # After a failed dump the memo was emptied: load empties its memo here too.
            memo_reset, self.memo_reset_pending = self.memo_reset_pending, False
        except Exception as first_error:
            # What the failed dump added to the memo was never written, and the C pickler
            # cannot say which entries those are: a new pickler, with an empty memo.
            # (Variables saved after this point share objects among themselves, not with
            # earlier ones.)
            self.pickler = NamespacePickler(self.file, self.buffers)
            self.memo_reset_pending = True
            data, buffers, pickler_name = _dump_by_fallback(value)
            if not data:
                raise first_error from None
        entry = {
            "type": type_name(value),
            "pickler": pickler_name,
            "buffers": [],
            "memo_reset": memo_reset,
        }
        return entry, data, self._views(buffers)

    def _dump_shared(self, value: Any) -> tuple[bytes, list[Any]]:
        """``value`` by the shared pickler: its stream and out-of-band buffers."""
        stream = io.BytesIO()
        self.file.target = stream
        self.buffers.clear()
        if defined_in_notebook(value):
            raise pickle.PicklingError("defined in the notebook: pickle saves a reference")
        # (functions of the notebook: see NamespacePickler.reducer_override)
        self.pickler.dump(value)
        return stream.getvalue(), list(self.buffers)

    def _views(self, buffers: list[Any]) -> Buffers:
        """Each buffer as (memory, the object that owns it, whether it is a copy)."""
        owners = self.pickler.owners
        views = []
        for buffer in buffers:
            view = buffer.raw()
            exporter = view.obj
            owner = owners[id(exporter)][1] if id(exporter) in owners else memory_owner(exporter)
            views.append((view, owner, id(exporter) in self.pickler.copies))
        return views


def _dump_by_fallback(value: Any) -> tuple[bytes, list[Any], str]:
    """``value`` by the first fallback pickler that can (cloudpickle, then dill): its
    stream (empty when none could), buffers and the pickler's name."""
    for fallback in fallback_picklers():
        try:
            buffers: list[Any] = []
            data = fallback_dumps(fallback, value, buffers)
            return data, buffers, fallback.__name__.partition("_with_files")[0]
        except Exception:
            continue
    return b"", [], "pickle"
