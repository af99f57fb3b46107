"""Benchmark: the kubernetes backend on the test cluster, against the local backend.

Run it by hand (pytest does not collect it: tests/benchmarks is ignored by pyproject's
``addopts``; needs the cluster's binaries, built once by tests/kubernetes/build.sh)::

    python tests/benchmarks/kubernetes.py [--rounds 5] [--notice 30] [--megabytes 100]
    python tests/benchmarks/kubernetes.py --quick             # 2 rounds
    python tests/benchmarks/kubernetes.py --kubeconfig PATH   # a cluster already running

Without ``--kubeconfig`` it starts the two-node cluster of tests/kubernetes_cluster.py
(and stops it at the end, on Ctrl-C and on errors too). It makes a namespace of its own,
then starts two real ``jupyter server`` processes with the extension: one with
``LowCostApp.backend = "kubernetes"`` whose kernels are pods in that namespace
(configured as tests/k8s/ configures its servers: ``KUBERNETES_CONFIG``, this checkout,
the Python and the benchmark's folder mounted into the pods), and one on the default
``local`` backend, the baseline measured in the same run. Everything is measured from
this process, as a client: REST calls, the kernels' websockets, and the instance events
of ``/api/events/subscribe`` (the time each one arrives here). The two sides alternate
(kubernetes then local, then local then kubernetes, ...) for ``--rounds`` rounds; each
ratio is taken within a round and printed as min / median / max; targets are judged on
the kubernetes side's median.

1. Kernel start: ``POST lowcost/api/kernels`` (a low-cost T4) -> its 201, and -> the first
   cell (``print(6 * 7)``) answering through the kernel's websocket; kubernetes / local
   ratios. On kubernetes also from the pod's creation (the ``pending`` event that says
   ``pod ... created``) to the cell answering: target <= 2 s median. Each kernel is shut
   down after it answered (not timed); one start of each side before the rounds warms up.
2. Eviction accepted -> the server's ``notice`` event: on kubernetes the benchmark evicts
   the kernel's pod itself through the Eviction API (as a drain or an autoscaler does;
   ``--evict-with rest`` uses ``POST instances/<id>/interrupt`` instead, which evicts it
   from the server), with a grace period of ``--notice`` seconds; "accepted" is the API
   server's answer. Target <= 300 ms median: the server's pod watch sees the
   ``deletionTimestamp`` before the kubelet's SIGTERM reaches the pod. On local, the
   baseline is ``POST instances/<id>/interrupt`` with the same notice (the notice is made
   in that request). Both sides also from the request sent; the reason of each notice says
   which path announced it.
3. Eviction -> resumed kernel answering with ``--megabytes`` MB of variables (a numpy
   array set in a cell): before each eviction the benchmark polls ``%lowcost`` until the
   last checkpoint holds the array and no write is in flight (as tests/benchmarks/
   checkpoint.py does); then from the eviction accepted (local: the interrupt request) to
   the resumed kernel printing the array's sum; target <= 5 s median. Its parts are
   printed too: notice -> the old instance ended, -> the new one running, -> answering.
   Measured on the same evictions as 2., one kernel of each side holding the array. On
   kubernetes the evicted pod ends as soon as its idle kernel's latest checkpoint is
   written (its launcher leaves: nothing more can be saved), so the total does not hold
   the grace period (``--notice``, 30 s by default as on GKE); on local the old instance
   runs out its notice, so the ratio mostly says how long that notice is. "old instance
   ended -> answering" is the resume itself.

The machine's load is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
CHECKOUT = TESTS.parent
sys.path[:0] = [str(HERE), str(TESTS)]

import requests
import websocket
import yaml
from checkpoint import (
    VERDICTS,
    print_load,
    print_verdicts,
    run_over_ws,
    runs,
    say_product,
    spread,
    wait_checkpointed,
)
from conftest import BASE_CONFIG, _merge
from jupyter_process import LowCostServer
from k8s.conftest import KUBERNETES_CONFIG
from kubernetes_cluster import (
    API_PORT,
    INSTALL_HINT,
    KubernetesCluster,
    _python_mounts,
    missing_programs,
)
from kubernetes_cluster import make_namespace as cluster_namespace
from notebook_runner import NotebookRunner

from jupyter_lowcost.backends.kubernetes import INSTANCE_LABEL

TOKEN = "kubernetes-benchmark"
SIDES = ("kubernetes", "local")
KERNEL_BODY = {"instance_type": "T4", "low_cost": True}
FINAL_STATES = ("interrupted", "expired", "terminated", "failed")


# -- the cluster's API ---------------------------------------------------------------------


class KubeApi:
    """Requests to the API server a kubeconfig names (its current context): a bearer token
    or a client certificate, the CA as a file or inline."""

    def __init__(self, kubeconfig: str) -> None:
        config = yaml.safe_load(Path(kubeconfig).read_text())
        context_name = config.get("current-context") or config["contexts"][0]["name"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(
            (u["user"] for u in config.get("users", []) if u["name"] == context.get("user")), {}
        )
        self.server = cluster["server"].rstrip("/")
        self.folder = Path(kubeconfig).parent
        if cluster.get("insecure-skip-tls-verify"):
            self.context = ssl._create_unverified_context()
        elif "certificate-authority-data" in cluster:
            self.context = ssl.create_default_context(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            )
        elif "certificate-authority" in cluster:
            self.context = ssl.create_default_context(
                cafile=self._path(cluster["certificate-authority"])
            )
        else:
            self.context = ssl.create_default_context()
        self.headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if user.get("token"):
            self.headers["Authorization"] = f"Bearer {user['token']}"
        elif user.get("client-certificate"):
            self.context.load_cert_chain(
                self._path(user["client-certificate"]), self._path(user["client-key"])
            )
        elif user.get("client-certificate-data"):
            folder = Path(tempfile.mkdtemp(prefix="kube-client-"))
            for key in ("client-certificate-data", "client-key-data"):
                (folder / key).write_bytes(base64.b64decode(user[key]))
            self.context.load_cert_chain(
                str(folder / "client-certificate-data"), str(folder / "client-key-data")
            )
            shutil.rmtree(folder)

    def _path(self, name: str) -> str:
        return str(self.folder / name) if not os.path.isabs(name) else name

    def __call__(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        request = urllib.request.Request(
            self.server + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=self.headers,
        )
        with urllib.request.urlopen(request, context=self.context, timeout=timeout) as response:
            return json.loads(response.read() or b"null")


def make_namespace(kube: KubeApi) -> str:
    """A new namespace whose default ServiceAccount is ready (it takes pods then)."""
    name = f"bench-{os.getpid()}-{int(time.time()) % 100000}"
    cluster_namespace(kube, name)
    return name


def delete_namespace(kube: KubeApi, name: str) -> None:
    for path in (
        f"/api/v1/namespaces/{name}/pods?gracePeriodSeconds=0",
        f"/api/v1/namespaces/{name}",
    ):
        try:
            kube("DELETE", path)
        except (OSError, urllib.error.URLError) as error:
            print(f"  (deleting {path}: {error})")


def pod_of(kube: KubeApi, namespace: str, instance_id: str) -> str:
    items = kube(
        "GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector={INSTANCE_LABEL}%3D{instance_id}"
    )["items"]
    if len(items) != 1:
        raise RuntimeError(f"{len(items)} pods of instance {instance_id}")
    return items[0]["metadata"]["name"]


def evict(kube: KubeApi, namespace: str, pod: str, grace: int) -> None:
    """The Eviction API (policy/v1 from Kubernetes 1.22, policy/v1beta1 before)."""
    last: Exception | None = None
    for version in ("policy/v1", "policy/v1beta1"):
        body = {
            "apiVersion": version,
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace},
            "deleteOptions": {"gracePeriodSeconds": grace},
        }
        try:
            kube("POST", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", body)
            return
        except urllib.error.HTTPError as error:
            if error.code not in (400, 404):
                raise
            last = error
    raise RuntimeError(f"eviction of {pod}: {last}")


# -- the servers ----------------------------------------------------------------------------


class Events:
    """A server's instance events, each with the time (``perf_counter``) it arrived here."""

    def __init__(self, server: LowCostServer) -> None:
        self.items: list[tuple[float, dict[str, Any]]] = []
        self.changed = threading.Condition()
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{server.port}/api/events/subscribe",
            header=[f"Authorization: token {TOKEN}"],
            timeout=None,
        )
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                text = self.ws.recv()
            except (websocket.WebSocketException, OSError):
                return
            now = time.perf_counter()
            try:
                event = json.loads(text)
            except ValueError:
                continue
            if not str(event.get("schema_id", "")).endswith("jupyter_lowcost/instance/v1"):
                continue
            with self.changed:
                self.items.append((now, event))
                self.changed.notify_all()

    def mark(self) -> int:
        with self.changed:
            return len(self.items)

    def first(
        self, where: Callable[[dict[str, Any]], bool], since: int = 0
    ) -> tuple[float, dict[str, Any]] | None:
        with self.changed:
            return next((item for item in self.items[since:] if where(item[1])), None)

    def wait(
        self, where: Callable[[dict[str, Any]], bool], since: int, timeout: float, what: str
    ) -> tuple[float, dict[str, Any]]:
        with self.changed:
            found = self.changed.wait_for(lambda: self.first_locked(where, since), timeout)
        if not found:
            raise RuntimeError(f"no event {what} within {timeout:.0f} s")
        return found

    def first_locked(
        self, where: Callable[[dict[str, Any]], bool], since: int
    ) -> tuple[float, dict[str, Any]] | None:
        return next((item for item in self.items[since:] if where(item[1])), None)

    def close(self) -> None:
        try:
            self.ws.close()
        except (websocket.WebSocketException, OSError):
            pass


def start_server(root: Path, name: str, config: dict[str, Any]) -> LowCostServer:
    home = root / name
    config_dir = home / "config"
    config_dir.mkdir(parents=True)
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(config, indent=1))
    # The server, and through it the kernels (pods included), import this checkout.
    paths = [str(CHECKOUT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    server = LowCostServer(
        home,
        TOKEN,
        {
            "JUPYTER_CONFIG_DIR": str(config_dir),
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
        },
    )
    server.start()
    return server


def runner_for(server: LowCostServer, kernel_id: str) -> NotebookRunner:
    runner = NotebookRunner(server.base, TOKEN, "")
    runner.kernel_id = kernel_id
    return runner


def answer(runner: NotebookRunner, code: str, timeout: float = 120) -> str:
    """Run ``code`` through the kernel's websocket (again while the server does not let it
    through yet, at most ``timeout`` s); what it printed."""
    end = time.monotonic() + timeout
    while True:
        try:
            return run_over_ws(runner, code)
        except (ConnectionError, OSError, websocket.WebSocketException, TimeoutError):
            if time.monotonic() > end:
                raise
            time.sleep(0.02)


def shut_down(server: LowCostServer, kernel_id: str) -> None:
    requests.delete(
        f"{server.base}api/kernels/{kernel_id}", headers=server.headers, timeout=120
    ).raise_for_status()


# -- 1. kernel start ------------------------------------------------------------------------


def one_start(server: LowCostServer, events: Events) -> dict[str, float]:
    mark = events.mark()
    started = time.perf_counter()
    response = server.post("kernels", KERNEL_BODY)
    created = time.perf_counter()
    if response.status_code != 201:
        raise RuntimeError(f"POST kernels: {response.status_code} {response.text}")
    body = response.json()
    kernel_id, instance_id = body["kernel"]["id"], body["instance"]["id"]
    printed = answer(runner_for(server, kernel_id), "print(6 * 7)", timeout=60)
    answered = time.perf_counter()
    if printed.strip() != "42":
        raise RuntimeError(f"the first cell printed {printed!r}")
    pod = events.first(
        lambda e: (
            e["instance_id"] == instance_id
            and e["state"] == "pending"
            and "created in namespace" in e.get("reason", "")
        ),
        mark,
    )
    shut_down(server, kernel_id)
    result = {"201": created - started, "answer": answered - started}
    if pod is not None:
        result["pod_to_answer"] = answered - pod[0]
        result["request_to_pod"] = pod[0] - started
    return result


def kernel_starts(
    servers: dict[str, LowCostServer], events: dict[str, Events], rounds: int
) -> None:
    print(
        f"\n1. kernel start: POST lowcost/api/kernels (low-cost T4) -> 201, and -> the first "
        f"cell answering; {rounds} rounds, alternated (after one warm-up start of each side)"
    )
    for side in SIDES:
        one_start(servers[side], events[side])
    found: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    for number in range(rounds):
        for side in SIDES if number % 2 == 0 else SIDES[::-1]:
            found[side].append(one_start(servers[side], events[side]))
    for side in SIDES:
        for key, what in (("201", "POST -> 201"), ("answer", "POST -> first cell answering")):
            values = [r[key] for r in found[side]]
            print(f"  {side:<10} {what:<30} {spread(values)} (runs {runs(values)})")
    kube = found["kubernetes"]
    if all("pod_to_answer" in r for r in kube):
        values = [r["request_to_pod"] for r in kube]
        print(f"  kubernetes POST -> 'pod ... created' event     {spread(values)}")
        values = [r["pod_to_answer"] for r in kube]
        print(
            f"  kubernetes pod created -> first cell answering {spread(values)} (runs {runs(values)})"
        )
        ok = statistics.median(values) <= 2.0
        verdict(
            f"kubernetes pod created -> kernel answering: median {statistics.median(values):.2f} s",
            "target <= 2 s",
            ok,
        )
    else:
        print(
            "  (no 'pod ... created' pending event seen for every start: see the server's events)"
        )
    for key, what in (("201", "POST -> 201"), ("answer", "POST -> first cell answering")):
        ratios = [k[key] / loc[key] for k, loc in zip(found["kubernetes"], found["local"])]
        print(f"  ratio kubernetes / local, {what}: {spread(ratios, 'x')}")
    sys.stdout.flush()


def verdict(what: str, target: str, ok: bool) -> None:
    print(f"  {what} ({target}): {'meets the target' if ok else 'MISSES the target'}")
    VERDICTS.append((what, ok))


# -- 2. and 3. evictions --------------------------------------------------------------------


class Side:
    """One server's kernel holding the array, and how its instance is interrupted."""

    def __init__(
        self,
        name: str,
        server: LowCostServer,
        events: Events,
        interrupt: Callable[[str], None],
        megabytes: int,
    ) -> None:
        self.name = name
        self.server = server
        self.events = events
        self.interrupt = interrupt
        self.megabytes = megabytes
        self.elements = megabytes * 10**6 // 8
        body = server.post("kernels", KERNEL_BODY)
        if body.status_code != 201:
            raise RuntimeError(f"POST kernels: {body.status_code} {body.text}")
        self.kernel_id = body.json()["kernel"]["id"]
        self.runner = runner_for(server, self.kernel_id)
        answer(self.runner, f"import numpy as np\nstate = np.ones({self.elements})")

    def evict_once(self) -> dict[str, Any]:
        waited = wait_checkpointed(self.runner, self.megabytes)
        model = self.server.get(f"kernels/{self.kernel_id}").json()
        old = model["instance"]["id"]
        if model["instance"]["state"] != "running":
            raise RuntimeError(f"the kernel's instance is not running: {model['instance']}")
        prepare = getattr(self.interrupt, "prepare", None)
        if prepare is not None:
            prepare(old)
        mark = self.events.mark()
        sent = time.perf_counter()
        self.interrupt(old)
        accepted = time.perf_counter()
        notice_at, notice = self.events.wait(
            lambda e: e["instance_id"] == old and e["state"] == "notice",
            mark,
            30,
            f"notice of {old}",
        )
        ended_at, ended = self.events.wait(
            lambda e: e["instance_id"] == old and e["state"] in FINAL_STATES,
            mark,
            120,
            f"end of {old}",
        )
        running_at, running = self.events.wait(
            lambda e: (
                e.get("kernel_id") == self.kernel_id
                and e["instance_id"] != old
                and e["state"] == "running"
            ),
            mark,
            180,
            f"a new running instance of kernel {self.kernel_id}",
        )
        printed = answer(
            self.runner, "print(int(state.sum()) if 'state' in globals() else sorted(globals()))"
        )
        answered = time.perf_counter()
        if printed.strip() != str(self.elements):
            raise RuntimeError(f"the resumed kernel has not the array: {printed[:300]}")
        return {
            "waited": waited,
            "sent": sent,
            "accepted": accepted,
            "notice": notice_at,
            "ended": ended_at,
            "running": running_at,
            "answered": answered,
            "reason": notice.get("reason", ""),
            "ended_state": ended["state"],
            "new": running["instance_id"],
        }


def interrupt_over_rest(server: LowCostServer, notice: float) -> Callable[[str], None]:
    def interrupt(instance_id: str) -> None:
        response = server.post(f"instances/{instance_id}/interrupt", {"notice_seconds": notice})
        if not response.ok:
            raise RuntimeError(f"interrupt: {response.status_code} {response.text}")

    return interrupt


class EvictThroughApi:
    """Evict an instance's pod through the Eviction API; the pod is looked up first
    (:meth:`prepare`, before the clock starts): only the Eviction call is timed."""

    def __init__(self, kube: KubeApi, namespace: str, notice: float) -> None:
        self.kube = kube
        self.namespace = namespace
        self.grace = max(1, int(notice))
        self.pods: dict[str, str] = {}

    def prepare(self, instance_id: str) -> None:
        self.pods[instance_id] = pod_of(self.kube, self.namespace, instance_id)

    def __call__(self, instance_id: str) -> None:
        evict(self.kube, self.namespace, self.pods[instance_id], self.grace)


def evictions(sides: dict[str, Side], rounds: int, notice: float, how: str) -> None:
    megabytes = sides["kubernetes"].megabytes
    if how == "api":
        k8s_how = (
            f"the benchmark evicts the pod through the Eviction API (grace {max(1, int(notice))} s)"
        )
    else:
        k8s_how = f"POST instances/<id>/interrupt (the server evicts the pod, grace {max(1, int(notice))} s)"
    print(
        f"\n2. and 3. evictions of a kernel holding {megabytes} MB (numpy), {rounds} rounds, "
        f"alternated; kubernetes: {k8s_how}; local: POST instances/<id>/interrupt "
        f"(notice {notice:g} s). Before each, %lowcost is polled until the last checkpoint "
        f"holds the array and no write is in flight."
    )
    found: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for number in range(rounds):
        for side in SIDES if number % 2 == 0 else SIDES[::-1]:
            found[side].append(sides[side].evict_once())
    k8s, local = found["kubernetes"], found["local"]
    for side in SIDES:
        print(
            f"  {side:<10} waited for the checkpoint before each eviction: "
            f"{spread([r['waited'] for r in found[side]])}"
        )

    print("\n2. eviction -> the server's notice event (arrival on /api/events/subscribe)")
    accepted = [r["notice"] - r["accepted"] for r in k8s]
    sent = {side: [r["notice"] - r["sent"] for r in found[side]] for side in SIDES}
    calls = {side: [r["accepted"] - r["sent"] for r in found[side]] for side in SIDES}
    print(f"  kubernetes eviction accepted -> notice event   {spread(accepted, 'ms', 1000, 1)}")
    print(
        f"  kubernetes eviction request -> notice event    {spread(sent['kubernetes'], 'ms', 1000, 1)}"
    )
    print(
        f"  kubernetes the eviction call itself            {spread(calls['kubernetes'], 'ms', 1000, 1)}"
    )
    print(
        f"  local      interrupt request -> notice event   {spread(sent['local'], 'ms', 1000, 1)}"
    )
    print(
        f"  local      the interrupt call itself           {spread(calls['local'], 'ms', 1000, 1)}"
    )
    ratios = [k / max(loc, 1e-4) for k, loc in zip(sent["kubernetes"], sent["local"])]
    print(f"  ratio kubernetes / local, request -> notice event: {spread(ratios, 'x')}")
    reasons: dict[str, int] = {}
    for r in k8s:
        reason = re.sub(r"jupyter-lowcost-[0-9a-f]+", "<pod>", r["reason"])
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        print(f"  kubernetes notice reason ({count}x): {reason}")
    verdict(
        f"kubernetes eviction accepted -> notice event: median {statistics.median(accepted) * 1000:.0f} ms",
        "target <= 300 ms",
        statistics.median(accepted) <= 0.3,
    )

    print(f"\n3. eviction -> resumed kernel answering with its {megabytes} MB")
    totals = {
        "kubernetes": [r["answered"] - r["accepted"] for r in k8s],
        "local": [r["answered"] - r["sent"] for r in local],
    }
    starts = {"kubernetes": "eviction accepted", "local": "interrupt request"}
    for side in SIDES:
        rows = found[side]
        print(
            f"  {side:<10} {starts[side]} -> answering: {spread(totals[side])} "
            f"(runs {runs(totals[side])})"
        )
        for what, a, b in (
            ("notice event -> old instance ended", "notice", "ended"),
            ("ended -> new instance running", "ended", "running"),
            ("running -> cell answering", "running", "answered"),
        ):
            print(f"  {'':<10}   {what:<36} {spread([r[b] - r[a] for r in rows])}")
        states = sorted({r["ended_state"] for r in rows})
        print(f"  {'':<10}   the old instance ended {', '.join(states)}")
    ratios = [k / loc for k, loc in zip(totals["kubernetes"], totals["local"])]
    print(f"  ratio kubernetes / local, eviction -> answering: {spread(ratios, 'x')}")
    parts = [
        (k["answered"] - k["ended"]) / (loc["answered"] - loc["ended"])
        for k, loc in zip(k8s, local)
    ]
    print(f"  ratio kubernetes / local, old instance ended -> answering: {spread(parts, 'x')}")
    median = statistics.median(totals["kubernetes"])
    verdict(
        f"kubernetes eviction -> resumed kernel answering with {megabytes} MB: median {median:.2f} s",
        "target <= 5 s",
        median <= 5.0,
    )
    sys.stdout.flush()


# -- the run --------------------------------------------------------------------------------


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run(args: argparse.Namespace, root: Path) -> None:
    cluster: KubernetesCluster | None = None
    servers: dict[str, LowCostServer] = {}
    events: dict[str, Events] = {}
    kube: KubeApi | None = None
    namespace = ""
    try:
        if args.kubeconfig:
            kubeconfig = str(Path(args.kubeconfig).resolve())
            print(f"cluster: the one of {kubeconfig}")
        else:
            missing = missing_programs()
            if missing:
                raise SystemExit(f"{INSTALL_HINT}; missing: {', '.join(missing)}")
            if port_taken(API_PORT):
                raise SystemExit(
                    f"port {API_PORT} is taken (another test cluster runs?): wait for it to "
                    "end, or pass --kubeconfig of a running cluster"
                )
            cluster = KubernetesCluster(root / "kubernetes")
            began = time.monotonic()
            cluster.start()
            kubeconfig = cluster.env["KUBECONFIG"]
            print(
                f"cluster: tests/kubernetes_cluster.py, started in {time.monotonic() - began:.1f} s"
            )
        kube = KubeApi(kubeconfig)
        namespace = make_namespace(kube)
        print(f"namespace {namespace}")
        host_paths = sorted({*_python_mounts(), str(CHECKOUT), str(root)}, key=len)
        k8s_config = _merge(
            _merge(BASE_CONFIG, KUBERNETES_CONFIG),
            {
                "KubernetesBackend": {
                    "namespace": namespace,
                    "kubeconfig": kubeconfig,
                    "host_paths": host_paths,
                }
            },
        )
        servers["kubernetes"] = start_server(root, "kubernetes-server", k8s_config)
        servers["local"] = start_server(root, "local-server", BASE_CONFIG)
        for side in SIDES:
            events[side] = Events(servers[side])
            backend = servers[side].get("status").json().get("backend")
            print(f"server {side}: {servers[side].base} (GET status says backend {backend!r})")
        sys.stdout.flush()

        kernel_starts(servers, events, args.rounds)

        interrupts = {
            "kubernetes": (
                EvictThroughApi(kube, namespace, args.notice)
                if args.evict_with == "api"
                else interrupt_over_rest(servers["kubernetes"], args.notice)
            ),
            "local": interrupt_over_rest(servers["local"], args.notice),
        }
        sides = {
            side: Side(side, servers[side], events[side], interrupts[side], args.megabytes)
            for side in SIDES
        }
        where = answer(sides["kubernetes"].runner, "print(__import__('jupyter_lowcost').__file__)")
        say_product(where.strip())
        evictions(sides, args.rounds, args.notice, args.evict_with)
        for side in SIDES:
            shut_down(servers[side], sides[side].kernel_id)
    except BaseException:
        for side, server in servers.items():
            print(f"\n--- the end of the {side} server's log ({server.log_path}) ---")
            print(server.log()[-6000:])
        raise
    finally:
        for stream in events.values():
            stream.close()
        for server in servers.values():
            server.stop()
        if kube is not None and namespace:
            delete_namespace(kube, namespace)
        if cluster is not None:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module's docstring for what is measured and the targets.",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each comparison (5)")
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument(
        "--notice", type=float, default=30.0, help="the eviction's grace period / notice, s (30)"
    )
    parser.add_argument("--megabytes", type=int, default=100, help="the kernels' array, MB (100)")
    parser.add_argument(
        "--evict-with",
        choices=("api", "rest"),
        default="api",
        help="kubernetes evictions: the Eviction API (api), or the server's interrupt (rest)",
    )
    parser.add_argument("--kubeconfig", help="a running cluster's (else one is started)")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 2

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    # Ctrl-C, SIGTERM and SIGHUP stop it with everything it started (a program started in
    # the background by a shell ignores SIGINT: it is restored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    root = Path(tempfile.mkdtemp(prefix="k8s-bench-"))
    print(
        f"kubernetes benchmark: --rounds {args.rounds} --notice {args.notice:g} --megabytes "
        f"{args.megabytes} --evict-with {args.evict_with}; python {sys.version.split()[0]}"
    )
    print_load("at the start")
    sys.stdout.flush()
    started = time.monotonic()
    try:
        run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        print()
        print_load(f"at the end ({time.monotonic() - started:.0f} s later)")
    print_verdicts()


if __name__ == "__main__":
    main()
