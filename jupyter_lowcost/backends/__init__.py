"""Backends run instances; they are plugins in the entry point group ``jupyter_lowcost.backends``.

``LowCostApp`` calls :func:`load_backend_class` with the configured name; the contract
every backend follows is in :mod:`jupyter_lowcost.backends.base`.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from .base import Backend, BackendError, BackendListener, InstanceType, LaunchSpec

ENTRY_POINT_GROUP = "jupyter_lowcost.backends"

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendError",
    "BackendListener",
    "LaunchSpec",
    "InstanceType",
    "available_backends",
    "load_backend_class",
]


def available_backends() -> list[str]:
    """The names of every installed backend."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def load_backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``; ``ValueError`` names the installed ones."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Backend)):
                raise ValueError(f"backend {name!r} ({ep.value}) is not a Backend subclass")
            return cls
    installed = ", ".join(available_backends()) or "none"
    raise ValueError(f"no backend named {name!r} is installed (installed: {installed})")
