"""Which pages of a large buffer were written since the last checkpoint, without reading it.

:class:`~jupyter_lowcost.storage.checkpoints.CheckpointStore` asks this module, for each large
buffer it saved before, which of its chunks changed; the buffer itself is not read. It
uses what Linux (6.7 and later) offers for exactly this: the memory is registered with a
userfaultfd in asynchronous write-protect mode (``UFFD_FEATURE_WP_ASYNC``), so that the
first write to each page after it was protected marks the page as written (the kernel
resolves the fault itself; nothing waits on this process), and the ``PAGEMAP_SCAN``
ioctl of ``/proc/self/pagemap`` returns the written pages and protects them again, in one
call. Writes by the kernel on the process's behalf (``read`` into the buffer) count too.

Where any of this is missing (another OS, an older kernel, a seccomp filter, memory that
is not private anonymous memory), :func:`shared` returns None, or :meth:`WriteWatch.watch`
returns False, and the store compares checksums of the memory instead (it reads all of
it). One watch serves the whole process: a page's "written" mark can only be read once,
so two watched ranges never overlap.

Not seen: writes by a device straight into pinned host memory (``cudaHostRegister`` of a
numpy array's memory, RDMA); such memory should not be watched.

The first write to a watched transparent huge page (numpy asks for them for large arrays)
splits it into small pages, and they stay split once the watch ends: an array rewritten
whole then makes every pass over it walk 512 times as many page table entries, which cost
about three times its time on a virtual machine here (``a += 1`` on 1 GiB after 2 s
idle: 122 ms instead of 44; ``tests/benchmarks/write_tracking.py``).
:meth:`WriteWatch.unwatch` can put the huge pages back (``MADV_COLLAPSE``, Linux 6.1,
about 95 ms per GiB here) where the range had them when it was first watched.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import platform
import struct
import threading
import weakref
from typing import Any

from .. import env

PAGE = mmap.PAGESIZE

_SYSCALL_USERFAULTFD = {"x86_64": 323, "aarch64": 282}
_UFFD_USER_MODE_ONLY = 1
_UFFD_API = 0xAA
_UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
_UFFD_FEATURE_WP_ASYNC = 1 << 15
_UFFDIO_REGISTER_MODE_WP = 1 << 1
_UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
_PAGE_IS_WRITTEN = 1 << 1
_PAGE_IS_HUGE = 1 << 6
_MADV_COLLAPSE = 25
_PM_SCAN_WP_MATCHING = 1 << 0
_PM_SCAN_CHECK_WPASYNC = 1 << 1
_SCAN_ARG = struct.Struct("12Q")
_REGIONS = 512  # page regions returned per PAGEMAP_SCAN call


def _iowr(kind: int, number: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | number


def _ior(kind: int, number: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (kind << 8) | number


_UFFDIO_API = _iowr(0xAA, 0x3F, 24)
_UFFDIO_REGISTER = _iowr(0xAA, 0x00, 32)
_UFFDIO_UNREGISTER = _ior(0xAA, 0x01, 16)
_UFFDIO_WRITEPROTECT = _iowr(0xAA, 0x06, 24)
_PAGEMAP_SCAN = _iowr(ord("f"), 16, _SCAN_ARG.size)


def page_span(address: int, length: int) -> tuple[int, int]:
    """The whole pages inside ``[address, address + length)`` (empty when there are none)."""
    start = -(-address // PAGE) * PAGE
    end = (address + length) // PAGE * PAGE
    return (start, end) if end > start else (start, start)


class WriteWatch:
    """Write tracking of page ranges of this process (see the module's docstring)."""

    def __init__(self, uffd: int, pagemap: int) -> None:
        self._uffd = uffd
        self._pagemap = pagemap
        self._regions = (ctypes.c_uint64 * (3 * _REGIONS))()
        self._lock = threading.Lock()
        # Watched ranges (never overlapping) -> a weak reference to the owner of each.
        self._owners: dict[tuple[int, int], Any] = {}
        # The watched ranges that held transparent huge pages when they were first watched.
        self._had_huge_pages: set[tuple[int, int]] = set()
        self.pid = os.getpid()

    @classmethod
    def open(cls) -> WriteWatch | None:
        """A watch, or None where this system cannot watch writes."""
        number = _SYSCALL_USERFAULTFD.get(platform.machine())
        if number is None or not os.path.exists("/proc/self/pagemap"):
            return None
        libc = ctypes.CDLL(None, use_errno=True)
        uffd = libc.syscall(number, os.O_CLOEXEC | os.O_NONBLOCK | _UFFD_USER_MODE_ONLY)
        if uffd < 0:
            return None
        try:
            api = bytearray(
                struct.pack(
                    "QQQ", _UFFD_API, _UFFD_FEATURE_WP_ASYNC | _UFFD_FEATURE_WP_UNPOPULATED, 0
                )
            )
            fcntl.ioctl(uffd, _UFFDIO_API, api, True)
            pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(uffd)
            return None
        watch = cls(uffd, pagemap)
        if not watch._works():
            watch.close()
            return None
        return watch

    def _works(self) -> bool:
        """Watch a scratch mapping: a write must be seen, and only once."""
        scratch = mmap.mmap(-1, 4 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        pointer = ctypes.c_char.from_buffer(scratch)
        address = ctypes.addressof(pointer)
        del pointer  # (an exported buffer would keep the mapping from being closed)
        end = address + 4 * PAGE
        try:
            if not self.watch(address, end, scratch):
                return False
            scratch[PAGE + 1] = 1
            first = self.written(address, end)
            second = self.written(address, end)
            self.unwatch(address, end, scratch)
            return first == [(address + PAGE, address + 2 * PAGE)] and second == []
        finally:
            scratch.close()

    def watch(self, start: int, end: int, owner: Any) -> bool:
        """Protect the pages of ``[start, end)`` (page-aligned) and start watching them for
        as long as ``owner`` (the object whose memory it is) lives or :meth:`unwatch`.

        False when they cannot be watched: not private anonymous memory (shared memory can
        be written by another process, whose writes this one's page tables do not see),
        or overlapping a range watched already for a living owner (its marks would be
        read twice)."""
        if end <= start or not _private_anonymous(start, end):
            return False
        with self._lock:
            overlapping = [r for r in self._owners if r[0] < end and start < r[1]]
            if any(self._owners[r]() is not None for r in overlapping):
                return False
            for dead in overlapping:  # their owners are gone: so is what they watched
                self._unregister(dead)
            huge = bool(self._scan(start, end, 0, _PAGE_IS_HUGE))
            try:
                register = bytearray(
                    struct.pack("QQQQ", start, end - start, _UFFDIO_REGISTER_MODE_WP, 0)
                )
                fcntl.ioctl(self._uffd, _UFFDIO_REGISTER, register, True)
                protect = bytearray(
                    struct.pack("QQQ", start, end - start, _UFFDIO_WRITEPROTECT_MODE_WP)
                )
                fcntl.ioctl(self._uffd, _UFFDIO_WRITEPROTECT, protect, True)
            except OSError:
                return False
            self._owners[(start, end)] = weakref.ref(owner)
            if huge:
                self._had_huge_pages.add((start, end))
            return True

    def unwatch(self, start: int, end: int, owner: Any, restore_huge_pages: bool = False) -> None:
        """Stop watching ``[start, end)``, a range :meth:`watch` accepted for ``owner``
        (None: an owner gone since); a range watched now for another living owner stays.
        ``restore_huge_pages``: the range's memory is rewritten often and lives on (the
        caller holds ``owner``), and had transparent huge pages when it was first
        watched: collapse it into huge pages again, which takes the calling thread about
        95 ms per GiB (best effort: nothing is said where Linux cannot)."""
        with self._lock:
            watched = self._owners.get((start, end))
            if watched is None:
                return
            current = watched()
            if current is not None and current is not owner:
                return
            collapse = (
                restore_huge_pages and current is not None and (start, end) in self._had_huge_pages
            )
            self._unregister((start, end))
        if collapse:
            # (Outside the lock: the other watched ranges are read meanwhile. Linux
            # collapses what no other thread is writing at that moment.)
            _collapse(start, end)

    def _unregister(self, watched: tuple[int, int]) -> None:
        del self._owners[watched]
        self._had_huge_pages.discard(watched)
        start, end = watched
        try:
            fcntl.ioctl(
                self._uffd,
                _UFFDIO_UNREGISTER,
                bytearray(struct.pack("QQ", start, end - start)),
                True,
            )
        except OSError:
            pass  # unmapped since: nothing is registered there any more

    def written(self, start: int, end: int) -> list[tuple[int, int]] | None:
        """The page ranges of ``[start, end)`` written since they were last protected,
        which are protected again; None when the range is no longer fully watched (the
        memory was unmapped or replaced), so that nothing about it can be said."""
        with self._lock:
            return self._scan(
                start, end, _PM_SCAN_WP_MATCHING | _PM_SCAN_CHECK_WPASYNC, _PAGE_IS_WRITTEN
            )

    def _scan(
        self, start: int, end: int, flags: int, category: int
    ) -> list[tuple[int, int]] | None:
        """``PAGEMAP_SCAN`` of ``[start, end)`` (with the lock held): the page ranges in
        ``category``; None when the walk stopped short (memory unmapped meanwhile)."""
        found: list[tuple[int, int]] = []
        regions = self._regions
        address = ctypes.addressof(regions)
        while start < end:
            arg = bytearray(
                _SCAN_ARG.pack(
                    _SCAN_ARG.size,
                    flags,
                    start,
                    end,
                    0,
                    address,
                    _REGIONS,
                    0,
                    0,
                    category,
                    0,
                    category,
                )
            )
            try:
                count = fcntl.ioctl(self._pagemap, _PAGEMAP_SCAN, arg, True)
            except OSError:
                return None
            walk_end = _SCAN_ARG.unpack(arg)[4]
            for i in range(count):
                found.append((regions[3 * i], regions[3 * i + 1]))
            if walk_end <= start:
                return None
            start = walk_end
        return found

    def close(self) -> None:
        for descriptor in (self._uffd, self._pagemap):
            try:
                os.close(descriptor)
            except OSError:
                pass


def _mappings(start: int, end: int) -> list[tuple[int, int, list[str]]] | None:
    """The mappings that hold ``[start, end)``, in order, from ``/proc/self/maps``: their
    start, end and fields; None when the range is not all mapped."""
    found = []
    covered = start
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if high <= covered or low >= end:
                continue
            if low > covered:
                return None  # a hole
            found.append((low, high, fields))
            covered = high
            if covered >= end:
                return found
    return None


def _private_anonymous(start: int, end: int) -> bool:
    """Whether all of ``[start, end)`` is mapped private and anonymous (no file behind
    it, not shared with another process)."""
    mappings = _mappings(start, end)
    return mappings is not None and all(
        fields[1][3] == "p"
        and fields[4] == "0"
        and (fields[5].strip() if len(fields) > 5 else "") in ("", "[heap]")
        for _, _, fields in mappings
    )


def _collapse(start: int, end: int) -> None:
    """Collapse into transparent huge pages every huge-page block that ``[start, end)``
    touches, within the mappings that hold it: the blocks at its ends hold the memory
    beside the buffer too (an allocation's header), and a block is collapsed whole or
    not at all. The contents stay as they are."""
    mappings = _mappings(start, end)
    if mappings is None:
        return
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as size:
            huge = int(size.read())
    except (OSError, ValueError):
        huge = 2 * 1024 * 1024
    first = max(mappings[0][0], start // huge * huge)
    last = min(mappings[-1][1], -(-end // huge) * huge)
    _madvise(first, last - first, _MADV_COLLAPSE)


def _madvise(start: int, length: int, advice: int) -> bool:
    """``madvise`` of ``[start, start + length)``; False where Linux refused it."""
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return madvise(start, length, advice) == 0


_shared: Any = False  # not opened yet
_shared_lock = threading.Lock()


def shared() -> WriteWatch | None:
    """This process's watch (opened on first use; a forked child opens its own), or None
    where writes cannot be watched; ``JUPYTER_LOWCOST_WATCH_WRITES=0`` turns it off."""
    global _shared
    with _shared_lock:
        if _shared is False or (_shared is not None and _shared.pid != os.getpid()):
            if os.environ.get(env.WATCH_WRITES, "1") == "0":
                _shared = None
            else:
                _shared = WriteWatch.open()
        return _shared
