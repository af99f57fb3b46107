"""A hard-killed server, restarted, takes its pods back (same pods, same kernel processes),
resumes the kernel whose pod went meanwhile, and leaves no pod it does not account for:
not even those no record names (a server killed between creating a pod and recording it),
while the pods of servers with another data folder in the same namespace stay."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_process import LowCostServer
from kubernetes_cluster import KubernetesCluster, _python_mounts, python_pod
from notebook_runner import NotebookRunner

from .conftest import CHECKOUT, KUBERNETES_CONFIG

TOKEN = "kubernetes-restart-token"


@pytest.fixture
def server(
    tmp_path: Path, kubernetes_cluster: KubernetesCluster, kube_namespace: str
) -> Iterator[LowCostServer]:
    config_dir = tmp_path / "server-config"
    config_dir.mkdir()
    config: dict[str, Any] = json.loads(json.dumps(KUBERNETES_CONFIG))
    config["KubernetesBackend"].update(
        namespace=kube_namespace,
        kubeconfig=kubernetes_cluster.env["KUBECONFIG"],
        host_paths=sorted({*_python_mounts(), CHECKOUT, str(tmp_path)}, key=len),
    )
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(config))
    made = LowCostServer(tmp_path, TOKEN, {"JUPYTER_CONFIG_DIR": str(config_dir)})
    yield made
    made.stop()


def run(server: LowCostServer, kernel_id: str, code: str) -> str:
    runner = NotebookRunner(server.base, TOKEN, "")
    runner.kernel_id = kernel_id
    reply, outputs = runner.execute(code, 60)
    assert reply["status"] == "ok", reply
    return "".join(o.get("text", "") for o in outputs)


def our_pods(cluster: KubernetesCluster, namespace: str) -> dict[str, str]:
    """instance id -> pod uid of the pods of ours that are not being deleted."""
    pods = cluster.api(
        "GET",
        f"/api/v1/namespaces/{namespace}/pods"
        "?labelSelector=app.kubernetes.io/managed-by=jupyter-lowcost",
    )["items"]
    return {
        p["metadata"]["labels"]["jupyter-lowcost/instance"]: p["metadata"]["uid"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
    }


def test_a_restarted_server_takes_its_pods_back_and_resumes_the_lost_one(
    server: LowCostServer, kubernetes_cluster: KubernetesCluster, kube_namespace: str
) -> None:
    cluster = kubernetes_cluster
    server.start()
    kernels = {}
    for name in ("kept", "lost"):
        response = server.post("kernels", {"instance_type": "T4", "low_cost": True})
        assert response.status_code == 201, response.text
        kernels[name] = response.json()
    kept, lost = kernels["kept"]["kernel"]["id"], kernels["lost"]["kernel"]["id"]
    pid = run(server, kept, "import os\nx = 41\nprint(os.getpid())").strip()
    run(server, lost, "z = 'saved'")
    instance_of = {name: body["instance"]["id"] for name, body in kernels.items()}
    pods = our_pods(cluster, kube_namespace)
    assert set(pods) == set(instance_of.values())

    server.kill_hard()
    # Without a server the pods run on; one is deleted meanwhile.
    cluster.kubectl(
        "-n", kube_namespace, "delete", "pod", f"jupyter-lowcost-{instance_of['lost']}",
        "--grace-period=0", "--force",
    )  # fmt: skip

    server.start()
    # The running pod is the kernel's still: the same pod, the same process, its variables.
    assert run(server, kept, "print(os.getpid(), x + 1)") == f"{pid} 42\n"
    assert our_pods(cluster, kube_namespace)[instance_of["kept"]] == pods[instance_of["kept"]]
    instance = server.get(f"kernels/{kept}").json()["instance"]
    assert instance["id"] == instance_of["kept"] and instance["state"] == "running"

    # The lost one is resumed from its checkpoint, on a new pod.
    end = time.monotonic() + 120
    while True:
        model = server.get(f"kernels/{lost}").json()
        if model["restored"] and model["instance"]["state"] == "running":
            break
        assert time.monotonic() < end, f"the lost kernel did not resume: {model}"
        time.sleep(0.5)
    assert model["instance"]["id"] != instance_of["lost"]
    assert run(server, lost, "print(z)") == "saved\n"
    # Every pod of ours is one the server knows is running, and no other.
    running = {i["id"] for i in server.get("instances").json() if i["state"] == "running"}
    assert set(our_pods(cluster, kube_namespace)) == running


def test_a_restarted_server_removes_its_folders_pods_that_no_record_names_and_no_other(
    server: LowCostServer, kubernetes_cluster: KubernetesCluster, kube_namespace: str
) -> None:
    cluster = kubernetes_cluster
    server.start()
    response = server.post("kernels", {"instance_type": "T4", "low_cost": True})
    assert response.status_code == 201, response.text
    kernel_id, instance_id = response.json()["kernel"]["id"], response.json()["instance"]["id"]
    run(server, kernel_id, "x = 1")
    pod = cluster.api(
        "GET", f"/api/v1/namespaces/{kube_namespace}/pods/jupyter-lowcost-{instance_id}"
    )
    owner = pod["metadata"]["labels"]["jupyter-lowcost/owner"]
    # The label is the data folder's id, the same for every server of that folder.
    assert owner == (server.home / "data" / "lowcost" / "folder-id").read_text().strip()
    server.kill_hard()

    # What servers killed at the wrong moment leave: a pod and its Secret created, the
    # record not saved yet; a Secret created, the pod not yet. And a pod and a Secret of a
    # server with another data folder, sharing the namespace.
    def ours(instance: str, folder: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/managed-by": "jupyter-lowcost",
            "jupyter-lowcost/instance": instance,
            "jupyter-lowcost/owner": folder,
        }

    namespace_path = f"/api/v1/namespaces/{kube_namespace}"
    for instance, folder, with_pod in (
        ("i-unrecorded1", owner, True),
        ("i-unrecorded2", owner, False),
        ("i-elsewhere", "0123456789abcdef", True),
    ):
        name = f"jupyter-lowcost-{instance}"
        cluster.api(
            "POST",
            f"{namespace_path}/secrets",
            {
                "metadata": {"name": name, "labels": ours(instance, folder)},
                "stringData": {"k": "v"},
            },
        )
        if with_pod:
            made = python_pod(name, "import time; time.sleep(600)", labels=ours(instance, folder))
            cluster.api("POST", f"{namespace_path}/pods", made)

    def left(kind: str) -> set[str]:
        items = cluster.api(
            "GET",
            f"{namespace_path}/{kind}?labelSelector=app.kubernetes.io/managed-by=jupyter-lowcost",
        )["items"]
        return {
            i["metadata"]["labels"]["jupyter-lowcost/instance"]
            for i in items
            if not i["metadata"].get("deletionTimestamp")
        }

    assert left("pods") == {instance_id, "i-unrecorded1", "i-elsewhere"}
    server.start()
    # The kernel is taken back; what no record names is gone, the other folder's stays.
    assert run(server, kernel_id, "print(x + 1)") == "2\n"
    end = time.monotonic() + 30
    while left("pods") != {instance_id, "i-elsewhere"} or left("secrets") != {
        instance_id,
        "i-elsewhere",
    }:
        assert time.monotonic() < end, (left("pods"), left("secrets"))
        time.sleep(0.2)
    assert "i-unrecorded1: stopped; no server had a record of it" in server.log()


def test_a_server_that_stops_leaves_no_pod_and_no_secret(
    server: LowCostServer, kubernetes_cluster: KubernetesCluster, kube_namespace: str
) -> None:
    server.start()
    for low_cost in (True, False):
        response = server.post("kernels", {"instance_type": "T4", "low_cost": low_cost})
        assert response.status_code == 201, response.text
    assert len(our_pods(kubernetes_cluster, kube_namespace)) == 2
    server.stop()  # (SIGTERM: Jupyter's own shutdown)
    assert server.process is not None and server.process.returncode is not None
    ours = "labelSelector=app.kubernetes.io/managed-by=jupyter-lowcost"
    left = {
        kind: [
            item["metadata"]["name"]
            for item in kubernetes_cluster.api(
                "GET", f"/api/v1/namespaces/{kube_namespace}/{kind}?{ours}"
            )["items"]
            if not item["metadata"].get("deletionTimestamp")
        ]
        for kind in ("pods", "secrets")
    }
    assert left == {"pods": [], "secrets": []}
