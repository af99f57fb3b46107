"""A helper for training loops: save a model and its optimizer when the notice comes.

Used in a notebook::

    from jupyter_lowcost import save_on_notice
    save_on_notice("checkpoint.pt", model=model, optimizer=optimizer)

The namespace checkpoint (``jupyter_lowcost.checkpoints``) already saves the variables at
the notice; this helper writes a training checkpoint in the form training code reloads
(``torch.load(...)["model"]``), to a path of the user's choosing.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

from .interruption import Notice, on_notice


def state_of(objects: dict[str, Any]) -> dict[str, Any]:
    """Each object's ``state_dict()`` when it has one (PyTorch modules, optimizers,
    schedulers), else the object itself."""
    return {
        name: obj.state_dict() if callable(getattr(obj, "state_dict", None)) else obj
        for name, obj in objects.items()
    }


def save_on_notice(path: str | os.PathLike[str], **objects: Any) -> Callable[[Notice], Any]:
    """At the interruption notice, save ``objects`` to ``path`` (``torch.save`` when PyTorch
    is installed, else pickle), written to a temporary name and renamed, so that ``path``
    is never half written. Returns the registered callback (``remove_notice_callback``)."""

    def save(notice: Notice) -> None:
        state = state_of(objects)
        temporary = f"{os.fspath(path)}.partial"
        try:
            import torch
        except ImportError:
            with open(temporary, "wb") as file:
                pickle.dump(state, file, protocol=5)
        else:
            torch.save(state, temporary)
        os.replace(temporary, path)

    return on_notice(save)


def load_saved(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read what :func:`save_on_notice` wrote to ``path``: a dict of the saved objects (or
    of their ``state_dict()``), with ``torch.load`` when PyTorch is installed, else pickle.
    Only load files you wrote: both formats can run code while loading."""
    try:
        import torch
    except ImportError:
        with open(path, "rb") as file:
            return pickle.load(file)
    return torch.load(path, weights_only=False)
