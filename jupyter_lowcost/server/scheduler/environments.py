"""The compute types "Create Job" offers: one per catalog type and tier, and "this server".

Who calls it: jupyter-scheduler's ``RuntimeEnvironmentsHandler``
(``GET scheduler/runtime_environments``) calls :meth:`LowCostEnvironments.list_environments`
and :meth:`~LowCostEnvironments.output_formats_mapping`; :class:`~.scheduler.LowCostScheduler`
and :mod:`.rows` call :func:`parse_compute_type` and :func:`compute_type`.

The UI shows a compute type's string and nothing else, so the string carries the price:
``"T4 · low-cost · $0.14/h"``. A job definition stores the string it was made with and
replays it on every run, so only the stable prefix ``"T4 · low-cost"`` is parsed: a price
changed since still runs the definition.
"""

from __future__ import annotations

from typing import Any

from jupyter_scheduler.environments import CondaEnvironmentManager
from jupyter_scheduler.models import RuntimeEnvironment

from ...storage.records import Placement, tier_name
from ..manager import InstanceManager, current_manager

#: Our environment's name (and label: the UI's environment picker swaps the two).
ENVIRONMENT = "jupyter-lowcost"
#: The compute type of jupyter-scheduler's own run, in a process of this server.
THIS_SERVER = "this server"
SEP = " · "
OUTPUT_FORMATS = {"ipynb": "Notebook", "html": "HTML"}


def manager() -> InstanceManager | None:
    """The ``jupyter_lowcost`` extension's manager in this process (None: not enabled)."""
    return current_manager()


def compute_type(name: str, low_cost: bool, price: float) -> str:
    """``"T4 · low-cost · $0.14/h"``."""
    return f"{name}{SEP}{tier_name(low_cost)}{SEP}${price:.2f}/h"


def compute_types(manager: InstanceManager) -> list[str]:
    """Every type of the catalog on each tier (low-cost first), then "this server"."""
    catalog = manager.ctx.catalog.values()
    return [
        *(compute_type(t.name, True, t.price(True)) for t in catalog),
        *(compute_type(t.name, False, t.price(False)) for t in catalog),
        THIS_SERVER,
    ]


def parse_compute_type(value: str | None) -> Placement | None:
    """The placement a compute type names; None for "this server" (jupyter-scheduler's
    own run). The first low-cost type when none is given. Raises ``ValueError`` for a
    string that is not ``"<type> · low-cost…"`` or ``"<type> · regular…"``."""
    if value is None or value.strip() == "":
        catalog = manager().ctx.catalog if manager() else {}
        if not catalog:
            raise ValueError("no compute type given and no instance type in the catalog")
        return Placement(next(iter(catalog)), True)
    if value.strip() == THIS_SERVER:
        return None
    parts = [p.strip() for p in value.split(SEP.strip())]
    if len(parts) < 2 or parts[1] not in ("low-cost", "regular") or not parts[0]:
        raise ValueError(
            f"compute type {value!r} is not '<instance type> · low-cost' or "
            f"'<instance type> · regular' (nor {THIS_SERVER!r})"
        )
    return Placement(parts[0], parts[1] == "low-cost")


class LowCostEnvironments(CondaEnvironmentManager):
    """One environment, ``jupyter-lowcost``, whose compute types are the catalog's; with
    the extension not enabled, jupyter-scheduler's own (conda environments)."""

    def list_environments(self) -> list[RuntimeEnvironment]:
        found = manager()
        if found is None:
            return super().list_environments()
        types = compute_types(found)
        return [
            RuntimeEnvironment(
                name=ENVIRONMENT,
                label=ENVIRONMENT,
                description=(
                    "Runs the notebook as a jupyter-lowcost job on the instance type and "
                    "tier of its compute type (checkpointed after every cell, resumed after "
                    "an interruption), or in a process of this server"
                ),
                file_extensions=["ipynb"],
                output_formats=list(OUTPUT_FORMATS),
                metadata={},
                compute_types=types,
                default_compute_type=types[0],
            )
        ]

    def manage_environments_command(self) -> str:
        return ""

    def output_formats_mapping(self) -> dict[str, Any]:
        return dict(OUTPUT_FORMATS)
