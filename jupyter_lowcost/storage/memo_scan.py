"""Reading a stream of a checkpoint's shared pickler without running it: which memo entries
it adds and reads, and which of its objects cannot be restored.

Only :class:`~jupyter_lowcost.storage.shared_memo.SharedMemo` calls :func:`scan`, once a
stream has failed to load: restores without a failure never pay for it.
"""

from __future__ import annotations

import pickle
import pickletools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GlobalName:
    """A class or function a pickle stream names (``STACK_GLOBAL``), not yet imported."""

    module: str
    name: str


#: A value :func:`scan` cannot know without running the stream (an object it builds).
UNKNOWN: Any = object()
#: Opcodes that push a string or bytes given in the stream itself.
_CONSTANT_OPS = frozenset(
    ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8")
)
_GET_OPS = frozenset(("GET", "BINGET", "LONG_BINGET"))
_PUT_OPS = frozenset(("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"))
#: Opcodes that fill the object below what they consume (it stays on the stack).
_FILLING_OPS = frozenset(("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"))


@dataclass
class Piece:
    """A part of a stream of the shared pickler that loads on its own (:func:`scan`): a
    variable's stream, or one of the small variables of the batch."""

    #: The batch's variables: its name, when the stream says it (None: the batch's own dict).
    name: str | None
    #: Its opcodes, without PROTO, FRAME and STOP.
    ops: list[bytes]
    #: The memo entries it adds: (index, value) where the value is a string or bytes, a
    #: GlobalName, or UNKNOWN.
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


def scan(
    data: bytes,
    start: int,
    known: dict[int, Any],
    lost: Mapping[int, str] | None = None,
    missing: Callable[[str, str], str | None] | None = None,
    batch: bool = False,
) -> tuple[list[Piece], int]:
    """Read a stream of the shared pickler without running it (pickletools): the memo
    entries it adds from index ``start`` on and those it reads, and which of its objects
    cannot be restored: those made from a class or function that ``missing`` says cannot
    be imported (it returns why), or from a memo entry ``lost`` names (index -> the
    variable whose object it was), and those that hold such objects. One piece, or with
    ``batch`` (the small variables' dict) one for the dict and one per variable.
    ``known`` (memo index -> string, bytes or GlobalName) is what the streams say of the
    entries they add: filled in here, read by the streams that read those entries.
    Returns the pieces and the memo's length after the stream.

    Only :class:`SharedMemo` calls it, once a stream has failed to load: restores
    without a failure never pay for it."""
    lost = lost or {}
    ops = list(pickletools.genops(data))
    index = start
    # Per stack slot: [value (known or UNKNOWN), why it cannot be restored (None: it
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
            if slot[0] is not UNKNOWN:
                known[where] = slot[0]
            slot[2].append(where)
            if slot[1] is not None:
                taints[where] = slot[1]
            index = max(index, where + 1)
        elif name in _GET_OPS:
            gets[number] = arg
            read.add(arg)
            value = known.get(arg, UNKNOWN)
            why: Any = None
            if isinstance(value, GlobalName) and missing is not None:
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
            value = GlobalName(module, qualname) if plain else UNKNOWN
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
                stack.extend([UNKNOWN, why, [], first] for _ in after)
    if batch:
        bounds = [0, *(first for first, _, _ in items), len(ops)]
        heads: list[tuple[str | None, str | None]] = [(None, None)]
        heads += [(key if isinstance(key, str) else None, why) for _, key, why in items]
    else:
        bounds, heads = [0, len(ops)], [(None, top)]
    pieces: list[Piece] = []
    owners: dict[int, Piece] = {}
    for k, (piece_name, _) in enumerate(heads):
        piece = Piece(piece_name, [])
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

    def named(why: Any, piece: Piece) -> str | None:
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
