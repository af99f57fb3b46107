"""The kubernetes backend against a real cluster: kernels as pods on the spot node or the
on-demand node, their reclaims as notices, and kernels resumed on new pods."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
from conftest import (
    EventRecorder,
    execute,
    manager_of,
    moved,
    start_lowcost_kernel,
    wait_until,
)
from kubernetes_cluster import KubernetesCluster


def pods_of(cluster: KubernetesCluster, namespace: str) -> list[dict[str, Any]]:
    return cluster.api("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]


def pod_of(cluster: KubernetesCluster, namespace: str, instance_id: str) -> dict[str, Any]:
    [pod] = [
        p
        for p in pods_of(cluster, namespace)
        if p["metadata"]["labels"].get("jupyter-lowcost/instance") == instance_id
    ]
    return pod


async def a_kernel_holding_kept(api: Any, serverapp: Any) -> tuple[str, str]:
    """A low-cost T4 kernel that ran ``kept = {'epoch': 7}`` (what
    :func:`resumed_on_a_new_pod` finds again): its kernel id and instance id."""
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    await execute(serverapp, kernel_id, "kept = {'epoch': 7}")
    return kernel_id, first


async def kubelet_reports_running(
    cluster: KubernetesCluster, namespace: str, instance_id: str
) -> None:
    """Wait until the kubelet has reported the pod running. (Its status lags behind the
    kernel, which answers first; this kubelet, 1.20, defers the SIGTERM of a pod deleted
    before then to the end of its grace period.)"""
    await wait_until(
        lambda: pod_of(cluster, namespace, instance_id)["status"]["phase"] == "Running",
        timeout=30,
    )


async def test_low_cost_kernels_run_in_pods_on_the_spot_node_and_regular_ones_on_demand(
    api: Any,
    jp_fetch: Any,
    jp_serverapp: Any,
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
) -> None:
    cluster = kubernetes_cluster
    low = await start_lowcost_kernel(api, "T4")
    regular = await start_lowcost_kernel(api, "T4", low_cost=False)
    spot_pod = pod_of(cluster, kube_namespace, low["instance"]["id"])
    demand_pod = pod_of(cluster, kube_namespace, regular["instance"]["id"])
    assert spot_pod["spec"]["nodeName"] == cluster.spot_node
    assert demand_pod["spec"]["nodeName"] == cluster.on_demand_node
    [container] = spot_pod["spec"]["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert spot_pod["spec"]["restartPolicy"] == "Never"
    assert spot_pod["spec"]["activeDeadlineSeconds"] == 86400  # the lifetime cap
    assert "activeDeadlineSeconds" not in demand_pod["spec"]
    labels = spot_pod["metadata"]["labels"]
    assert labels["jupyter-lowcost/kernel"] == low["kernel"]["id"]
    # The kernel answers from its pod; the launch secret is in a Secret, not in the pod.
    out = await execute(jp_serverapp, low["kernel"]["id"], "import os; print(6 * 7, os.getpid())")
    assert out.split()[0] == "42"
    [secret_env] = [e for e in container["env"] if e["name"].endswith("LAUNCH_SECRET")]
    assert "value" not in secret_env and "secretKeyRef" in secret_env["valueFrom"]
    secrets = cluster.api("GET", f"/api/v1/namespaces/{kube_namespace}/secrets")["items"]
    assert {s["metadata"]["name"] for s in secrets} >= {spot_pod["metadata"]["name"]}
    # Shut down: no pod and no Secret of ours left.
    for body in (low, regular):
        await jp_fetch("api", "kernels", body["kernel"]["id"], method="DELETE")

    def nothing_left() -> bool:
        ours = "app.kubernetes.io/managed-by=jupyter-lowcost"
        pods = cluster.api("GET", f"/api/v1/namespaces/{kube_namespace}/pods?labelSelector={ours}")
        secrets = cluster.api(
            "GET", f"/api/v1/namespaces/{kube_namespace}/secrets?labelSelector={ours}"
        )
        return not pods["items"] and not secrets["items"]

    await wait_until(nothing_left, timeout=60)


async def test_an_eviction_is_a_notice_then_the_kernel_resumes_on_a_new_pod(
    api: Any,
    jp_serverapp: Any,
    instance_events: EventRecorder,
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
) -> None:
    kernel_id, first = await a_kernel_holding_kept(api, jp_serverapp)
    await kubelet_reports_running(kubernetes_cluster, kube_namespace, first)
    # A long grace period, as a drain's or a cloud's (GKE: 30 s): the idle kernel's pod
    # ends once its notice checkpoint is written, and the kernel resumes long before.
    status, answer = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 120})
    assert status in (200, 202), answer
    noticed = await instance_events.wait_for(instance_id=first, state="notice", timeout=20)
    assert "pod jupyter-lowcost-" in noticed["reason"]
    await instance_events.wait_for(instance_id=first, state="interrupted", timeout=60)
    deadline = datetime.fromisoformat(noticed["deadline"]).timestamp()
    assert time.time() < deadline - 60, "the idle kernel's pod waited for its whole grace period"
    running = await resumed_on_a_new_pod(api, jp_serverapp, instance_events, kernel_id, first)
    pod = pod_of(kubernetes_cluster, kube_namespace, running["instance_id"])
    assert pod["spec"]["nodeName"] == kubernetes_cluster.spot_node


@pytest.mark.parametrize(
    "cell, notice, early",
    [
        # A cell that ends within the grace period: its checkpoint is written, then the
        # pod ends before its deadline, and what the cell made comes along.
        ("time.sleep(4)\nfinished = 'yes'", 120, True),
        # A cell that does not: the pod is not ended early; it runs to its deadline.
        ("time.sleep(600)", 10, False),
    ],
    ids=["cell-ends-in-time", "cell-runs-on"],
)
async def test_a_cell_running_at_the_eviction_keeps_its_pod_until_it_ends_and_is_saved(
    api: Any,
    jp_serverapp: Any,
    instance_events: EventRecorder,
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
    cell: str,
    notice: int,
    early: bool,
) -> None:
    kernel_id, first = await a_kernel_holding_kept(api, jp_serverapp)
    await kubelet_reports_running(kubernetes_cluster, kube_namespace, first)
    client = jp_serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        msg_id = client.execute(f"import time\nprint('started', flush=True)\n{cell}")
        while True:  # the cell is running once it has printed
            msg = await client.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                break
        status, answer = await api(
            "POST", f"instances/{first}/interrupt", {"notice_seconds": notice}
        )
        assert status in (200, 202), answer
        noticed = await instance_events.wait_for(instance_id=first, state="notice", timeout=20)
        deadline = datetime.fromisoformat(noticed["deadline"]).timestamp()
        await instance_events.wait_for(instance_id=first, state="interrupted", timeout=60)
        if early:
            assert time.time() < deadline - 60, "the pod waited for its whole grace period"
        else:
            assert time.time() >= deadline - 1.5, "the pod ended before its deadline"
    finally:
        client.stop_channels()
    await resumed_on_a_new_pod(api, jp_serverapp, instance_events, kernel_id, first)
    if early:
        assert await execute(jp_serverapp, kernel_id, "print(finished)") == "yes\n"


async def resumed_on_a_new_pod(
    api: Any, jp_serverapp: Any, events: EventRecorder, kernel_id: str, first: str
) -> dict[str, Any]:
    """Wait for the kernel to run on an instance other than ``first``; its running event."""
    interrupted = await events.wait_for(instance_id=first, state="interrupted", timeout=60)
    assert interrupted["recovery"] == "relaunch"
    running = await events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first, timeout=90
    )
    await wait_until(lambda: moved(api, kernel_id), timeout=60)
    out = await execute(jp_serverapp, kernel_id, "print(kept)")
    assert out.strip() == "{'epoch': 7}"
    return running


async def test_gpu_limits_hold_and_a_pod_with_no_room_says_the_schedulers_words(
    api: Any,
    instance_events: EventRecorder,
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
) -> None:
    # The spot node has 4 GPUs: four one-GPU low-cost kernels take them.
    for _ in range(4):
        await start_lowcost_kernel(api, "T4")
    status, body = await api("POST", "kernels", {"instance_type": "T4", "low_cost": True})
    assert status == 503, body
    assert "no capacity: pod" in body["message"], body
    assert "could not be scheduled in 8 s" in body["message"], body
    assert "Insufficient nvidia.com/gpu" in body["message"], body
    # Meanwhile the instance said what it waited for.
    pending = [
        e
        for e in instance_events.events
        if e["state"] == "pending" and "Insufficient nvidia.com/gpu" in e["reason"]
    ]
    assert pending, instance_events.events
    # The pod that could not be placed is gone.
    pending_pods = [
        p for p in pods_of(kubernetes_cluster, kube_namespace) if p["status"]["phase"] == "Pending"
    ]
    await wait_until(
        lambda: (
            not [
                p
                for p in pods_of(kubernetes_cluster, kube_namespace)
                if p["status"]["phase"] == "Pending"
            ]
        ),
        timeout=30,
    )
    assert len(pending_pods) <= 1


def taint_keys(cluster: KubernetesCluster, node: str) -> set[str]:
    return {t["key"] for t in cluster.api("GET", f"/api/v1/nodes/{node}")["spec"].get("taints", ())}


@pytest.mark.parametrize(
    "key, value, effect, words",
    [
        # What AWS's node termination handler does on a spot interruption notice (the
        # taint manager then evicts the pod: it does not tolerate the taint).
        (
            "aws-node-termination-handler/spot-itn",
            "true",
            "NoExecute",
            "AWS is taking the spot node back",
        ),
        # What Karpenter v1 does to a node it is about to disrupt, before it drains it
        # (nothing evicts the pod here: the server ends it at the notice's deadline).
        ("karpenter.sh/disrupted", "", "NoSchedule", "Karpenter is removing the node"),
    ],
    ids=["aws-nth", "karpenter"],
)
async def test_a_termination_taint_on_the_spot_node_is_a_notice_then_a_resume(
    api: Any,
    jp_serverapp: Any,
    instance_events: EventRecorder,
    kubernetes_cluster: KubernetesCluster,
    key: str,
    value: str,
    effect: str,
    words: str,
) -> None:
    cluster = kubernetes_cluster
    assert key not in taint_keys(cluster, cluster.spot_node)  # (no case's taint left behind)
    kernel_id, first = await a_kernel_holding_kept(api, jp_serverapp)
    cluster.taint(cluster.spot_node, key, value, effect)
    try:
        noticed = await instance_events.wait_for(instance_id=first, state="notice", timeout=20)
        assert words in noticed["reason"], noticed
        await instance_events.wait_for(instance_id=first, state="interrupted", timeout=60)
    finally:
        cluster.untaint(cluster.spot_node, key, effect)
    assert key not in taint_keys(cluster, cluster.spot_node)
    running = await resumed_on_a_new_pod(api, jp_serverapp, instance_events, kernel_id, first)
    assert running["instance_id"] != first


async def test_a_pod_deleted_outside_jupyter_is_a_notice_then_a_resume(
    api: Any,
    jp_serverapp: Any,
    instance_events: EventRecorder,
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
) -> None:
    kernel_id, first = await a_kernel_holding_kept(api, jp_serverapp)
    pod = pod_of(kubernetes_cluster, kube_namespace, first)["metadata"]["name"]
    kubernetes_cluster.kubectl(
        "-n", kube_namespace, "delete", "pod", pod, "--grace-period=8", "--wait=false"
    )
    noticed = await instance_events.wait_for(instance_id=first, state="notice", timeout=20)
    assert "the pod is being deleted" in noticed["reason"], noticed
    await resumed_on_a_new_pod(api, jp_serverapp, instance_events, kernel_id, first)


async def test_a_disruption_target_condition_says_why_the_pod_goes(
    api: Any,
    jp_serverapp: Any,
    instance_events: EventRecorder,
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
) -> None:
    # 1.26+ sets DisruptionTarget before it deletes a pod; 1.20 keeps one patched in.
    kernel_id, first = await a_kernel_holding_kept(api, jp_serverapp)
    pod = pod_of(kubernetes_cluster, kube_namespace, first)["metadata"]["name"]
    condition = {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "PreemptionByScheduler",
        "message": "preempted",
        "lastTransitionTime": "2026-12-05T00:00:00Z",
    }
    kubernetes_cluster.api(
        "PATCH",
        f"/api/v1/namespaces/{kube_namespace}/pods/{pod}/status",
        [{"op": "add", "path": "/status/conditions/-", "value": condition}],
        content_type="application/json-patch+json",
    )
    kubernetes_cluster.kubectl(
        "-n", kube_namespace, "delete", "pod", pod, "--grace-period=8", "--wait=false"
    )
    noticed = await instance_events.wait_for(instance_id=first, state="notice", timeout=20)
    assert "the scheduler preempted the pod" in noticed["reason"], noticed
    await resumed_on_a_new_pod(api, jp_serverapp, instance_events, kernel_id, first)


def put_back(cluster: KubernetesCluster, lost: str, replacement: str) -> None:
    """The cluster as the other tests know it: the replacement gone, the lost spot node
    back under its name (its old pods were deleted with its Node object)."""
    import urllib.error

    for name in (replacement, lost):
        if name in cluster.nodes and not cluster.nodes[name].killed:
            cluster.kill_node(name)
        try:
            cluster.delete_node(name)
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise
        cluster.nodes.pop(name, None)
    cluster.add_node(lost, spot=True)


async def test_a_spot_node_lost_with_its_pods_ends_in_a_resumed_kernel(
    api: Any,
    jp_fetch: Any,
    jp_serverapp: Any,
    instance_events: EventRecorder,
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
) -> None:
    cluster = kubernetes_cluster
    kernel_id, first = await a_kernel_holding_kept(api, jp_serverapp)
    lost, replacement = cluster.spot_node, "127.0.0.5"
    # A replacement spot node (a new name: a node back under its old name runs its pods).
    cluster.add_node(replacement, spot=True)
    try:
        cluster.kill_node(lost)  # its kubelet, dockerd and the pod's processes SIGKILLed
        noticed = await instance_events.wait_for(instance_id=first, state="notice", timeout=40)
        assert f"node {lost}" in noticed["reason"], noticed
        cluster.delete_node(lost)  # what the cloud's node controller does
        running = await resumed_on_a_new_pod(api, jp_serverapp, instance_events, kernel_id, first)
        node = pod_of(cluster, kube_namespace, running["instance_id"])["spec"]["nodeName"]
        assert node == replacement
    finally:
        # (shut down first: the replacement's end would be another reclaim of its pod)
        await jp_fetch("api", "kernels", kernel_id, method="DELETE", raise_error=False)
        put_back(cluster, lost, replacement)


@pytest.mark.lowcost(LowCostApp={"lifetime_cap": 20.0, "cap_notice": 5.0})
@pytest.mark.timeout(180)
async def test_the_lifetime_cap_is_the_pods_active_deadline(
    api: Any,
    jp_serverapp: Any,
    instance_events: EventRecorder,
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    pod = pod_of(kubernetes_cluster, kube_namespace, first)
    assert pod["spec"]["activeDeadlineSeconds"] == 20  # Kubernetes ends it at the cap
    await execute(jp_serverapp, kernel_id, "progress = 'kept across the cap'")
    await instance_events.wait_for(instance_id=first, state="expired", timeout=60)
    running = await instance_events.wait_for(
        kernel_id=kernel_id, state="running", where=lambda e: e["instance_id"] != first, timeout=90
    )
    await wait_until(lambda: moved(api, kernel_id), timeout=60)
    out = await execute(jp_serverapp, kernel_id, "print(progress)")
    assert out.strip() == "kept across the cap"
    second = pod_of(kubernetes_cluster, kube_namespace, running["instance_id"])
    assert second["spec"].get("activeDeadlineSeconds") in (None, 20)


@pytest.mark.lowcost(
    KubernetesBackend={"random_interruption_rate": 1800.0, "random_interruption_notice": 5.0}
)
async def test_a_demos_random_interruption_is_an_eviction_and_a_resume(
    api: Any,
    jp_serverapp: Any,
    instance_events: EventRecorder,
) -> None:
    kernel_id, first = await a_kernel_holding_kept(api, jp_serverapp)
    noticed = await instance_events.wait_for(instance_id=first, state="notice", timeout=60)
    # (the next pods of the test are left alone)
    manager_of(jp_serverapp).backend.random_interruption_rate = 0.0
    assert "a random interruption" in noticed["reason"], noticed
    await resumed_on_a_new_pod(api, jp_serverapp, instance_events, kernel_id, first)


async def test_an_interrupt_reaches_the_kernel_in_its_pod(
    api: Any, jp_fetch: Any, jp_serverapp: Any, tmp_path: Any
) -> None:
    import asyncio

    body = await start_lowcost_kernel(api, "T4")
    kernel_id = body["kernel"]["id"]
    started = tmp_path / "started"
    cell = asyncio.ensure_future(
        execute(
            jp_serverapp,
            kernel_id,
            f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\n"
            "try:\n    time.sleep(120)\nexcept KeyboardInterrupt:\n    print('interrupted')",
            timeout=60,
        )
    )
    await wait_until(started.exists, timeout=30)  # (the cell is in its sleep)
    await jp_fetch("api", "kernels", kernel_id, "interrupt", method="POST", body="")
    out = await asyncio.wait_for(cell, 30)
    assert out.strip() == "interrupted"


@pytest.mark.lowcost(LowCostApp={"recovery_policy": "fallback", "fallback_after": 1})
async def test_a_cordoned_spot_node_is_a_notice_and_with_no_spot_room_the_kernel_falls_back(
    api: Any,
    jp_fetch: Any,
    jp_serverapp: Any,
    instance_events: EventRecorder,
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
) -> None:
    cluster = kubernetes_cluster
    kernel_id, first = await a_kernel_holding_kept(api, jp_serverapp)
    cluster.kubectl("cordon", cluster.spot_node)  # a drain begins: no new pod lands there
    try:
        noticed = await instance_events.wait_for(instance_id=first, state="notice", timeout=20)
        assert "cordoned" in noticed["reason"], noticed
        await instance_events.wait_for(instance_id=first, state="interrupted", timeout=60)
        # The low-cost relaunch finds no spot node to run on: it says the scheduler's words,
        # gives up after pending_timeout, and the policy falls back to a regular pod.
        unplaced = await instance_events.wait_for(
            kernel_id=kernel_id,
            state="failed",
            where=lambda e: e["instance_id"] != first and "no capacity" in e["reason"],
            timeout=60,
        )
        assert "could not be scheduled" in unplaced["reason"], unplaced
        running = await instance_events.wait_for(
            kernel_id=kernel_id,
            state="running",
            where=lambda e: e["instance_id"] not in (first, unplaced["instance_id"]),
            timeout=90,
        )
        await wait_until(lambda: moved(api, kernel_id), timeout=60)
        out = await execute(jp_serverapp, kernel_id, "print(kept)")
        assert out.strip() == "{'epoch': 7}"
        pod = pod_of(cluster, kube_namespace, running["instance_id"])
        assert pod["spec"]["nodeName"] == cluster.on_demand_node
        assert pod["metadata"]["labels"]["jupyter-lowcost/tier"] == "regular"
    finally:
        await jp_fetch("api", "kernels", kernel_id, method="DELETE", raise_error=False)
        cluster.kubectl("uncordon", cluster.spot_node)
