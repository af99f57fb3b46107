"""``lowcost-provisioner``: the jupyter_client kernel provisioner behind every kernel.

``LowCostApp`` makes it the default provisioner, so any kernelspec can be switched. The
server's kernel manager creates one per kernel and calls it for every launch, poll,
signal and shutdown; the same object serves every restart of that kernel id.

At each launch it asks the :class:`~jupyter_lowcost.server.manager.InstanceManager` for the
kernel's placement:

- no placement: everything goes to jupyter_client's ``LocalProvisioner`` (this class's
  base), unchanged, except that the kernel gets the variables ``%lowcost`` needs and, for
  IPython kernels, the ``jupyter_lowcost`` IPython extension;
- a placement: the manager starts an instance through the backend, where
  ``python -m jupyter_lowcost.launcher`` runs the kernel and reports its ports; polls,
  signals and stops then go to that instance.
"""

from __future__ import annotations

from typing import Any, cast

from jupyter_client.connect import KernelConnectionInfo, port_names
from jupyter_client.provisioning import LocalProvisioner

from ..protocol import is_ipykernel_command
from . import jupyter_adapters as jupyter
from .instances.launches import Launches
from .manager import InstanceManager, current_manager

#: The argument that loads ``%lowcost`` into IPython kernels started without a placement.
EXTENSION_ARGUMENT = "--IPKernelApp.extra_extensions=jupyter_lowcost"


class LowCostProvisioner(LocalProvisioner):  # type: ignore[misc]
    """A ``LocalProvisioner`` that runs the kernel on an instance when it has a placement."""

    #: Read by the manager: kernels with this provisioner can be moved to an instance.
    supports_placement = True
    #: True while the kernel's current process is an instance rather than a local process.
    _on_instance = False
    #: The kernel manager's address before the kernel first ran on an instance.
    _local_ip: str | None = None

    def _manager(self) -> InstanceManager | None:
        return current_manager()

    def _instance_launches(self) -> Launches | None:
        """Where the calls for the kernel's instance go, while it runs on one (None: the
        kernel is a local process, ``LocalProvisioner``'s)."""
        manager = self._manager()
        return manager.launches if self._on_instance and manager is not None else None

    def _placed(self) -> bool:
        manager = self._manager()
        return manager is not None and manager.placement(self.kernel_id) is not None

    def _forget_ports(self) -> None:
        """Let the next launch choose its ports and address (they change with the
        machine): those of this machine for a local kernel, the instance's otherwise."""
        km = self.parent
        if km is not None:
            if self._local_ip is None:
                self._local_ip = km.ip
            km.ip = self._local_ip
            for name in port_names:
                setattr(km, name, 0)
        jupyter.forget_cached_ports(self)

    @property
    def has_process(self) -> bool:
        return self._on_instance or super().has_process

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        manager = self._manager()
        if not self._placed():
            if self._on_instance:
                self._forget_ports()
            kwargs = await super().pre_launch(**kwargs)
            if manager is not None:
                kwargs["env"].update(manager.launches.kernel_env(self.kernel_id))
                if is_ipykernel_command(kwargs["cmd"]):
                    kwargs["cmd"] = [*kwargs["cmd"], EXTENSION_ARGUMENT]
            return kwargs
        assert manager is not None
        # jupyter_client's own preparation (the connection file, the session's keys, the
        # command), without reserving ports here: the kernel binds its own on the instance.
        # The manager only places IPython kernels (python -m ipykernel_launcher): the
        # launcher takes the interpreter from the command and runs ipykernel itself.
        self._forget_ports()
        with jupyter.without_local_ports(self):
            kwargs = await super().pre_launch(**kwargs)
        kwargs["env"].update(manager.launches.kernel_env(self.kernel_id))
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        manager = self._manager()
        if manager is None or not self._placed():
            self._on_instance = False
            return await super().launch_kernel(cmd, **kwargs)
        km = self.parent
        assert km is not None
        key = km.session.key
        info = await manager.launch(
            self.kernel_id,
            python=cmd[0],
            env=kwargs.get("env", {}),
            cwd=kwargs.get("cwd"),
            kernel_config={"key": key.decode(), "signature_scheme": km.session.signature_scheme},
            kernel_name=km.kernel_name,
        )
        self._on_instance = True
        self.cwd = kwargs.get("cwd")
        # (a kernel taken back after a server restart keeps the session key it has: the
        # manager returns it, and jupyter_client loads it with the connection info)
        info = {"key": key, "signature_scheme": km.session.signature_scheme, **info}
        # (the connection file of a kernel taken back is the previous server's, with the
        # same contents: jupyter_client then keeps what the manager holds, so load it)
        km.load_connection_info(info)
        # The connection file (``jupyter console --existing``) now says where it runs.
        km.cleanup_connection_file()
        km.write_connection_file()
        # The ports and address the kernel bound on the instance:
        self.connection_info = cast(KernelConnectionInfo, info)
        return self.connection_info

    async def poll(self) -> int | None:
        if (launches := self._instance_launches()) is not None:
            return launches.poll(self.kernel_id)
        return await super().poll()

    async def wait(self) -> int | None:
        if (launches := self._instance_launches()) is not None:
            returncode = await launches.wait(self.kernel_id)
            self._on_instance = False
            return returncode
        return await super().wait()

    async def send_signal(self, signum: int) -> None:
        if (launches := self._instance_launches()) is not None:
            await launches.send_signal(self.kernel_id, signum)
        else:
            await super().send_signal(signum)

    async def kill(self, restart: bool = False) -> None:
        if (launches := self._instance_launches()) is not None:
            await launches.stop_instance(self.kernel_id, now=True)
        else:
            await super().kill(restart)

    async def terminate(self, restart: bool = False) -> None:
        if (launches := self._instance_launches()) is not None:
            await launches.stop_instance(self.kernel_id, now=False)
        else:
            await super().terminate(restart)

    async def shutdown_requested(self, restart: bool = False) -> None:
        if (launches := self._instance_launches()) is not None:
            launches.shutdown_requested(self.kernel_id, restart)
        await super().shutdown_requested(restart)

    async def cleanup(self, restart: bool = False) -> None:
        if (launches := self._instance_launches()) is not None:
            # The kernel has stopped: its instance must not outlive it.
            await launches.stop_instance(self.kernel_id, now=True)
            self._on_instance = False
        else:
            await super().cleanup(restart)
        manager = self._manager()
        if not restart and manager is not None:
            manager.launches.kernel_gone(self.kernel_id)
