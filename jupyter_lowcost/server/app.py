"""``LowCostApp``: the server extension, its configuration, and its start and stop.

Jupyter Server loads it through ``_jupyter_server_extension_points`` (enabled on install
by ``etc/jupyter/jupyter_server_config.d/jupyter_lowcost.json``). It builds the
:class:`~jupyter_lowcost.server.manager.InstanceManager`, makes ``lowcost-provisioner`` the
default kernel provisioner, registers the instance event schema and the REST routes.
Configure it as ``c.LowCostApp.<trait>`` in ``jupyter_server_config.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import KernelProvisionerFactory
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default, validate

from .._version import __version__
from ..backends import Backend, BackendError, BackendListener, load_backend_class
from . import events
from .catalog import DEFAULT_INSTANCE_TYPES, CatalogError, parse_catalog
from .handlers import default_handlers
from .jupyter_adapters import track_connections
from .manager import RECOVERY_POLICIES, InstanceManager, Settings
from .scheduler.defaults import apply_defaults as scheduler_defaults

PROVISIONER_NAME = "lowcost-provisioner"
DEMO_LIFETIME_CAP = 600.0  # LowCostApp.demo: a cap short enough to watch it count down
DEMO_CAP_NOTICE = 30.0


class LowCostApp(ExtensionApp):
    """Low-cost (preemptible) instances for notebook kernels."""

    name = "jupyter_lowcost"
    version = __version__
    description = __doc__
    load_other_extensions = True

    backend = Unicode(
        "local",
        config=True,
        help="""The backend that runs instances: the name of an entry point in the group
        ``jupyter_lowcost.backends``. ``local`` (default) runs them as processes on this
        machine. Example: ``c.LowCostApp.backend = "slurm"``.
        """,
    )

    demo = Bool(
        False,
        config=True,
        help="""Demo mode, for trying jupyter-lowcost (the Binder demo), not for real work:
        low-cost instances stop after a 10-minute lifetime cap with a 30 s notice (unless
        ``lifetime_cap`` and ``cap_notice`` are set), the local backend interrupts them at
        random about every 5 minutes (``LocalBackend.random_interruption_rate``), and
        JupyterLab, ``%lowcost`` and ``GET status`` say that this server is a demo.
        Example: ``c.LowCostApp.demo = True``.
        """,
    )

    lifetime_cap = Float(
        config=True,
        help="""Seconds after which a low-cost instance always stops (24 hours by default,
        as with preemptible VMs); a notice comes ``cap_notice`` seconds before. 0 turns the
        cap off. Example: ``c.LowCostApp.lifetime_cap = 6 * 3600``.
        """,
    )

    cap_notice = Float(
        config=True,
        help="""Seconds of notice before the lifetime cap stops an instance (at most half
        of ``lifetime_cap``). Example: ``c.LowCostApp.cap_notice = 300``.
        """,
    )

    @default("lifetime_cap")
    def _default_lifetime_cap(self) -> float:
        return DEMO_LIFETIME_CAP if self.demo else 24 * 3600.0

    @validate("instance_types")
    def _check_instance_types(self, proposal: dict[str, Any]) -> list[dict[str, Any]]:
        """A malformed catalog fails when it is set (a config file: at the server's
        start), naming the entry and the field."""
        try:
            parse_catalog(list(proposal["value"]))
        except CatalogError as err:
            raise TraitError(str(err)) from err
        return proposal["value"]

    @default("cap_notice")
    def _default_cap_notice(self) -> float:
        return DEMO_CAP_NOTICE if self.demo else 120.0

    instance_types = List(
        Dict(),
        default_value=DEFAULT_INSTANCE_TYPES,
        config=True,
        help="""The instance-type catalog: one dict per type with ``name``, ``gpu``,
        ``gpu_count``, ``vcpus``, ``memory_gb``, ``price_regular`` and ``price_low_cost``
        (US dollars per hour). The default lists five GPU types at public list prices.
        Example::

            c.LowCostApp.instance_types = [
                {"name": "A100-80G", "gpu": "NVIDIA A100 80 GB", "gpu_count": 1,
                 "vcpus": 12, "memory_gb": 90,
                 "price_regular": 3.09, "price_low_cost": 1.15},
            ]
        """,
    )

    recovery_policy = Enum(
        list(RECOVERY_POLICIES),
        "relaunch",
        config=True,
        help="""What happens to a kernel whose low-cost instance was interrupted or expired:
        ``relaunch`` (default) restarts it on a new low-cost instance of the same type;
        ``fallback`` restarts it on a regular instance of the same type (after
        ``fallback_after`` low-cost relaunches, when there is capacity); ``none`` shuts the
        kernel down. Example: ``c.LowCostApp.recovery_policy = "fallback"``.
        """,
    )

    fallback_after = Int(
        0,
        config=True,
        help="""With ``recovery_policy = "fallback"``: how many low-cost relaunches to try
        before a regular instance (0, the default: a regular instance at once). A relaunch
        is not tried when the backend has no low-cost capacity.
        Example: ``c.LowCostApp.fallback_after = 2``.
        """,
    )

    launch_timeout = Float(
        120.0,
        config=True,
        help="""Seconds an instance may take from launch to a kernel that answers before
        the launch fails. Example: ``c.LowCostApp.launch_timeout = 600`` for slow queues.
        """,
    )

    cloud_notices = Enum(
        ["auto", "aws", "gcp", "azure", "off"],
        "auto",
        config=True,
        help="""Where a low-cost kernel's launcher reads the cloud's own interruption notice:
        the instance metadata of AWS (IMDSv2 spot/instance-action, polled every second; the
        rebalance recommendation is an early warning), Google Cloud (instance/preempted, a
        hanging GET) or Azure (Scheduled Events for this VM: Preempt, Terminate, Reboot,
        Redeploy; polled every second). ``auto`` decides from the machine's DMI data
        (/sys/class/dmi/id), without the network: on a machine that is no cloud's VM it
        asks nothing. ``off`` watches none. A notice is then the same as any other: the
        kernel's flag and callbacks, its notice checkpoint, the server's notice event with
        the provider's deadline.""",
    )

    cloud_metadata_url = Unicode(
        "",
        config=True,
        help="""The instance metadata's base URL, instead of the provider's own
        (http://169.254.169.254, http://metadata.google.internal): a proxy, an emulator.""",
    )

    azure_acknowledge = Bool(
        False,
        config=True,
        help="""Approve Azure's Preempt event (StartRequests) once the kernel's notice
        checkpoint is written, so that the eviction need not wait for its NotBefore.""",
    )

    max_notice = Float(
        3600.0,
        config=True,
        help="""The longest notice ``POST instances/<id>/interrupt`` accepts, in seconds.""",
    )

    channel_ip = Unicode(
        "127.0.0.1",
        config=True,
        help="""The address the launch channel listens on; launchers on instances dial it.
        The default suits the local backend; a cluster backend needs an address its compute
        nodes reach. Example: ``c.LowCostApp.channel_ip = "10.0.0.5"``.
        """,
    )

    channel_port = Int(
        0,
        config=True,
        help="""The port of the launch channel; 0 (default) picks a free one. Set it when a
        firewall between compute nodes and the server must name the port.
        Example: ``c.LowCostApp.channel_port = 8899``.
        """,
    )

    server_url = Unicode(
        "",
        config=True,
        help="""The URL kernels use to reach this server's REST API (for ``%lowcost``).
        Empty (default): the server's own connection URL.
        Example: ``c.LowCostApp.server_url = "http://10.0.0.5:8888/"``.
        """,
    )

    checkpoints = Unicode(
        "cell",
        config=True,
        help="""When kernels checkpoint their variables: ``cell`` (after each cell, the
        default), ``interval:<seconds>`` (after a cell, at most that often), ``notice``
        (only at interruption notices and when the kernel moves), or ``off``. A kernel
        moved or relaunched after an interruption restores its latest checkpoint first.
        Example: ``c.LowCostApp.checkpoints = "interval:300"``.
        """,
    )

    checkpoint_dir = Unicode(
        "",
        config=True,
        help="""Where kernels write their checkpoints (one folder per kernel). It must
        outlive instances and be writable from them: a shared filesystem for cluster
        backends. Empty (default): ``<jupyter data dir>/lowcost/checkpoints``.
        """,
    )

    orphaned_checkpoints_days = Float(
        7.0,
        config=True,
        help="""Days the checkpoints of a kernel that no server runs any more are kept.

        A kernel whose server was killed, or that its recovery could not relaunch, leaves
        its checkpoints behind: ``%lowcost checkpoints --all`` lists them and
        ``%lowcost restore KERNEL`` takes one into another kernel. When the server starts,
        it deletes those whose newest checkpoint is older than this (0: never). A kernel
        that its user shuts down takes its checkpoints with it at once.
        Example: ``c.LowCostApp.orphaned_checkpoints_days = 30``.
        """,
    )

    orphan_timeout = Float(
        0.0,
        config=True,
        help="""Seconds an instance keeps its kernel (and the cell it runs) after losing
        the Jupyter server (a crash, a kill -9, an upgrade), waiting for a server to take
        it back. A server that starts on the same data directory re-attaches the kernels
        whose instances still run, under the same ids, and resumes from their checkpoints
        the ones whose instances ended meanwhile. 0 (default): until the instance's
        lifetime cap (``lifetime_cap`` seconds for a regular one, or a day with no cap).
        Example: ``c.LowCostApp.orphan_timeout = 3600``.
        """,
    )

    reattach_timeout = Float(
        30.0,
        config=True,
        help="""Seconds a restarted server waits for the launcher of a running instance
        to reconnect before it gives the instance up (it stops it, and resumes its kernel
        from its checkpoint on a new one). Example: ``c.LowCostApp.reattach_timeout = 60``.
        """,
    )

    @validate("checkpoints")
    def _check_checkpoints(self, proposal: Any) -> str:
        value = proposal["value"]
        if value in ("cell", "notice", "off"):
            return value
        if value.startswith("interval:"):
            try:
                if float(value.split(":", 1)[1]) > 0:
                    return value
            except ValueError:
                pass
        raise TraitError(
            f"LowCostApp.checkpoints must be cell, notice, off or interval:<seconds>, not {value!r}"
        )

    def _link_jupyter_server_extension(self, serverapp: Any) -> None:
        """Linked by Jupyter Server (before ``jupyter_scheduler``, in sorted order):
        jupyter-scheduler's job UI runs our jobs unless its user configured otherwise
        (server/scheduler/defaults.py)."""
        super()._link_jupyter_server_extension(serverapp)
        scheduler_defaults(serverapp.config)

    def initialize_settings(self) -> None:
        """Build the manager (called by Jupyter Server while it loads extensions)."""
        assert self.serverapp is not None
        catalog = parse_catalog(list(self.instance_types))
        backend_class = load_backend_class(self.backend)
        self._make_default_provisioner()
        event_logger = getattr(self.serverapp, "event_logger", None)
        if event_logger is not None:
            events.register(event_logger)

        def make_backend(listener: BackendListener) -> Backend:
            return backend_class(listener, parent=self)

        data_dir = Path(self.serverapp.data_dir) / "lowcost"
        settings = Settings(
            data_dir=data_dir,
            checkpoint_dir=Path(self.checkpoint_dir)
            if self.checkpoint_dir
            else data_dir / "checkpoints",
            lifetime_cap=self.lifetime_cap,
            cap_notice=self.cap_notice,
            recovery_policy=self.recovery_policy,
            fallback_after=self.fallback_after,
            launch_timeout=self.launch_timeout,
            max_notice=self.max_notice,
            channel_ip=self.channel_ip,
            channel_port=self.channel_port,
            checkpoints=self.checkpoints,
            demo=self.demo,
            orphaned_checkpoints_seconds=self.orphaned_checkpoints_days * 86400,
            orphan_timeout=self.orphan_timeout,
            reattach_timeout=self.reattach_timeout,
            cloud_notices=self.cloud_notices,
            cloud_metadata_url=self.cloud_metadata_url,
            azure_acknowledge=self.azure_acknowledge,
        )
        if not track_connections(self.settings):  # (merged into the server's settings)
            self.log.info(
                "jupyter_lowcost | a kernel websocket connection class of your own is "
                "configured: moves find its connections through jupyter_server's private list"
            )
        self.manager = InstanceManager(
            settings=settings,
            backend_factory=make_backend,
            catalog=catalog,
            kernel_manager=self.serverapp.kernel_manager,
            session_manager=getattr(self.serverapp, "session_manager", None),
            contents_manager=getattr(self.serverapp, "contents_manager", None),
            event_logger=event_logger,
            server_url=self._server_url,
            token=self._token,
            log=self.log,
        )
        self.manager.activate()
        self.settings["jupyter_lowcost_manager"] = self.manager

    def _server_url(self) -> str:
        assert self.serverapp is not None
        return self.server_url or self.serverapp.connection_url

    def _token(self) -> str:
        assert self.serverapp is not None
        # A server started by JupyterHub (Binder) has no token of its own; its API token
        # (JUPYTERHUB_API_TOKEN) is what identifies requests to it as this user's.
        return str(
            self.serverapp.identity_provider.token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        )

    def _make_default_provisioner(self) -> None:
        """Make every kernelspec without a provisioner of its own use ours."""
        assert self.serverapp is not None
        factory = KernelProvisionerFactory.instance(parent=self.serverapp.kernel_manager)
        configured: Any = self.serverapp.config.get("KernelProvisionerFactory", {})
        if "default_provisioner_name" in configured:
            factory.default_provisioner_name = configured["default_provisioner_name"]
        elif not os.environ.get(factory.default_provisioner_name_env):
            factory.default_provisioner_name = PROVISIONER_NAME

    def initialize_handlers(self) -> None:
        """Add the REST routes (called by Jupyter Server)."""
        self.handlers.extend(default_handlers)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Start the backend and settle what a previous run left, once the loop runs.

        A backend that cannot start (Slurm's commands missing, say) leaves the server up:
        the error is logged, and every lowcost route answers 503 with it."""
        try:
            await self.manager.ensure_started()
        except BackendError as err:
            self.log.error(
                "jupyter_lowcost | the %s backend did not start: %s", self.backend, err.message
            )

    async def stop_extension(self) -> None:
        """Terminate every instance before the server exits."""
        await self.manager.stop()
