"""Benchmark: what checkpoints after every cell cost a cell, against checkpoints off.

Run it by hand (pytest does not collect it; needs numpy and torch)::

    python tests/benchmarks/cell_overhead.py [--cells 20] [--rounds 2] [--dir PATH]

For each case, two real IPython kernels with the extension loaded as a Jupyter server
with jupyter-lowcost loads it (``JUPYTER_LOWCOST_CHECKPOINTS`` = ``cell``, then ``off``,
both checkpointing into ``--dir``), the same setup, then the same cell run ``--cells`` times
in a row, in blocks alternating between the two kernels (``--rounds`` blocks each; one
kernel's background writes never overlap the other's cells). Timed: the round trip of
each cell (execute request to the reply and the kernel idle again, what a person waits
for), and inside the kernel the cell's own statement.

- (a) 20,000 small variables (ints, floats, strings); each cell changes one of them;
- (b) a 1 GiB float64 array, ``a += 1`` in each cell;
- (c) a 512 MiB array, one element changed in each cell;
- (d) a PyTorch model of 200 MB (3 linear layers), SGD with momentum, one training step
  per cell.

Targets: the per-cell overhead (median round trip with checkpoints minus without) <= 20 ms
or 5% of the cell's own time, whichever is larger, in each case; in (b), ``a += 1``'s own
time within 1.3x of its time with checkpoints off. The first cell after the setup is
reported apart: the first checkpoint of a new large buffer allocates the memory its copy
lives in. At the end of each case the kernel is left idle and the benchmark checks that
the last cell's state was checkpointed (the checkpoint's execution count).
"""

from __future__ import annotations

import argparse
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

CASES: dict[str, tuple[str, str, str]] = {
    # name: (setup, the cell (formatted with {i}), what to say)
    "a": (
        "import random\n"
        "for _i in range(20000):\n"
        "    globals()[f'v{_i}'] = (_i, float(_i), f's{_i}')[_i % 3]\n",
        "v{k} = {i}",
        "20,000 small variables, one changed per cell",
    ),
    "b": (
        "import numpy as np\na = np.zeros(128 * 1024 * 1024)\na += 1",
        "a += 1",
        "1 GiB array, a += 1 per cell",
    ),
    "c": (
        "import numpy as np\nc = np.zeros(64 * 1024 * 1024)\nc += 1",
        "c[{p}] = {i}",
        "512 MiB array, one element changed per cell",
    ),
    "d": (
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
        "step()",
        "loss = step()",
        "PyTorch model of 200 MB, one SGD step per cell",
    ),
}

TIMED = (
    "_t0 = __import__('time').perf_counter()\n"
    "{cell}\n"
    "_cell_times.append(__import__('time').perf_counter() - _t0)"
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
        self.round_trips: list[float] = []

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
        """A JSON value computed in the kernel."""
        found: list[str] = []
        self.client.execute_interactive(
            f"print(__import__('json').dumps({expression}))",
            timeout=120,
            output_hook=lambda m: (
                found.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None
            ),
        )
        return json.loads("".join(found))

    def stop(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def measure_case(name: str, cells: int, rounds: int, root: Path) -> dict[str, Any]:
    setup, cell, what = CASES[name]
    kernels = {when: Kernel(when, root / f"{name}-{when}") for when in ("cell", "off")}
    try:
        first: dict[str, float] = {}
        for when, kernel in kernels.items():
            kernel.run(setup + "\n_cell_times = []")
            # The first cell after the setup: the first checkpoint of each new buffer.
            first[when] = kernel.run(cell.format(i=0, k=0, p=0))
        number = 1
        catch_up: list[float] = []
        for _ in range(rounds):
            for when in ("off", "cell"):
                kernel = kernels[when]
                for _ in range(cells):
                    code = TIMED.format(
                        cell=cell.format(
                            i=number, k=number % 20000, p=number * 7919 % (64 * 1024 * 1024)
                        )
                    )
                    kernel.round_trips.append(kernel.run(code))
                    number += 1
                # (the other kernel's cells start once this one's writes are done)
                if when == "cell":
                    catch_up.append(wait_idle_checkpoint(kernel))
        result: dict[str, Any] = {"case": name, "what": what}
        for when, kernel in kernels.items():
            result[when] = {
                "round_trip": kernel.round_trips,
                "own": kernel.value("_cell_times"),
                "first": first[when],
            }
        checkpointed = kernels["cell"]
        installed = "__import__('jupyter_lowcost.kernel.checkpointing', fromlist=['_']).installed()"
        result["last_save"] = checkpointed.value(f"{installed}.last_save.to_json()")
        result["snapshots"] = checkpointed.value(f"list({installed}.snapshot_seconds)")
        result["left_pending"] = checkpointed.value(f"{installed}.cells_left_pending")
        result["catch_up"] = catch_up
        return result
    finally:
        for kernel in kernels.values():
            kernel.stop()


def wait_idle_checkpoint(kernel: Kernel, timeout: float = 120) -> float:
    """Wait until the kernel, idle after a block of cells, has checkpointed the state after
    the block's last cell; the seconds it took from the end of that cell."""
    ended = time.perf_counter()
    # This cell's number; the block's last cell is the one before, and its checkpoint
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


def report(result: dict[str, Any]) -> bool:
    on, off = result["cell"], result["off"]
    trip_on = statistics.median(on["round_trip"]) * 1000
    trip_off = statistics.median(off["round_trip"]) * 1000
    own_on = statistics.median(on["own"]) * 1000
    own_off = statistics.median(off["own"]) * 1000
    overhead = trip_on - trip_off
    mean_overhead = (
        statistics.fmean(on["round_trip"]) - statistics.fmean(off["round_trip"])
    ) * 1000
    limit = max(20.0, 0.05 * own_off)
    ok = overhead <= limit
    save = result["last_save"]
    print(f"({result['case']}) {result['what']}")
    print(
        f"    round trip, median: {trip_off:8.1f} ms off, {trip_on:8.1f} ms checkpoints; "
        f"overhead {overhead:+.1f} ms (target <= {limit:.0f} ms) {'ok' if ok else 'MISSED'}"
    )
    print(
        f"    round trip, mean:   {statistics.fmean(off['round_trip']) * 1000:8.1f} ms off, "
        f"{statistics.fmean(on['round_trip']) * 1000:8.1f} ms checkpoints; overhead "
        f"{mean_overhead:+.1f} ms; slowest {max(on['round_trip']) * 1000:.0f} ms "
        f"(off {max(off['round_trip']) * 1000:.0f} ms)"
    )
    print(
        f"    the cell's own time, median: {own_off:.1f} ms off, {own_on:.1f} ms checkpoints "
        f"({own_on / own_off:.2f}x)"
    )
    print(
        f"    first cell after the setup: {off['first'] * 1000:.0f} ms off, "
        f"{on['first'] * 1000:.0f} ms checkpoints"
    )
    print(
        f"    last checkpoint: snapshot {save['snapshot_seconds'] * 1000:.1f} ms, whole "
        f"{save['seconds'] * 1000:.0f} ms, {save['bytes_written'] / 1e6:.2f} MB written of "
        f"{save['bytes'] / 1e6:.1f} MB; the last cell of each block was on disk "
        + ", ".join(f"{s:.1f} s" for s in result["catch_up"])
        + " after it ended"
    )
    snapshots = result["snapshots"]
    print(
        f"    {len(snapshots)} snapshots (median {statistics.median(snapshots) * 1000:.1f} ms, "
        f"slowest {max(snapshots) * 1000:.1f} ms); {result['left_pending']} cell ends found "
        "a write in flight and left their checkpoint to a later one"
    )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=20, help="cells per block")
    parser.add_argument("--rounds", type=int, default=2, help="blocks per kernel")
    parser.add_argument("--cases", default="abcd")
    parser.add_argument("--dir", default=None, help="where the checkpoints go")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="cell-overhead-", dir="."))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores; checkpoints in {root}; {args.cells} cells x {args.rounds}")
    results = []
    try:
        for name in args.cases:
            result = measure_case(name, args.cells, args.rounds, root)
            results.append(result)
            report(result)
            sys.stdout.flush()
        b = next((r for r in results if r["case"] == "b"), None)
        if b is not None:
            ratio = statistics.median(b["cell"]["own"]) / statistics.median(b["off"]["own"])
            print(
                f"a += 1 on 1 GiB, own time with checkpoints / off: {ratio:.2f}x (target <= 1.3x)"
            )
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
