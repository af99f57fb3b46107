"""What the clouds and this backend call things: the labels on our pods and Secrets, each
cloud's spot and on-demand node pools (the presets), the taints and conditions that say a
node or pod is being taken away, and the keys a setting may have. Read by the backend's
pod spec, its watches and its settings' validation."""

from __future__ import annotations

from typing import Any

#: Labels every pod (and Secret) of this backend carries.
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "jupyter-lowcost"
INSTANCE_LABEL = "jupyter-lowcost/instance"
KERNEL_LABEL = "jupyter-lowcost/kernel"
TIER_LABEL = "jupyter-lowcost/tier"
#: The id of the server's records folder (``LaunchSpec.owner``): a restarted server finds
#: by it the pods and Secrets of its folder that no record names, and removes them;
#: servers with other folders sharing the namespace leave each other's alone.
OWNER_LABEL = "jupyter-lowcost/owner"

#: Where low-cost and regular pods go, per cloud: node selectors and tolerations of each
#: tier (see ``../shared/notes/SPOT-FACTS.md`` and the README's Kubernetes section).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "gke": {
        "low_cost": {
            "node_selector": {"cloud.google.com/gke-spot": "true"},
            "tolerations": [
                {
                    "key": "cloud.google.com/gke-spot",
                    "operator": "Equal",
                    "value": "true",
                    "effect": "NoSchedule",
                }
            ],
        },
        "regular": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "cloud.google.com/gke-spot", "operator": "DoesNotExist"}
                                ]
                            }
                        ]
                    }
                }
            }
        },
    },
    "eks": {
        "low_cost": {"node_selector": {"eks.amazonaws.com/capacityType": "SPOT"}},
        "regular": {"node_selector": {"eks.amazonaws.com/capacityType": "ON_DEMAND"}},
    },
    "aks": {
        "low_cost": {
            "node_selector": {"kubernetes.azure.com/scalesetpriority": "spot"},
            "tolerations": [
                {
                    "key": "kubernetes.azure.com/scalesetpriority",
                    "operator": "Equal",
                    "value": "spot",
                    "effect": "NoSchedule",
                }
            ],
        },
        "regular": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.azure.com/scalesetpriority",
                                        "operator": "DoesNotExist",
                                    }
                                ]
                            }
                        ]
                    }
                }
            }
        },
    },
    "karpenter": {
        "low_cost": {"node_selector": {"karpenter.sh/capacity-type": "spot"}},
        "regular": {"node_selector": {"karpenter.sh/capacity-type": "on-demand"}},
    },
}

#: Node taints that announce the node's end (termination handlers, autoscalers, clouds),
#: with what they mean in words. A key ending in ``/`` matches every key that starts so.
TERMINATION_TAINTS: dict[str, str] = {
    "aws-node-termination-handler/": "AWS is taking the spot node back (node termination handler)",
    "karpenter.sh/disrupted": "Karpenter is removing the node",
    "karpenter.sh/disruption": "Karpenter is removing the node",
    "cloud.google.com/impending-node-termination": "GKE is taking the spot node back",
    "ToBeDeletedByClusterAutoscaler": "the cluster autoscaler is removing the node",
    "node.kubernetes.io/unreachable": "the node is unreachable",
    "node.kubernetes.io/not-ready": "the node is not ready",
    "node.kubernetes.io/unschedulable": "the node was cordoned",
}

#: ``DisruptionTarget`` reasons (Kubernetes 1.26+) in words.
DISRUPTIONS = {
    "EvictionByEvictionAPI": "the pod was evicted (Eviction API: a drain, an autoscaler)",
    "DeletionByTaintManager": "the node was tainted NoExecute (its end is near)",
    "TerminationByKubelet": "the kubelet is terminating the pod (node shutdown or pressure)",
    "PreemptionByScheduler": "the scheduler preempted the pod for higher-priority work",
    "DeletionByPodGC": "the pod's node is gone",
}

#: Per-type keys of :attr:`KubernetesBackend.instance_types`.
TYPE_KEYS = frozenset(
    {
        "cpu",
        "memory",
        "gpu_resource",
        "gpus",
        "node_selector",
        "tolerations",
        "affinity",
        "low_cost",
        "regular",
    }
)
PLACEMENT_KEYS = frozenset({"node_selector", "tolerations", "affinity"})
