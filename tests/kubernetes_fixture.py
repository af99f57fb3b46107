"""Fixtures: one real Kubernetes cluster for the whole session (tests/kubernetes_cluster.py:
etcd, the control plane, a spot node and an on-demand node with 4 fake GPUs each), and a
fresh namespace per test.

A test module that uses them names this module as a plugin::

    pytest_plugins = ["kubernetes_fixture"]

The cluster needs the binaries tests/kubernetes/build.sh builds (once, then cached): when
they are missing the fixture fails, saying so (it does not skip).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from itertools import count

import pytest
from kubernetes_cluster import INSTALL_HINT, KubernetesCluster, make_namespace, missing_programs

_namespaces = count(1)

#: Held by the test run whose cluster is up: the cluster's ports and node addresses are
#: fixed, so a second run on this machine waits for the first instead of breaking both.
LOCK_FILE = "/run/lock/jupyter-lowcost-kubernetes.lock"


@pytest.fixture(scope="session")
def kubernetes_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubernetesCluster]:
    missing = missing_programs()
    if missing:
        pytest.fail(f"{INSTALL_HINT}; missing: {', '.join(missing)}", pytrace=False)
    os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
    with open(LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"\nkubernetes_cluster: another test run has the cluster ({LOCK_FILE}); "
                "waiting for it to finish",
                file=sys.stderr,
            )
            fcntl.flock(lock, fcntl.LOCK_EX)
        cluster = KubernetesCluster(tmp_path_factory.mktemp("kubernetes"))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def kube_namespace(
    kubernetes_cluster: KubernetesCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A new namespace (its ``default`` ServiceAccount ready, so that it takes pods), with
    KUBECONFIG set for this test; deleted afterwards with its pods (no grace)."""
    cluster = kubernetes_cluster
    for key, value in cluster.env.items():
        monkeypatch.setenv(key, value)
    name = f"test-{next(_namespaces)}-{int(time.time()) % 100000}"
    make_namespace(cluster.api, name)
    yield name
    cluster.api("DELETE", f"/api/v1/namespaces/{name}/pods?gracePeriodSeconds=0")
    cluster.api("DELETE", f"/api/v1/namespaces/{name}")
