"""What of a notebook's kernel a checkpoint saves besides objects: which variables are the
person's (not IPython's own), and the folders the notebook added to ``sys.path``.

Called by the kernel (:mod:`jupyter_lowcost.kernel.checkpointing`, through
:mod:`jupyter_lowcost.storage.checkpoints`) before a checkpoint, and by a restore
(:mod:`~jupyter_lowcost.storage.restore`) before any variable is loaded.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any


def sys_path_additions(started_with: list[str]) -> dict[str, list[str]] | None:
    """The folders the notebook added to ``sys.path`` since the kernel started (with
    ``started_with``): those before the kernel's own first entry (``front``:
    ``sys.path.insert(0, ...)``) and the others (``end``); None when it added none. The
    kernel saves them with each checkpoint (:mod:`jupyter_lowcost.kernel.checkpointing`)."""
    own = set(started_with)
    front: list[str] = []
    end: list[str] = []
    seen_own = False
    for entry in sys.path:
        if entry in own:
            seen_own = True
        elif isinstance(entry, str) and entry not in front and entry not in end:
            (end if seen_own else front).append(entry)
    return {"front": front, "end": end} if front or end else None


def put_back_sys_path(saved: Any) -> None:
    """Add back to ``sys.path`` the folders a checkpoint's notebook had added (``load``
    calls it before any variable is loaded, so that their modules import)."""
    if not isinstance(saved, dict):
        return
    wanted = {
        where: [p for p in saved.get(where) or () if isinstance(p, str) and p not in sys.path]
        for where in ("front", "end")
    }
    if wanted["front"] or wanted["end"]:
        sys.path[:0] = wanted["front"]
        sys.path.extend(wanted["end"])
        importlib.invalidate_caches()


def user_variables(user_ns: Mapping[str, Any], hidden: Mapping[str, Any]) -> dict[str, Any]:
    """The variables a person made in IPython: not IPython's own (``hidden``, unless the
    person gave the name another value), not ``_``-prefixed. One pass over ``user_ns``
    with one look into ``hidden`` per name: ``hidden`` grows by IPython's ``_iN`` at
    every cell, and a pass over it would make a long job's every checkpoint slower."""
    absent = object()
    return {
        name: value
        for name, value in user_ns.items()
        if name[:1] != "_" and name not in IPYTHON_NAMES and hidden.get(name, absent) is not value
    }


#: IPython's own names in ``user_ns`` (also :mod:`.namespace_reader`'s filter).
IPYTHON_NAMES = frozenset(("In", "Out", "exit", "quit", "get_ipython"))
