"""The pod of an instance, as the kubernetes backend writes it: placement per tier and
type, requests and GPU limits, the launcher's environment (its secret from a Secret), the
host and claim volumes, labels and autoscaler annotations. :class:`PodSpec` is mixed into
:class:`~.backend.KubernetesBackend`, whose settings it reads; ``launch`` calls
:meth:`PodSpec.pod_manifest`."""

from __future__ import annotations

import copy
from typing import Any

from ... import env as names
from ...storage.records import InstanceRecord
from ..base import LaunchSpec
from .presets import (
    INSTANCE_LABEL,
    KERNEL_LABEL,
    MANAGED_BY,
    MANAGER,
    OWNER_LABEL,
    PLACEMENT_KEYS,
    PRESETS,
    TIER_LABEL,
)


class PodSpec:
    """How an instance's pod looks (a mixin of the backend: its settings are ``self``'s)."""

    def pod_name(self, instance_id: str) -> str:
        return f"{self.pod_name_prefix}-{instance_id}"

    def placement(self, instance_type: str, low_cost: bool) -> dict[str, Any]:
        """Node selector, tolerations and affinity of a tier and type: the preset's, then
        the tier's own, then the type's (later ones add to or replace earlier ones)."""
        tier = "low_cost" if low_cost else "regular"
        shape = self.instance_types.get(instance_type, {})
        layers = [
            PRESETS.get(self.preset, {}).get(tier, {}),
            self.low_cost_placement if low_cost else self.regular_placement,
            {k: v for k, v in shape.items() if k in PLACEMENT_KEYS},
            shape.get(tier, {}),
        ]
        placed: dict[str, Any] = {"node_selector": {}, "tolerations": [], "affinity": None}
        for layer in layers:
            placed["node_selector"].update(layer.get("node_selector") or {})
            placed["tolerations"] += list(layer.get("tolerations") or [])
            if layer.get("affinity"):
                placed["affinity"] = layer["affinity"]
        return placed

    def resources(self, instance_type: str) -> dict[str, Any]:
        """The pod's requests and limits for a type."""
        itype = self._catalog.get(instance_type)
        shape = self.instance_types.get(instance_type, {})
        cpu = shape.get("cpu", str(itype.vcpus) if itype else None)
        memory = shape.get("memory", f"{int(itype.memory_gb * 1024)}Mi" if itype else None)
        gpus = int(shape.get("gpus", itype.gpu_count if itype else 0))
        requests = {
            k: str(v) for k, v in (("cpu", cpu), ("memory", memory)) if v not in (None, "", "0")
        }
        resources: dict[str, Any] = {"requests": requests}
        if gpus > 0:
            resources["limits"] = {shape.get("gpu_resource", "nvidia.com/gpu"): str(gpus)}
        return resources

    def pod_manifest(
        self, record: InstanceRecord, spec: LaunchSpec, secret_name: str
    ) -> dict[str, Any]:
        """The pod of an instance (before ``extra_pod_config`` and ``modify_pod_hook``)."""
        placed = self.placement(record.instance_type, record.low_cost)
        secret_keys = (names.LAUNCH_SECRET,)
        env = [
            {"name": k, "value": v}
            for k, v in sorted(
                {
                    **spec.env,
                    names.SIGTERM_NOTICE: f"{self.termination_grace_seconds:g}",
                    # (a pod being deleted ends anyway: its idle kernel resumes at once)
                    names.SIGTERM_LEAVE_WHEN_SAVED: "1",
                }.items()
            )
            if k not in secret_keys
        ]
        env += [
            {"name": k, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": k}}}
            for k in secret_keys
            if k in spec.env
        ]
        volumes, mounts = [], []
        for number, path in enumerate(self.host_paths):
            volumes.append({"name": f"host-{number}", "hostPath": {"path": path}})
            mounts.append({"name": f"host-{number}", "mountPath": path})
        checkpoint_dir = spec.env.get(names.CHECKPOINT_DIR)
        if self.checkpoint_claim and checkpoint_dir:
            volumes.append(
                {
                    "name": "checkpoints",
                    "persistentVolumeClaim": {"claimName": self.checkpoint_claim},
                }
            )
            # (the claim holds every kernel's folder, as the server's checkpoint folder does:
            # mounted there, the parent of this kernel's, not at the kernel's own)
            root = checkpoint_dir.rstrip("/").rpartition("/")[0] or "/"
            mounts.append({"name": "checkpoints", "mountPath": root})
        labels = {
            MANAGED_BY: MANAGER,
            INSTANCE_LABEL: record.id,
            KERNEL_LABEL: (record.kernel_id or "none")[:63],
            TIER_LABEL: "low-cost" if record.low_cost else "regular",
            **_owned(spec),
        }
        container: dict[str, Any] = {
            "name": "kernel",
            "image": self.image,
            "imagePullPolicy": self.image_pull_policy,
            "command": [spec.python, "-m", "jupyter_lowcost.launcher"],
            "env": env,
            "resources": self.resources(record.instance_type),
            "volumeMounts": mounts,
        }
        if spec.cwd:
            container["workingDir"] = spec.cwd
        pod_spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": self.termination_grace_seconds,
            "containers": [container],
            "volumes": volumes,
            "automountServiceAccountToken": bool(self.service_account),
            "nodeSelector": placed["node_selector"],
            "tolerations": placed["tolerations"],
            "hostNetwork": self.host_network,
            "dnsPolicy": "Default" if self.host_network else "ClusterFirst",
            "enableServiceLinks": False,
        }
        if placed["affinity"]:
            pod_spec["affinity"] = placed["affinity"]
        if self.service_account:
            pod_spec["serviceAccountName"] = self.service_account
        if self.image_pull_secrets:
            pod_spec["imagePullSecrets"] = [{"name": n} for n in self.image_pull_secrets]
        if spec.time_limit:
            pod_spec["activeDeadlineSeconds"] = max(1, int(spec.time_limit))
        pod_spec = _merged(pod_spec, self.extra_pod_config)
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.pod_name(record.id),
                "namespace": self.namespace,
                "labels": labels,
                "annotations": {
                    # Autoscalers must not move a kernel on their own: it would be an
                    # interruption nobody asked for.
                    "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
                    "karpenter.sh/do-not-disrupt": "true",
                    "karpenter.sh/do-not-evict": "true",
                    "jupyter-lowcost/instance-type": record.instance_type,
                },
            },
            "spec": pod_spec,
        }


def _owned(spec: LaunchSpec) -> dict[str, str]:
    """The owner label of an instance's pod and Secret (none without an owner)."""
    return {OWNER_LABEL: spec.owner} if spec.owner else {}


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` merged into ``base``: dicts key by key, anything else replaced."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
