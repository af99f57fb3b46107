"""The picklers of a checkpoint: the shared one that saves a namespace's variables, and the
fallbacks (cloudpickle, dill) for what it cannot save.

:class:`NamespacePickler` is used by :mod:`~jupyter_lowcost.storage.snapshots` for every
variable of a snapshot; its streams are loaded by
:class:`~jupyter_lowcost.storage.shared_memo.SharedMemo`. What it saves its own way:
PyTorch tensors (as numpy arrays, their data out of band; :func:`restore_tensor`),
functions the notebook defined (:mod:`~jupyter_lowcost.storage.notebook_functions`) and
open files (:mod:`~jupyter_lowcost.storage.open_files`).
"""

from __future__ import annotations

import io
import pickle
import sys
import types
import warnings
from typing import Any

from .notebook_functions import reduce_notebook_function
from .open_files import FILE_TYPES, reduce_file
from .shared_memo import Redirect


class NamespacePickler(pickle.Pickler):
    """One pickler for every variable of a checkpoint: each variable is a pickle of its
    own (so one that fails is left out), and the memo is shared, so that an object held
    by several variables (a model's parameters and its optimizer) is saved once and comes
    back as one object."""

    def __init__(self, file: Redirect, buffers: list[Any]) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffers.append)
        #: id of a CPU tensor's numpy array -> (the array, the tensor): the tensor is what
        #: owns that memory from one checkpoint to the next.
        self.owners: dict[int, tuple[Any, Any]] = {}
        #: ids of the numpy arrays that are host copies made here (of GPU tensors): memory
        #: nothing else writes, which a snapshot need not copy again.
        self.copies: set[int] = set()

    def reducer_override(self, obj: Any) -> Any:
        """PyTorch tensors (and parameters) as numpy arrays on the host, so that their
        data leaves the stream out of band, without a copy for CPU tensors; a CUDA tensor
        is copied to the host and goes back to its device on restore. Functions the
        notebook defined as their code, which is bound again to the notebook's namespace
        on restore (not to copies of the globals they use). Open files as their path,
        mode and position (:func:`~jupyter_lowcost.storage.open_files.reduce_file`)."""
        if type(obj) is types.FunctionType and obj.__module__ == "__main__":
            return reduce_notebook_function(obj)
        if type(obj) in FILE_TYPES:
            return reduce_file(obj)
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(obj, torch.Tensor):
            return NotImplemented
        if type(obj) not in (torch.Tensor, torch.nn.Parameter) or obj.is_sparse:
            return NotImplemented
        host = obj.detach().to("cpu")
        is_parameter = isinstance(obj, torch.nn.Parameter)
        try:
            array = host.numpy()
            dtype = None
        except (TypeError, RuntimeError):
            # bfloat16, float8 and other types numpy lacks: their raw bytes, and the
            # dtype and shape to view them as again.
            try:
                array = host.contiguous().reshape(-1).view(torch.uint8).numpy()
            except (TypeError, RuntimeError):
                return NotImplemented
            dtype = (str(host.dtype).removeprefix("torch."), tuple(host.shape))
        if obj.device.type != "cpu":
            self.copies.add(id(array))
        elif not obj.is_pinned() and not obj.is_shared():
            # (pinned memory is written by the GPU directly, shared memory by other
            # processes: a write watch would not see those writes)
            self.owners[id(array)] = (array, obj)
        return (
            restore_tensor,
            (array, str(obj.device), obj.requires_grad, is_parameter, dtype),
        )


def fallback_picklers() -> list[Any]:
    """cloudpickle, then dill, when installed: they save what pickle cannot (functions and
    classes defined in the notebook, lambdas). Each as a Pickler class that saves open
    files as :class:`NamespacePickler` does (cloudpickle saves a file open for reading
    as a StringIO of its contents)."""
    found = []
    for module in ("cloudpickle", "dill"):
        if module not in _FALLBACKS:
            try:
                base = __import__(module).Pickler
            except (ImportError, AttributeError):
                _FALLBACKS[module] = None
            else:
                _FALLBACKS[module] = type(
                    f"{module}_with_files", (base,), {"reducer_override": _files_first}
                )
        if _FALLBACKS[module] is not None:
            found.append(_FALLBACKS[module])
    return found


_FALLBACKS: dict[str, Any] = {}


def _files_first(self: Any, obj: Any) -> Any:
    """``reducer_override`` of the fallback picklers: open files by :func:`~jupyter_lowcost.storage.open_files.reduce_file`,
    anything else as the pickler itself would."""
    if type(obj) in FILE_TYPES:
        return reduce_file(obj)
    parent = getattr(super(type(self), self), "reducer_override", None)
    return NotImplemented if parent is None else parent(obj)


def fallback_dumps(pickler: Any, value: Any, buffers: list[Any]) -> bytes:
    """``value`` pickled by one of :func:`fallback_picklers` (protocol 5, its large
    buffers out of band into ``buffers``)."""
    file = io.BytesIO()
    pickler(file, protocol=5, buffer_callback=buffers.append).dump(value)
    return file.getvalue()


def restore_tensor(
    array: Any,
    device: str,
    requires_grad: bool,
    is_parameter: bool,
    dtype: tuple[str, tuple[int, ...]] | None = None,
) -> Any:
    """Rebuild a tensor saved by ``NamespacePickler.reducer_override`` (``dtype``: the
    type and shape of a tensor saved as raw bytes)."""
    import torch

    tensor = torch.from_numpy(array)
    if dtype is not None:
        name, shape = dtype
        tensor = tensor.view(getattr(torch, name)).reshape(shape)
    if device != "cpu":
        if device.startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(
                f"a tensor saved on {device} is restored on the CPU: this instance has no CUDA",
                stacklevel=2,
            )
        else:
            tensor = tensor.to(device)
    if is_parameter:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(requires_grad) if requires_grad else tensor


def defined_in_notebook(value: Any) -> bool:
    """Classes of the notebook itself: pickle would save only their name (cloudpickle or
    dill save them whole)."""
    return isinstance(value, type) and getattr(value, "__module__", None) == "__main__"
