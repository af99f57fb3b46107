"""Checkpoints reach the next pod through a ReadWriteMany PersistentVolumeClaim
(``KubernetesBackend.checkpoint_claim``), not through the test's hostPath mounts.

The server's checkpoint folder is outside every ``host_paths`` entry: the kernel's pods
see it only through the claim, which is bound to a static PersistentVolume (a hostPath
at that folder: the two nodes are this machine, as the server's volume and the pods'
would be one Filestore, EFS or Azure Files share on a real cluster).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    EventRecorder,
    checkpointed,
    execute,
    manager_of,
    moved,
    start_lowcost_kernel,
    wait_until,
)
from kubernetes_cluster import KubernetesCluster
from traitlets.config import Config

from jupyter_lowcost.storage import checkpoint_dirs

#: The claim the kernels' pods mount (in the test's namespace).
CLAIM = "notebook-checkpoints"


def _wait_gone(cluster: KubernetesCluster, path: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            cluster.api("GET", path)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return
            raise
        assert time.monotonic() < end, f"{path} still there after {timeout:g} s"
        time.sleep(0.1)


@pytest.fixture
def checkpoint_volume(
    kubernetes_cluster: KubernetesCluster, kube_namespace: str
) -> Iterator[tuple[Path, str]]:
    """A host folder (outside the test's tmp_path, so outside every hostPath mount), a
    ReadWriteMany PersistentVolume at it and a claim bound to that volume; the folder and
    the volume's name. All three are gone afterwards."""
    cluster = kubernetes_cluster
    folder = Path(tempfile.mkdtemp(prefix="jupyter-lowcost-checkpoint-volume-", dir="/var/tmp"))
    volume = f"{kube_namespace}-checkpoints"  # (volumes are cluster-scoped: one per test)
    claim_path = f"/api/v1/namespaces/{kube_namespace}/persistentvolumeclaims/{CLAIM}"
    try:
        cluster.api(
            "POST",
            "/api/v1/persistentvolumes",
            {
                "metadata": {"name": volume},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": str(folder), "type": "Directory"},
                },
            },
        )
        cluster.api(
            "POST",
            f"/api/v1/namespaces/{kube_namespace}/persistentvolumeclaims",
            {
                "metadata": {"name": CLAIM},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": volume,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        end = time.monotonic() + 60
        while cluster.api("GET", claim_path)["status"].get("phase") != "Bound":
            assert time.monotonic() < end, cluster.api("GET", claim_path)["status"]
            time.sleep(0.1)
        assert cluster.api("GET", claim_path)["spec"]["volumeName"] == volume
        yield folder, volume
    finally:
        # (the kernels' pods are gone by now: kernels_shut_down_before_the_namespace_goes)
        for path in (claim_path, f"/api/v1/persistentvolumes/{volume}"):
            try:
                cluster.api("DELETE", path)
            except urllib.error.HTTPError as error:
                if error.code != 404:
                    raise
            _wait_gone(cluster, path)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def jp_server_config(jp_server_config: Config, checkpoint_volume: tuple[Path, str]) -> Config:
    """The tests' Kubernetes server configuration, its checkpoints on the claim."""
    folder, _ = checkpoint_volume
    host_paths = jp_server_config.KubernetesBackend.host_paths
    # The pods could reach the folder through no hostPath mount: only through the claim.
    assert not [p for p in host_paths if folder.is_relative_to(p)], host_paths
    jp_server_config.LowCostApp.checkpoint_dir = str(folder)
    jp_server_config.KubernetesBackend.checkpoint_claim = CLAIM
    return jp_server_config


def _pod(cluster: KubernetesCluster, namespace: str, instance_id: str) -> dict[str, Any]:
    pods = cluster.api("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
    [pod] = [
        p for p in pods if p["metadata"]["labels"].get("jupyter-lowcost/instance") == instance_id
    ]
    return pod


async def test_checkpoints_reach_the_next_pod_through_a_read_write_many_claim(
    api: Any,
    jp_serverapp: Any,
    instance_events: EventRecorder,
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
    checkpoint_volume: tuple[Path, str],
) -> None:
    cluster = kubernetes_cluster
    folder, volume = checkpoint_volume
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    # 42, and 1 MiB of random bytes (no compression makes it smaller on the volume).
    out = await execute(
        jp_serverapp,
        kernel_id,
        "import hashlib, os\nx = 42\nblob = os.urandom(1 << 20)\n"
        "print(hashlib.sha256(blob).hexdigest())",
    )
    digest = out.strip()
    # The checkpoint is on the volume, where the server looks for it (in its own mount).
    await checkpointed(jp_serverapp, kernel_id)
    assert manager_of(jp_serverapp).settings.checkpoint_dir == folder
    written = checkpoint_dirs.read(folder / kernel_id)
    assert written.latest is not None and written.variables >= 2, written
    assert written.disk_size() >= 1 << 20, written

    status, answer = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 8})
    assert status in (200, 202), answer
    await instance_events.wait_for(instance_id=first, state="notice", timeout=20)
    interrupted = await instance_events.wait_for(instance_id=first, state="interrupted", timeout=60)
    assert interrupted["recovery"] == "relaunch"
    running = await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first, timeout=90
    )
    await wait_until(lambda: moved(api, kernel_id), timeout=60)
    out = await execute(jp_serverapp, kernel_id, "print(x, len(blob))")
    assert out.split() == ["42", str(1 << 20)]
    out = await execute(jp_serverapp, kernel_id, "print(hashlib.sha256(blob).hexdigest())")
    assert out.strip() == digest

    # The new pod has the claim where the server has the volume (the checkpoint folder of
    # every kernel, the parent of this kernel's), and no hostPath at or above it.
    pod = _pod(cluster, kube_namespace, running["instance_id"])
    assert pod["spec"]["nodeName"] == cluster.spot_node
    claimed = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert [v["persistentVolumeClaim"]["claimName"] for v in claimed] == [CLAIM]
    [container] = pod["spec"]["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == claimed[0]["name"]]
    assert mount["mountPath"] == str(folder) and not mount.get("subPath"), mount
    host_paths = [v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v]
    assert not [p for p in host_paths if folder.is_relative_to(p)], host_paths
    # The claim is bound to the volume at the host folder, which holds the checkpoints of
    # both pods: the new kernel's checkpoints went on in the same folder.
    claim = cluster.api(
        "GET", f"/api/v1/namespaces/{kube_namespace}/persistentvolumeclaims/{CLAIM}"
    )
    assert claim["spec"]["volumeName"] == volume
    pv = cluster.api("GET", f"/api/v1/persistentvolumes/{volume}")
    assert pv["spec"]["hostPath"]["path"] == str(folder)
    await checkpointed(jp_serverapp, kernel_id)
    after = checkpoint_dirs.read(folder / kernel_id)
    assert after.latest is not None and int(after.latest) > int(written.latest), (written, after)
    assert sorted(p.name for p in folder.iterdir()) == [kernel_id]
