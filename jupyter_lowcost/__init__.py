"""jupyter-lowcost: run a notebook's kernel on a low-cost (preemptible) instance.

This module holds only the hooks Jupyter looks for and the kernel-side API; importing it
in a kernel does not import the server.

- ``_jupyter_server_extension_points``: the server extension (``jupyter_lowcost.server.app``);
- ``_jupyter_labextension_paths``: the built JupyterLab extension (from ``labextension/``),
  for ``jupyter labextension develop``;
- ``load_ipython_extension``: ``%load_ext jupyter_lowcost`` registers ``%lowcost``;
- ``notice`` and ``on_notice``: the interruption flag and callbacks for training loops.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .kernel import interruption  # (``from jupyter_lowcost import interruption``)
from .kernel.interruption import notice, on_notice, remove_notice_callback
from .kernel.training import load_saved, save_on_notice

__all__ = [
    "__version__",
    "interruption",
    "load_saved",
    "notice",
    "on_notice",
    "remove_notice_callback",
    "save_on_notice",
]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .server.app import LowCostApp

    return [{"module": "jupyter_lowcost.server.app", "app": LowCostApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-lowcost"}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_lowcost``: register the ``%lowcost`` magic."""
    from .kernel.checkpointing import install
    from .kernel.magics import LowCostMagics

    ipython.register_magics(LowCostMagics)
    install(ipython)  # checkpoints, and the restore when this start resumes the kernel
