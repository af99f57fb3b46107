"""A hard-killed server, restarted, takes its pods back (same pods, same kernel processes),
resumes the kernel whose pod went meanwhile, and leaves no pod it does not account for."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_process import LowCostServer
from kubernetes_cluster import KubernetesCluster, _python_mounts
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
