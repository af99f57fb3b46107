"""The instance-type catalog: what can be asked for, and what it costs.

``LowCostApp.instance_types`` holds the catalog as plain dictionaries (so that it can be
replaced in a config file); :func:`parse_catalog` turns it into :class:`InstanceType`
objects once, at start-up, and rejects a malformed entry with a message that names it.
The handlers serve :meth:`InstanceType.to_model`; the manager uses the prices to compute
cost and savings.
"""

from __future__ import annotations

from typing import Any

from ..backends.base import InstanceType

__all__ = ["DEFAULT_INSTANCE_TYPES", "CatalogError", "InstanceType", "parse_catalog"]

#: The built-in catalog. Prices are hourly list prices in US dollars from public price lists
#: (Paperspace Gradient's regular and low-cost prices for P100, GV100 and A100-80G; Google
#: Cloud us-central1 on-demand and Spot prices for one T4 and one H100); they are examples,
#: not quotes: replace them with ``c.LowCostApp.instance_types`` for your provider.
DEFAULT_INSTANCE_TYPES: list[dict[str, Any]] = [
    {
        "name": "T4",
        "gpu": "NVIDIA T4 16 GB",
        "gpu_count": 1,
        "vcpus": 4,
        "memory_gb": 15,
        "price_regular": 0.35,
        "price_low_cost": 0.14,
    },
    {
        "name": "P100",
        "gpu": "NVIDIA Tesla P100 16 GB",
        "gpu_count": 1,
        "vcpus": 8,
        "memory_gb": 30,
        "price_regular": 1.72,
        "price_low_cost": 0.59,
    },
    {
        "name": "GV100",
        "gpu": "NVIDIA Quadro GV100 32 GB",
        "gpu_count": 1,
        "vcpus": 8,
        "memory_gb": 30,
        "price_regular": 2.89,
        "price_low_cost": 1.15,
    },
    {
        "name": "A100-80G",
        "gpu": "NVIDIA A100 80 GB",
        "gpu_count": 1,
        "vcpus": 12,
        "memory_gb": 90,
        "price_regular": 3.09,
        "price_low_cost": 1.15,
    },
    {
        "name": "H100",
        "gpu": "NVIDIA H100 80 GB",
        "gpu_count": 1,
        "vcpus": 26,
        "memory_gb": 234,
        "price_regular": 11.06,
        "price_low_cost": 3.72,
    },
]

_REQUIRED = ("name", "gpu", "price_regular", "price_low_cost")


class CatalogError(ValueError):
    """A catalog entry is malformed; the message names the entry and the field."""


def parse_catalog(entries: list[dict[str, Any]]) -> dict[str, InstanceType]:
    """Validate the configured catalog and index it by name (called by ``LowCostApp``)."""
    catalog: dict[str, InstanceType] = {}
    if not entries:
        raise CatalogError("LowCostApp.instance_types is empty: configure at least one type")
    for index, entry in enumerate(entries):
        label = f"LowCostApp.instance_types[{index}]"
        if not isinstance(entry, dict):
            raise CatalogError(f"{label} must be a dict, not {type(entry).__name__}")
        missing = [key for key in _REQUIRED if key not in entry]
        if missing:
            raise CatalogError(f"{label} lacks {', '.join(missing)}")
        try:
            itype = InstanceType(
                name=str(entry["name"]),
                gpu=str(entry["gpu"]),
                gpu_count=int(entry.get("gpu_count", 1)),
                vcpus=int(entry.get("vcpus", 0)),
                memory_gb=float(entry.get("memory_gb", 0)),
                price_regular=float(entry["price_regular"]),
                price_low_cost=float(entry["price_low_cost"]),
            )
        except (TypeError, ValueError) as err:
            raise CatalogError(f"{label} ({entry.get('name')!r}): {err}") from err
        if itype.price_regular < 0 or itype.price_low_cost < 0:
            raise CatalogError(f"{label} ({itype.name!r}): prices cannot be negative")
        if itype.name in catalog:
            raise CatalogError(f"{label}: the name {itype.name!r} appears twice")
        catalog[itype.name] = itype
    return catalog
