"""Loading the pickle streams of a checkpoint's shared pickler, one variable at a time.

:class:`~jupyter_lowcost.storage.checkpoints.CheckpointStore` pickles every variable of a
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
import pickletools
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


@dataclass(frozen=True)
class _GlobalName:
    """A class or function a pickle stream names (``STACK_GLOBAL``), not yet imported."""

    module: str
    name: str


#: A value :func:`_scan` cannot know without running the stream (an object it builds).
_UNKNOWN: Any = object()
#: Opcodes that push a string or bytes given in the stream itself.
_CONSTANT_OPS = frozenset(
    ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8")
)
_GET_OPS = frozenset(("GET", "BINGET", "LONG_BINGET"))
_PUT_OPS = frozenset(("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"))
#: Opcodes that fill the object below what they consume (it stays on the stack).
_FILLING_OPS = frozenset(("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"))


@dataclass
class _Piece:
    """A part of a stream of the shared pickler that loads on its own (:func:`_scan`): a
    variable's stream, or one of the small variables of the batch."""

    #: The batch's variables: its name, when the stream says it (None: the batch's own dict).
    name: str | None
    #: Its opcodes, without PROTO, FRAME and STOP.
    ops: list[bytes]
    #: The memo entries it adds: (index, value) where the value is a string or bytes, a
    #: _GlobalName, or _UNKNOWN.
    puts: list[tuple[int, Any]] = field(default_factory=list)
    #: The memo indices it reads that earlier pieces put.
    gets: set[int] = field(default_factory=set)
    #: The memo's length after it.
    end: int = 0
    #: Why its value cannot be restored (None: it can): it is, or holds, an object of a
    #: class that cannot be imported, or an object of another variable that failed.
    taint: str | None = None
    #: The same for each memo entry it adds (only those that cannot).
    taints: dict[int, str] = field(default_factory=dict)

    def stream(self, pair: bool = False) -> bytes:
        """A pickle of its own, without frames (a load that fails leaves nothing unread in
        the Unpickler); ``pair``: a batch's variable, loaded as ``(name, value)``."""
        return b"\x80\x05" + b"".join(self.ops) + (b"\x86." if pair else b".")


def _scan(
    data: bytes,
    start: int,
    known: dict[int, Any],
    lost: Mapping[int, str] | None = None,
    missing: Callable[[str, str], str | None] | None = None,
    batch: bool = False,
) -> tuple[list[_Piece], int]:
    """Read a stream of the shared pickler without running it (pickletools): the memo
    entries it adds from index ``start`` on and those it reads, and which of its objects
    cannot be restored: those made from a class or function that ``missing`` says cannot
    be imported (it returns why), or from a memo entry ``lost`` names (index -> the
    variable whose object it was), and those that hold such objects. One piece, or with
    ``batch`` (the small variables' dict) one for the dict and one per variable.
    ``known`` (memo index -> string, bytes or _GlobalName) is what the streams say of the
    entries they add: filled in here, read by the streams that read those entries.
    Returns the pieces and the memo's length after the stream.

    Only :class:`SharedMemo` calls it, once a stream has failed to load: restores
    without a failure never pay for it."""
    lost = lost or {}
    ops = list(pickletools.genops(data))
    index = start
    # Per stack slot: [value (known or _UNKNOWN), why it cannot be restored (None: it
    # can), the memo indices it is stored at, the first op of what made it].
    stack: list[list[Any]] = []
    marks: list[tuple[int, int]] = []  # each open MARK: (stack depth, op number)
    puts: dict[int, tuple[int, Any]] = {}
    gets: dict[int, int] = {}
    taints: dict[int, str] = {}
    read: set[int] = set()
    skip: set[int] = set()  # ops in no piece (PROTO, FRAME, STOP, the batch dict's own)
    items: list[tuple[int, Any, str | None]] = []  # the batch's: (first op, name, taint)
    top: str | None = None
    loop: str | None = None  # an object found to hold a lost one after it was read

    for number, (op, arg, _) in enumerate(ops):
        name = op.name
        if name in ("PROTO", "FRAME", "STOP"):
            skip.add(number)
            if name == "STOP" and stack:
                top = stack[-1][1]
        elif name == "MARK":
            marks.append((len(stack), number))
        elif name in _PUT_OPS:
            where = index if name == "MEMOIZE" else arg
            slot = stack[-1]
            puts[number] = (where, slot[0])
            if slot[0] is not _UNKNOWN:
                known[where] = slot[0]
            slot[2].append(where)
            if slot[1] is not None:
                taints[where] = slot[1]
            index = max(index, where + 1)
        elif name in _GET_OPS:
            gets[number] = arg
            read.add(arg)
            value = known.get(arg, _UNKNOWN)
            why: Any = None
            if isinstance(value, _GlobalName) and missing is not None:
                why = missing(value.module, value.name)  # (not an object of the variable)
            elif arg in taints:
                why = ("memo", arg)  # (named below)
            elif arg in lost:
                why = f"refers to an object of {lost[arg]}, which could not be restored"
            stack.append([value, why, [arg], number])
        elif name in _CONSTANT_OPS:
            stack.append([arg, None, [], number])
        elif name in ("STACK_GLOBAL", "GLOBAL"):
            if name == "GLOBAL":
                module, _, qualname = arg.partition(" ")
                why, first = None, number
            else:
                named, within = stack.pop(), stack.pop()
                module, qualname = within[0], named[0]
                why, first = within[1] or named[1], within[3]
            plain = isinstance(module, str) and isinstance(qualname, str)
            if why is None and plain and missing is not None:
                why = missing(module, qualname)
            value = _GlobalName(module, qualname) if plain else _UNKNOWN
            stack.append([value, why, [], first])
        else:
            before, after = op.stack_before, op.stack_after
            if pickletools.markobject in before:
                below = before.index(pickletools.markobject)
                depth, mark = marks.pop()
                low = depth - below
                first = stack[low][3] if below else mark
                if batch and name == "SETITEMS" and low == 0 and not marks:
                    items.extend(
                        (stack[k][3], stack[k][0], stack[k + 1][1])
                        for k in range(depth, len(stack) - 1, 2)
                    )
                    skip.update((number, mark))
            else:
                low = len(stack) - len(before)
                first = stack[low][3] if before else number
                if batch and name == "SETITEM" and low == 0 and not marks:
                    items.append((stack[1][3], stack[1][0], stack[2][1]))
                    skip.add(number)
            if low < 0:
                raise pickle.UnpicklingError("the stream's stack runs out")
            consumed = stack[low:]
            del stack[low:]
            why = next((slot[1] for slot in consumed if slot[1] is not None), None)
            if name in _FILLING_OPS and consumed:
                kept = consumed[0]
                if why is not None and kept[1] is None:
                    kept[1] = why
                    for where in kept[2]:
                        taints[where] = why
                        if where in read:
                            loop = loop or why
                stack.append(kept)
            else:
                stack.extend([_UNKNOWN, why, [], first] for _ in after)
    if batch:
        bounds = [0, *(first for first, _, _ in items), len(ops)]
        heads: list[tuple[str | None, str | None]] = [(None, None)]
        heads += [(key if isinstance(key, str) else None, why) for _, key, why in items]
    else:
        bounds, heads = [0, len(ops)], [(None, top)]
    pieces: list[_Piece] = []
    owners: dict[int, _Piece] = {}
    for k, (piece_name, _) in enumerate(heads):
        piece = _Piece(piece_name, [])
        for number in range(bounds[k], bounds[k + 1]):
            if number in skip:
                continue
            end = ops[number + 1][2] if number + 1 < len(ops) else len(data)
            piece.ops.append(data[ops[number][2] : end])
            if number in puts:
                piece.puts.append(puts[number])
                owners[puts[number][0]] = piece
            elif number in gets:
                piece.gets.add(gets[number])
        own = {where for where, _ in piece.puts}
        piece.gets -= own
        piece.end = max(own) + 1 if own else pieces[-1].end if pieces else start
        pieces.append(piece)

    def named(why: Any, piece: _Piece) -> str | None:
        """A taint as the piece's message: an object of another piece is named by it."""
        while isinstance(why, tuple):
            holder = owners.get(why[1])
            if holder is not piece:
                who = holder.name if holder is not None and holder.name else "a small variable"
                return f"refers to an object of {who}, which could not be restored"
            why = taints[why[1]]
        return why

    for piece, (_, why) in zip(pieces, heads, strict=True):
        piece.taint = named(loop or why, piece)
        for where, _ in piece.puts:
            if loop or where in taints:
                piece.taints[where] = named(loop or taints[where], piece) or ""
    return pieces, index


class _Missing:
    """What a tolerant load (:class:`SharedMemo`) makes of a class or function that cannot
    be imported, and what stands in the memo for an object that could not be restored:
    takes any arguments and state. Never handed to the user: a variable that is or holds
    one is reported as not restored (:func:`_scan` finds them)."""

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


class _TolerantUnpickler(pickle.Unpickler):
    """An Unpickler that makes :class:`_Missing` of what cannot be imported (and notes
    why in ``missing``) instead of failing: the objects that do not need it load. Used
    once a stream of the shared memo has failed."""

    def __init__(self, file: Any, buffers: Any, missing: dict[tuple[str, str], str]) -> None:
        super().__init__(file, buffers=buffers)
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
    as the pickler's was, so that an object several variables hold comes back as one.
    :meth:`CheckpointStore._load` calls it.

    While every stream loads, each is loaded as it is, at no cost beyond the load. Once
    one fails (a class it names cannot be imported, say), the streams after it would read
    the wrong memo entries; from there on (until the pickler's next fresh start) each
    stream is read first (:func:`_scan`) and loaded by an Unpickler that stands
    :class:`_Missing` in for what cannot be imported, so that the memo stays the pickler's:
    the objects that need nothing missing come back, those of the failed variable
    included, and only a variable that is or holds an object that could not be restored
    is reported (as referring to an object of the variable it came from). A stream that
    still fails has its memo entries filled with what it says of them (strings, bytes,
    classes and functions that import) and the others lost. The small variables' batch
    is then loaded one variable at a time in the same way."""

    def __init__(self) -> None:
        self.source = Redirect()
        self.buffers = Buffers()
        #: What the Unpickler's persistent_load hands out (see _pad).
        self._padding: list[Any] = []
        #: (module, name) -> why it cannot be imported (the tolerant Unpickler's notes).
        self.missing: dict[tuple[str, str], str] = {}
        self.reset()

    def reset(self) -> None:
        """A new memo: the pickler started afresh here (``memo_reset``)."""
        self.unpickler: pickle.Unpickler = pickle.Unpickler(self.source, buffers=self.buffers)
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
        unpickler = _TolerantUnpickler(self.source, self.buffers, self.missing)
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

    def _pieces(self, name: str, data: bytes, batch: bool = False) -> list[_Piece]:
        try:
            pieces, _ = _scan(
                data, self.index or 0, self.known, self.lost, self._why_missing, batch
            )
        except Exception as err:  # noqa: BLE001 (a stream pickletools cannot read)
            self.unreadable(name)
            raise pickle.UnpicklingError(f"its stream cannot be read: {error_text(err)}") from None
        return pieces

    def _load_piece(self, owner: str, piece: _Piece, buffers: list[Any], pair: bool = False) -> Any:
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
                _, index = _scan(path.read_bytes(), index, self.known)
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

    def _lose(self, owner: str, piece: _Piece) -> None:
        """The entries of a piece that did not load: what the stream says of them where
        it can, the others lost (``owner``'s objects)."""
        pads = []
        for where, value in piece.puts:
            if isinstance(value, _GlobalName):
                value = self.unpickler.find_class(value.module, value.name)
            if value is _UNKNOWN or value is _Missing:
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


def error_text(err: BaseException) -> str:
    """An exception as a report says why: its message (its type without one), short."""
    text = str(err) or type(err).__name__
    return text if len(text) < 200 else text[:197] + "..."
