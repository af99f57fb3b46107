"""The kubernetes backend's pods, as it writes them: where each tier goes on each cloud, what
a pod asks for and carries, and config that is wrong refused with the trait's name.

(What the cluster does with them is in ``tests/k8s/``, against a real one.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from traitlets import TraitError

from jupyter_lowcost import env as names
from jupyter_lowcost.backends.base import InstanceType, LaunchSpec
from jupyter_lowcost.backends.kubernetes import KubernetesBackend
from jupyter_lowcost.storage.records import InstanceRecord

CATALOG = {
    "T4": InstanceType("T4", "NVIDIA T4", 1, 4, 16.0, 0.53, 0.16),
    "CPU": InstanceType("CPU", "none", 0, 2, 8.0, 0.10, 0.03),
}


def pod_of(
    backend: KubernetesBackend, low_cost: bool = True, itype: str = "T4", **spec: Any
) -> dict:
    backend.offered_types(CATALOG)
    record = InstanceRecord("k1", itype, low_cost, "kubernetes", 0.16, 0.53)
    launch = LaunchSpec(
        python="/opt/python/bin/python",
        env={"A": "1", names.LAUNCH_SECRET: "s3cret", names.CHECKPOINT_DIR: "/data/ckpt/k1"},
        cwd=spec.get("cwd"),
        log_path="/tmp/x.log",
        time_limit=spec.get("time_limit"),
        owner=spec.get("owner", ""),
    )
    return backend.pod_manifest(record, launch, "the-secret")


@pytest.mark.parametrize(
    "preset, low_cost, selector, toleration, affinity_key",
    [
        ("gke", True, {"cloud.google.com/gke-spot": "true"}, "cloud.google.com/gke-spot", None),
        ("gke", False, {}, None, "cloud.google.com/gke-spot"),
        ("eks", True, {"eks.amazonaws.com/capacityType": "SPOT"}, None, None),
        ("eks", False, {"eks.amazonaws.com/capacityType": "ON_DEMAND"}, None, None),
        (
            "aks",
            True,
            {"kubernetes.azure.com/scalesetpriority": "spot"},
            "kubernetes.azure.com/scalesetpriority",
            None,
        ),
        ("aks", False, {}, None, "kubernetes.azure.com/scalesetpriority"),
        ("karpenter", True, {"karpenter.sh/capacity-type": "spot"}, None, None),
        ("karpenter", False, {"karpenter.sh/capacity-type": "on-demand"}, None, None),
    ],
)
def test_each_preset_sends_each_tier_to_its_nodes(
    preset: str, low_cost: bool, selector: dict, toleration: str | None, affinity_key: str | None
) -> None:
    spec = pod_of(KubernetesBackend(None, preset=preset), low_cost)["spec"]
    assert spec["nodeSelector"] == selector
    assert [t["key"] for t in spec["tolerations"]] == ([toleration] if toleration else [])
    if affinity_key:
        term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        [expression] = term["nodeSelectorTerms"][0]["matchExpressions"]
        assert expression == {"key": affinity_key, "operator": "DoesNotExist"}
    else:
        assert "affinity" not in spec


def test_a_pod_asks_for_its_type_and_carries_what_finds_it_again() -> None:
    pod = pod_of(
        KubernetesBackend(None, preset="gke"), time_limit=86400.0, cwd="/home/me", owner="f00d"
    )
    spec = pod["spec"]
    [container] = spec["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "16384Mi"},
        "limits": {"nvidia.com/gpu": "1"},
    }
    assert container["command"] == ["/opt/python/bin/python", "-m", "jupyter_lowcost.launcher"]
    assert container["workingDir"] == "/home/me"
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 86400
    assert pod["metadata"]["labels"]["jupyter-lowcost/instance"]
    assert pod["metadata"]["labels"]["jupyter-lowcost/kernel"] == "k1"
    # (the server's data folder: a restarted server removes the pods of its folder that no
    # record names, and no other)
    assert pod["metadata"]["labels"]["jupyter-lowcost/owner"] == "f00d"
    annotations = pod["metadata"]["annotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert annotations["karpenter.sh/do-not-disrupt"] == "true"
    # The launch secret is never in the pod's spec: it comes from the Secret.
    env = {e["name"]: e for e in container["env"]}
    assert "value" not in env[names.LAUNCH_SECRET]
    assert env[names.LAUNCH_SECRET]["valueFrom"]["secretKeyRef"]["name"] == "the-secret"
    assert "s3cret" not in repr(pod)
    assert env[names.SIGTERM_NOTICE]["value"] == "30"
    # (the pod of an idle kernel ends once its notice checkpoint is written)
    assert env[names.SIGTERM_LEAVE_WHEN_SAVED]["value"] == "1"
    # A type without GPUs asks for none; a regular pod has no deadline.
    cpu = pod_of(KubernetesBackend(None), low_cost=False, itype="CPU")["spec"]
    assert "limits" not in cpu["containers"][0]["resources"]
    assert "activeDeadlineSeconds" not in cpu


def test_placement_and_resources_can_be_set_per_tier_and_per_type() -> None:
    backend = KubernetesBackend(
        None,
        preset="karpenter",
        low_cost_placement={"tolerations": [{"key": "spot", "operator": "Exists"}]},
        instance_types={
            "T4": {
                "cpu": "500m",
                "memory": "1Gi",
                "gpus": 2,
                "node_selector": {"gpu": "t4"},
                "low_cost": {"node_selector": {"pool": "spot-t4"}},
            }
        },
        checkpoint_claim="checkpoints-rwx",
        extra_pod_config={"priorityClassName": "notebooks", "securityContext": {"runAsUser": 1000}},
        modify_pod_hook=lambda backend, record, pod: {
            **pod,
            "metadata": {**pod["metadata"], "name": "hooked"},
        },
    )
    backend.offered_types(CATALOG)
    assert set(backend.offered_types(CATALOG)) == {"T4"}
    spec = pod_of(backend)["spec"]
    assert spec["nodeSelector"] == {
        "karpenter.sh/capacity-type": "spot",
        "gpu": "t4",
        "pool": "spot-t4",
    }
    assert spec["tolerations"] == [{"key": "spot", "operator": "Exists"}]
    assert spec["containers"][0]["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"nvidia.com/gpu": "2"},
    }
    assert spec["priorityClassName"] == "notebooks" and spec["securityContext"]["runAsUser"] == 1000
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    # (the claim holds every kernel's folder: mounted at the server's checkpoint folder,
    # the parent of this kernel's own)
    assert mounts["checkpoints"] == "/data/ckpt"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "checkpoints-rwx"}
    regular = pod_of(backend, low_cost=False)["spec"]
    assert regular["nodeSelector"] == {"karpenter.sh/capacity-type": "on-demand", "gpu": "t4"}


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"preset": "gcp"}, "KubernetesBackend.preset: unknown preset 'gcp'"),
        ({"instance_types": {"T4": {"gpu": 1}}}, "unknown key(s) gpu"),
        ({"instance_types": {"T4": "big"}}, "must be a dict"),
        ({"low_cost_placement": {"nodeSelector": {}}}, "unknown key(s) nodeSelector"),
        ({"modify_pod_hook": "not callable"}, "must be callable"),
    ],
)
def test_wrong_settings_are_refused_naming_the_problem(settings: dict, words: str) -> None:
    with pytest.raises(TraitError, match=words.replace("(", r"\(").replace(")", r"\)")):
        KubernetesBackend(None, **settings)


# -- what the watches make of pods and nodes (fake objects: the client's models' shape) ----


class Listener:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def instance_noticed(self, instance_id: str, deadline: float, reason: str) -> None:
        self.calls.append(("noticed", instance_id, reason))

    def instance_exited(self, instance_id: str, returncode: Any, detail: str) -> None:
        self.calls.append(("exited", instance_id, returncode, detail))

    def instance_taken(self, instance_id: str, expired: bool, reason: str) -> None:
        self.calls.append(("taken", instance_id, expired, reason))

    def instance_progress(self, instance_id: str, message: str) -> None:
        self.calls.append(("progress", instance_id, message))


def _node(
    name: str, taints: list[tuple[str, str]] = (), ready: str = "True", cordoned: bool = False
) -> Any:
    from types import SimpleNamespace as NS

    return NS(
        metadata=NS(name=name),
        spec=NS(taints=[NS(key=k, effect=e) for k, e in taints], unschedulable=cordoned),
        status=NS(conditions=[NS(type="Ready", status=ready, reason="NodeStatusUnknown")]),
    )


def _pod(
    instance_id: str, phase: str, node: str = "n1", exit_code: int | None = None, reason: str = ""
) -> Any:
    from types import SimpleNamespace as NS

    terminated = NS(exit_code=exit_code) if exit_code is not None else None
    return NS(
        metadata=NS(
            name=f"jupyter-lowcost-{instance_id}",
            labels={"jupyter-lowcost/instance": instance_id},
            deletion_timestamp=None,
        ),
        spec=NS(node_name=node),
        status=NS(
            phase=phase,
            reason=reason,
            message="",
            conditions=[],
            container_statuses=[NS(state=NS(terminated=terminated))],
        ),
    )


def _followed(backend: KubernetesBackend, state: Any = None) -> InstanceRecord:
    from jupyter_lowcost.storage.records import InstanceState

    record = InstanceRecord("k1", "T4", True, "kubernetes", 0.16, 0.53)
    record.state = state or InstanceState.RUNNING
    record.backend_state["node"] = "n1"
    backend._pods[record.id] = record
    return record


@pytest.mark.parametrize(
    "node, words",
    [
        (
            _node("n1", [("aws-node-termination-handler/spot-itn", "NoExecute")]),
            "AWS is taking the spot node back",
        ),
        (_node("n1", [("karpenter.sh/disrupted", "NoSchedule")]), "Karpenter is removing the node"),
        (
            _node("n1", [("cloud.google.com/impending-node-termination", "NoSchedule")]),
            "GKE is taking",
        ),
        (_node("n1", [("ToBeDeletedByClusterAutoscaler", "NoSchedule")]), "cluster autoscaler"),
        (_node("n1", cordoned=True), "cordoned"),
        (_node("n1", ready="Unknown"), "not ready"),
    ],
)
def test_a_node_going_is_a_notice_for_its_pods_with_why(node: Any, words: str) -> None:
    listener = Listener()
    backend = KubernetesBackend(listener)
    record = _followed(backend)
    backend._node_event("MODIFIED", _node("n2", [("aws-node-termination-handler/x", "NoExecute")]))
    assert listener.calls == []  # (another node: not this pod's)
    backend._node_event("MODIFIED", node)
    [(kind, instance_id, reason)] = listener.calls
    assert (kind, instance_id) == ("noticed", record.id) and words in reason, reason


def test_a_healthy_node_with_other_taints_is_no_notice() -> None:
    listener = Listener()
    backend = KubernetesBackend(listener)
    _followed(backend)
    backend._node_event("MODIFIED", _node("n1", [("cloud.google.com/gke-spot", "NoSchedule")]))
    assert listener.calls == []


@pytest.mark.parametrize(
    "pod, expected",
    [
        # The kernel exited by itself: its end, not an interruption.
        (_pod("i1", "Succeeded", exit_code=0), ("exited", 0)),
        # Killed (137 = 128 + SIGKILL): reported as the process's -9 (an instance lost).
        (_pod("i1", "Failed", exit_code=137), ("exited", -9)),
        (_pod("i1", "Failed", exit_code=3), ("exited", 3)),
        # The cap: Kubernetes ended it at activeDeadlineSeconds.
        (_pod("i1", "Failed", reason="DeadlineExceeded"), ("taken", True)),
        (_pod("i1", "Failed", reason="Evicted"), ("taken", False)),
    ],
)
def test_how_a_pod_ends_is_how_its_instance_ends(pod: Any, expected: tuple[Any, Any]) -> None:
    listener = Listener()
    backend = KubernetesBackend(listener)
    record = _followed(backend)
    record.id = "i1"
    backend._pods = {"i1": record}
    backend._spawn = lambda work: work.close()  # (no cluster: no delete)
    backend._pod_event("MODIFIED", pod)
    [call] = listener.calls
    assert (call[0], call[2]) == expected, call
    assert "i1" not in backend._pods


def test_a_pod_whose_first_event_is_its_deletion_is_placed_and_followed_to_its_end() -> None:
    """The kubelet's status can lag behind the kernel: the watch's first sight of a pod
    running the kernel may already carry its deletion. The pod counts as placed (no
    "could not be scheduled" later), and its end is still its instance's."""
    from datetime import datetime, timezone

    from jupyter_lowcost.storage.records import InstanceState

    listener = Listener()
    backend = KubernetesBackend(listener, pending_timeout=8.0)
    record = _followed(backend)
    record.id = "i1"
    record.backend_state.pop("node")
    backend._pods = {"i1": record}
    backend._core = _NodeReader(_node("spot-1"))
    backend._spawn = _run_reads_only
    pod = _pod("i1", "Pending", node="spot-1")
    pod.metadata.deletion_timestamp = datetime.now(timezone.utc)
    backend._pod_event("MODIFIED", pod)
    assert record.backend_state["node"] == "spot-1"
    # pending_timeout after the pod's creation: its kernel runs, nothing is undone.
    backend._pending_too_long(record)
    assert "i1" in backend._pods and record.state == InstanceState.RUNNING
    backend._pod_event("DELETED", pod)
    assert [c[0] for c in listener.calls if c[0] != "progress"] == ["noticed", "taken"]
    assert "i1" not in backend._pods


class _NodeReader:
    """The one API call of the watches' handlers: reading a node."""

    def __init__(self, node: Any) -> None:
        self.node = node

    async def read_node(self, name: str) -> Any:
        return self.node


def _run_reads_only(work: Any) -> None:
    """The backend's background work, without a cluster: a node's read runs (on a loop of
    its own), deletes do not."""
    if work.__qualname__.endswith("_announce_after_reading_node"):
        asyncio.run(work)
    else:
        work.close()


def test_a_pod_deleted_before_the_watch_shows_its_nodes_taint_says_the_nodes_words() -> None:
    """The taint manager evicts a NoExecute-tainted node's pods at once: the pod's deletion
    can reach the server before the node's taint does. The notice reads the node first,
    and says why the node goes."""
    from datetime import datetime, timezone

    listener = Listener()
    backend = KubernetesBackend(listener)
    record = _followed(backend)
    record.id = "i1"
    backend._pods = {"i1": record}
    backend._nodes = {"n1": _node("n1")}  # (as the node watch last showed it: healthy)
    backend._core = _NodeReader(
        _node("n1", [("aws-node-termination-handler/spot-itn", "NoExecute")])
    )
    backend._spawn = _run_reads_only
    pod = _pod("i1", "Running")
    pod.metadata.deletion_timestamp = datetime.now(timezone.utc)
    backend._pod_event("MODIFIED", pod)
    [notice] = [c for c in listener.calls if c[0] == "noticed"]
    assert "AWS is taking the spot node back" in notice[2]
