"""The REST API's side of the manager: validation of what a request names, and the JSON
models served (``GET instance-types``, ``status``, ``instances``, ``kernels/<id>``).

Called by the manager's facade for the handlers. Every refusal is a ``web.HTTPError`` with
a message a person understands, raised before anything changes.
"""

from __future__ import annotations

import time
from typing import Any

from tornado import web

from ..._version import __version__
from ...backends import InstanceType, available_backends
from ...protocol import is_ipykernel_command
from ...storage.records import InstanceRecord, Placement
from ...words import describe_seconds
from .ledger import Context


def check_launchable(spec: Any) -> None:
    """Refuse (400) a kernelspec the launcher cannot run on an instance."""
    if not is_ipykernel_command(list(spec.argv)):
        raise web.HTTPError(
            400,
            f"kernel {spec.display_name!r} is not an IPython kernel (python -m "
            "ipykernel_launcher): only IPython kernels run on low-cost instances",
        )


class RestModels:
    """Looks things up for the REST API (404 when missing) and builds its models."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger

    # -- lookups and validation ----------------------------------------------------------

    def instance_type(self, name: Any) -> InstanceType:
        catalog = self.ctx.catalog
        if not isinstance(name, str) or name not in catalog:
            known = ", ".join(catalog)
            raise web.HTTPError(400, f"unknown instance type {name!r}; the catalog has: {known}")
        return catalog[name]

    def record(self, instance_id: str) -> InstanceRecord:
        record = self.ledger.record(instance_id)
        if record is None:
            raise web.HTTPError(404, f"no instance with id {instance_id!r}")
        return record

    def require_kernel(self, kernel_id: str) -> None:
        if kernel_id not in self.ctx.kernel_manager:
            raise web.HTTPError(404, f"no kernel with id {kernel_id!r}")

    def parse_placement(self, body: dict[str, Any], current: Placement | None) -> Placement:
        """Validate ``{"low_cost": bool, "instance_type": T}`` against the catalog."""
        low_cost = body.get("low_cost", True if current is None else current.low_cost)
        if not isinstance(low_cost, bool):
            raise web.HTTPError(400, f"low_cost must be true or false, not {low_cost!r}")
        default_type = current.instance_type if current else next(iter(self.ctx.catalog))
        itype = self.instance_type(body.get("instance_type") or default_type)
        return Placement(itype.name, low_cost)

    # -- models --------------------------------------------------------------------------

    def catalog_models(self) -> list[dict[str, Any]]:
        """``GET instance-types``."""
        cap = self.ctx.settings.lifetime_cap
        return [itype.to_model(cap) for itype in self.ctx.catalog.values()]

    def status_model(self) -> dict[str, Any]:
        """``GET status``."""
        settings = self.ctx.settings
        live = [r for r in self.ledger.records() if r.is_live]
        return {
            "backend": self.ctx.backend.name,
            "backends_installed": available_backends(),
            "version": __version__,
            "capacity": self.ctx.backend.capacity(),
            "lifetime_cap_seconds": settings.lifetime_cap,
            "recovery_policy": settings.recovery_policy,
            "checkpoint_policy": settings.checkpoints,
            "live_instances": len(live),
            "demo": self.demo_message() if settings.demo else None,
        }

    def demo_message(self) -> str:
        """What this demo server does that a real one does not (``LowCostApp.demo``),
        shown by ``GET status``, the JupyterLab dialog and status bar, and ``%lowcost``."""
        parts = []
        cap = self.ctx.settings.lifetime_cap
        if cap > 0:
            parts.append(f"stop after {describe_seconds(cap)} (not 24 hours)")
        random_interruptions = self.ctx.backend.random_interruptions()
        if random_interruptions:
            parts.append(random_interruptions)
        rules = " and ".join(parts) if parts else "behave as configured"
        return f"Demo server (LowCostApp.demo): its low-cost instances {rules}."

    def instance_models(self, kernel_id: str | None = None) -> list[dict[str, Any]]:
        """``GET instances``: every record this server knows, oldest first."""
        now = time.time()
        return [
            r.to_model(now)
            for r in self.ledger.records()
            if kernel_id is None or r.kernel_id == kernel_id
        ]

    def instance_model(self, instance_id: str) -> dict[str, Any]:
        """``GET instances/<id>``."""
        return self.record(instance_id).to_model()

    def current_instance_model(self, kernel_id: str) -> dict[str, Any] | None:
        """The model of the kernel's current instance (None without a placement)."""
        current = self.ledger.current(kernel_id)
        if current is None or self.ledger.placement(kernel_id) is None:
            return None
        return current.to_model()

    def kernel_model(self, kernel_id: str) -> dict[str, Any]:
        """``GET kernels/<id>``: the placement, the current instance, the history."""
        self.require_kernel(kernel_id)
        entry = self.ledger.kernels.get(kernel_id)
        placement = entry.placement if entry is not None else None
        return {
            "kernel_id": kernel_id,
            "placement": placement.to_model() if placement else None,
            "instance": self.current_instance_model(kernel_id),
            "moving": bool(entry is not None and entry.busy),
            "restored": entry.restored if entry is not None else None,
            "checkpoint_status": entry.checkpoint_status if entry is not None else None,
            "history": self.instance_models(kernel_id),
        }
