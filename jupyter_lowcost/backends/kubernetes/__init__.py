"""The ``kubernetes`` backend: every instance is a pod, low-cost ones on the spot node pools.

Teams buy cloud GPUs at spot prices through Kubernetes: GKE Spot node pools, EKS managed
node groups with ``capacityType: SPOT``, AKS spot pools, Karpenter. This backend runs each
instance as one pod that runs the same launcher as every backend
(``python -m jupyter_lowcost.launcher``), placed on spot nodes for low-cost kernels and on
on-demand nodes for regular ones, by presets (:data:`PRESETS`) or by node selectors,
tolerations and affinity of one's own.

The manager calls it like any other backend (see :mod:`..base`). What is Kubernetes':

- The pod: labels with the instance and kernel ids, ``restartPolicy: Never``, the type's
  GPUs as ``nvidia.com/gpu`` limits and its vCPUs and memory as requests, the lifetime cap
  as ``activeDeadlineSeconds``, annotations that keep autoscalers from moving it on their
  own. The launch secret goes in a Secret of its own (not in the pod's spec), deleted with
  the pod. :attr:`KubernetesBackend.extra_pod_config` and
  :attr:`KubernetesBackend.modify_pod_hook` change anything else.
- One watch on this server's pods and one on the nodes. The server sees a reclaim before
  the pod's process gets SIGTERM: a pod's ``deletionTimestamp`` (an eviction, a delete, the
  taint manager), a ``DisruptionTarget`` condition (1.26+), a node's termination taint, a
  cordon or a NotReady node become an interruption notice with its reason and deadline.
  A pod that ends, is deleted or whose node goes away is an instance taken away; the
  recovery policy relaunches its kernel on a new pod.
- A pod the scheduler cannot place (no spot GPU left) is pending with the scheduler's
  words; past :attr:`KubernetesBackend.pending_timeout` its launch fails, and the recovery
  policy falls back as it does on every backend.
- Injected interruptions (the REST API, the demo's random rate) go through the Eviction
  API: tests and demos walk the real reclaim path.
- After a server restart, :meth:`KubernetesBackend.reattach` finds a pod by its instance
  label; :meth:`KubernetesBackend.forget_orphan` deletes what a previous run left.

The client is ``kubernetes_asyncio`` (the extra ``jupyter-lowcost[kubernetes]``): async,
on the server's event loop, as kubespawner uses it.
"""

from .backend import KubernetesBackend
from .presets import (
    DISRUPTIONS,
    INSTANCE_LABEL,
    KERNEL_LABEL,
    MANAGED_BY,
    MANAGER,
    OWNER_LABEL,
    PRESETS,
    TERMINATION_TAINTS,
    TIER_LABEL,
)

__all__ = [
    "DISRUPTIONS",
    "INSTANCE_LABEL",
    "KERNEL_LABEL",
    "MANAGED_BY",
    "MANAGER",
    "OWNER_LABEL",
    "PRESETS",
    "TERMINATION_TAINTS",
    "TIER_LABEL",
    "KubernetesBackend",
]
