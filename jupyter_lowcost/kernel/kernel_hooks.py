"""Where a kernel's checkpoints hook into IPython, ipykernel and the interpreter.

Called once by :func:`~jupyter_lowcost.kernel.checkpointing.install` (every kernel a
server with jupyter-lowcost starts), with its
:class:`~jupyter_lowcost.kernel.checkpointing.KernelCheckpoints`:

- IPython's ``pre_execute`` (every execution, silent ones too) and ipykernel's "busy"
  status (every request on the shell channel, a widget's message too): the last
  snapshot's copies, made by background threads while the reply went out, are whole
  before any of the user's code runs again;
- ``pre_run_cell`` and ``post_run_cell``: the writer pauses while a cell runs; the
  checkpoint after a cell;
- the final interruption notice, the shutdown request, and the interpreter's exit.
"""

from __future__ import annotations

import atexit
from typing import TYPE_CHECKING, Any

from . import ipykernel_adapters
from .interruption import add_final_notice_callback

if TYPE_CHECKING:
    from .checkpointing import KernelCheckpoints


def hook_into_the_kernel(shell: Any, checkpoints: KernelCheckpoints) -> None:
    """The cells', the requests', the notice's, the shutdown's and the exit's hooks."""
    # (atexit runs the last registered first: this before IPython empties the namespace)
    atexit.register(setattr, checkpoints, "closing", True)
    shell.events.register("pre_execute", checkpoints.before_user_code)
    shell.events.register("pre_run_cell", checkpoints._before_cell)
    shell.events.register("post_run_cell", checkpoints._after_cell)
    add_final_notice_callback(checkpoints._at_notice)
    kernel = getattr(shell, "kernel", None)
    if kernel is not None:
        ipykernel_adapters.before_shutdown(kernel, checkpoints._at_shutdown)
        ipykernel_adapters.on_shell_status(
            kernel, lambda status: status == "busy" and checkpoints.before_user_code()
        )
