"""The ``kubernetes`` backend: every instance is a pod, low-cost ones on the spot node pools.

Teams buy cloud GPUs at spot prices through Kubernetes: GKE Spot node pools, EKS managed
node groups with ``capacityType: SPOT``, AKS spot pools, Karpenter. This backend runs each
instance as one pod that runs the same launcher as every backend
(``python -m jupyter_lowcost.launcher``), placed on spot nodes for low-cost kernels and on
on-demand nodes for regular ones, by presets (:data:`PRESETS`) or by node selectors,
tolerations and affinity of one's own.

The manager calls it like any other backend (see :mod:`.base`). What is Kubernetes':

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

from __future__ import annotations

import asyncio
import copy
import random
import time
from datetime import datetime
from typing import Any

from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Float, Int, List, TraitError, Unicode, validate

from .. import env as names
from ..storage.private import open_private, private_dir
from ..storage.records import InstanceRecord, InstanceState
from .base import Backend, BackendError, InstanceType, LaunchSpec

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


def _import_client() -> Any:
    try:
        import kubernetes_asyncio
    except ImportError as err:  # (an extra)
        raise BackendError(
            "the kubernetes backend needs kubernetes_asyncio: "
            'pip install "jupyter-lowcost[kubernetes]"',
            status=500,
        ) from err
    return kubernetes_asyncio


class KubernetesBackend(Backend):
    """Instances as pods; see the module docstring."""

    name = "kubernetes"
    #: The launcher binds the address it reaches the server from (the pod's).
    kernel_ip = "auto"
    #: A kernel's interrupt (SIGINT) reaches its pod over the launch channel.
    signals_over_channel = True

    namespace = Unicode("default", config=True, help="""The namespace of the kernels' pods.""")
    kubeconfig = Unicode(
        "",
        config=True,
        help="""A kubeconfig file; empty (default): the in-cluster service account when the
        server runs in a pod, else $KUBECONFIG or ~/.kube/config.""",
    )
    context = Unicode("", config=True, help="""The kubeconfig's context; empty: its current one.""")
    image = Unicode(
        "",
        config=True,
        help="""The kernels' image: it must have the kernel's Python at the kernelspec's path,
        with jupyter-lowcost and ipykernel installed.""",
    )
    image_pull_policy = Unicode("IfNotPresent", config=True, help="""The pods' imagePullPolicy.""")
    image_pull_secrets = List(Unicode(), config=True, help="""Names of image pull Secrets.""")
    service_account = Unicode(
        "", config=True, help="""The pods' service account; empty: none mounted."""
    )
    preset = Unicode(
        "",
        config=True,
        help="""Where low-cost and regular pods go: ``gke``, ``eks``, ``aks``, ``karpenter``,
        or empty (only ``low_cost_placement``/``regular_placement``).""",
    )
    low_cost_placement = Dict(
        config=True,
        help="""Added to the preset for low-cost pods: ``node_selector`` (dict),
        ``tolerations`` (list), ``affinity`` (dict), as in a pod spec.""",
    )
    regular_placement = Dict(config=True, help="""As ``low_cost_placement``, for regular pods.""")
    instance_types = Dict(
        config=True,
        help="""Per instance type: ``cpu`` and ``memory`` requests (as Kubernetes writes them,
        "4", "16Gi"; default: the type's vCPUs and memory), ``gpus`` and ``gpu_resource``
        (default: the type's count of ``nvidia.com/gpu``), placement keys for both tiers
        (``node_selector``, ``tolerations``, ``affinity``), or per tier under
        ``low_cost``/``regular``. Empty: every type of the catalog, as it says.""",
    )
    host_network = Bool(False, config=True, help="""Run the pods in the node's network.""")
    server_address = Unicode(
        "",
        config=True,
        help="""The host the pods dial to reach this server's launch channel; empty: the
        address the server listens on (its pod's, or its host's).""",
    )
    checkpoint_claim = Unicode(
        "",
        config=True,
        help="""A ReadWriteMany PersistentVolumeClaim that holds the checkpoint folder, mounted
        in every kernel pod at the server's checkpoint path (GKE: Filestore; EKS: EFS; AKS:
        Azure Files).""",
    )
    host_paths = List(
        Unicode(),
        config=True,
        help="""Host folders mounted in every kernel pod at the same path (a node's Python,
        the checkpoint folder on a single-node or test cluster). Read-write only for the
        checkpoint folder.""",
    )
    termination_grace_seconds = Int(
        30,
        config=True,
        help="""The pods' terminationGracePeriodSeconds: the notice a reclaim leaves the
        kernel for its checkpoint (clouds give 30 s to 2 min; kubelets cap it).""",
    )
    pending_timeout = Float(
        300.0,
        config=True,
        help="""Seconds a pod may stay unschedulable (no spot capacity) before its launch fails
        and the recovery policy falls back.""",
    )
    extra_pod_config = Dict(
        config=True, help="""Merged into every pod's spec (as kubespawner's extra_pod_config)."""
    )
    modify_pod_hook = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="""A callable (backend, record, pod) -> pod, called on every pod before it is
        created (as kubespawner's modify_pod_hook).""",
    )
    random_interruption_rate = Float(
        0.0,
        config=True,
        help="""Random interruptions of low-cost pods, per pod and per hour (0: none), for
        demos: each is an eviction through the Eviction API, the path a real reclaim takes.""",
    )
    random_interruption_notice = Float(
        30.0, config=True, help="""The grace period of a random interruption's eviction."""
    )
    pod_name_prefix = Unicode(
        "jupyter-lowcost", config=True, help="""Pods are ``<prefix>-<instance id>``."""
    )

    @validate("preset")
    def _check_preset(self, proposal: dict[str, Any]) -> str:
        value = proposal["value"]
        if value and value not in PRESETS:
            raise TraitError(
                f"KubernetesBackend.preset: unknown preset {value!r} (known: {', '.join(sorted(PRESETS))})"
            )
        return value

    @validate("instance_types")
    def _check_types(self, proposal: dict[str, Any]) -> dict[str, Any]:
        for name, shape in proposal["value"].items():
            if not isinstance(shape, dict):
                raise TraitError(
                    f"KubernetesBackend.instance_types[{name!r}] must be a dict, not {type(shape).__name__}"
                )
            unknown = sorted(set(shape) - TYPE_KEYS)
            if unknown:
                raise TraitError(
                    f"KubernetesBackend.instance_types[{name!r}] has unknown key(s) {', '.join(unknown)} "
                    f"(known: {', '.join(sorted(TYPE_KEYS))})"
                )
        return proposal["value"]

    @validate("low_cost_placement", "regular_placement")
    def _check_placement(self, proposal: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(proposal["value"]) - PLACEMENT_KEYS)
        if unknown:
            raise TraitError(
                f"KubernetesBackend.{proposal['trait'].name}: unknown key(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(PLACEMENT_KEYS))})"
            )
        return proposal["value"]

    @validate("modify_pod_hook")
    def _check_hook(self, proposal: dict[str, Any]) -> Any:
        if proposal["value"] is not None and not callable(proposal["value"]):
            raise TraitError("KubernetesBackend.modify_pod_hook must be callable")
        return proposal["value"]

    def __init__(self, listener: Any, **kwargs: Any) -> None:
        super().__init__(listener, **kwargs)
        self._client: Any = None
        self._api: Any = None
        self._core: Any = None
        self._catalog: dict[str, InstanceType] = {}
        #: instance id -> record, for the pods this server follows
        self._pods: dict[str, InstanceRecord] = {}
        self._gone: dict[str, asyncio.Event] = {}
        #: pods this server deletes (their end is no interruption)
        self._deleting: set[str] = set()
        #: pods whose reclaim was announced (instance id -> reason)
        self._noticed: dict[str, str] = {}
        self._nodes: dict[str, Any] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._pending_since: dict[str, float] = {}
        #: what the scheduler last said of a pod it cannot place, and the timers that end
        #: the wait (``pending_timeout``)
        self._pending_words: dict[str, str] = {}
        self._pending_timers: dict[str, asyncio.TimerHandle] = {}
        self._random_timers: dict[str, asyncio.TimerHandle] = {}
        #: deletes and evictions under way (held: the loop keeps only weak references)
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        client = _import_client()
        self._client = client
        config = client.config
        try:
            if self.kubeconfig or not _in_cluster():
                await config.load_kube_config(
                    config_file=self.kubeconfig or None, context=self.context or None
                )
            else:
                config.load_incluster_config()
        except Exception as err:
            raise BackendError(
                f"the kubernetes backend found no cluster: {err}", status=500
            ) from err
        self._api = client.client.ApiClient()
        self._core = client.client.CoreV1Api(self._api)
        try:
            await self._core.list_namespaced_pod(
                self.namespace, label_selector=f"{MANAGED_BY}={MANAGER}", limit=1
            )
        except Exception as err:
            raise BackendError(
                f"the kubernetes backend cannot list pods in namespace {self.namespace}: "
                f"{_api_error(err)} (the server needs a Role: see the README)",
                status=500,
            ) from err
        self._watchers = [
            asyncio.ensure_future(self._watch_forever("pods")),
            asyncio.ensure_future(self._watch_forever("nodes")),
        ]

    def _spawn(self, work: Any) -> None:
        """Run ``work`` in the background, held until it is done."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        # The deletes under way finish before the client closes.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers = []
        if self._api is not None:
            await self._api.close()

    def offered_types(self, catalog: dict[str, InstanceType]) -> dict[str, InstanceType]:
        self._catalog = dict(catalog)
        if not self.instance_types:
            return dict(catalog)
        return {name: t for name, t in catalog.items() if name in self.instance_types}

    def random_interruptions(self) -> str:
        if self.random_interruption_rate <= 0:
            return ""
        minutes = 60 / self.random_interruption_rate
        return (
            f"are evicted at random, about every {minutes:.3g} minutes on average, "
            f"with {self.random_interruption_notice:g} s notice"
        )

    def _schedule_random_interruption(self, record: InstanceRecord) -> None:
        delay = random.expovariate(self.random_interruption_rate / 3600)
        self._random_timers[record.id] = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._random_interruption(record))
        )

    async def _random_interruption(self, record: InstanceRecord) -> None:
        self._random_timers.pop(record.id, None)
        if record.id not in self._pods:
            return
        if record.state != InstanceState.RUNNING:  # (not yet: its kernel cannot hear it)
            self._schedule_random_interruption(record)
            return
        try:
            await self.interrupt(
                record,
                self.random_interruption_notice,
                "a random interruption, as when a provider takes a spot node back "
                "(demo setting KubernetesBackend.random_interruption_rate)",
            )
        except BackendError as err:
            self.log.warning("jupyter_lowcost | kubernetes: random interruption: %s", err.message)

    def capacity(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "preset": self.preset, "pods": len(self._pods)}

    def channel_address(self, host: str, port: int) -> str:
        if self.server_address:
            return f"{self.server_address}:{port}"
        if host in ("0.0.0.0", "", "::"):
            import socket

            return f"{socket.gethostbyname(socket.gethostname())}:{port}"
        return f"{host}:{port}"

    # -- pods ----------------------------------------------------------------------------

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

    async def launch(self, record: InstanceRecord, spec: LaunchSpec) -> None:
        private_dir(spec.log_path.rsplit("/", 1)[0])
        open_private(spec.log_path, "ab").close()
        name = self.pod_name(record.id)
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {MANAGED_BY: MANAGER, INSTANCE_LABEL: record.id, **_owned(spec)},
            },
            "stringData": {names.LAUNCH_SECRET: spec.env.get(names.LAUNCH_SECRET, "")},
        }
        pod = self.pod_manifest(record, spec, name)
        if self.modify_pod_hook is not None:
            pod = self.modify_pod_hook(self, record, copy.deepcopy(pod)) or pod
        record.backend_state.update(pod=name, namespace=self.namespace)
        self._follow(record)
        try:
            await self._core.create_namespaced_secret(self.namespace, secret)
            created = await self._core.create_namespaced_pod(self.namespace, pod)
        except Exception as err:
            self._forget(record.id)
            await self._delete(record.id)
            raise BackendError(
                f"could not create pod {name}: {_api_error(err)}", status=503
            ) from err
        # The Secret goes with the pod (the garbage collector deletes it after the pod).
        try:
            await self._core.patch_namespaced_secret(
                name,
                self.namespace,
                {
                    "metadata": {
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Pod",
                                "name": name,
                                "uid": created.metadata.uid,
                            }
                        ]
                    }
                },
            )
        except Exception as err:  # (deleted with the pod by terminate anyway)
            self.log.warning("jupyter_lowcost | kubernetes: secret %s: %s", name, _api_error(err))
        record.backend_state["uid"] = created.metadata.uid
        self._pending_since[record.id] = time.monotonic()
        self._pending_timers[record.id] = asyncio.get_running_loop().call_later(
            self.pending_timeout, self._pending_too_long, record
        )
        if record.low_cost and self.random_interruption_rate > 0:
            self._schedule_random_interruption(record)
        self.listener.instance_progress(
            record.id, f"pod {name} created in namespace {self.namespace}"
        )

    def _follow(self, record: InstanceRecord) -> None:
        self._pods[record.id] = record
        self._gone[record.id] = asyncio.Event()

    def _forget(self, instance_id: str) -> None:
        self._pods.pop(instance_id, None)
        self._pending_since.pop(instance_id, None)
        self._pending_words.pop(instance_id, None)
        for timers in (self._pending_timers, self._random_timers):
            timer = timers.pop(instance_id, None)
            if timer is not None:
                timer.cancel()
        self._noticed.pop(instance_id, None)
        gone = self._gone.pop(instance_id, None)
        if gone is not None:
            gone.set()

    async def _delete(self, instance_id: str, grace: int | None = 0) -> None:
        """Delete the pod and Secret of an instance (gone already: nothing to do)."""
        name = self.pod_name(instance_id)
        for call in (self._core.delete_namespaced_pod, self._core.delete_namespaced_secret):
            try:
                await call(name, self.namespace, grace_period_seconds=grace)
            except Exception as err:
                if getattr(err, "status", None) != 404:
                    self.log.warning(
                        "jupyter_lowcost | kubernetes: deleting %s: %s", name, _api_error(err)
                    )

    async def send_signal(self, record: InstanceRecord, signum: int) -> None:
        """Not called: signals go over the launch channel (``signals_over_channel``)."""

    async def terminate(self, record: InstanceRecord, now: bool = False) -> None:
        if record.id not in self._pods:
            await self._delete(record.id)
            return
        self._deleting.add(record.id)
        gone = self._gone.get(record.id)
        await self._delete(record.id, 0 if now else None)
        if gone is None:
            return
        limit = self.termination_grace_seconds + 30
        try:
            await asyncio.wait_for(gone.wait(), timeout=limit)
        except asyncio.TimeoutError:
            self.log.warning(
                "jupyter_lowcost | kubernetes: pod of %s still there %g s after delete",
                record.id,
                limit,
            )

    async def interrupt(self, record: InstanceRecord, notice_seconds: float, reason: str) -> None:
        """Evict the pod (the Eviction API, as a drain or an autoscaler does), with a
        grace period of the notice: the watch turns it into the notice."""
        if record.state != InstanceState.RUNNING or record.id not in self._pods:
            return
        name = self.pod_name(record.id)
        body = {
            "apiVersion": "policy/v1beta1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": self.namespace},
            "deleteOptions": {"gracePeriodSeconds": max(0, int(notice_seconds))},
        }
        self._noticed.setdefault(record.id, reason)
        try:
            await self._core.create_namespaced_pod_eviction(name, self.namespace, body)
        except Exception as err:
            self._noticed.pop(record.id, None)
            raise BackendError(
                f"could not evict pod {name}: {_api_error(err)}", status=409
            ) from err

    async def explain_notice(self, record: InstanceRecord) -> tuple[str, bool] | None:
        """The launcher got SIGTERM: why, from what the watch saw."""
        reason = self._noticed.get(record.id)
        if reason is not None:
            return None  # (the watch announced it already)
        return (
            f"pod {self.pod_name(record.id)} received SIGTERM (its node or someone deleted it); "
            f"SIGKILL follows in {self.termination_grace_seconds} s",
            False,
        )

    async def reattach(self, record: InstanceRecord) -> bool:
        pod = await self._read_pod(record.id)
        if (
            pod is None
            or pod.metadata.deletion_timestamp is not None
            or pod.status.phase != "Running"
        ):
            if pod is not None:
                await self._delete(record.id)
            return False
        record.backend_state.update(
            pod=pod.metadata.name, namespace=self.namespace, node=pod.spec.node_name
        )
        self._follow(record)
        if record.low_cost and self.random_interruption_rate > 0:
            self._schedule_random_interruption(record)
        return True

    async def forget_orphan(self, record: InstanceRecord) -> bool:
        pod = await self._read_pod(record.id)
        await self._delete(record.id)
        return pod is not None

    async def sweep_unrecorded(self, owner: str, is_recorded: Any) -> list[str]:
        """Delete the pods and Secrets labelled ``owner`` whose instance no record names
        (a server killed between creating them and saving the record)."""
        if not owner:
            return []
        selector = f"{MANAGED_BY}={MANAGER},{OWNER_LABEL}={owner}"
        found: set[str] = set()
        for lister in (self._core.list_namespaced_pod, self._core.list_namespaced_secret):
            try:
                listed = await lister(self.namespace, label_selector=selector)
            except Exception as err:
                raise BackendError(
                    f"could not list the pods and Secrets of namespace {self.namespace}: "
                    f"{_api_error(err)}"
                ) from err
            found.update(
                (item.metadata.labels or {}).get(INSTANCE_LABEL, "") for item in listed.items
            )
        # (decided after listing: a pod created meanwhile was recorded before it was created)
        swept = sorted(i for i in found if i and i not in self._pods and not is_recorded(i))
        for instance_id in swept:
            await self._delete(instance_id)
        return swept

    async def _read_pod(self, instance_id: str) -> Any:
        try:
            return await self._core.read_namespaced_pod(self.pod_name(instance_id), self.namespace)
        except Exception as err:
            if getattr(err, "status", None) == 404:
                return None
            raise BackendError(f"could not read pod of {instance_id}: {_api_error(err)}") from err

    # -- the watches ---------------------------------------------------------------------

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
                    "jupyter_lowcost | kubernetes: watching %s: %s", kind, _api_error(err)
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
                        _api_error(err),
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


def _owned(spec: LaunchSpec) -> dict[str, str]:
    """The owner label of an instance's pod and Secret (none without an owner)."""
    return {OWNER_LABEL: spec.owner} if spec.owner else {}


def _in_cluster() -> bool:
    """In a pod: the service's address in the environment and the service account's token
    where kubernetes_asyncio's ``load_incluster_config`` reads it (one place names it)."""
    import os

    from kubernetes_asyncio.config import incluster_config

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(
        incluster_config.SERVICE_TOKEN_FILENAME
    )


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


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` merged into ``base``: dicts key by key, anything else replaced."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _api_error(err: Exception) -> str:
    """An API error as a person reads it (the Status message, not the whole response)."""
    body = getattr(err, "body", None)
    if body:
        try:
            import json

            return str(json.loads(body).get("message") or body)
        except (ValueError, AttributeError):
            return str(body)
    return str(err)
