"""Checkpoints inside a kernel: when to take them, restoring at start, telling the server.

``load_ipython_extension`` (every kernel a server with jupyter-lowcost starts) calls
:func:`install`; ``%lowcost checkpoint|restore|checkpoints`` call the installed
:class:`KernelCheckpoints`. The server says, in the kernel's environment, where the
checkpoints go (a directory the instance's loss cannot take: by default the Jupyter
server's data directory), when to take them, and whether this start is a resume.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Any

from .. import env
from ..storage.checkpoints import (
    CheckpointStore,
    CheckpointWriteFailed,
    RestoreReport,
    SaveReport,
    user_variables,
)
from .interruption import add_final_notice_callback

_installed: KernelCheckpoints | None = None


class KernelCheckpoints:
    """The checkpoints of this kernel's namespace."""

    def __init__(self, shell: Any, directory: str, when: str, job: bool = False) -> None:
        self.shell = shell
        #: The kernel runs a job's cells: a checkpoint after every cell and only there
        #: (a notice's or a shutdown's would hold half a cell, which the job runs again).
        self.job = job
        self.store = CheckpointStore(directory)
        self.when = when
        self.interval = float(when.split(":", 1)[1]) if when.startswith("interval:") else 0.0
        self.last_save: SaveReport | None = None
        self.last_restore: RestoreReport | None = None
        #: The last checkpoint that could not be written: (when, why); None after a success.
        self.last_failure: tuple[float, str] | None = None
        self._last_time = time.monotonic()
        self._lock = threading.Lock()
        self._unhide_pending: dict[str, Any] = {}
        #: True once the kernel shuts down: IPython empties the namespace on the way out,
        #: and a notice then must not save that as the latest checkpoint.
        self.closing = False

    def namespace(self) -> dict[str, Any]:
        """The user's variables, restored ones included: a notice or a move before the
        first cell after a resume must save what came back, not an empty namespace."""
        self._unhide_restored()
        return user_variables(self.shell.user_ns, self.shell.user_ns_hidden)

    def checkpoint(self, manual: bool = False) -> SaveReport:
        """Save the namespace now (``manual``: asked by the user, kept longer).

        A checkpoint that cannot be written (a full disk) raises
        :class:`CheckpointWriteFailed`; nothing of it is left, the previous checkpoint
        stays the latest, and the server is told (an event, shown by JupyterLab)."""
        with self._lock:
            try:
                namespace = self.namespace()
                report = self.store.save(
                    namespace,
                    os.environ.get(env.KERNEL_ID),
                    manual=manual,
                    notebook=os.environ.get(env.NOTEBOOK) or os.environ.get("JPY_SESSION_NAME"),
                    history=self.history(namespace),
                )
            except CheckpointWriteFailed as err:
                first = self.last_failure is None
                self.last_failure = (time.time(), str(err))
                if first:
                    _tell_server_in_background(self._failure_report(str(err)))
                raise
            if self.last_failure is not None:
                self.last_failure = None
                _tell_server_in_background({"ok": True, "checkpoint_id": report.checkpoint_id})
            self.last_save = report
            self._last_time = time.monotonic()
            return report

    def history(self, namespace: dict[str, Any]) -> dict[str, Any]:
        """The kernel's execution count and inputs (``In``), and of its outputs (``Out``)
        those that are saved variables (by name) or plain JSON values: saved with each
        checkpoint, so that a resumed kernel counts on from where it was."""
        manager = getattr(self.shell, "history_manager", None)
        if manager is None:  # (not an IPython shell)
            return {}
        names = {id(value): name for name, value in namespace.items()}
        outputs: dict[str, Any] = {}
        for number, value in dict(manager.output_hist).items():
            if id(value) in names:
                outputs[str(number)] = {"variable": names[id(value)]}
            elif value is None or isinstance(value, (bool, int, float, str)):
                outputs[str(number)] = {"value": value}
        return {
            "execution_count": int(self.shell.execution_count),
            "inputs": list(manager.input_hist_parsed),
            "raw_inputs": list(manager.input_hist_raw),
            "outputs": outputs,
        }

    def resume_history(self, history: dict[str, Any] | None) -> None:
        """Go on from a checkpoint's history (a resume): the next cell gets the number it
        would have had, and ``In`` and ``Out`` hold what they held."""
        manager = getattr(self.shell, "history_manager", None)
        if not isinstance(history, dict) or manager is None or self.shell.execution_count > 1:
            return
        try:
            count = int(history["execution_count"])
            inputs = [str(x) for x in history.get("inputs") or [""]]
            raw = [str(x) for x in history.get("raw_inputs") or inputs]
        except (KeyError, TypeError, ValueError):
            return
        manager.input_hist_parsed[:] = inputs
        manager.input_hist_raw[:] = raw
        for number, saved in (history.get("outputs") or {}).items():
            if "variable" in saved and saved["variable"] in self.shell.user_ns:
                manager.output_hist[int(number)] = self.shell.user_ns[saved["variable"]]
            elif "value" in saved:
                manager.output_hist[int(number)] = saved["value"]
        self.shell.execution_count = max(count, 1)

    def _failure_report(self, error: str) -> dict[str, Any]:
        kept = self.store.latest()
        return {"ok": False, "error": error, "checkpoint_id": kept or ""}

    def restore(
        self, checkpoint_id: str | None = None, store: CheckpointStore | None = None
    ) -> RestoreReport:
        """Put a checkpoint's variables (the latest by default) back into the namespace:
        this kernel's, or another kernel's ``store`` (``%lowcost restore KERNEL``; this
        kernel's own checkpoints are untouched until its next one)."""
        with self._lock:
            report = (store or self.store).load(checkpoint_id, into=self.shell.user_ns)
            self._unhide({name: self.shell.user_ns[name] for name in report.variables})
            self.last_restore = report
            return report

    def _unhide(self, restored: dict[str, Any]) -> None:
        """Restored variables are the user's, also for %who and for the next checkpoint.

        A restore at start runs before IPython hides its initial namespace from the user
        (``user_ns_hidden``, filled after extensions load), so this runs again just before
        the first cell too."""
        first = not self._unhide_pending
        self._unhide_pending = {**self._unhide_pending, **restored}
        self._unhide_restored()
        if first:

            def before_first_cell(*args: Any) -> None:
                self.shell.events.unregister("pre_run_cell", before_first_cell)
                self._unhide_restored()
                self._unhide_pending = {}

            self.shell.events.register("pre_run_cell", before_first_cell)

    def _unhide_restored(self) -> None:
        """Unhide what the last restore brought back, if IPython has hidden it since."""
        hidden = self.shell.user_ns_hidden
        for name, value in self._unhide_pending.items():
            if name in hidden and hidden[name] is value and self.shell.user_ns.get(name) is value:
                del hidden[name]

    def _after_cell(self, result: Any = None) -> None:
        if self.when == "cell" or (
            self.interval and time.monotonic() - self._last_time >= self.interval
        ):
            if not self.job and not self.namespace() and self.store.latest() is None:
                return  # nothing made yet: no empty checkpoint to "restore" later
            # (A job's every cell has one: it marks the cell done, variables or not.)
            self._quietly(self.checkpoint)

    def _at_notice(self, notice: Any) -> None:
        # Not once the kernel is shutting down (its last checkpoint is taken), and never an
        # empty namespace over the latest checkpoint: a notice that comes while the
        # process exits sees what IPython has emptied, not what the user made.
        if self.when != "off" and not self.job and not self.closing and self.namespace():
            self._quietly(self.checkpoint)

    def _at_shutdown(self) -> None:
        # A move shuts the kernel down gracefully: what it had goes with it. (Not at
        # interpreter exit: IPython empties the namespace before that.)
        if self.when != "off" and not self.job and not self.closing and self.namespace():
            self._quietly(self.checkpoint)
        self.closing = True

    def hook_shutdown(self) -> None:
        """Checkpoint when the kernel receives its shutdown request (ipykernel)."""
        kernel = getattr(self.shell, "kernel", None)
        if kernel is None:
            return
        original = kernel.do_shutdown

        def do_shutdown(restart: bool) -> Any:
            self._at_shutdown()
            return original(restart)

        kernel.do_shutdown = do_shutdown

    def _quietly(self, action: Any) -> None:
        try:
            action()
        except CheckpointWriteFailed as err:
            kept = self.store.latest()
            print(
                f"jupyter_lowcost: checkpoint failed: {err}; "
                + (f"checkpoint {kept} is kept" if kept else "there is no earlier checkpoint"),
                file=sys.stderr,
            )
        except Exception as err:  # a checkpoint that fails must not break the user's cell
            print(f"jupyter_lowcost: checkpoint failed: {err}", file=sys.stderr)

    def status(self) -> str:
        """The lines ``%lowcost`` adds about checkpoints."""
        lines = []
        if self.last_failure is not None:
            when, why = self.last_failure
            kept = self.store.latest()
            lines.append(
                f"Checkpoints are failing ({time.time() - when:.0f} s ago): {why}. "
                + (
                    f"An interruption now resumes from checkpoint {kept}."
                    if kept
                    else "An interruption now loses the variables."
                )
            )
        if self.last_restore is not None:
            r = self.last_restore
            lines.append(f"Resumed from checkpoint {r.checkpoint_id}: {r.summary()}.")
        if self.last_save is not None:
            s = self.last_save
            ago = time.time() - s.taken_at
            lines.append(
                f"Last checkpoint {s.checkpoint_id}, {ago:.0f} s ago: {len(s.variables)} "
                f"variables, {s.bytes / 1e6:.1f} MB"
                + (f"; not saved: {', '.join(x.name for x in s.skipped)}" if s.skipped else "")
                + "."
            )
        else:
            lines.append(f"No checkpoint yet (checkpoints: {self.when}).")
        return "\n".join(lines)


def install(shell: Any) -> KernelCheckpoints | None:
    """Set up checkpoints in this kernel from the environment; restore if it is a resume."""
    global _installed
    directory = os.environ.get(env.CHECKPOINT_DIR)
    if not directory or _installed is not None:
        return _installed
    job = bool(os.environ.get(env.JOB))
    when = "cell" if job else os.environ.get(env.CHECKPOINTS, "cell")
    checkpoints = KernelCheckpoints(shell, directory, when, job=job)
    _installed = checkpoints
    failing = os.environ.pop(env.CHECKPOINTS_FAILING, "")
    if failing:
        checkpoints.last_failure = (time.time(), failing)
    restore = os.environ.pop(env.RESTORE, "")
    if restore and checkpoints.store.latest():
        try:
            report = checkpoints.restore(None if restore == "1" else restore)
            checkpoints.resume_history(report.history)
        except Exception as err:
            print(f"jupyter_lowcost: could not restore the checkpoint: {err}", file=sys.stderr)
        else:
            _tell_server(report)
    # (atexit runs the last registered first: this before IPython empties the namespace)
    atexit.register(setattr, checkpoints, "closing", True)
    shell.events.register("post_run_cell", checkpoints._after_cell)
    add_final_notice_callback(checkpoints._at_notice)
    checkpoints.hook_shutdown()
    return checkpoints


def installed() -> KernelCheckpoints | None:
    return _installed


def _tell_server_in_background(report: dict[str, Any]) -> None:
    """Say that checkpoints fail (or work again), without holding up the user's cell."""

    def tell() -> None:
        try:
            from .client import LowCostClient

            LowCostClient.from_environment().report_checkpoint(report)
        except Exception as err:
            print(f"jupyter_lowcost: could not report the checkpoint: {err}", file=sys.stderr)

    threading.Thread(target=tell, name="lowcost-checkpoint-report", daemon=True).start()


def _tell_server(report: RestoreReport) -> None:
    """Say what came back (the server emits it as an event for JupyterLab)."""
    try:
        from .client import LowCostClient

        LowCostClient.from_environment().report_restored(report.to_json())
    except Exception as err:
        print(f"jupyter_lowcost: could not report the restore: {err}", file=sys.stderr)
