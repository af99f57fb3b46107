"""What the kubernetes backend makes of what its watches see: a pod placed, pending with
the scheduler's words, being deleted (a notice), ended (its instance's end, taken or
exited), a node tainted, cordoned or not ready (a notice for its pods). :class:`WatchEvents`
is mixed into :class:`~.backend.KubernetesBackend`; its watch loop calls
``_pod_event`` and ``_node_event``, which call the manager's listener."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from ...storage.records import InstanceRecord, InstanceState
from .client import api_error
from .presets import DISRUPTIONS, INSTANCE_LABEL, MANAGED_BY, MANAGER, TERMINATION_TAINTS


class WatchEvents:
    """The watches on this server's pods and on the nodes, and what their events mean:
    notices and ends (a mixin of the backend; ``start`` runs :meth:`_watch_forever`)."""

    async def _watch_forever(self, kind: str) -> None:
        """Follow this server's pods (or the nodes) with a watch, again after each end."""
        client = self._client
        while True:
            watch = client.watch.Watch()
            try:
                if kind == "pods":
                    stream = watch.stream(
                        self._core.list_namespaced_pod,
                        self.namespace,
                        label_selector=f"{MANAGED_BY}={MANAGER}",
                        timeout_seconds=300,
                    )
                else:
                    stream = watch.stream(self._core.list_node, timeout_seconds=300)
                async for event in stream:
                    try:
                        if kind == "pods":
                            self._pod_event(event["type"], event["object"])
                        else:
                            self._node_event(event["type"], event["object"])
                    except Exception as err:  # one event must not stop the watch
                        self.log.warning("jupyter_lowcost | kubernetes: %s event: %s", kind, err)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.log.warning(
                    "jupyter_lowcost | kubernetes: watching %s: %s", kind, api_error(err)
                )
                await asyncio.sleep(1)
            finally:
                watch.stop()

    def _pod_event(self, kind: str, pod: Any) -> None:
        labels = pod.metadata.labels or {}
        instance_id = labels.get(INSTANCE_LABEL)
        record = self._pods.get(instance_id or "")
        if record is None:
            return
        status = pod.status
        # Placed: whatever else the event says (the first event a watch shows of a pod
        # may be its deletion already: the kubelet's status lags behind the kernel).
        if pod.spec.node_name and record.backend_state.get("node") != pod.spec.node_name:
            self._placed(record, pod)
        if kind == "DELETED" or status.phase in ("Succeeded", "Failed"):
            self._ended(record, pod, deleted=kind == "DELETED")
            return
        if pod.metadata.deletion_timestamp is not None:
            self._reclaimed(record, pod)
            return
        if status.phase == "Pending":
            self._pending(record, pod)
        disruption = _condition(pod, "DisruptionTarget")
        if disruption is not None and disruption.status == "True":
            why = DISRUPTIONS.get(disruption.reason or "", disruption.reason or "disrupted")
            self._announce(record, time.time() + self.termination_grace_seconds, why)

    def _placed(self, record: InstanceRecord, pod: Any) -> None:
        """The scheduler put the pod on a node: no more waiting for room."""
        record.backend_state["node"] = pod.spec.node_name
        self._pending_since.pop(record.id, None)
        timer = self._pending_timers.pop(record.id, None)
        if timer is not None:
            timer.cancel()
        self.listener.instance_progress(
            record.id,
            f"pod {pod.metadata.name} is on node {pod.spec.node_name}: starting the kernel",
        )

    def _pending(self, record: InstanceRecord, pod: Any) -> None:
        """A pod the scheduler has not placed: say why (its words), as pending."""
        scheduled = _condition(pod, "PodScheduled")
        if scheduled is None or scheduled.status == "True":
            return
        words = scheduled.message or scheduled.reason or "waiting to be scheduled"
        if self._pending_words.get(record.id) != words:
            self._pending_words[record.id] = words
            self.listener.instance_progress(
                record.id, f"pod {pod.metadata.name} is pending: {words}"
            )

    def _pending_too_long(self, record: InstanceRecord) -> None:
        """``pending_timeout`` after the pod was created: if it is still not placed, its
        launch fails with the scheduler's words (the recovery policy falls back)."""
        self._pending_timers.pop(record.id, None)
        if (
            record.id not in self._pods
            or record.backend_state.get("node")
            or record.state != InstanceState.PENDING  # (its kernel runs: it was placed)
        ):
            return
        words = self._pending_words.get(record.id, "it was not scheduled")
        name = self.pod_name(record.id)
        self._deleting.add(record.id)
        self._forget(record.id)
        self._spawn(self._delete(record.id))
        self.listener.instance_unplaceable(
            record.id, f"pod {name} could not be scheduled in {self.pending_timeout:g} s: {words}"
        )

    def _reclaimed(self, record: InstanceRecord, pod: Any) -> None:
        """The pod is being deleted: a notice, unless this server deletes it."""
        if record.id in self._deleting:
            return
        deadline = _timestamp(pod.metadata.deletion_timestamp) or (
            time.time() + self.termination_grace_seconds
        )
        disruption = _condition(pod, "DisruptionTarget")
        if disruption is not None and disruption.status == "True":
            why = DISRUPTIONS.get(disruption.reason or "", disruption.reason or "disrupted")
        else:
            why = self._noticed.get(record.id) or self._node_words(pod.spec.node_name)
        if why:
            self._announce(record, deadline, why)
        else:
            # The node's watch may not have shown its taint yet (the taint manager evicts
            # the node's pods as soon as it is tainted): read the node, then say why.
            self._spawn(self._announce_after_reading_node(record, pod.spec.node_name, deadline))

    async def _announce_after_reading_node(
        self, record: InstanceRecord, node_name: str | None, deadline: float
    ) -> None:
        if node_name:
            try:
                self._nodes[node_name] = await self._core.read_node(node_name)
            except Exception as err:  # (a node gone: no words from it)
                if getattr(err, "status", None) != 404:
                    self.log.warning(
                        "jupyter_lowcost | kubernetes: reading node %s: %s",
                        node_name,
                        api_error(err),
                    )
        why = self._node_words(node_name) or (
            "the pod is being deleted (an eviction, a drain, or a delete outside Jupyter)"
        )
        self._announce(record, deadline, why)

    def _announce(self, record: InstanceRecord, deadline: float, why: str) -> None:
        if record.state not in (InstanceState.RUNNING, InstanceState.PENDING):
            return
        if record.state == InstanceState.PENDING:
            return  # (not yet a kernel: its launch fails, and the recovery says why)
        self._noticed[record.id] = why
        self.listener.instance_noticed(
            record.id, deadline, f"pod {self.pod_name(record.id)}: {why}"
        )

    def _ended(self, record: InstanceRecord, pod: Any, deleted: bool) -> None:
        instance_id = record.id
        ours = instance_id in self._deleting
        self._deleting.discard(instance_id)
        noticed = self._noticed.get(instance_id)
        self._forget(instance_id)
        if not deleted:
            self._spawn(self._delete(instance_id))  # (and its Secret)
        name = pod.metadata.name
        if ours:
            self.listener.instance_exited(instance_id, 0, f"pod {name} deleted")
            return
        reason = pod.status.reason or ""
        if reason == "DeadlineExceeded":
            self.listener.instance_taken(
                instance_id,
                True,
                f"pod {name} reached its activeDeadlineSeconds (the lifetime cap)",
            )
            return
        code = _exit_code(pod)
        node_words = self._node_words(pod.spec.node_name)
        if (
            noticed is not None
            or deleted
            or node_words
            or reason in ("Evicted", "NodeLost", "Shutdown")
        ):
            why = noticed or node_words or pod.status.message or reason or "the pod was deleted"
            self.listener.instance_taken(instance_id, False, f"pod {name} ended: {why}")
        elif code == 0:
            self.listener.instance_exited(instance_id, 0, f"pod {name} completed")
        else:
            # (a container killed by a signal exits 128 + its number: as a process's -N)
            returncode = -(code - 128) if code is not None and code > 128 else code
            self.listener.instance_exited(
                instance_id,
                returncode,
                f"pod {name} failed (exit code {code}{': ' + reason if reason else ''})",
            )

    def _node_event(self, kind: str, node: Any) -> None:
        name = node.metadata.name
        if kind == "DELETED":
            self._nodes.pop(name, None)
            words = "its node was deleted (the cloud took the machine back)"
        else:
            self._nodes[name] = node
            words = self._node_words(name)
        if not words:
            return
        for record in list(self._pods.values()):
            if record.backend_state.get("node") == name:
                self._announce(
                    record, time.time() + self.termination_grace_seconds, f"node {name}: {words}"
                )

    def _node_words(self, name: str | None) -> str:
        """Why a node is going, in words; empty if it is not."""
        node = self._nodes.get(name or "")
        if node is None:
            return ""
        for taint in node.spec.taints or ():
            for key, words in TERMINATION_TAINTS.items():
                if taint.key == key or (key.endswith("/") and taint.key.startswith(key)):
                    return words
        if node.spec.unschedulable:
            return "the node was cordoned (it is being drained)"
        ready = next((c for c in node.status.conditions or () if c.type == "Ready"), None)
        if ready is not None and ready.status != "True":
            return f"the node is not ready ({ready.reason or ready.status})"
        return ""


def _condition(pod: Any, kind: str) -> Any:
    return next((c for c in pod.status.conditions or () if c.type == kind), None)


def _exit_code(pod: Any) -> int | None:
    for status in pod.status.container_statuses or ():
        terminated = status.state and status.state.terminated
        if terminated is not None:
            return terminated.exit_code
    return None


def _timestamp(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    return None
