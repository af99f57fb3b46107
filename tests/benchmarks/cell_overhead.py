"""Benchmark: what checkpoints after every cell cost a cell, against checkpoints off.

Run it by hand (pytest does not collect it; needs numpy, pandas and torch)::

    python tests/benchmarks/cell_overhead.py [--cells 20] [--rounds 2] [--cases abcdef]
        [--mode back-to-back|spaced|both] [--spaced 3] [--dir PATH]
        [--save RESULTS.json] [--against TODAY.json]

For each case, two real IPython kernels with the extension loaded as a Jupyter server
with jupyter-lowcost loads it (``JUPYTER_LOWCOST_CHECKPOINTS`` = ``cell``, then ``off``,
both checkpointing into ``--dir``), the same setup, then the same cell run ``--cells`` times
in a row, in blocks alternating between the two kernels (``--rounds`` blocks each; one
kernel's background writes never overlap the other's cells; after each block of the
checkpointing kernel the benchmark waits until its last cell's state is on disk). Timed:
the round trip of each cell (execute request to the reply and the kernel idle again, what
a person waits for), and inside the kernel the cell's own statement.

Modes (``--mode``, default ``both``, each case measured in both in one run, with the same
two kernels):

- ``back-to-back``: each cell sent as soon as the one before is done (a script's pace:
  a cell's end often finds the previous cell's write still in flight and leaves its
  checkpoint to a later one);
- ``spaced``: each cell sent after the kernel has been idle ``--spaced`` seconds (a
  person's pace): every cell end should find the background writer idle and take a
  snapshot; the report says how many did not.

Cases (``--cases``, default all):

- (a) 20,000 small variables (ints, floats, strings); each cell changes one of them;
- (b) a 1 GiB float64 array, ``a += 1`` in each cell (all of it rewritten);
- (c) a 512 MiB array, one element changed in each cell;
- (d) a PyTorch model of 200 MB (3 linear layers), SGD with momentum, one training step
  per cell;
- (e) a pandas DataFrame of 5 M rows x 10 float64 columns (400 MB); each cell replaces one
  column (``df['cK'] = df['cK'] + 1``, a different column each cell);
- (f) a 512 MiB array, 1% of it changed per cell (a contiguous 1% slice ``+= 1``, at a
  different place each cell).

Columns, per case and mode: the round trip's median and mean with checkpoints off and
on, the overhead (on minus off) and the ratio (on / off); the cell's own time (median,
on / off); the snapshots taken at cell ends (median, slowest) and how many cell ends left
their checkpoint pending. Per case: the first cell after the setup (the first checkpoint
of a new large buffer allocates the memory its copy lives in) and the last checkpoint.
Memory, per case: the kernel's resident memory (``VmRSS`` in ``/proc/<pid>/status``) with
checkpoints ``cell`` minus with ``off``, after all the case's cells ran and the last write
settled, in MiB and in % of the case's large arrays' size; and the same for the peak
(``VmHWM``: the most it held at any time, snapshots' copies included).

Targets, each printed next to its measured value with "met" or "NOT met":

- back-to-back (issue 5): the per-cell overhead (median round trip on minus off) <= 20 ms
  or 5% of the cell's own time, whichever is larger, in (a) to (d); in (b), ``a += 1``'s
  own time within 1.3x of its time with checkpoints off;
- spaced (issue 32): the per-cell overhead <= 5 ms median in (a), (c) and (e); <= 10% of
  the cell's own time (off) in (d); in (b), a 1 GiB array rewritten by every cell "no
  worse than today": the ratio on / off of the median round trip <= today's + 0.05, where
  today's is read from ``--against``, a ``--save`` file of a run of this benchmark on the
  code of today (``PYTHONPATH=<checkout of main> python .../cell_overhead.py --cases b
  --save today.json``); without it the value is printed with no verdict;
- memory (issue 32): the extra resident memory <= 10% of the large arrays' size in (f),
  where cells change 1% of them.

At the end of each case the kernel is left idle and the benchmark checks that the last
cell's state was checkpointed (the checkpoint's execution count). The benchmark's own
reads of the kernels' state are silent requests (``user_expressions``): they run no cell,
so they take no checkpoint and are not timed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

MIB = 2**20
#: Elements of (c) and (f)'s 512 MiB float64 arrays, and (f)'s 1% slice.
HALF_GIB = 64 * 1024 * 1024
PERCENT = HALF_GIB // 100

CASES: dict[str, tuple[str, str, str, int, str]] = {
    # name: (setup, the cell (formatted with {i} {k} {p} {s} {col}), what to say,
    #        the bytes of its large arrays, which they are)
    "a": (
        (
            "import random\n"
            "for _i in range(20000):\n"
            "    globals()[f'v{_i}'] = (_i, float(_i), f's{_i}')[_i % 3]\n"
        ),
        "v{k} = {i}",
        "20,000 small variables, one changed per cell",
        0,
        "",
    ),
    "b": (
        "import numpy as np\na = np.zeros(128 * 1024 * 1024)\na += 1",
        "a += 1",
        "1 GiB array, a += 1 per cell",
        1024 * MIB,
        "a",
    ),
    "c": (
        "import numpy as np\nc = np.zeros(64 * 1024 * 1024)\nc += 1",
        "c[{p}] = {i}",
        "512 MiB array, one element changed per cell",
        512 * MIB,
        "c",
    ),
    "d": (
        (
            "import torch\n"
            "torch.manual_seed(0)\n"
            "model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(3)])\n"
            "optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)\n"
            "x, y = torch.randn(32, 4096), torch.randn(32, 4096)\n"
            "def step():\n"
            "    optimizer.zero_grad()\n"
            "    loss = ((model(x) - y) ** 2).mean()\n"
            "    loss.backward()\n"
            "    optimizer.step()\n"
            "    return loss.item()\n"
            "step()"
        ),
        "loss = step()",
        "PyTorch model of 200 MB, one SGD step per cell",
        3 * 3 * (4096 * 4096 + 4096) * 4,
        "weights, gradients, momentum",
    ),
    "e": (
        (
            "import numpy as np\nimport pandas as pd\n"
            "df = pd.DataFrame(np.random.default_rng(0).random((5_000_000, 10)),"
            " columns=[f'c{_j}' for _j in range(10)])"
        ),
        "df['c{col}'] = df['c{col}'] + 1",
        "5 M x 10 DataFrame, one column changed per cell",
        5_000_000 * 10 * 8,
        "df",
    ),
    "f": (
        "import numpy as np\nf = np.zeros(64 * 1024 * 1024)\nf += 1",
        f"f[{{s}}:{{s}} + {PERCENT}] += 1",
        "512 MiB array, 1% of it (a contiguous slice) changed per cell",
        512 * MIB,
        "f",
    ),
}

MODES = ("back-to-back", "spaced")

TIMED = (
    "_t0 = __import__('time').perf_counter()\n"
    "{cell}\n"
    "_cell_times.append(__import__('time').perf_counter() - _t0)"
)

INSTALLED = "__import__('jupyter_lowcost.kernel.checkpointing', fromlist=['_']).installed()"


def cell_code(name: str, number: int) -> str:
    return CASES[name][1].format(
        i=number,
        k=number % 20000,
        p=number * 7919 % HALF_GIB,
        s=(number * 37 % 99) * PERCENT,
        col=number % 10,
    )


class Kernel:
    """One kernel with the extension, checkpointing (``when``) into ``directory``."""

    def __init__(self, when: str, directory: Path) -> None:
        self.when = when
        self.directory = directory
        self.manager = KernelManager(kernel_name="python3")
        env = {
            **os.environ,
            "JUPYTER_LOWCOST_CHECKPOINT_DIR": str(directory),
            "JUPYTER_LOWCOST_CHECKPOINTS": when,
        }
        self.manager.start_kernel(
            extra_arguments=["--IPKernelApp.extra_extensions=jupyter_lowcost"], env=env
        )
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(120)
        self.pid = int(self.value("__import__('os').getpid()"))
        #: mode -> the round trips of its timed cells, and how many timed cells ran.
        self.round_trips: dict[str, list[float]] = {mode: [] for mode in MODES}
        self.timed_cells: list[str] = []  # the mode of each timed cell, in order

    def run(self, code: str, timeout: float = 600) -> float:
        """Run ``code``; the seconds from the request to the reply and the kernel idle."""
        errors: list[str] = []

        def output(message: dict[str, Any]) -> None:
            if message["msg_type"] == "error":
                errors.append("\n".join(message["content"]["traceback"]))
            elif message["msg_type"] == "stream" and message["content"]["name"] == "stderr":
                errors.append(message["content"]["text"])

        started = time.perf_counter()
        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=output)
        seconds = time.perf_counter() - started
        if reply["content"]["status"] != "ok" or errors:
            raise RuntimeError(f"{self.when} kernel: {code!r} failed:\n" + "\n".join(errors))
        return seconds

    def value(self, expression: str) -> Any:
        """A JSON value computed in the kernel, by a silent request (``user_expressions``):
        no cell runs, so no checkpoint is taken and the execution count stays."""
        reply = self.client.execute_interactive(
            "",
            silent=True,
            store_history=False,
            user_expressions={"v": f"__import__('json').dumps({expression})"},
            timeout=120,
        )
        found = reply["content"]["user_expressions"]["v"]
        if found.get("status") != "ok":
            raise RuntimeError(f"{self.when} kernel: {expression!r}: {found}")
        return json.loads(ast.literal_eval(found["data"]["text/plain"]))

    def memory(self) -> dict[str, int]:
        """The kernel process's VmRSS and VmHWM, in bytes (``/proc/<pid>/status``)."""
        found = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(rest.split()[0]) * 1024
        return found

    def stop(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def measure_case(
    name: str, cells: int, rounds: int, root: Path, modes: list[str], spaced: float
) -> dict[str, Any]:
    setup, _, what, large, large_what = CASES[name]
    kernels = {when: Kernel(when, root / f"{name}-{when}") for when in ("cell", "off")}
    try:
        first: dict[str, float] = {}
        for when, kernel in kernels.items():
            kernel.run(setup + "\n_cell_times = []")
            # The first cell after the setup: the first checkpoint of each new buffer.
            first[when] = kernel.run(cell_code(name, 0))
        checkpointed = kernels["cell"]
        wait_idle_checkpoint(checkpointed)
        number = 1
        result: dict[str, Any] = {
            "case": name, "what": what, "large": large, "large_what": large_what, "modes": {}
        }  # fmt: skip
        for mode in modes:
            catch_up: list[float] = []
            before = checkpoint_stats(checkpointed)
            for _ in range(rounds):
                for when in ("off", "cell"):
                    kernel = kernels[when]
                    for _ in range(cells):
                        if mode == "spaced":
                            time.sleep(spaced)  # (the kernel idle that long)
                        code = TIMED.format(cell=cell_code(name, number))
                        kernel.round_trips[mode].append(kernel.run(code))
                        kernel.timed_cells.append(mode)
                        number += 1
                    # (the other kernel's cells start once this one's writes are done)
                    if when == "cell":
                        catch_up.append(wait_idle_checkpoint(kernel))
            after = checkpoint_stats(checkpointed)
            result["modes"][mode] = {
                "catch_up": catch_up,
                "snapshots": after["snapshots"][len(before["snapshots"]) :],
                "left_pending": after["left_pending"] - before["left_pending"],
            }
        for when, kernel in kernels.items():
            own = kernel.value("_cell_times")
            for mode in modes:
                result["modes"][mode][when] = {
                    "round_trip": kernel.round_trips[mode],
                    "own": [t for t, m in zip(own, kernel.timed_cells) if m == mode],
                }
            result[when] = {"first": first[when]}
        # Memory, once the last write settled (wait_idle_checkpoint above) and a moment on.
        time.sleep(1)
        for when, kernel in kernels.items():
            result[when]["memory"] = kernel.memory()
        result["last_save"] = checkpointed.value(f"{INSTALLED}.last_save.to_json()")
        return result
    finally:
        for kernel in kernels.values():
            kernel.stop()


def checkpoint_stats(kernel: Kernel) -> dict[str, Any]:
    return {
        "snapshots": kernel.value(f"list({INSTALLED}.snapshot_seconds)"),
        "left_pending": kernel.value(f"{INSTALLED}.cells_left_pending"),
    }


def wait_idle_checkpoint(kernel: Kernel, timeout: float = 120) -> float:
    """Wait until the kernel, idle after a block of cells, has checkpointed the state after
    the block's last cell; the seconds it took from the end of that cell."""
    ended = time.perf_counter()
    # The next cell's number (a silent request runs no cell): the last cell's checkpoint
    # says this number (the count saved is the next cell's).
    last = kernel.value("get_ipython().execution_count")
    end = time.monotonic() + timeout
    while latest_execution_count(kernel.directory) < last:
        if time.monotonic() > end:
            raise TimeoutError("the idle kernel did not checkpoint its last cell")
        time.sleep(0.02)
    return time.perf_counter() - ended


def latest_execution_count(directory: Path) -> int:
    manifests = sorted((directory / "manifests").glob("*.json"))
    if not manifests:
        return 0
    try:
        return int(json.loads(manifests[-1].read_text())["history"]["execution_count"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def verdict(ok: bool | None) -> str:
    return "" if ok is None else "met" if ok else "NOT met"


def summarize(result: dict[str, Any], mode: str) -> dict[str, float]:
    measured = result["modes"][mode]
    on, off = measured["cell"], measured["off"]
    trip_on = statistics.median(on["round_trip"]) * 1000
    trip_off = statistics.median(off["round_trip"]) * 1000
    return {
        "trip_on": trip_on,
        "trip_off": trip_off,
        "overhead": trip_on - trip_off,
        "ratio": trip_on / trip_off,
        "mean_on": statistics.fmean(on["round_trip"]) * 1000,
        "mean_off": statistics.fmean(off["round_trip"]) * 1000,
        "own_on": statistics.median(on["own"]) * 1000,
        "own_off": statistics.median(off["own"]) * 1000,
    }


def target(
    result: dict[str, Any], mode: str, today: dict[str, Any] | None
) -> tuple[str, bool | None] | None:
    """The case's target in ``mode``: what it says, and whether it was met (None: no
    verdict); None where the case has no target in that mode."""
    m = summarize(result, mode)
    name = result["case"]
    if mode == "back-to-back":
        if name not in "abcd":
            return None
        limit = max(20.0, 0.05 * m["own_off"])
        return f"overhead {m['overhead']:+.1f} ms, target <= {limit:.0f} ms", m["overhead"] <= limit
    if name in "ace":
        return f"overhead {m['overhead']:+.1f} ms, target <= 5 ms", m["overhead"] <= 5.0
    if name == "d":
        share = m["overhead"] / m["own_off"] * 100
        return f"overhead {share:+.1f}% of the cell's own time, target <= 10%", share <= 10.0
    if name == "b":
        then = (today or {}).get("b", {}).get("spaced")
        if then is None:
            text = (
                f"round trip on / off {m['ratio']:.3f}x, target: no worse than today "
                "(no --against file with case b, spaced: no verdict)"
            )
            return text, None
        text = (
            f"round trip on / off {m['ratio']:.3f}x, today's {then['ratio']:.3f}x, target "
            f"<= {then['ratio'] + 0.05:.3f}x"
        )
        return text, m["ratio"] <= then["ratio"] + 0.05
    return None


def memory_target(result: dict[str, Any]) -> tuple[str, bool | None]:
    on, off = result["cell"]["memory"], result["off"]["memory"]
    extra = on["VmRSS"] - off["VmRSS"]
    peak = on["VmHWM"] - off["VmHWM"]
    large = result["large"]

    def share(value: int) -> str:
        if not large:
            return ""
        return f" ({value / large * 100:+.1f}% of {large / MIB:.0f} MiB: {result['large_what']})"

    text = (
        f"extra resident {extra / MIB:+.1f} MiB{share(extra)}; extra peak {peak / MIB:+.1f} "
        f"MiB{share(peak)}; off: {off['VmRSS'] / MIB:.0f} MiB resident, "
        f"{off['VmHWM'] / MIB:.0f} MiB peak"
    )
    if result["case"] == "f":
        return text + ", target extra resident <= 10%", extra <= 0.10 * large
    return text, None


def report(result: dict[str, Any], today: dict[str, Any] | None) -> list[tuple[str, bool | None]]:
    """Print the case; its targets and verdicts."""
    verdicts = []
    print(f"({result['case']}) {result['what']}")
    for mode, measured in result["modes"].items():
        m = summarize(result, mode)
        on, off = measured["cell"], measured["off"]
        print(f"  {mode}:")
        print(
            f"    round trip, median: {m['trip_off']:8.1f} ms off, {m['trip_on']:8.1f} ms "
            f"checkpoints; overhead {m['overhead']:+.1f} ms ({m['ratio']:.3f}x)"
        )
        print(
            f"    round trip, mean:   {m['mean_off']:8.1f} ms off, {m['mean_on']:8.1f} ms "
            f"checkpoints; overhead {m['mean_on'] - m['mean_off']:+.1f} ms; slowest "
            f"{max(on['round_trip']) * 1000:.0f} ms (off {max(off['round_trip']) * 1000:.0f} ms)"
        )
        print(
            f"    the cell's own time, median: {m['own_off']:.1f} ms off, {m['own_on']:.1f} ms "
            f"checkpoints ({m['own_on'] / m['own_off']:.2f}x)"
        )
        snapshots = measured["snapshots"]
        if snapshots:
            print(
                f"    {len(snapshots)} snapshots (median {statistics.median(snapshots) * 1000:.1f}"
                f" ms, slowest {max(snapshots) * 1000:.1f} ms); {measured['left_pending']} of "
                f"{len(on['round_trip'])} cell ends found a write in flight and left their "
                "checkpoint to a later one; the last cell of each block was on disk "
                + ", ".join(f"{s:.1f} s" for s in measured["catch_up"])
                + " after it ended"
            )
        found = target(result, mode, today)
        if found is not None:
            text, ok = found
            print(f"    target: {text} {verdict(ok)}".rstrip())
            verdicts.append((f"({result['case']}) {mode}: {text}", ok))
    on, off = result["cell"], result["off"]
    print(
        f"  first cell after the setup: {off['first'] * 1000:.0f} ms off, "
        f"{on['first'] * 1000:.0f} ms checkpoints"
    )
    text, ok = memory_target(result)
    print(f"  memory, after the last write settled: {text} {verdict(ok)}".rstrip())
    if ok is not None:
        verdicts.append((f"({result['case']}) memory: {text}", ok))
    save = result["last_save"]
    print(
        f"  last checkpoint: snapshot {save['snapshot_seconds'] * 1000:.1f} ms, whole "
        f"{save['seconds'] * 1000:.0f} ms, {save['bytes_written'] / 1e6:.2f} MB written of "
        f"{save['bytes'] / 1e6:.1f} MB"
    )
    if result["case"] == "b" and "back-to-back" in result["modes"]:
        m = summarize(result, "back-to-back")
        ratio = m["own_on"] / m["own_off"]
        text = f"a += 1 on 1 GiB, own time with checkpoints / off: {ratio:.2f}x, target <= 1.3x"
        print(f"  back-to-back target: {text} {verdict(ratio <= 1.3)}")
        verdicts.append((f"(b) back-to-back: {text}", ratio <= 1.3))
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=20, help="cells per block")
    parser.add_argument("--rounds", type=int, default=2, help="blocks per kernel and mode")
    parser.add_argument("--cases", default="abcdef")
    parser.add_argument("--mode", choices=("back-to-back", "spaced", "both"), default="both")
    parser.add_argument(
        "--spaced", type=float, default=3.0, help="spaced mode: idle seconds before each cell"
    )
    parser.add_argument("--dir", default=None, help="where the checkpoints go")
    parser.add_argument("--save", default=None, help="write the results here (JSON)")
    parser.add_argument(
        "--against", default=None, help="a --save file of today's code: (b)'s spaced target"
    )
    args = parser.parse_args()
    modes = list(MODES) if args.mode == "both" else [args.mode]
    today = None
    if args.against:
        today = {
            r["case"]: {mode: summarize(r, mode) for mode in r["modes"]}
            for r in json.loads(Path(args.against).read_text())
        }
    root = Path(args.dir or tempfile.mkdtemp(prefix="cell-overhead-", dir="."))
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"{os.cpu_count()} cores; checkpoints in {root}; {args.cells} cells x {args.rounds} "
        f"blocks per kernel and mode; modes: {', '.join(modes)}"
        + (f" ({args.spaced:g} s idle before each spaced cell)" if "spaced" in modes else "")
    )
    results = []
    verdicts: list[tuple[str, bool | None]] = []
    try:
        for name in args.cases:
            result = measure_case(name, args.cells, args.rounds, root, modes, args.spaced)
            results.append(result)
            verdicts += report(result, today)
            sys.stdout.flush()
    finally:
        if args.save:
            Path(args.save).write_text(json.dumps(results))
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print("\ntargets:")
    for text, ok in verdicts:
        print(f"  {text}: {verdict(ok) or 'no verdict'}")


if __name__ == "__main__":
    main()
