"""The packages visible in this virtual environment but installed in the Python it was
made from (``--system-site-packages``) that have Jupyter files under that Python's prefix,
as ``name==version`` lines: ``.ci/run`` installs them again in the venv, where Jupyter
looks for its files (``etc/jupyter``, ``share/jupyter`` under ``sys.prefix`` only)."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

OURS = "jupyter-lowcost"  # (installed in the venv by the test command itself)


def with_jupyter_files_elsewhere() -> list[str]:
    """``name==version`` of each distribution outside ``sys.prefix`` that installed files
    under ``etc/jupyter`` or ``share/jupyter`` of the base prefix."""
    base, venv = Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()
    roots = [base / "etc" / "jupyter", base / "share" / "jupyter"]
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        location = Path(str(dist.locate_file(""))).resolve()
        if name is None or name.lower().replace("_", "-") == OURS:
            continue
        if location.is_relative_to(venv) or not location.is_relative_to(base):
            continue
        files = (Path(str(dist.locate_file(file))).resolve() for file in dist.files or [])
        if any(path.is_relative_to(root) for path in files for root in roots):
            found.setdefault(name, f"{name}=={dist.version}")
    return sorted(found.values())


if __name__ == "__main__":
    for requirement in with_jupyter_files_elsewhere() if sys.prefix != sys.base_prefix else []:
        print(requirement)
