"""Packs: a checkpoint's small pickle streams together in one file, not one file each.

Used by :class:`jupyter_lowcost.storage.checkpoints.CheckpointStore` only. 20,000 small
variables written one file each took 87 MB of disk in 20,004 files (a file costs a block,
and an inode, whatever it holds); packed they take one file.

A pack is an immutable file ``chunks/p<hex>``: the streams one after another, then a JSON
index of the streams that are named variables (the plain, immutable ones: name, type,
offset, length), then the index's length in 8 bytes (little endian). A stream in a pack is
named by ``<pack>:<offset>:<length>`` wherever a stream file's name would be.

Each checkpoint writes at most one new pack, with the small streams that are new. The
streams that did not change stay where they are: a named variable whose value is the
same object as at the last checkpoint, and any other stream whose bytes are the same
(found by their BLAKE2b digest). So that a checkpoint does not end up naming many packs
that each hold little of it, the new pack also takes (:func:`packs_to_fold`) the streams
still used of every pack of which the checkpoint uses less than half (when that leaves
more than :data:`FOLD_WASTE` bytes unused), and of the packs that hold the least of it
while it would name more than :data:`MAX_PACKS`.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Streams of at most this many bytes go into packs.
PACK_MAX = 64 * 1024
#: A checkpoint names at most this many packs besides its new one.
MAX_PACKS = 8
#: A pack of which a checkpoint uses less than half is copied from only when this many
#: bytes of it would otherwise be kept for nothing.
FOLD_WASTE = 256 * 1024

_TRAILER = struct.Struct("<Q")


def digest(data: bytes) -> bytes:
    """What identifies a stream's bytes among a store's packs."""
    return hashlib.blake2b(data, digest_size=16).digest()


def is_pack_slice(stream: str) -> bool:
    """Whether a manifest's stream name is a slice of a pack (not a file of its own)."""
    return ":" in stream


def pack_of(stream: str) -> str:
    """The pack a slice's name is in (the name itself for a stream file)."""
    return stream.partition(":")[0]


def slice_name(pack_id: str, offset: int, length: int) -> str:
    return f"{pack_id}:{offset}:{length}"


def parse_slice(stream: str) -> tuple[str, int, int]:
    """(pack, offset, length) of a slice's name; ``ValueError`` if it is not one."""
    pack_id, offset, length = stream.split(":")
    if not pack_id.startswith("p") or "/" in pack_id:
        raise ValueError(f"{stream!r} is not a slice of a pack")
    return pack_id, int(offset), int(length)


def plain_entry(kind: str, stream: str) -> dict[str, Any]:
    """A named stream's manifest entry (a plain immutable variable), as the store has it."""
    return {"type": kind, "pickler": "plain", "buffers": [], "stream": stream}


@dataclass
class Pack:
    """A pack the store knows: its size and its named streams' entries (the entries are
    the objects the store's manifests hold, so that ``is`` tells which a checkpoint still
    uses)."""

    size: int
    index: dict[str, dict[str, Any]] = field(default_factory=dict)


class PackBuilder:
    """The pack one checkpoint writes: streams added, then :meth:`content` to write."""

    def __init__(self) -> None:
        self.id = f"p{uuid.uuid4().hex}"
        self._parts: list[bytes] = []
        self.size = 0
        self.pack = Pack(size=0)

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, data: bytes, name: str | None = None, entry: dict[str, Any] | None = None) -> str:
        """Add a stream; returns its slice name. ``name``: a named stream (a plain
        variable), whose manifest ``entry`` gets the slice's name and goes in the index."""
        stream = slice_name(self.id, self.size, len(data))
        self._parts.append(data)
        self.size += len(data)
        if name is not None and entry is not None:
            entry["stream"] = stream
            self.pack.index[name] = entry
        return stream

    def content(self) -> bytes:
        """The pack file's bytes: the streams, the index, the index's length."""
        index = json.dumps(
            [
                [name, e["type"], *parse_slice(e["stream"])[1:]]
                for name, e in self.pack.index.items()
            ]
        ).encode()
        self.pack.size = self.size
        return b"".join([*self._parts, index, _TRAILER.pack(len(index))])


def read_pack(path: Path, data: bytes | None = None) -> tuple[bytes, Pack]:
    """A pack file's bytes (``data`` when they were read already) and what it holds (its
    named entries); ``ValueError`` if it is not a whole pack."""
    data = path.read_bytes() if data is None else data
    if len(data) < _TRAILER.size:
        raise ValueError(f"{path.name} is not a whole pack")
    (length,) = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    size = len(data) - _TRAILER.size - length
    if size < 0:
        raise ValueError(f"{path.name} is not a whole pack")
    pack = Pack(size=size)
    for name, kind, offset, stream_length in json.loads(data[size : size + length]):
        pack.index[name] = plain_entry(kind, slice_name(path.name, offset, stream_length))
    return data, pack


class PackSlice:
    """A stream in a pack, read as a file would be (``read_bytes``: the shared memo of a
    restore reads streams again through this)."""

    def __init__(self, chunks: Path, stream: str, cache: dict[str, bytes] | None = None) -> None:
        self.pack_id, self.offset, self.length = parse_slice(stream)
        self.path = chunks / self.pack_id
        self._cache = cache

    def read_bytes(self) -> bytes:
        """The stream's bytes (with a ``cache``, the whole pack is read once into it)."""
        if self._cache is not None:
            whole = self._cache.get(self.pack_id)
            if whole is None:
                whole = self._cache[self.pack_id] = self.path.read_bytes()
            data = whole[self.offset : self.offset + self.length]
        else:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                data = file.read(self.length)
        if len(data) != self.length:
            raise OSError(f"pack {self.pack_id} is shorter than its index says")
        return data


def packs_to_fold(used: dict[str, int], sizes: dict[str, int]) -> set[str]:
    """The packs whose used streams a checkpoint copies into its new pack: of ``used``
    (pack -> bytes of it the checkpoint uses), those it uses less than half of, then the
    ones it uses least while more than :data:`MAX_PACKS` remain."""
    fold = {
        p for p, n in used.items() if 2 * n < sizes.get(p, 0) and sizes.get(p, 0) - n > FOLD_WASTE
    }
    rest = sorted((n, p) for p, n in used.items() if p not in fold)
    while len(rest) > MAX_PACKS:
        fold.add(rest.pop(0)[1])
    return fold
