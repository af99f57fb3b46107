"""Benchmark: ways of knowing which pages of a large buffer were written since the last
snapshot (issue 32), on this machine, against copying the whole buffer.

Run it by hand (pytest does not collect it; Linux, numpy)::

    python tests/benchmarks/write_tracking.py [--sizes-mib 512,1024] [--rounds 5]

For a numpy float64 array of each size (allocated by numpy as a kernel's arrays are, so
with numpy's ``madvise(MADV_HUGEPAGE)``; made resident before anything is timed; a
page-aligned view of it is used), and for each pattern of writes between two snapshots:

- ``1 element``: one element, at a different place each round;
- ``1% contig``: 1% of the pages, one contiguous slice (``a[lo:hi] += 1``), at a
  different place each round;
- ``1% spread``: 1% of the pages, every 100th page written whole (as many page ranges as
  pages: the worst case for a scan that returns ranges);
- ``100%``: every page (``a += 1``);

it measures, median over ``--rounds`` rounds:

- (a) ``write_watch``: what the product uses now
  (:mod:`jupyter_lowcost.storage.write_watch`: userfaultfd in asynchronous write-protect
  mode, then the ``PAGEMAP_SCAN`` ioctl, which returns the written pages and protects them
  again). "arm": ``watch()`` (register and protect the range; once per array); "scan":
  ``written()``; "found": the MiB it reports written;
- (b) ``soft-dirty``: write ``4`` to ``/proc/self/clear_refs`` ("arm", every round; it
  clears the bits of the whole process, not just the array), then read the array's
  ``/proc/self/pagemap`` entries (8 bytes a page) and test bit 55 ("scan"). A kernel built
  without ``CONFIG_MEM_SOFT_DIRTY`` never sets the bit: the table says so;
- (c) ``fork``: ``os.fork()`` with the array resident, as Redis' background save does; the
  child would write the snapshot, the parent goes on. "arm": from the call until the child
  runs (it writes a byte to a pipe; the parent's ``fork()`` return alone is printed too);
  the parent's writes are timed while the child lives (each first write to a page copies
  it). Not possible in a process with a CUDA context (CUDA does not support a forked
  child using it, and its pinned/device mappings are not copied): no use for GPU kernels;
- (d) ``copyto``: ``numpy.copyto`` of the whole array into preallocated, resident memory,
  what a snapshot of a changed large buffer does today ("scan" column: the copy's time).

"write": the time of the round's writes with the tracking in place, against "plain":
the same writes to the array untracked (resident, writable pages), and their ratio: the
cost the tracking adds to the user's own code.

Then, per size, what the write watch leaves behind once it ends, on a fresh array each:
``a += 1`` after ``--pause`` seconds idle (a person's pace between cells), median over
``--rounds``, for an array (1) never watched, (2) watched, rewritten whole and unwatched
(its huge pages split by the watch's faults), (3) the same, unwatched with
``restore_huge_pages`` (collapsed again; the unwatch's own time is printed).
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

PAGE = mmap.PAGESIZE
PER_PAGE = PAGE // 8  # float64 elements in a page
SOFT_DIRTY = 1 << 55
PATTERNS = ("1 element", "1% contig", "1% spread", "100%")


def aligned_array(mib: int) -> tuple[np.ndarray, np.ndarray]:
    """A resident float64 array of ``mib`` MiB, page-aligned (a view of numpy's own
    allocation), and that allocation (keep it alive)."""
    n = mib * 2**20 // 8
    raw = np.ones(n + PER_PAGE)
    skip = (-raw.ctypes.data % PAGE) // 8
    return raw[skip : skip + n], raw


def span(a: np.ndarray) -> tuple[int, int]:
    return a.ctypes.data, a.ctypes.data + a.nbytes


def anon_huge_mib(a: np.ndarray) -> float:
    """MiB of transparent huge pages backing the array (``/proc/self/smaps``)."""
    start, end = span(a)
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                inside = int(m[1], 16) < end and start < int(m[2], 16)
            elif inside and line.startswith("AnonHugePages:"):
                total += int(line.split()[1])
    return total / 1024


def writer(a: np.ndarray, pattern: str) -> tuple[Callable[[int], None], float]:
    """A function writing the pattern's pages (round number -> positions), and the MiB
    it writes (whole pages)."""
    pages = a.reshape(-1, PER_PAGE)
    count = len(pages)
    hundredth = max(1, count // 100)
    if pattern == "1 element":
        return (lambda r: a.__setitem__((r * 7919 * PER_PAGE + 3) % a.size, r)), PAGE / 2**20
    if pattern == "1% contig":

        def contiguous(r: int) -> None:
            lo = (r * 37 % 97) * hundredth
            pages[lo : lo + hundredth] += 1

        return contiguous, hundredth * PAGE / 2**20
    if pattern == "1% spread":
        spread = len(range(0, count, 100)) * PAGE / 2**20
        return (lambda r: pages[r % 100 :: 100].__iadd__(1)), spread

    def everything(r: int) -> None:
        a.__iadd__(1)

    return everything, a.nbytes / 2**20


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def plain_writes(a: np.ndarray, pattern: str, rounds: int) -> float:
    write, _ = writer(a, pattern)
    write(0)  # (nothing cold)
    return statistics.median(
        timed(lambda r=r, write=write: write(r))[0] for r in range(1, rounds + 1)
    )


def measure_write_watch(a: np.ndarray, rounds: int) -> list[dict[str, Any]] | str:
    from jupyter_lowcost.storage import write_watch

    watch = write_watch.shared()
    if watch is None:
        return "not available on this system (write_watch.shared() is None)"
    address, limit = span(a)
    start, end = write_watch.page_span(address, limit - address)
    arm, accepted = timed(lambda: watch.watch(start, end, a))
    if not accepted:
        return "watch() refused the array's memory"
    print(f"  (write_watch: {anon_huge_mib(a):.0f} MiB in huge pages once watched)")
    rows = []
    try:
        for pattern in PATTERNS:
            write, mib = writer(a, pattern)
            watch.written(start, end)  # (protected again: a clean start)
            writes, scans, found = [], [], []
            for r in range(1, rounds + 1):
                writes.append(timed(lambda r=r, write=write: write(r))[0])
                seconds, ranges = timed(lambda: watch.written(start, end))
                if ranges is None:
                    return "written() lost the range"
                scans.append(seconds)
                found.append(sum(hi - lo for lo, hi in ranges) / 2**20)
            rows.append(
                {
                    "pattern": pattern,
                    "written": mib,
                    "arm": arm,
                    "scan": statistics.median(scans),
                    "found": statistics.median(found),
                    "write": statistics.median(writes),
                }
            )
    finally:
        watch.unwatch(start, end, a)
    return rows


def soft_dirty_pages(pagemap: int, a: np.ndarray) -> np.ndarray:
    start, end = span(a)
    data = os.pread(pagemap, (end - start) // PAGE * 8, start // PAGE * 8)
    return (np.frombuffer(data, dtype=np.uint64) & np.uint64(SOFT_DIRTY)) != 0


def clear_soft_dirty() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("4")


def measure_soft_dirty(a: np.ndarray, rounds: int) -> tuple[list[dict[str, Any]] | str, str]:
    try:
        pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
        clear_soft_dirty()
    except OSError as err:
        return f"not available: {err}", ""
    rows = []
    ever_set = False
    try:
        for pattern in PATTERNS:
            write, mib = writer(a, pattern)
            clears, writes, scans, found = [], [], [], []
            for r in range(1, rounds + 1):
                clears.append(timed(clear_soft_dirty)[0])
                writes.append(timed(lambda r=r, write=write: write(r))[0])
                seconds, dirty = timed(lambda: soft_dirty_pages(pagemap, a))
                scans.append(seconds)
                pages = int(np.count_nonzero(dirty))
                ever_set = ever_set or pages > 0
                found.append(pages * PAGE / 2**20)
            rows.append(
                {
                    "pattern": pattern,
                    "written": mib,
                    "arm": statistics.median(clears),
                    "scan": statistics.median(scans),
                    "found": statistics.median(found),
                    "write": statistics.median(writes),
                }
            )
    finally:
        os.close(pagemap)
    note = ""
    if not ever_set:
        note = (
            "bit 55 was never set after a write: this kernel lacks CONFIG_MEM_SOFT_DIRTY "
            f"({platform.release()}{config_says('CONFIG_MEM_SOFT_DIRTY')}); the clear "
            "still walks the page tables, but nothing is protected or marked, so the "
            "times are of the walk alone and 'found' is meaningless"
        )
    return rows, note


def config_says(option: str) -> str:
    try:
        import gzip

        with gzip.open("/proc/config.gz", "rt") as config:
            for line in config:
                if line.startswith((option + "=", f"# {option} is not set")):
                    return ": /proc/config.gz says '" + line.strip() + "'"
    except OSError:
        pass
    return ""


def measure_fork(a: np.ndarray, rounds: int) -> list[dict[str, Any]]:
    rows = []
    for pattern in PATTERNS:
        write, mib = writer(a, pattern)
        returns, runnings, writes = [], [], []
        for r in range(1, rounds + 1):
            ready_r, ready_w = os.pipe()
            go_r, go_w = os.pipe()
            started = time.perf_counter()
            pid = os.fork()
            if pid == 0:  # the child: would write the snapshot; here it only waits
                try:
                    os.write(ready_w, b"x")
                    os.read(go_r, 1)
                finally:
                    os._exit(0)
            returned = time.perf_counter()
            os.read(ready_r, 1)
            running = time.perf_counter()
            writes.append(timed(lambda r=r, write=write: write(r))[0])
            os.write(go_w, b"x")
            os.waitpid(pid, 0)
            for fd in (ready_r, ready_w, go_r, go_w):
                os.close(fd)
            returns.append(returned - started)
            runnings.append(running - started)
        rows.append(
            {
                "pattern": pattern,
                "written": mib,
                "arm": statistics.median(runnings),
                "fork_return": statistics.median(returns),
                "scan": None,
                "found": None,
                "write": statistics.median(writes),
            }
        )
    return rows


def measure_copyto(a: np.ndarray, rounds: int) -> dict[str, Any]:
    target = np.empty_like(a)
    target[...] = 0  # resident
    seconds = statistics.median(timed(lambda: np.copyto(target, a))[0] for _ in range(rounds))
    return {"pattern": "any", "written": None, "arm": None, "scan": seconds,
            "found": a.nbytes / 2**20, "write": None}  # fmt: skip


def measure_after_watch(size: int, rounds: int, pause: float) -> str:
    """``a += 1`` after a pause on arrays never watched, watched then split, and watched
    then collapsed again (see the module's docstring)."""
    from jupyter_lowcost.storage import write_watch

    watch = write_watch.shared()
    if watch is None:
        return "not available on this system (write_watch.shared() is None)"
    parts = []
    for how in ("never watched", "split", "collapsed again"):
        a, raw = aligned_array(size)
        a += 1
        extra = ""
        if how != "never watched":
            address, limit = span(a)
            start, end = write_watch.page_span(address, limit - address)
            if not watch.watch(start, end, a):
                return "watch() refused the array's memory"
            a += 1  # the watch's faults
            watch.written(start, end)
            seconds, _ = timed(
                lambda a=a, how=how: watch.unwatch(
                    start, end, a, restore_huge_pages=how == "collapsed again"
                )
            )
            extra = f", unwatch {ms(seconds)} ms"
        times = []
        for _ in range(rounds):
            time.sleep(pause)
            times.append(timed(lambda a=a: a.__iadd__(1))[0])
        huge = anon_huge_mib(a)
        parts.append(f"{how}: {ms(statistics.median(times))} ms ({huge:.0f} MiB huge{extra})")
        del a, raw
    return "; ".join(parts)


def ms(value: float | None) -> str:
    return (
        "-" if value is None else f"{value * 1000:.3f}" if value < 0.01 else f"{value * 1000:.1f}"
    )


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}" if value < 10 else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", default="512,1024", help="array sizes, MiB")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each measurement")
    parser.add_argument(
        "--pause", type=float, default=2.0, help="seconds idle before each write, after a watch"
    )
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        raise SystemExit("Linux only")
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as thp:
        huge = thp.read().strip()
    print(
        f"{platform.node()}: Linux {platform.release()}, {os.cpu_count()} cores, page "
        f"{PAGE} B; THP {huge}; "
        f"numpy {np.__version__}; {args.rounds} rounds, medians; times in ms"
    )
    header = (
        f"{'method':<12} {'array':>6} {'written':>10} {'MiB':>7} {'arm':>8} {'scan':>8} "
        f"{'found MiB':>9} {'write':>8} {'plain':>8} {'write x':>8}"
    )
    notes: list[str] = []
    for size in (int(s) for s in args.sizes_mib.split(",")):
        a, raw = aligned_array(size)
        print(f"\n{size} MiB array: {anon_huge_mib(a):.0f} MiB of it in transparent huge pages")
        # (each method's "plain" is measured just before it: a method may leave the
        # array's huge pages split)
        table: list[tuple[str, list[dict[str, Any]] | str, dict[str, float]]] = []
        plain = {p: plain_writes(a, p, args.rounds) for p in PATTERNS}
        table.append(("write_watch", measure_write_watch(a, args.rounds), plain))
        plain = {p: plain_writes(a, p, args.rounds) for p in PATTERNS}
        soft, note = measure_soft_dirty(a, args.rounds)
        table.append(("soft-dirty", soft, plain))
        if note and note not in notes:
            notes.append(note)
        plain = {p: plain_writes(a, p, args.rounds) for p in PATTERNS}
        table.append(("fork", measure_fork(a, args.rounds), plain))
        table.append(("copyto", [measure_copyto(a, args.rounds)], {}))
        print(f"  ({anon_huge_mib(a):.0f} MiB in huge pages at the end)")
        print(header)
        for method, rows, plain in table:
            if isinstance(rows, str):
                print(f"{method:<12} {size:>5}M  {rows}")
                continue
            for row in rows:
                base = plain.get(row["pattern"])
                ratio = f"{row['write'] / base:.2f}x" if row["write"] is not None else "-"
                print(
                    f"{method:<12} {size:>5}M {row['pattern']:>10} {mib(row['written']):>7} "
                    f"{ms(row['arm']):>8} {ms(row['scan']):>8} {mib(row['found']):>9} "
                    f"{ms(row['write']):>8} {ms(base) if base else '-':>8} {ratio:>8}"
                )
        forks = table[2][1]
        if isinstance(forks, list):
            print(
                "fork: the parent's fork() returned after "
                + ", ".join(f"{ms(r['fork_return'])}" for r in forks)
                + " ms (per pattern; 'arm' is until the child runs)"
            )
        del a, raw
        print(
            f"after the watch ends, a += 1 after {args.pause:g} s idle: "
            + measure_after_watch(size, args.rounds, args.pause)
        )
    print()
    print("arm: write_watch: watch() once per array; soft-dirty: the clear, every round;")
    print("     fork: fork() until the child runs. scan: write_watch: written(); soft-dirty:")
    print("     pread of the pagemap entries + bit test; copyto: the whole copy.")
    print("write: the round's writes with the tracking in place; plain: untracked, measured")
    print("     just before the method; write x: their ratio (fork: with the child alive,")
    print("     each first write copies a page).")
    print("fork is not possible in a process with a CUDA context (a forked child cannot use")
    print("     CUDA; pinned and device memory mappings are not copied).")
    for note in notes:
        print(f"soft-dirty: {note}")


if __name__ == "__main__":
    main()
