"""Which cloud this machine is a VM of, decided without the network: from the DMI data
the clouds set (what cloud-init reads).

Called by :func:`jupyter_lowcost.instance.cloud_notices.start` when
``LowCostApp.cloud_notices = "auto"``: on a machine that is no cloud's VM, no metadata
service is asked at all.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import env

#: What Azure writes in a VM's chassis asset tag.
AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"


def detect_provider(sysfs: str | None = None) -> tuple[str | None, str]:
    """The provider this machine is a VM of, from the DMI data the clouds set (what
    cloud-init reads), and what that was decided from. Reads files only: no connection,
    no name lookup. ``sysfs`` (default ``$JUPYTER_LOWCOST_SYSFS`` or ``/sys``)."""
    root = Path(sysfs or os.environ.get(env.SYSFS) or "/sys")
    dmi = root / "class" / "dmi" / "id"

    def read(path: Path) -> str | None:
        try:
            return path.read_text(errors="replace").strip()
        except OSError:
            return None

    fields = {
        name: read(dmi / name)
        for name in ("sys_vendor", "product_name", "bios_vendor", "bios_version")
    }
    fields["chassis_asset_tag"] = read(dmi / "chassis_asset_tag")
    hypervisor_uuid = read(root / "hypervisor" / "uuid")

    def said(name: str) -> str:
        return f"{dmi / name} is {fields[name]!r}"

    if fields["sys_vendor"] == "Amazon EC2":
        return "aws", said("sys_vendor")
    if "amazon" in (fields["bios_version"] or "").lower():
        return "aws", said("bios_version")
    if (hypervisor_uuid or "").lower().startswith("ec2"):
        return "aws", f"{root / 'hypervisor' / 'uuid'} starts with 'ec2'"
    if fields["product_name"] == "Google Compute Engine":
        return "gcp", said("product_name")
    if fields["bios_vendor"] == "Google":
        return "gcp", said("bios_vendor")
    if fields["chassis_asset_tag"] == AZURE_ASSET_TAG:
        return "azure", said("chassis_asset_tag") + " (Azure's)"
    seen = [f"{name} {value!r}" for name, value in fields.items() if value is not None]
    if not seen:
        return None, f"no DMI data in {dmi}"
    return None, f"{dmi}: " + ", ".join(seen)
