"""Kernel side: this kernel's client of the REST API, for ``%lowcost`` and for scripts.

The provisioner gives every kernel it starts the server's URL, a token and the kernel's
own id in its environment (``JUPYTER_LOWCOST_URL``, ``JUPYTER_LOWCOST_TOKEN``,
``JUPYTER_LOWCOST_KERNEL_ID``); :meth:`LowCostClient.from_environment` reads them. The
calls go through :class:`~jupyter_lowcost.client.rest.LowCostAPI` (shared with the
``jupyter lowcost`` commands); every failure is a :class:`LowCostError` whose message can
be shown as it is.
"""

from __future__ import annotations

import os
from typing import Any

from .. import env
from ..client.rest import APIError, LowCostAPI


class LowCostError(Exception):
    """Something the user should read: no server, or the server's refusal."""


class LowCostClient:
    """Calls ``{server}lowcost/api/`` with the server's token, about this kernel."""

    def __init__(self, server_url: str, token: str, kernel_id: str, timeout: float = 30) -> None:
        self.rest = LowCostAPI(server_url, token, timeout)
        self.api = self.rest.api
        self.kernel_id = kernel_id

    @classmethod
    def from_environment(cls) -> LowCostClient:
        """The client for this kernel; ``LowCostError`` outside a jupyter-lowcost server."""
        url = os.environ.get(env.URL)
        kernel_id = os.environ.get(env.KERNEL_ID)
        if not url or not kernel_id:
            raise LowCostError(
                "This kernel was not started by a Jupyter server with jupyter-lowcost, so "
                "it cannot be moved. Start JupyterLab with jupyter-lowcost installed "
                "(pip install jupyter-lowcost) and open the notebook there."
            )
        return cls(url, os.environ.get(env.TOKEN, ""), kernel_id)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; returns the decoded JSON (None for 204)."""
        try:
            return self.rest.call(method, path, **kwargs)
        except APIError as err:
            raise LowCostError(_said(err, self.api)) from err

    def running_kernel_ids(self) -> set[str]:
        """The ids of the kernels the server runs (jupyter_server's ``GET /api/kernels``)."""
        try:
            return {kernel["id"] for kernel in self.rest.call_server("GET", "api/kernels")}
        except (APIError, ValueError, KeyError, TypeError) as err:
            raise LowCostError(f"could not list the server's kernels: {err}") from err

    def kernel(self) -> dict[str, Any]:
        """This kernel's placement, current instance and history."""
        return self.request("GET", f"kernels/{self.kernel_id}")

    def report_restored(self, report: dict[str, Any]) -> Any:
        """Say what a resume restored (the server emits it as an event)."""
        return self.request("POST", f"kernels/{self.kernel_id}/restored", json=report)

    def report_checkpoint(self, report: dict[str, Any]) -> Any:
        """Say that a checkpoint failed, or that they work again (an event for JupyterLab)."""
        return self.request("POST", f"kernels/{self.kernel_id}/checkpoint", json=report)

    def instance_types(self) -> list[dict[str, Any]]:
        """The catalog."""
        return self.request("GET", "instance-types")

    def status(self) -> dict[str, Any]:
        """The backend and its capacity."""
        return self.request("GET", "status")

    def interrupt(self, instance_id: str, notice_seconds: float) -> Any:
        """Announce an interruption of an instance (``POST instances/<id>/interrupt``)."""
        return self.request(
            "POST", f"instances/{instance_id}/interrupt", json={"notice_seconds": notice_seconds}
        )

    def switch(self, low_cost: bool, instance_type: str | None, wait: bool = False) -> Any:
        """Move this kernel; without ``wait`` the server answers before it restarts it."""
        body: dict[str, Any] = {"low_cost": low_cost}
        if instance_type:
            body["instance_type"] = instance_type
        params = {} if wait else {"wait": "0"}
        return self.request("PUT", f"kernels/{self.kernel_id}", json=body, params=params)


def _said(err: APIError, api: str) -> str:
    """What ``%lowcost`` says of a failed call: the server's message and its HTTP status."""
    if err.status is None:
        return f"the Jupyter server at {api} cannot be reached: {err.detail}"
    message = err.server_message() or err.reason
    if err.status == 404 and "lowcost/api" in message:
        message = "the server does not have the jupyter-lowcost extension enabled"
    return f"{message} (HTTP {err.status})"
