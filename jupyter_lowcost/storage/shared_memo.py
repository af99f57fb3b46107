"""Loading the pickle streams of a checkpoint's shared pickler, one variable at a time.

:mod:`~jupyter_lowcost.storage.snapshots` pickles every variable of a
checkpoint with one pickler whose memo is shared (an object several variables hold is
saved once and comes back as one), and restores them with :class:`SharedMemo`, which
keeps the memo the pickler's even after a stream fails to load, so that one variable
that cannot be restored costs only the variables that hold its objects. The writer's
:class:`Redirect` and the reader's :class:`Buffers` are the file and the out-of-band
buffers both ends hand their pickler.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .format import error_text
from .memo_scan import UNKNOWN, GlobalName, Piece, scan
from .notebook_functions import NamespaceUnpickler


class Redirect:
    """A file whose writes (and reads) go to the stream of the current variable."""

    def __init__(self) -> None:
        self.target: Any = io.BytesIO()

    def write(self, data: Any) -> int:
        return self.target.write(data)

    def read(self, n: int = -1) -> bytes:
        return self.target.read(n)

    def readline(self) -> bytes:
        return self.target.readline()

    def readinto(self, buffer: Any) -> int:
        return self.target.readinto(buffer)


class Buffers:
    """The out-of-band buffers of the current variable, for a long-lived Unpickler."""

    def __init__(self) -> None:
        self.pending: list[Any] = []

    def __iter__(self) -> Buffers:
        return self

    def __next__(self) -> Any:
        if not self.pending:
            raise StopIteration
        return self.pending.pop(0)


class _Missing:
    """What a tolerant load (:class:`SharedMemo`) makes of a class or function that cannot
    be imported, and what stands in the memo for an object that could not be restored:
    takes any arguments and state. Never handed to the user: a variable that is or holds
    one is reported as not restored (:func:`scan` finds them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Missing:
        return _Missing()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass


class _TolerantUnpickler(NamespaceUnpickler):
    """An Unpickler that makes :class:`_Missing` of what cannot be imported (and notes
    why in ``missing``) instead of failing: the objects that do not need it load. Used
    once a stream of the shared memo has failed."""

    def __init__(
        self,
        file: Any,
        buffers: Any,
        namespace: dict[str, Any] | None,
        missing: dict[tuple[str, str], str],
    ) -> None:
        super().__init__(file, buffers, namespace)
        self.missing = missing

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except Exception as err:  # noqa: BLE001 (whatever the import raises)
            self.missing.setdefault(
                (module, name), f"{module}.{name} cannot be imported: {error_text(err)}"
            )
            return _Missing


class SharedMemo:
    """Loads the streams the checkpoint's shared pickler wrote (the small variables'
    batch, then each variable, in saved order) with one Unpickler, whose memo is rebuilt
    as the pickler's was, so that an object several variables hold comes back as one,
    and functions the notebook defined are bound to ``namespace`` (None: ``__main__``'s;
    :class:`~jupyter_lowcost.storage.notebook_functions.NamespaceUnpickler`).
    A restore (:mod:`~jupyter_lowcost.storage.restore`) calls it.

    While every stream loads, each is loaded as it is, at no cost beyond the load. Once
    one fails (a class it names cannot be imported, say), the streams after it would read
    the wrong memo entries; from there on (until the pickler's next fresh start) each
    stream is read first (:func:`scan`) and loaded by an Unpickler that stands
    :class:`_Missing` in for what cannot be imported, so that the memo stays the pickler's:
    the objects that need nothing missing come back, those of the failed variable
    included, and only a variable that is or holds an object that could not be restored
    is reported (as referring to an object of the variable it came from). A stream that
    still fails has its memo entries filled with what it says of them (strings, bytes,
    classes and functions that import) and the others lost. The small variables' batch
    is then loaded one variable at a time in the same way."""

    def __init__(self, namespace: dict[str, Any] | None = None) -> None:
        self.namespace = namespace
        self.source = Redirect()
        self.buffers = Buffers()
        #: What the Unpickler's persistent_load hands out (see _pad).
        self._padding: list[Any] = []
        #: (module, name) -> why it cannot be imported (the tolerant Unpickler's notes).
        self.missing: dict[tuple[str, str], str] = {}
        self.reset()

    def reset(self) -> None:
        """A new memo: the pickler started afresh here (``memo_reset``)."""
        self.unpickler: pickle.Unpickler = NamespaceUnpickler(
            self.source, self.buffers, self.namespace
        )
        #: The streams loaded so far, while none failed (read again only if one does).
        self.chain: list[Path] = []
        #: The memo's length, once a stream failed (None: not counted).
        self.index: int | None = None
        self.known: dict[int, Any] = {}
        #: Memo index -> the variable whose object it was, for entries that hold
        #: :class:`_Missing` instead of the object.
        self.lost: dict[int, str] = {}
        #: A stream that could not be read: the memo's length after it is unknown.
        self.broken: str | None = None

    def _tolerant(self) -> _TolerantUnpickler:
        unpickler = _TolerantUnpickler(self.source, self.buffers, self.namespace, self.missing)
        unpickler.persistent_load = self._padding.__getitem__
        return unpickler

    def _why_missing(self, module: str, name: str) -> str | None:
        if self.unpickler.find_class(module, name) is _Missing:
            return self.missing.get((module, name), f"{module}.{name} cannot be imported")
        return None

    def unreadable(self, name: str) -> None:
        """``name``'s stream (of this memo) could not be read."""
        self.broken = self.broken or name

    def load(
        self, name: str, path: Path, data: bytes, read_buffers: Callable[[], list[Any]]
    ) -> Any:
        """The variable ``name`` from its stream ``data`` (read from ``path``) and its
        out-of-band buffers; raises what made it fail (its own error, or that it refers to
        an object of a variable that failed)."""
        if self.broken is not None:
            raise pickle.UnpicklingError(f"saved after {self.broken}, which could not be read")
        buffers = read_buffers()
        if self.index is None:
            try:
                self.buffers.pending = list(buffers)
                self.source.target = io.BytesIO(data)
                value = self.unpickler.load()
            except Exception:
                if not self._count_from_start(name, data):
                    raise
            else:
                self.chain.append(path)
                return value
        return self._load_piece(name, self._pieces(name, data)[0], buffers)

    def load_batch(self, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
        """The small variables (the first stream of the memo): name -> value, and name ->
        why for those that did not load."""
        try:
            data = path.read_bytes()
        except Exception:
            self.unreadable("the small variables")
            raise
        try:
            self.source.target = io.BytesIO(data)
            self.buffers.pending = []
            batch = self.unpickler.load()
        except Exception as err:  # noqa: BLE001 (any failure: each variable on its own)
            first_error = err
        else:
            self.chain.append(path)
            return batch, {}
        # Each variable on its own, from an empty memo.
        self.unpickler = self._tolerant()
        self.index = 0
        try:
            dict_piece, *pieces = self._pieces("the small variables", data, batch=True)
            self._load_piece("the small variables", dict_piece, [])
        except Exception:  # noqa: BLE001 (said by the first error)
            raise first_error from None
        batch, failed = {}, {}
        for piece in pieces:
            owner = piece.name or "a small variable"
            try:
                key, value = self._load_piece(owner, piece, [], pair=True)
            except Exception as err:  # noqa: BLE001 (reported, the others go on)
                if piece.name is not None:
                    failed[piece.name] = error_text(err)
                continue
            batch[key] = value
        return batch, failed

    def _pieces(self, name: str, data: bytes, batch: bool = False) -> list[Piece]:
        try:
            pieces, _ = scan(data, self.index or 0, self.known, self.lost, self._why_missing, batch)
        except Exception as err:  # noqa: BLE001 (a stream pickletools cannot read)
            self.unreadable(name)
            raise pickle.UnpicklingError(f"its stream cannot be read: {error_text(err)}") from None
        return pieces

    def _load_piece(self, owner: str, piece: Piece, buffers: list[Any], pair: bool = False) -> Any:
        """Load one piece (tolerantly); its objects that could not be restored are lost
        (``owner``'s), and if its value is one of them, raise why."""
        try:
            self.buffers.pending = list(buffers)
            self.source.target = io.BytesIO(piece.stream(pair))
            value = self.unpickler.load()
        except Exception:
            self._lose(owner, piece)
            raise
        for where in piece.taints:
            self.lost[where] = owner
        self.index = piece.end
        if piece.taint is not None:
            raise pickle.UnpicklingError(piece.taint)
        return value

    def _count_from_start(self, name: str, data: bytes) -> bool:
        """The first failure, at ``name``'s stream: the memo's length before it, from the
        streams before it, and a tolerant Unpickler with the memo as it was before it
        (the failed load left input unread in the old one). False if that cannot be
        known."""
        index = 0
        try:
            for path in self.chain:
                _, index = scan(path.read_bytes(), index, self.known)
        except Exception:  # noqa: BLE001 (then the memo's length is unknown)
            self.unreadable(name)
            return False
        # (Not by the memo's setter: it leaves the Unpickler's count of entries, where
        # the next MEMOIZE goes, as it was.)
        memo = self.unpickler.memo.copy()
        self.unpickler = self._tolerant()
        try:
            self._pad([(where, memo[where]) for where in range(index)])
        except Exception:  # noqa: BLE001 (then the memo is not the pickler's)
            self.unreadable(name)
            return False
        self.index = index
        self.chain = []
        return True

    def _lose(self, owner: str, piece: Piece) -> None:
        """The entries of a piece that did not load: what the stream says of them where
        it can, the others lost (``owner``'s objects)."""
        pads = []
        for where, value in piece.puts:
            if isinstance(value, GlobalName):
                value = self.unpickler.find_class(value.module, value.name)
            if value is UNKNOWN or value is _Missing:
                self.lost[where] = owner
                value = _Missing()
            pads.append((where, value))
        try:
            self._pad(pads)
        except Exception:  # noqa: BLE001 (then the memo is not the pickler's)
            self.unreadable(owner)
        self.index = max(self.index or 0, piece.end)

    def _pad(self, pads: list[tuple[int, Any]]) -> None:
        """Put each value at its index of the memo: a stream of persistent ids
        (BINPERSID), which the Unpickler's persistent_load answers from ``_padding``."""
        if not pads:
            return
        ops = [b"\x80\x05"]
        for number, (where, _) in enumerate(pads):
            ops.append(b"J" + struct.pack("<i", number) + b"Q")  # BININT, BINPERSID
            ops.append(b"r" + struct.pack("<I", where) + b"0")  # LONG_BINPUT, POP
        ops.append(b"N.")
        self._padding[:] = [value for _, value in pads]
        try:
            self.source.target = io.BytesIO(b"".join(ops))
            self.unpickler.load()
        finally:
            self._padding.clear()
