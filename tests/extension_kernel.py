"""A real IPython kernel with the extension loaded and checkpoints on, without a server.

Used by the checkpoint tests that need what a kernel does (its cells, its writer thread,
``%lowcost checkpoint``, a restore at start) but no instance: ``tests/test_background_checkpoints.py``
and ``tests/test_checkpoint_files.py``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager


class ExtensionKernel:
    """A kernel checkpointing into ``directory`` (``when``: "cell", "interval:N", "off");
    ``restore``: it restores the latest checkpoint there as it starts (a resume)."""

    def __init__(self, directory: Path, when: str = "cell", restore: bool = False) -> None:
        self.manager = KernelManager(kernel_name="python3")
        env = {
            **os.environ,
            "JUPYTER_LOWCOST_CHECKPOINT_DIR": str(directory),
            "JUPYTER_LOWCOST_CHECKPOINTS": when,
        }
        if restore:
            env["JUPYTER_LOWCOST_RESTORE"] = "1"
        self.manager.start_kernel(
            extra_arguments=["--IPKernelApp.extra_extensions=jupyter_lowcost"], env=env
        )
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(120)

    def run(self, code: str, timeout: float = 120) -> str:
        """Run a cell; what it printed. Fails the test if the cell fails."""
        out: list[str] = []

        def hook(message: dict[str, Any]) -> None:
            if message["msg_type"] == "stream":
                out.append(message["content"]["text"])
            elif message["msg_type"] == "error":
                out.append("\n".join(message["content"]["traceback"]))

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=hook)
        assert reply["content"]["status"] == "ok", "".join(out)
        return "".join(out)

    def send(self, code: str) -> None:
        """Start a cell without waiting for it."""
        self.client.execute(code)

    def stop(self, kill: bool = False) -> None:
        """Shut the kernel down (``kill``: SIGKILL, no shutdown request: what it had in
        flight is cut where it was)."""
        self.client.stop_channels()
        if kill:
            os.kill(self.manager.provisioner.process.pid, signal.SIGKILL)
            self.manager.provisioner.process.wait()
        self.manager.shutdown_kernel(now=True)
