"""The kubernetes backend in a pod: with no kubeconfig it connects as its service account,
and the README's RBAC (its Role and ClusterRole, read from README.md) is all that account
needs to run a kernel, evict its pod, resume it on a new one and clean up.

The server runs in this process as if in a pod: the service's address in the environment
(``KUBERNETES_SERVICE_HOST``/``PORT``) and the service account's token and CA where
kubernetes_asyncio's in-cluster loader reads them (its module constants, pointed at files
here). The account is a real one of the test cluster, whose apiserver authorizes by RBAC.
"""

from __future__ import annotations

import base64
import copy
import logging
import re
import ssl
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import EventRecorder, execute, manager_of, moved, start_lowcost_kernel, wait_until
from kubernetes_asyncio.config import incluster_config
from kubernetes_cluster import API_PORT, SERVER, KubernetesCluster
from traitlets.config import Config

import jupyter_lowcost.backends.kubernetes as kubernetes_backend

from .conftest import CHECKOUT

README = Path(CHECKOUT) / "README.md"
RBAC = "rbac.authorization.k8s.io"
#: Where each kind of object is created (``{ns}``: the test's namespace).
PATHS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Role": f"/apis/{RBAC}/v1/namespaces/{{ns}}/roles",
    "RoleBinding": f"/apis/{RBAC}/v1/namespaces/{{ns}}/rolebindings",
    "ClusterRole": f"/apis/{RBAC}/v1/clusterroles",
    "ClusterRoleBinding": f"/apis/{RBAC}/v1/clusterrolebindings",
}
CLUSTER_WIDE = ("ClusterRole", "ClusterRoleBinding")
#: The service account's name when the README names none.
ACCOUNT = "jupyter-lowcost"
#: A fenced yaml block of the README (indented inside a list item, say), and its text.
YAML_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)```ya?ml[ \t]*\n(?P<body>.*?)^(?P=indent)```", re.MULTILINE | re.DOTALL
)


def readme_rbac() -> list[dict[str, Any]]:
    """The ServiceAccount, Roles, ClusterRoles and bindings of the README's yaml blocks."""
    docs = []
    for block in YAML_BLOCK.finditer(README.read_text()):
        for doc in yaml.safe_load_all(textwrap.dedent(block["body"])):
            if isinstance(doc, dict) and doc.get("kind") in PATHS:
                docs.append(doc)
    kinds = [d["kind"] for d in docs]
    assert "Role" in kinds and "ClusterRole" in kinds, f"README.md's RBAC yaml: {kinds}"
    return docs


def account_name(docs: list[dict[str, Any]]) -> str:
    """The README's service account: its ServiceAccount, or the one its bindings name."""
    for doc in docs:
        if doc["kind"] == "ServiceAccount":
            return str(doc["metadata"]["name"])
    for doc in docs:
        for subject in doc.get("subjects") or ():
            if subject.get("kind") == "ServiceAccount":
                return str(subject["name"])
    return ACCOUNT


def placed(docs: list[dict[str, Any]], namespace: str, account: str) -> list[dict[str, Any]]:
    """The README's objects for ``namespace`` (its cluster-wide ones renamed for it), with
    a binding to ``account`` for each role the README binds to nothing."""
    renamed = {
        d["metadata"]["name"]: f"{d['metadata']['name']}-{namespace}"
        for d in docs
        if d["kind"] == "ClusterRole"
    }
    out = []
    for doc in map(copy.deepcopy, docs):
        meta = doc.setdefault("metadata", {})
        if doc["kind"] in CLUSTER_WIDE:
            meta.pop("namespace", None)
            meta["name"] = f"{meta['name']}-{namespace}"
        else:
            meta["namespace"] = namespace
        ref = doc.get("roleRef")
        if ref and ref.get("kind") == "ClusterRole":
            ref["name"] = renamed.get(ref["name"], ref["name"])
        for subject in doc.get("subjects") or ():
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace
        out.append(doc)
    bound = {(d["roleRef"]["kind"], d["roleRef"]["name"]) for d in out if "roleRef" in d}
    for doc in list(out):
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind not in ("Role", "ClusterRole") or (kind, name) in bound:
            continue
        binding = "RoleBinding" if kind == "Role" else "ClusterRoleBinding"
        out.append(
            {
                "apiVersion": f"{RBAC}/v1",
                "kind": binding,
                "metadata": {"name": name} | ({"namespace": namespace} if kind == "Role" else {}),
                "roleRef": {"apiGroup": RBAC, "kind": kind, "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            }
        )
    if not any(d["kind"] == "ServiceAccount" for d in out):
        out.insert(
            0,
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": account, "namespace": namespace},
            },
        )
    return out


#: kubernetes_asyncio's method prefixes and the RBAC verbs they need.
VERBS = {
    "read": "get",
    "list": "list",
    "create": "create",
    "patch": "patch",
    "replace": "update",
    "delete_collection": "deletecollection",
    "delete": "delete",
}
#: CoreV1Api's names of resources, and RBAC's.
RESOURCES = {
    "pod": "pods",
    "secret": "secrets",
    "node": "nodes",
    "event": "events",
    "config_map": "configmaps",
    "persistent_volume_claim": "persistentvolumeclaims",
    "service": "services",
}


def server_calls() -> set[tuple[str, str, str, bool]]:
    """(verb, resource, subresource, namespaced) of every CoreV1Api call in the backend's
    source (``self._core.<method>``), with ``watch`` for those it watches."""
    package = Path(kubernetes_backend.__file__).parent
    source = "\n".join(path.read_text() for path in sorted(package.glob("*.py")))
    methods = set(re.findall(r"self\._core\.(\w+)", source))
    watched = set(re.findall(r"stream\(\s*self\._core\.(\w+)", source))
    assert methods and watched, "no CoreV1Api calls found in the backend's package"
    calls = set()
    for method in methods:
        verb = next((v for p, v in VERBS.items() if method.startswith(f"{p}_")), None)
        rest = re.sub(r"^(delete_collection|[a-z]+)_", "", method)
        namespaced = rest.startswith("namespaced_")
        rest = rest.removeprefix("namespaced_")
        resource = max(
            (r for r in RESOURCES if rest == r or rest.startswith(f"{r}_")), key=len, default=""
        )
        assert verb and resource, f"the backend calls {method}: add its verb/resource here"
        sub = rest[len(resource) + 1 :]
        verbs = [verb, "watch"] if method in watched else [verb]
        calls.update((v, RESOURCES[resource], sub, namespaced) for v in verbs)
    return calls


@dataclass
class ServiceAccount:
    name: str
    namespace: str
    token: str
    ca_file: Path

    def get(self, path: str) -> int:
        """The status of a GET of ``path`` with this account's token (and its CA)."""
        request = urllib.request.Request(
            SERVER + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code


def token_secret(cluster: KubernetesCluster, namespace: str, account: str) -> dict[str, str]:
    """The account's token Secret's data (decoded), once its token controller filled it."""
    end = time.monotonic() + 30
    while True:
        sa = cluster.api("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}")
        for ref in sa.get("secrets") or ():
            secret = cluster.api("GET", f"/api/v1/namespaces/{namespace}/secrets/{ref['name']}")
            data = secret.get("data") or {}
            if secret.get("type") == "kubernetes.io/service-account-token" and "token" in data:
                return {k: base64.b64decode(v).decode() for k, v in data.items()}
        assert time.monotonic() < end, f"no token Secret for ServiceAccount {account} in 30 s"
        time.sleep(0.05)


class Warnings(logging.Handler):
    """The server's warnings and errors."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def service_account(
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ServiceAccount]:
    """The README's RBAC applied and bound to a ServiceAccount in the test's namespace;
    this process looks like a pod running as that account (and has no KUBECONFIG)."""
    cluster, namespace = kubernetes_cluster, kube_namespace
    docs = readme_rbac()
    account = account_name(docs)
    made: list[str] = []
    try:
        for doc in placed(docs, namespace, account):
            path = PATHS[doc["kind"]].format(ns=namespace)
            cluster.api("POST", path, doc)
            if doc["kind"] in CLUSTER_WIDE:
                made.append(f"{path}/{doc['metadata']['name']}")
        data = token_secret(cluster, namespace, account)
        folder = tmp_path / "serviceaccount"
        folder.mkdir()
        (folder / "token").write_text(data["token"])
        (folder / "ca.crt").write_text(data["ca.crt"])
        monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(folder / "token"))
        monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(folder / "ca.crt"))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(API_PORT))
        monkeypatch.delenv("KUBECONFIG", raising=False)
        yield ServiceAccount(account, namespace, data["token"], folder / "ca.crt")
    finally:
        for path in reversed(made):  # (the namespace's objects go with it)
            cluster.api("DELETE", path)


@pytest.fixture
def server_warnings(jp_serverapp: Any) -> Iterator[Warnings]:
    """What the server's extension (and its backend) logs at WARNING and above, from
    before the backend starts (on the first request: the test's server has no loop of its
    own that starts extensions)."""
    handler = Warnings()
    log = manager_of(jp_serverapp).backend.log
    log.addHandler(handler)
    yield handler
    log.removeHandler(handler)


@pytest.fixture
def jp_server_config(jp_server_config: Config, service_account: ServiceAccount) -> Config:
    """tests/k8s/conftest.py's server, with no kubeconfig: the in-cluster configuration."""
    jp_server_config.KubernetesBackend.kubeconfig = ""
    return jp_server_config


def test_the_backend_needs_no_more_than_the_readme_grants(
    kubernetes_cluster: KubernetesCluster, service_account: ServiceAccount
) -> None:
    """Every call the backend makes (CoreV1Api, in backends/kubernetes/) is one the README's
    RBAC allows its service account (the apiserver's answer, asked by the admin)."""
    sa = service_account
    user = f"system:serviceaccount:{sa.namespace}:{sa.name}"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{sa.namespace}"]
    refused = []
    for verb, resource, sub, namespaced in sorted(server_calls()):
        attributes = {"verb": verb, "resource": resource, "subresource": sub, "group": ""}
        if namespaced:
            attributes["namespace"] = sa.namespace
        review = kubernetes_cluster.api(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {"user": user, "groups": groups, "resourceAttributes": attributes},
            },
        )
        if not review["status"].get("allowed"):
            refused.append(f"{verb} {resource}{'/' + sub if sub else ''}")
    assert not refused, f"README.md's Role/ClusterRole does not allow: {refused}"


@pytest.mark.timeout(300)
async def test_in_a_pod_the_server_runs_as_its_service_account_with_the_readmes_rbac(
    api: Any,
    jp_fetch: Any,
    jp_serverapp: Any,
    instance_events: EventRecorder,
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
    service_account: ServiceAccount,
    server_warnings: Warnings,
) -> None:
    cluster, sa = kubernetes_cluster, service_account
    # The token is the account's, not an admin's: its own namespace only.
    assert sa.get(f"/api/v1/namespaces/{kube_namespace}/pods") == 200
    assert sa.get("/api/v1/namespaces/default/pods") == 403
    assert sa.get("/api/v1/namespaces/kube-system/secrets") == 403
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    # The server's client is the in-cluster one: the service, the account's token and CA.
    configuration = manager_of(jp_serverapp).backend._api.configuration
    assert configuration.host == f"https://127.0.0.1:{API_PORT}"
    assert configuration.api_key["BearerToken"] == f"Bearer {sa.token}"
    assert configuration.ssl_ca_cert == str(sa.ca_file)
    pods = cluster.api("GET", f"/api/v1/namespaces/{kube_namespace}/pods")["items"]
    [pod] = [p for p in pods if p["metadata"]["labels"].get("jupyter-lowcost/instance") == first]
    assert pod["spec"]["nodeName"] == cluster.spot_node
    await execute(jp_serverapp, kernel_id, "x = 42")
    # An injected interruption: an eviction through the Eviction API, as the account.
    status, answer = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 8})
    assert status in (200, 202), answer
    noticed = await instance_events.wait_for(instance_id=first, state="notice", timeout=20)
    assert "pod jupyter-lowcost-" in noticed["reason"], noticed
    interrupted = await instance_events.wait_for(instance_id=first, state="interrupted", timeout=60)
    assert interrupted["recovery"] == "relaunch", interrupted
    running = await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first, timeout=90
    )
    await wait_until(lambda: moved(api, kernel_id), timeout=60)
    out = await execute(jp_serverapp, kernel_id, "print(x)")
    assert out.strip() == "42"
    pods = cluster.api("GET", f"/api/v1/namespaces/{kube_namespace}/pods")["items"]
    [pod] = [
        p
        for p in pods
        if p["metadata"]["labels"].get("jupyter-lowcost/instance") == running["instance_id"]
    ]
    assert pod["spec"]["nodeName"] == cluster.spot_node
    # Shut down: no pod and no Secret of ours is left (the autouse fixture checks it too).
    await jp_fetch("api", "kernels", kernel_id, method="DELETE")
    ours = "labelSelector=app.kubernetes.io/managed-by=jupyter-lowcost"
    await wait_until(
        lambda: (
            not any(
                cluster.api("GET", f"/api/v1/namespaces/{kube_namespace}/{kind}?{ours}")["items"]
                for kind in ("pods", "secrets")
            )
        ),
        timeout=60,
    )
    # Nothing the server asked for was refused (a watch, a delete: logged, not raised).
    denied = [m for m in server_warnings.messages if "forbidden" in m.lower()]
    assert not denied, f"the server was refused (README.md's Role?): {denied}"
