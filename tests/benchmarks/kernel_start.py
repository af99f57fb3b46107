"""Benchmark: kernel start time by provisioner, and notice-to-event latency.

Run it by hand (pytest does not collect it)::

    python tests/benchmarks/kernel_start.py [--starts 12] [--notices 12]

It starts one real ``jupyter server`` with the extension, then measures, interleaving the
three kinds so that drift hits them alike, the time from the start request to the first
``kernel_info_reply`` received through the kernel's websocket, for:

- ``stock``: a kernelspec that names jupyter_client's ``local-provisioner``;
- ``no placement``: the same kernel through ``lowcost-provisioner`` (the default);
- ``low-cost``: ``POST lowcost/api/kernels``, a low-cost instance of the local backend.

Then the time from ``POST instances/<id>/interrupt`` to the ``notice`` event arriving on
``/api/events/subscribe``. It prints medians and the ratios against ``stock``.
Targets: no placement <= 1.03x stock; low-cost <= 1.25x stock; notice median <= 50 ms.

With ``--slurm`` (needs slurm-wlm and munge, as the tests do) it also starts a one-node
Slurm cluster and a second server on the slurm backend, and adds, interleaved with the
others, ``slurm low-cost`` starts (a job on the preemptible partition; target <= 2 s
median, printed against ``low-cost`` of the local backend), then the time from ``sbatch``
of a job that preempts the kernel's to the ``notice`` event (target median <= 1.5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import websocket

TOKEN = "benchmark"
HEADERS = {"Authorization": f"token {TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_stock_kernelspec(root: Path) -> None:
    spec_dir = root / "kernels" / "stock"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (stock local-provisioner)",
        "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": "local-provisioner"}},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


def start_server(
    home: Path, port: int, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_PATH": str(home),
        **(env_extra or {}),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={TOKEN}",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_root=True",
            f"--ServerApp.root_dir={home}",
            "--LocalBackend.slots=8",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(home / "server.log", "wb"),
    )
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if requests.get(
                f"http://127.0.0.1:{port}/lowcost/api/status", headers=HEADERS, timeout=5
            ).ok:
                return process
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit("the server did not start; see " + str(home / "server.log"))


def kernel_info_request() -> str:
    header = {
        "msg_id": uuid.uuid4().hex,
        "username": "bench",
        "session": uuid.uuid4().hex,
        "msg_type": "kernel_info_request",
        "version": "5.3",
        "date": "",
    }
    return json.dumps(
        {"header": header, "parent_header": {}, "metadata": {}, "content": {}, "channel": "shell"}
    )


def first_kernel_info(base: str, kernel_id: str) -> None:
    ws = websocket.create_connection(
        f"ws://{base}/api/kernels/{kernel_id}/channels",
        header=[f"Authorization: token {TOKEN}"],
        timeout=60,
    )
    try:
        ws.send(kernel_info_request())
        while True:
            msg = json.loads(ws.recv())
            if (
                msg.get("msg_type") == "kernel_info_reply"
                or msg["header"]["msg_type"] == "kernel_info_reply"
            ):
                return
    finally:
        ws.close()


def time_start(base: str, kind: str) -> float:
    http = f"http://{base}"
    start = time.perf_counter()
    if kind in ("low-cost", "slurm low-cost"):
        response = requests.post(
            f"{http}/lowcost/api/kernels",
            headers=HEADERS,
            timeout=60,
            json={"name": "python3", "instance_type": "T4", "low_cost": True},
        )
        kernel_id = response.json()["kernel"]["id"]
    else:
        name = "stock" if kind == "stock" else "python3"
        response = requests.post(
            f"{http}/api/kernels", headers=HEADERS, json={"name": name}, timeout=60
        )
        kernel_id = response.json()["id"]
    response.raise_for_status()
    first_kernel_info(base, kernel_id)
    elapsed = time.perf_counter() - start
    requests.delete(
        f"{http}/api/kernels/{kernel_id}", headers=HEADERS, timeout=60
    ).raise_for_status()
    return elapsed


class EventWatcher:
    """The instance events of one server: when each instance's notice arrived, and the
    instances that became ``running``, in order."""

    def __init__(self, base: str) -> None:
        self.arrivals: dict[str, float] = {}
        self.running: list[str] = []
        self.changed = threading.Condition()
        self.ws = websocket.create_connection(
            f"ws://{base}/api/events/subscribe",
            header=[f"Authorization: token {TOKEN}"],
            timeout=120,
        )
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                event = json.loads(self.ws.recv())
            except (websocket.WebSocketException, OSError, ValueError):
                return
            now = time.perf_counter()
            if not event.get("schema_id", "").endswith("jupyter_lowcost/instance/v1"):
                continue
            with self.changed:
                if event["state"] == "notice":
                    self.arrivals.setdefault(event["instance_id"], now)
                elif event["state"] == "running":
                    self.running.append(event["instance_id"])
                self.changed.notify_all()

    def next_instance(self, instance_id: str, start: float, latencies: list[float]) -> str:
        """Wait for ``instance_id``'s notice (its latency from ``start`` goes to
        ``latencies``), then for the instance the recovery relaunches; return that one."""
        with self.changed:
            if not self.changed.wait_for(lambda: instance_id in self.arrivals, timeout=30):
                raise SystemExit(f"no notice event for {instance_id} within 30 s")
            latencies.append(self.arrivals[instance_id] - start)
            self.changed.wait_for(
                lambda: self.running and self.running[-1] != instance_id, timeout=120
            )
            return self.running[-1]


def wait_settled(http: str, kernel_id: str) -> None:
    while requests.get(
        f"{http}/lowcost/api/kernels/{kernel_id}", headers=HEADERS, timeout=30
    ).json()["moving"]:
        time.sleep(0.05)


def start_slurm(home: Path) -> tuple[object, subprocess.Popen[bytes], str]:
    """A one-node Slurm cluster and a server on the slurm backend."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from slurm_cluster import SlurmCluster

    cluster = SlurmCluster(home / "slurm")
    cluster.start()
    config_dir = home / "slurm-config"
    config_dir.mkdir()
    config = {
        "LowCostApp": {"backend": "slurm"},
        "SlurmBackend": {
            "regular_partition": "ondemand",
            "poll_interval": 0.5,
            "instance_types": {"T4": {"cpus": 1}},
        },
    }
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(config))
    server_home = home / "slurm-server"
    server_home.mkdir()
    port = free_port()
    server = start_server(server_home, port, {**cluster.env, "JUPYTER_CONFIG_DIR": str(config_dir)})
    return cluster, server, f"127.0.0.1:{port}"


def notice_latencies(base: str, count: int, announce: Callable[[str], None]) -> list[float]:
    """From ``announce(instance_id)`` (what makes the interruption happen) to the
    ``notice`` event of a low-cost kernel's instance, ``count`` times: each time on the
    instance the recovery relaunched."""
    http = f"http://{base}"
    events = EventWatcher(base)
    response = requests.post(
        f"{http}/lowcost/api/kernels",
        headers=HEADERS,
        timeout=60,
        json={"instance_type": "T4", "low_cost": True},
    )
    kernel_id = response.json()["kernel"]["id"]
    instance_id = response.json()["instance"]["id"]
    latencies: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        announce(instance_id)
        instance_id = events.next_instance(instance_id, start, latencies)
        wait_settled(http, kernel_id)
    events.ws.close()
    requests.delete(f"{http}/api/kernels/{kernel_id}", headers=HEADERS, timeout=60)
    return latencies


def interrupt_through_rest(base: str) -> Callable[[str], None]:
    """``POST instances/<id>/interrupt`` with a 0.2 s notice (the local backend)."""

    def announce(instance_id: str) -> None:
        requests.post(
            f"http://{base}/lowcost/api/instances/{instance_id}/interrupt",
            headers=HEADERS,
            json={"notice_seconds": 0.2},
            timeout=60,
        ).raise_for_status()

    return announce


def preempt_with_sbatch(cluster: Any) -> Callable[[str], None]:
    """``sbatch`` of a job that needs every CPU on the high-priority partition."""

    def announce(instance_id: str) -> None:
        cluster.command(
            "sbatch", "--parsable", "--partition=ondemand", "--cpus-per-task=2",
            "--output=/dev/null", "--wrap=sleep 1",
        )  # fmt: skip

    return announce


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=12, help="starts of each kind (>= 10)")
    parser.add_argument("--notices", type=int, default=12, help="notices to time (>= 10)")
    parser.add_argument("--slurm", action="store_true", help="also measure the slurm backend")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="lowcost-bench-"))
    write_stock_kernelspec(home)
    port = free_port()
    server = start_server(home, port)
    base = f"127.0.0.1:{port}"
    kinds = ["stock", "no placement", "low-cost"]
    bases = dict.fromkeys(kinds, base)
    cluster = slurm_server = None
    preemptions: list[float] = []
    try:
        if args.slurm:
            cluster, slurm_server, bases["slurm low-cost"] = start_slurm(home)
            kinds.append("slurm low-cost")
        for kind in kinds:  # warm up: imports, caches
            time_start(bases[kind], kind)
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(args.starts):
            for kind in kinds:
                times[kind].append(time_start(bases[kind], kind))
        notices = notice_latencies(base, args.notices, interrupt_through_rest(base))
        if args.slurm:
            preemptions = notice_latencies(
                bases["slurm low-cost"], args.notices, preempt_with_sbatch(cluster)
            )
    finally:
        for process in (server, slurm_server):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        if cluster is not None:
            cluster.stop()  # type: ignore[attr-defined]
        shutil.rmtree(home, ignore_errors=True)

    stock = statistics.median(times["stock"])
    print(f"kernel start to first kernel_info_reply, median of {args.starts}:")
    for kind in kinds:
        median = statistics.median(times[kind])
        print(f"  {kind:<13} {median * 1000:7.1f} ms   {median / stock:5.3f}x stock")
    print("  targets: no placement <= 1.03x, low-cost <= 1.25x")
    if args.slurm:
        slurm = statistics.median(times["slurm low-cost"])
        local = statistics.median(times["low-cost"])
        print(
            f"  slurm low-cost vs local low-cost: {slurm / local:.2f}x "
            f"({slurm:.2f} s; target <= 2 s median)"
        )
    print(
        f"notice REST call -> event on /api/events/subscribe, median of {len(notices)}: "
        f"{statistics.median(notices) * 1000:.1f} ms (max {max(notices) * 1000:.1f} ms; target <= 50 ms)"
    )
    if preemptions:
        print(
            f"sbatch of a preempting job -> notice event, median of {len(preemptions)}: "
            f"{statistics.median(preemptions) * 1000:.0f} ms (max "
            f"{max(preemptions) * 1000:.0f} ms; target <= 1.5 s)"
        )


if __name__ == "__main__":
    main()
