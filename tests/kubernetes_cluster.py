"""A real Kubernetes (v1.20.2) on this machine, for the Kubernetes backend's tests.

Built once by ``tests/kubernetes/build.sh`` (binaries cached under
/var/cache/jupyter-lowcost-kubernetes/v1.20.2); see shared/notes/KUBERNETES.md for why each
piece is as it is. :meth:`KubernetesCluster.start` runs, everything on loopback:

* etcd (data in /dev/shm), kube-apiserver on https://127.0.0.1:6443 (a CA and certificates
  made by openssl, a static token of ``system:masters``, RBAC), kube-controller-manager
  (``--node-monitor-grace-period=8s``) and kube-scheduler;
* two nodes, each a dockerd of its own and a kubelet, together in a private mount namespace
  (per-node folders bind-mounted on /var/lib/kubelet, /var/log/pods, /var/log/containers,
  /var/lib/dockershim). Node i's name and InternalIP is 127.0.0.(1+i):

  - ``127.0.0.2``, a spot node as GKE and Karpenter mark one: labels
    ``cloud.google.com/gke-spot=true``, ``karpenter.sh/capacity-type=spot``, taint
    ``cloud.google.com/gke-spot=true:NoSchedule``;
  - ``127.0.0.3``, on-demand: ``karpenter.sh/capacity-type=on-demand``;

  each with 4 fake GPUs (``nvidia.com/gpu`` patched into the node's status) and two images,
  never pulled (pods use ``imagePullPolicy: Never``): :data:`PAUSE_IMAGE` and
  :data:`EMPTY_IMAGE`, an empty Debian-shaped root in which pods run this machine's Python
  through hostPath mounts (:func:`python_pod`).

No CNI: pods must use ``hostNetwork: true``. Every process of the cluster (daemons, dockerd,
containerd, shims and the pods' processes) lives under one cgroup of the pids hierarchy,
``<this process's memory cgroup>/jupyter-lowcost-kubernetes-<pid>``, one child per node:
:meth:`KubernetesCluster.kill_node` SIGKILLs a node's cgroup (a node lost),
:meth:`KubernetesCluster.stop` the whole tree, so nothing is left running.

By hand (to try things)::

    python tests/kubernetes_cluster.py /tmp/k8s     # starts it, prints KUBECONFIG, waits
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = "v1.20.2"
#: Where tests/kubernetes/build.sh keeps the binaries (same variable, same default).
CACHE = Path(
    os.environ.get(
        "JUPYTER_LOWCOST_KUBERNETES_CACHE", f"/var/cache/jupyter-lowcost-kubernetes/{VERSION}"
    )
)
BUILD_SCRIPT = Path(__file__).with_name("kubernetes") / "build.sh"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl")
PROGRAMS = {"etcd": "/usr/bin/etcd", "dockerd": "/usr/sbin/dockerd", "unshare": "/usr/bin/unshare"}

API_PORT = 6443
SERVER = f"https://127.0.0.1:{API_PORT}"
PAUSE_IMAGE = "jupyter-lowcost/pause:3.4.1"
EMPTY_IMAGE = "jupyter-lowcost/empty:1"
GPUS = 4
GPU_RESOURCE = "nvidia.com/gpu"
SPOT_TAINT = {"key": "cloud.google.com/gke-spot", "value": "true", "effect": "NoSchedule"}
SPOT_LABELS = {"cloud.google.com/gke-spot": "true", "karpenter.sh/capacity-type": "spot"}
ON_DEMAND_LABELS = {"karpenter.sh/capacity-type": "on-demand"}
#: Services get addresses on loopback: a pod that tries one reaches nothing beyond it.
SERVICE_RANGE = "127.77.0.0/24"

INSTALL_HINT = (
    "the Kubernetes tests need Kubernetes v1.20.2 built from Debian's source (once, about "
    "10 minutes, then cached): run `tests/kubernetes/build.sh` (.ci/run runs it)"
)


def missing_programs() -> list[str]:
    """What this machine lacks to run the cluster (empty when build.sh ran)."""
    missing = [str(CACHE / "bin" / name) for name in (*BINARIES, "pause")]
    missing += list(PROGRAMS.values())
    missing += [p for p in ("/usr/bin/openssl",)]
    return [p for p in missing if not os.access(p, os.X_OK)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_cgroup(controller: str) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return "/"


@dataclass
class Node:
    """One node: its folder, labels, taints, and the pid of its kubelet (which is also the
    process whose mount namespace dockerd shares)."""

    name: str
    root: Path
    labels: dict[str, str]
    taints: list[dict[str, str]] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    killed: bool = False

    @property
    def docker_socket(self) -> Path:
        return self.root / "docker.sock"


class KubernetesCluster:
    """etcd, the control plane and nodes under ``root``; :attr:`kubeconfig` points clients
    at it (a static admin token: ``system:masters``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = CACHE / "bin"
        self.pki = root / "pki"
        self.kubeconfig = root / "kubeconfig"
        self.token = os.urandom(16).hex()
        tag = f"jupyter-lowcost-kubernetes-{os.getpid()}-{int(time.time() * 1000) % 10**8}"
        self.etcd_dir = Path("/dev/shm") / tag
        #: The cgroup (pids hierarchy, and dockerd's --cgroup-parent) holding everything.
        self.cgroup = f"{_own_cgroup('memory').rstrip('/')}/{tag}"
        self.env = {"KUBECONFIG": str(self.kubeconfig)}
        self.nodes: dict[str, Node] = {}
        self._control: list[subprocess.Popen[bytes]] = []
        self._images = root / "images"
        self._started = False

    # -- paths, processes, cgroups -------------------------------------------------------

    def _cgroup_dir(self, sub: str = "", hierarchy: str = "pids") -> Path:
        return Path("/sys/fs/cgroup", hierarchy, self.cgroup.lstrip("/"), sub)

    def _spawn(
        self, argv: list[str], log: Path, cgroup: str, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session, inside ``cgroup`` (under :attr:`cgroup`)."""
        directory = self._cgroup_dir(cgroup)
        directory.mkdir(parents=True, exist_ok=True)
        # The shell joins the cgroup before it executes the program: nothing of it can be
        # outside (its children inherit the cgroup, pods included).
        script = f'echo $$ > "{directory}/cgroup.procs" && exec "$@"'
        with open(log, "ab") as out:
            return subprocess.Popen(
                ["/bin/sh", "-c", script, argv[0], *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,
            )

    def _ancestors(self, hierarchy: str) -> list[Path]:
        parts = Path(self.cgroup.lstrip("/")).parts[:-1]
        return [Path("/sys/fs/cgroup", hierarchy, *parts[:i]) for i in range(len(parts), 0, -1)]

    def _pids(self, sub: str = "") -> set[int]:
        """Every process in the cgroup ``sub`` of :attr:`cgroup` and below."""
        pids: set[int] = set()
        top = self._cgroup_dir(sub)
        if not top.exists():
            return pids
        for directory, _, _ in os.walk(top):
            try:
                text = Path(directory, "cgroup.procs").read_text()
            except OSError:
                continue
            pids.update(int(p) for p in text.split())
        return pids

    def _kill_cgroup(self, sub: str = "", timeout: float = 15) -> None:
        """SIGKILL every process in a cgroup until none is left (they may fork meanwhile)."""
        end = time.monotonic() + timeout
        while True:
            pids = self._pids(sub)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > end:
                raise RuntimeError(f"processes {sorted(pids)} survive SIGKILL in {sub or '/'}")
            time.sleep(0.05)

    def _remove_cgroups(self) -> None:
        """rmdir the (empty) cgroups of every hierarchy under :attr:`cgroup`, deepest
        first: those of the pids hierarchy, and those runc made for the containers."""
        for hierarchy in os.listdir("/sys/fs/cgroup"):
            top = self._cgroup_dir(hierarchy=hierarchy)
            if not top.is_dir():
                continue
            for directory, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
        # The ancestors runc and this module made in the hierarchies where this process is
        # elsewhere (where it is in them, they are its own cgroup's: left alone). rmdir
        # removes only what is empty: those of another cluster in use stay.
        parent = str(Path(self.cgroup).parent)
        for hierarchy in os.listdir("/sys/fs/cgroup"):
            own = _own_cgroup(hierarchy)
            if own == parent or own.startswith(parent.rstrip("/") + "/"):
                continue
            for path in self._ancestors(hierarchy):  # deepest first
                try:
                    os.rmdir(path)
                except OSError:
                    break

    # -- certificates and configuration --------------------------------------------------

    def _openssl(self, *args: str) -> None:
        subprocess.run(["/usr/bin/openssl", *args], check=True, capture_output=True, cwd=self.pki)

    def _certificate(self, name: str, subject: str, extensions: str = "") -> None:
        """A key and a certificate signed by the CA, with ``extensions`` (v3 lines)."""
        ext = self.pki / f"{name}.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n" + extensions
        )
        self._openssl("genrsa", "-out", f"{name}.key", "2048")
        self._openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr")
        self._openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-sha256",
            "-extfile",
            ext.name,
            "-out",
            f"{name}.crt",
        )

    def _make_pki(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        self._openssl("genrsa", "-out", "ca.key", "2048")
        self._openssl(
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-key",
            "ca.key",
            "-subj",
            "/CN=jupyter-lowcost-test-ca",
            "-days",
            "30",
            "-sha256",
            "-out",
            "ca.crt",
        )
        self._certificate(
            "apiserver",
            "/CN=kube-apiserver",
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:127.77.0.1,"
            "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
        )
        self._certificate(
            "apiserver-kubelet-client",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "extendedKeyUsage=clientAuth\n",
        )
        self._openssl("genrsa", "-out", "sa.key", "2048")
        self._openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        (self.pki / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "lowcost",
                            "cluster": {
                                "server": SERVER,
                                "certificate-authority": str(self.pki / "ca.crt"),
                            },
                        }
                    ],
                    "users": [{"name": "admin", "user": {"token": self.token}}],
                    "contexts": [
                        {"name": "lowcost", "context": {"cluster": "lowcost", "user": "admin"}}
                    ],
                    "current-context": "lowcost",
                },
                indent=1,
            )
        )

    def _make_images(self) -> None:
        """The rootfs tarballs docker-imported into each node: ``pause`` alone, and an
        empty Debian-shaped root (merged /usr) with a two-line /etc/passwd."""
        self._images.mkdir(parents=True, exist_ok=True)

        def add(
            tar: tarfile.TarFile,
            name: str,
            kind: bytes,
            data: bytes = b"",
            mode: int = 0o755,
            target: str = "",
        ) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, 0
            if kind == tarfile.SYMTYPE:
                info.linkname = target
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        with tarfile.open(self._images / "pause.tar", "w") as tar:
            add(tar, "pause", tarfile.REGTYPE, (self.bin / "pause").read_bytes())
        with tarfile.open(self._images / "empty.tar", "w") as tar:
            for folder in (
                "usr",
                "etc",
                "tmp",
                "root",
                "proc",
                "sys",
                "dev",
                "run",
                "var",
                "home",
                "mnt",
                "opt",
                "srv",
            ):
                add(tar, folder, tarfile.DIRTYPE, mode=0o1777 if folder == "tmp" else 0o755)
            for link in ("bin", "sbin", "lib", "lib64"):
                add(tar, link, tarfile.SYMTYPE, target=f"usr/{link}")
            add(
                tar,
                "etc/passwd",
                tarfile.REGTYPE,
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                mode=0o644,
            )
            add(tar, "etc/group", tarfile.REGTYPE, b"root:x:0:\nnogroup:x:65534:\n", mode=0o644)

    # -- the control plane ---------------------------------------------------------------

    def _start_control_plane(self) -> None:
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        client, peer = _free_port(), _free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self.etcd_dir.mkdir(parents=True)
        self._control.append(
            self._spawn(
                [
                    PROGRAMS["etcd"],
                    "--name=default",
                    f"--data-dir={self.etcd_dir / 'data'}",
                    f"--listen-client-urls={self.etcd_url}",
                    f"--advertise-client-urls={self.etcd_url}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-cluster=default=http://127.0.0.1:{peer}",
                    "--log-level=warn",
                ],
                logs / "etcd.log",
                "control",
            )
        )
        pki = self.pki
        self._control.append(
            self._spawn(
                [
                    str(self.bin / "kube-apiserver"),
                    f"--etcd-servers={self.etcd_url}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={API_PORT}",
                    "--insecure-port=0",
                    "--advertise-address=127.0.0.1",
                    "--endpoint-reconciler-type=none",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    f"--token-auth-file={pki / 'tokens.csv'}",
                    "--authorization-mode=RBAC",
                    f"--service-cluster-ip-range={SERVICE_RANGE}",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    f"--service-account-issuer={SERVER}",
                    f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                    f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                    "--kubelet-preferred-address-types=InternalIP",
                    "--default-unreachable-toleration-seconds=10",
                    "--allow-privileged=true",
                    "--profiling=false",
                    "--v=1",
                ],
                logs / "kube-apiserver.log",
                "control",
            )
        )
        self._wait(self._api_ready, 60, "the API server to answer", "kube-apiserver.log")
        common = [
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--port=0",
            "--secure-port=0",
            "--profiling=false",
            "--v=1",
        ]
        self._control.append(
            self._spawn(
                [
                    str(self.bin / "kube-controller-manager"),
                    *common,
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    "--node-monitor-grace-period=8s",
                    "--node-monitor-period=1s",
                    "--use-service-account-credentials=false",
                ],
                logs / "kube-controller-manager.log",
                "control",
            )
        )
        self._control.append(
            self._spawn(
                [str(self.bin / "kube-scheduler"), *common], logs / "kube-scheduler.log", "control"
            )
        )

    # -- nodes ---------------------------------------------------------------------------

    def _start_node(self, node: Node) -> None:
        """dockerd, the image imports and the kubelet of ``node``, in a private mount
        namespace of their own (see the module's docstring)."""
        root = node.root
        for sub in ("kubelet", "pod-logs", "container-logs", "dockershim", "docker", "exec", "pki"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for target in (
            "/var/lib/kubelet",
            "/var/log/pods",
            "/var/log/containers",
            "/var/lib/dockershim",
        ):
            Path(target).mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": node.name,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": node.name,
            "healthzPort": 10248,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "nodeStatusUpdateFrequency": "2s",
            "nodeStatusReportFrequency": "2s",
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "failSwapOn": False,
            "serializeImagePulls": False,
            "resolvConf": "/etc/resolv.conf",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.pki / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
        }
        (root / "kubelet-config.json").write_text(json.dumps(config, indent=1))
        labels = ",".join(f"{k}={v}" for k, v in node.labels.items())
        taints = ",".join(f"{t['key']}={t['value']}:{t['effect']}" for t in node.taints)
        dockerd = [
            PROGRAMS["dockerd"],
            f"--host=unix://{node.docker_socket}",
            f"--data-root={root / 'docker'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--oom-score-adjust=0",
            f"--cgroup-parent={self.cgroup}/{node.name}",
            "--exec-opt=native.cgroupdriver=cgroupfs",
            "--log-level=warn",
        ]
        kubelet = [
            str(self.bin / "kubelet"),
            f"--config={root / 'kubelet-config.json'}",
            f"--kubeconfig={self.kubeconfig}",
            f"--hostname-override={node.name}",
            "--container-runtime=docker",
            f"--docker-endpoint=unix://{node.docker_socket}",
            f"--container-runtime-endpoint=unix://{root / 'dockershim.sock'}",
            f"--pod-infra-container-image={PAUSE_IMAGE}",
            f"--cert-dir={root / 'pki'}",
            "--cloud-provider=",
            f"--node-labels={labels}",
            *([f"--register-with-taints={taints}"] if taints else []),
            "--v=1",
        ]
        images = [
            (self._images / "pause.tar", PAUSE_IMAGE, ['ENTRYPOINT ["/pause"]']),
            (
                self._images / "empty.tar",
                EMPTY_IMAGE,
                ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            ),
        ]
        # In the node's mount namespace: the bind mounts, dockerd in the background, then
        # (its socket up and the images imported by this module's own `import` command)
        # the kubelet in the foreground: the process started is the kubelet in the end.
        binds = " && ".join(
            f'mount --bind "{root / src}" {dst}'
            for src, dst in (
                ("kubelet", "/var/lib/kubelet"),
                ("pod-logs", "/var/log/pods"),
                ("container-logs", "/var/log/containers"),
                ("dockershim", "/var/lib/dockershim"),
            )
        )
        imports = " && ".join(
            f'"{sys.executable}" "{Path(__file__).resolve()}" import-image '
            f'"{node.docker_socket}" "{tar}" "{name}" {" ".join(_quote(c) for c in changes)}'
            for tar, name, changes in images
        )
        script = (
            f"{binds} && "
            f'{_join(dockerd)} >"{root / "dockerd.log"}" 2>&1 & '
            f'i=0; while [ ! -S "{node.docker_socket}" ]; do i=$((i+1)); '
            f'[ $i -gt 600 ] && {{ echo "dockerd did not start"; exit 1; }}; sleep 0.05; done; '
            f"{imports} && exec {_join(kubelet)}"
        )
        env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
        node.process = self._spawn(
            [
                PROGRAMS["unshare"],
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                script,
            ],
            root / "kubelet.log",
            node.name,
            env=env,
        )

    def add_node(self, name: str, spot: bool) -> Node:
        """Start one more node (``name`` a free loopback address, 127.0.0.4...): a spot one
        as the clouds mark them, or an on-demand one; wait until it is Ready with its GPUs.
        (A node killed and started again under its old name runs its old pods again: a
        replacement needs a new name.)"""
        node = Node(
            name=name,
            root=self.root / "nodes" / name,
            labels=dict(SPOT_LABELS if spot else ON_DEMAND_LABELS),
            taints=[dict(SPOT_TAINT)] if spot else [],
        )
        self.nodes[name] = node
        self._start_node(node)
        self._wait_nodes([node], 90)
        return node

    def _wait_nodes(self, nodes: list[Node], timeout: float) -> None:
        pending = {n.name for n in nodes}
        patched: dict[str, float] = {}

        def ready() -> bool:
            for node in nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(
                        f"node {node.name} exited ({node.process.returncode}); see "
                        f"{node.root}/kubelet.log and dockerd.log"
                    )
            items = {n["metadata"]["name"]: n for n in self.api("GET", "/api/v1/nodes")["items"]}
            for name in list(pending):
                item = items.get(name)
                if item is None:
                    continue
                gpus = item["status"].get("allocatable", {}).get(GPU_RESOURCE)
                if gpus != str(GPUS):
                    # Patched once registered (again if a status update of the kubelet's
                    # raced with the patch).
                    if time.monotonic() - patched.get(name, -10) > 2:
                        self._advertise_gpus(name)
                        patched[name] = time.monotonic()
                    continue
                conditions = {c["type"]: c["status"] for c in item["status"].get("conditions", [])}
                if conditions.get("Ready") == "True":
                    pending.discard(name)
            return not pending

        self._wait(ready, timeout, f"nodes {sorted(pending)} to be Ready", "")

    def _advertise_gpus(self, name: str) -> None:
        path = "/" + GPU_RESOURCE.replace("/", "~1")
        patch = [
            {"op": "add", "path": f"/status/capacity{path}", "value": str(GPUS)},
            {"op": "add", "path": f"/status/allocatable{path}", "value": str(GPUS)},
        ]
        self.api(
            "PATCH",
            f"/api/v1/nodes/{name}/status",
            patch,
            content_type="application/json-patch+json",
        )

    # -- life cycle ----------------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        missing = missing_programs()
        if missing:
            raise RuntimeError(f"{INSTALL_HINT}; missing: {', '.join(missing)}")
        self.reap_stale()
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", API_PORT)) == 0:
                raise RuntimeError(
                    f"127.0.0.1:{API_PORT} is taken (another test cluster still running? "
                    "`ss -ltnp 'sport = 6443'`)"
                )
        self.root.mkdir(parents=True, exist_ok=True)
        self._started = True
        self._make_pki()
        self._make_images()
        self._start_control_plane()
        for index, (labels, taints) in enumerate(
            [(SPOT_LABELS, [SPOT_TAINT]), (ON_DEMAND_LABELS, [])], start=2
        ):
            name = f"127.0.0.{index}"
            self.nodes[name] = Node(
                name=name,
                root=self.root / "nodes" / name,
                labels=dict(labels),
                taints=[dict(t) for t in taints],
            )
            self._start_node(self.nodes[name])
        self._wait_nodes(list(self.nodes.values()), timeout)

        def service_account() -> bool:
            try:
                account = self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    return False
                raise
            return bool(account.get("secrets"))

        self._wait(service_account, 30, "the default ServiceAccount", "kube-controller-manager.log")

    def reap_stale(self) -> list[str]:
        """Kill what is left of clusters whose test process died without stopping them
        (SIGKILLed pytest): the cgroups ``jupyter-lowcost-kubernetes-<pid>-*`` beside
        :attr:`cgroup` whose pid is gone, and their etcd data. Their names."""
        parent = self._cgroup_dir().parent
        reaped = []
        for directory in parent.glob("jupyter-lowcost-kubernetes-*-*") if parent.is_dir() else []:
            try:
                pid = int(directory.name.split("-")[3])
            except (IndexError, ValueError):
                continue
            if directory.name == Path(self.cgroup).name or Path(f"/proc/{pid}").exists():
                continue
            stale = KubernetesCluster.__new__(KubernetesCluster)
            stale.cgroup = str(Path(self.cgroup).parent / directory.name)
            stale._kill_cgroup()
            stale._remove_cgroups()
            shutil.rmtree(Path("/dev/shm") / directory.name, ignore_errors=True)
            reaped.append(directory.name)
        return reaped

    @property
    def spot_node(self) -> str:
        return next(n.name for n in self.nodes.values() if n.labels == SPOT_LABELS)

    @property
    def on_demand_node(self) -> str:
        return next(n.name for n in self.nodes.values() if n.labels == ON_DEMAND_LABELS)

    def kill_node(self, name: str) -> None:
        """The node is lost: its kubelet, dockerd and every pod's process SIGKILLed at
        once. The Node object stays (Ready=Unknown after ~8 s, its pods tainted away at
        ~10 s and left Terminating until :meth:`delete_node`, as a cloud's node controller
        would)."""
        node = self.nodes[name]
        self._kill_cgroup(name)
        node.killed = True
        if node.process is not None:
            node.process.wait(10)

    def delete_node(self, name: str) -> None:
        """Delete the Node object (what a cloud does once its instance is gone)."""
        self.api("DELETE", f"/api/v1/nodes/{name}")

    def taint(self, node: str, key: str, value: str, effect: str) -> None:
        """Add a taint to ``node`` (``effect`` NoSchedule, PreferNoSchedule or NoExecute),
        as a termination handler does on a reclaim notice."""
        self.kubectl("taint", "nodes", node, f"{key}={value}:{effect}", "--overwrite")

    def untaint(self, node: str, key: str, effect: str) -> None:
        self.kubectl("taint", "nodes", node, f"{key}:{effect}-")

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        """Run this cluster's kubectl; its stdout."""
        result = subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
            check=False,
        )
        if check and result.returncode:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 10,
    ) -> Any:
        """One request to the API server (admin token); the decoded JSON answer (the
        text, for an answer that is not JSON)."""
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        request = urllib.request.Request(
            SERVER + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": content_type,
                "Accept": "application/json",
            },
        )
        with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
            data = response.read()
        try:
            return json.loads(data or b"null")
        except ValueError:
            return data.decode(errors="replace")

    def _api_ready(self) -> bool:
        for process in self._control:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[3]} exited ({process.returncode})")
        try:
            return self.api("GET", "/readyz", timeout=2) == "ok"
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False

    def _wait(self, condition: Any, timeout: float, what: str, log: str) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except urllib.error.HTTPError as error:
                if error.code not in (403, 404, 409, 500, 503):
                    raise
            except (ConnectionError, urllib.error.URLError, TimeoutError):
                pass
            if time.monotonic() > end:
                where = f"{self.root}/logs/{log}" if log else f"{self.root}/nodes/*/*.log"
                raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}; see {where}")
            time.sleep(0.2)

    def processes(self) -> dict[int, str]:
        """Every process of the cluster (pid: command line)."""
        found = {}
        for pid in self._pids():
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                pass
        return found

    def remote_connections(self) -> list[str]:
        """The cluster's TCP and UDP sockets that are connected beyond loopback (its
        statically linked programs escape tests/network_guard: this is their check)."""
        inodes: dict[str, int] = {}
        for pid in self._pids():
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes[target[8:-1]] = pid
            except OSError:
                continue
        found = []
        for table in ("tcp", "tcp6", "udp", "udp6"):
            try:
                lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                remote, inode = fields[2], fields[9]
                if inode not in inodes:
                    continue
                address = _address(remote)
                if address and not _loopback(address):
                    found.append(f"{table} {address} by pid {inodes[inode]}")
        return found

    def stop(self) -> None:
        """Kill everything: the nodes' kubelets, dockerds, containerds, shims and pods, then
        the control plane; remove the cgroups and etcd's data."""
        if not self._started:
            return
        try:
            for name in self.nodes:
                self._kill_cgroup(name)
            self._kill_cgroup()
        finally:
            for process in [*(n.process for n in self.nodes.values() if n.process), *self._control]:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            self._remove_cgroups()
            shutil.rmtree(self.etcd_dir, ignore_errors=True)
            for node in self.nodes.values():
                # dockerd's layers (root-owned, large); the logs stay.
                shutil.rmtree(node.root / "docker", ignore_errors=True)
                shutil.rmtree(node.root / "exec", ignore_errors=True)
            self._started = False


def _address(hex_address: str) -> str | None:
    """``0100007F:1A0B`` (from /proc/net/tcp) -> ``127.0.0.1``; None for 0.0.0.0 / ::."""
    host = hex_address.split(":")[0]
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        packed = raw[::-1]
    else:
        packed = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    if not any(packed):
        return None
    if len(packed) == 16 and packed[:12] == b"\0" * 10 + b"\xff\xff":
        packed = packed[12:]
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _join(argv: Iterable[str]) -> str:
    return " ".join(_quote(a) for a in argv)


def make_namespace(api: Callable[..., Any], name: str) -> None:
    """Create namespace ``name`` and wait until its ``default`` ServiceAccount has its token
    (the namespace takes pods then); ``api`` as :meth:`KubernetesCluster.api`. Called by
    the tests' namespace fixture and by tests/benchmarks/kubernetes.py."""
    api("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    end = time.monotonic() + 30
    while True:
        try:
            if api("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default").get("secrets"):
                return
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise
        if time.monotonic() > end:
            raise RuntimeError(f"namespace {name}: no default ServiceAccount after 30 s")
        time.sleep(0.05)


def python_pod(
    name: str,
    code: str,
    *,
    spot: bool = True,
    gpus: int = 0,
    labels: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    grace: int = 30,
    node: str | None = None,
    mounts: Iterable[str] = (),
) -> dict[str, Any]:
    """A pod that runs ``python -c code`` with this very interpreter: the empty image plus
    read-only hostPath mounts of /usr, the interpreter's prefix (where libpython is) and
    the virtual environment / site-packages; host network (no CNI here), the node's DNS.
    ``spot`` selects the spot node (with the toleration for its taint) or the on-demand
    one (``node``: that node by name, bypassing the scheduler); ``gpus``, a limit of
    ``nvidia.com/gpu``; ``mounts``, more host folders mounted read-only (a source checkout
    an editable install points at, say). The pod's environment has ``NODE_NAME``."""
    mounts = _python_mounts(mounts)
    container: dict[str, Any] = {
        "name": "python",
        "image": EMPTY_IMAGE,
        "imagePullPolicy": "Never",
        "command": [sys.executable, "-u", "-c", code],
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            *({"name": k, "value": v} for k, v in (env or {}).items()),
        ],
        "volumeMounts": [
            {"name": f"host{i}", "mountPath": path, "readOnly": True}
            for i, path in enumerate(mounts)
        ],
    }
    if gpus:
        container["resources"] = {"limits": {GPU_RESOURCE: str(gpus)}}
    spec: dict[str, Any] = {
        "hostNetwork": True,
        "dnsPolicy": "Default",
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": grace,
        "automountServiceAccountToken": False,
        "nodeSelector": {"karpenter.sh/capacity-type": "spot" if spot else "on-demand"},
        "containers": [container],
        "volumes": [
            {"name": f"host{i}", "hostPath": {"path": path, "type": "Directory"}}
            for i, path in enumerate(mounts)
        ],
    }
    if node:
        spec["nodeName"] = node
    if spot:
        spec["tolerations"] = [
            {
                "key": SPOT_TAINT["key"],
                "operator": "Equal",
                "value": SPOT_TAINT["value"],
                "effect": SPOT_TAINT["effect"],
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }


def _python_mounts(extra: Iterable[str] = ()) -> list[str]:
    """/usr, realpath(sys.base_prefix), and the folder of this Python's environment (the
    venv, or the site-packages outside both), as named and as resolved; ``extra``; without
    duplicates or nested paths."""
    import sysconfig

    candidates = ["/usr", *extra]
    for path in (sys.base_prefix, sys.prefix, sysconfig.get_paths()["purelib"]):
        candidates += [os.path.abspath(path), os.path.realpath(path)]
    # The interpreter itself may be a link out of the venv (to the prefix's bin): covered.
    mounts: list[str] = []
    for path in sorted(set(candidates), key=len):
        if not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts):
            mounts.append(path)
    return mounts


def _import_image(socket_path: str, tarball: str, name: str, *changes: str) -> None:
    """``docker import`` through the daemon's API (the docker CLI on PATH may be another
    version): POST /images/create?fromSrc=- with the tarball as the body."""
    from urllib.parse import urlencode

    repo, tag = name.rsplit(":", 1)
    query = [("fromSrc", "-"), ("repo", repo), ("tag", tag)] + [("changes", c) for c in changes]

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(socket_path)

    data = Path(tarball).read_bytes()
    end = time.monotonic() + 30
    while True:
        connection = Connection("localhost", timeout=60)
        try:
            connection.request(
                "POST",
                f"/images/create?{urlencode(query)}",
                body=data,
                headers={"Content-Type": "application/x-tar"},
            )
            response = connection.getresponse()
            text = response.read().decode()
            if response.status == 200 and '"error"' not in text:
                return
            raise RuntimeError(f"docker import {name}: {response.status} {text}")
        except (ConnectionError, FileNotFoundError):
            if time.monotonic() > end:
                raise
            time.sleep(0.1)
        finally:
            connection.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "import-image":
        _import_image(*sys.argv[2:])
        sys.exit(0)
    cluster = KubernetesCluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kubernetes-test"))
    started = time.monotonic()

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    # (A program started in the background by a shell ignores SIGINT: SIGTERM stops it too.)
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    signal.signal(signal.SIGHUP, _exit)
    try:
        cluster.start()
        print(f"started in {time.monotonic() - started:.1f} s", flush=True)
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        signal.pause()
    finally:
        cluster.stop()
