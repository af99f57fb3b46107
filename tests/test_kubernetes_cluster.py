"""The test Kubernetes cluster itself (tests/kubernetes_cluster.py): two Ready nodes marked
as the clouds mark spot and on-demand capacity, 4 fake GPUs each, pods that run this
machine's Python and reach the test on loopback, GPU accounting by the scheduler, a lost
node, and nothing that talks beyond loopback."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_cluster import (
    CACHE,
    GPU_RESOURCE,
    GPUS,
    ON_DEMAND_LABELS,
    SPOT_LABELS,
    SPOT_TAINT,
    KubernetesCluster,
    python_pod,
)



async def api_client(cluster: KubernetesCluster) -> client.ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(cluster.kubeconfig), client_configuration=configuration
    )
    return client.ApiClient(configuration)


async def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def test_two_ready_nodes_spot_and_on_demand_with_gpus(
    kubernetes_cluster: KubernetesCluster,
) -> None:
    nodes = json.loads(kubernetes_cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert {"127.0.0.2", "127.0.0.3"} <= set(by_name)
    for name, node in by_name.items():
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", name
        assert node["status"]["capacity"][GPU_RESOURCE] == str(GPUS)
        assert node["status"]["allocatable"][GPU_RESOURCE] == str(GPUS)
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert addresses["InternalIP"] == name
    spot, on_demand = by_name["127.0.0.2"], by_name["127.0.0.3"]
    assert SPOT_LABELS.items() <= spot["metadata"]["labels"].items()
    assert spot["spec"]["taints"] == [SPOT_TAINT]
    assert ON_DEMAND_LABELS.items() <= on_demand["metadata"]["labels"].items()
    assert "cloud.google.com/gke-spot" not in on_demand["metadata"]["labels"]
    assert not on_demand["spec"].get("taints")
    assert kubernetes_cluster.spot_node == "127.0.0.2"
    assert kubernetes_cluster.on_demand_node == "127.0.0.3"


async def test_python_pod_lands_on_the_spot_node_and_connects_back(
    kubernetes_cluster: KubernetesCluster, kube_namespace: str
) -> None:
    received: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        await received.put((time.monotonic(), data))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    code = (
        "import os, socket, sys\n"
        f"s = socket.create_connection(('127.0.0.1', {port}))\n"
        "s.sendall(f\"{os.environ['NODE_NAME']} {sys.executable} {sys.prefix}\".encode())\n"
        "s.close()\n"
    )
    api = await api_client(kubernetes_cluster)
    try:
        core = client.CoreV1Api(api)
        created = time.monotonic()
        await core.create_namespaced_pod(kube_namespace, python_pod("hello", code, spot=True))
        connected, data = await asyncio.wait_for(received.get(), 60)
        node, executable, prefix = data.decode().split()
        assert node == kubernetes_cluster.spot_node
        assert executable == sys.executable
        assert prefix == sys.prefix

        async def running() -> Any:
            pod = await core.read_namespaced_pod("hello", kube_namespace)
            return pod if pod.status.phase in ("Running", "Succeeded") else None

        pod = await wait_for(running, 30, "the pod to run")
        phase_seen = time.monotonic()
        assert pod.spec.node_name == kubernetes_cluster.spot_node

        async def succeeded() -> Any:
            pod = await core.read_namespaced_pod("hello", kube_namespace)
            assert pod.status.phase != "Failed", pod.status
            return pod.status.phase == "Succeeded"

        await wait_for(succeeded, 30, "the pod to succeed")
        print(
            f"pod created -> connected back: {connected - created:.2f} s; "
            f"-> phase Running or later seen: {phase_seen - created:.2f} s"
        )
    finally:
        await api.close()
        server.close()
        await server.wait_closed()


async def test_a_fifth_one_gpu_pod_on_a_node_of_four_gpus_is_unschedulable(
    kubernetes_cluster: KubernetesCluster, kube_namespace: str
) -> None:
    sleeper = "import time\ntime.sleep(600)\n"
    api = await api_client(kubernetes_cluster)
    try:
        core = client.CoreV1Api(api)
        for i in range(GPUS):
            await core.create_namespaced_pod(
                kube_namespace, python_pod(f"gpu-{i}", sleeper, spot=False, gpus=1, grace=0)
            )

        async def all_running() -> bool:
            pods = (await core.list_namespaced_pod(kube_namespace)).items
            return len(pods) == GPUS and all(p.status.phase == "Running" for p in pods)

        await wait_for(all_running, 60, f"{GPUS} one-GPU pods to run")
        pods = (await core.list_namespaced_pod(kube_namespace)).items
        assert {p.spec.node_name for p in pods} == {kubernetes_cluster.on_demand_node}

        await core.create_namespaced_pod(
            kube_namespace, python_pod("gpu-extra", sleeper, spot=False, gpus=1, grace=0)
        )

        async def unschedulable() -> Any:
            pod = await core.read_namespaced_pod("gpu-extra", kube_namespace)
            for condition in pod.status.conditions or []:
                if condition.type == "PodScheduled" and condition.status == "False":
                    return condition
            return None

        condition = await wait_for(unschedulable, 30, "the fifth pod to be found unschedulable")
        assert condition.reason == "Unschedulable"
        assert f"Insufficient {GPU_RESOURCE}" in condition.message
        await asyncio.sleep(2)
        pod = await core.read_namespaced_pod("gpu-extra", kube_namespace)
        assert pod.status.phase == "Pending"
        assert pod.spec.node_name is None
    finally:
        await api.close()


async def test_a_lost_node_goes_unknown_and_its_pod_dies(
    kubernetes_cluster: KubernetesCluster, kube_namespace: str
) -> None:
    """A third node (spot), tainted by :meth:`taint`, killed by :meth:`kill_node`: its
    pod's process dies at once, the node is Ready=Unknown within ~10 s."""
    name = "127.0.0.4"
    kubernetes_cluster.add_node(name, spot=True)
    kubernetes_cluster.taint(name, "jupyter-lowcost/test", "yes", "PreferNoSchedule")
    node = json.loads(kubernetes_cluster.kubectl("get", "node", name, "-o", "json"))
    assert {"key": "jupyter-lowcost/test", "value": "yes", "effect": "PreferNoSchedule"} in node[
        "spec"
    ]["taints"]

    closed = asyncio.Event()
    connected = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await reader.read()  # until the pod's process is gone
        closed.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    code = (
        "import socket, time\n"
        f"s = socket.create_connection(('127.0.0.1', {port}))\n"
        "time.sleep(600)\n"
    )
    api = await api_client(kubernetes_cluster)
    try:
        core = client.CoreV1Api(api)
        await core.create_namespaced_pod(kube_namespace, python_pod("doomed", code, node=name))
        await asyncio.wait_for(connected.wait(), 60)
        killed = time.monotonic()
        kubernetes_cluster.kill_node(name)
        await asyncio.wait_for(closed.wait(), 5)
        assert not any(
            f"/{name}/" in command for command in kubernetes_cluster.processes().values()
        )

        async def unknown() -> bool:
            node = await core.read_node(name)
            ready = {c.type: c.status for c in node.status.conditions}["Ready"]
            return ready == "Unknown"

        await wait_for(unknown, 30, "the lost node to be Ready=Unknown")
        print(f"node killed -> Ready=Unknown: {time.monotonic() - killed:.1f} s")
    finally:
        await api.close()
        server.close()
        await server.wait_closed()
        kubernetes_cluster.delete_node(name)


def test_nothing_talks_beyond_loopback(kubernetes_cluster: KubernetesCluster) -> None:
    """Go programs are static: tests/network_guard cannot see them. The kubelet's AWS
    credential provider (it probes 169.254.169.254) is not built in and the kubelet runs
    with AWS_EC2_METADATA_DISABLED=true; no socket of the cluster goes beyond loopback."""
    changes = (CACHE / "source-changes.txt").read_text()
    assert "credentialprovider/gcp" in changes
    assert "credentialprovider/aws" not in changes
    kubelet = (CACHE / "bin" / "kubelet").read_bytes()
    assert b"k8s.io/kubernetes/pkg/credentialprovider/gcp." in kubelet
    assert b"k8s.io/kubernetes/pkg/credentialprovider/aws." not in kubelet
    kubelets = [
        pid
        for pid, command in kubernetes_cluster.processes().items()
        if command.startswith(str(CACHE / "bin" / "kubelet") + " ")
    ]
    assert len(kubelets) >= 2
    for pid in kubelets:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"AWS_EC2_METADATA_DISABLED=true" in environ
    assert kubernetes_cluster.remote_connections() == []
