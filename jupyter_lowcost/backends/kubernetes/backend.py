"""The kubernetes backend's class: its settings, the client's lifecycle, launches,
deletes and evictions, taking pods back after a restart, and the watch loops (what the
events mean: :mod:`.watch_events`; the pods: :mod:`.pod_spec`). See the package's
docstring for the whole."""

from __future__ import annotations

import asyncio
import copy
import random
import time
from typing import Any

from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Float, Int, List, TraitError, Unicode, validate

from ... import env as names
from ...storage.private import open_private, private_dir
from ...storage.records import InstanceRecord, InstanceState
from ..base import Backend, BackendError, InstanceType, LaunchSpec
from .client import api_error, import_client, in_cluster
from .pod_spec import PodSpec, _owned
from .presets import (
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGER,
    OWNER_LABEL,
    PLACEMENT_KEYS,
    PRESETS,
    TYPE_KEYS,
)
from .watch_events import WatchEvents


class KubernetesBackend(PodSpec, WatchEvents, Backend):
    """Instances as pods; see the package's docstring."""

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
        client = import_client()
        self._client = client
        config = client.config
        try:
            if self.kubeconfig or not in_cluster():
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
                f"{api_error(err)} (the server needs a Role: see the README)",
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
                f"could not create pod {name}: {api_error(err)}", status=503
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
            self.log.warning("jupyter_lowcost | kubernetes: secret %s: %s", name, api_error(err))
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
                        "jupyter_lowcost | kubernetes: deleting %s: %s", name, api_error(err)
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
            raise BackendError(f"could not evict pod {name}: {api_error(err)}", status=409) from err

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
                    f"{api_error(err)}"
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
            raise BackendError(f"could not read pod of {instance_id}: {api_error(err)}") from err
