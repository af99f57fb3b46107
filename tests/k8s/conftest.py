"""Fixtures: the real two-node Kubernetes of ``tests/kubernetes_cluster.py`` (once per run),
a namespace per test, and servers whose backend runs kernels as pods in it.

The spot node carries GKE's spot label and taint: the ``gke`` preset sends low-cost pods
there and regular ones to the on-demand node. Pods run this machine's Python through
hostPath mounts (no image registry here), in the node's network (no CNI).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BASE_CONFIG, _merge
from kubernetes_cluster import EMPTY_IMAGE, KubernetesCluster, _python_mounts
from traitlets.config import Config

from jupyter_lowcost.backends.kubernetes import MANAGED_BY, MANAGER

#: Where this checkout is (pods import jupyter_lowcost from it when it is not installed).
CHECKOUT = str(Path(__file__).resolve().parents[2])

#: The Kubernetes side of the server configuration of every test here.
KUBERNETES_CONFIG: dict[str, Any] = {
    "LowCostApp": {"backend": "kubernetes"},
    "KubernetesBackend": {
        "preset": "gke",
        "image": EMPTY_IMAGE,
        "image_pull_policy": "Never",
        "host_network": True,
        "termination_grace_seconds": 10,
        "pending_timeout": 8.0,
        # Small requests: the nodes are this machine (2 cores); each has 4 fake GPUs.
        "instance_types": {
            "T4": {"cpu": "10m", "memory": "32Mi"},
            "A100-80G": {"cpu": "10m", "memory": "32Mi"},
        },
    },
}


@pytest.fixture
def jp_server_config(
    request: pytest.FixtureRequest,
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
    jp_root_dir: Path,
    jp_data_dir: Path,
    tmp_path: Path,
) -> Config:
    marker = request.node.get_closest_marker("lowcost")
    # The test's folder holds the server's root and data folders (checkpoints) and what
    # the kernels write: the pods see it where the server does.
    assert jp_root_dir.is_relative_to(tmp_path) and jp_data_dir.is_relative_to(tmp_path)
    host_paths = sorted({*_python_mounts(), CHECKOUT, str(tmp_path)}, key=len)
    config = _merge(
        _merge(BASE_CONFIG, KUBERNETES_CONFIG),
        {
            "KubernetesBackend": {
                "namespace": kube_namespace,
                "kubeconfig": kubernetes_cluster.env["KUBECONFIG"],
                "host_paths": host_paths,
            }
        },
    )
    return Config(_merge(config, marker.kwargs if marker else {}))


@pytest.fixture(autouse=True)
def pods_import_this_checkout(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kernels' environment (which the pods get) finds jupyter_lowcost in this checkout."""
    paths = [CHECKOUT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(dict.fromkeys(paths)))
    assert sys.executable
    yield


@pytest.fixture(autouse=True)
def kernels_shut_down_before_the_namespace_goes(request: pytest.FixtureRequest) -> Iterator[None]:
    """The in-process server's kernels (for a test that has one) are shut down while their
    namespace still exists: deleting its pods first would be a reclaim of each (a
    relaunch during the server's cleanup)."""
    if "jp_serverapp" not in request.fixturenames:
        yield
        return
    namespace = request.getfixturevalue("kube_namespace")
    cluster = request.getfixturevalue("kubernetes_cluster")
    app = request.getfixturevalue("jp_serverapp")
    loop = request.getfixturevalue("jp_asyncio_loop")
    yield
    loop.run_until_complete(app.kernel_manager.shutdown_all())
    # No pod and no Secret of ours is left once the kernels are shut down.
    ours = f"labelSelector={MANAGED_BY}%3D{MANAGER}"
    end = time.monotonic() + 30
    while True:
        left = [
            f"{kind} {item['metadata']['name']}"
            for kind in ("pods", "secrets")
            for item in cluster.api("GET", f"/api/v1/namespaces/{namespace}/{kind}?{ours}")["items"]
        ]
        if not left:
            break
        assert time.monotonic() < end, f"left after the kernels were shut down: {left}"
        time.sleep(0.2)
