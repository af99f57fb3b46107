"""Kernel side: the ``%lowcost`` magic.

Registered by ``%load_ext jupyter_lowcost`` (automatic in kernels that the provisioner
starts). Every subcommand but the checkpoints' calls the REST API through
:class:`~jupyter_lowcost.kernel.client.LowCostClient`, so the magic and JupyterLab's switch
always show the same state. The line is read by :func:`.magic_line.parse_line` (argparse,
a subparser per subcommand; ``%lowcost?`` shows the method's docstring)::

    %lowcost                   this kernel's tier, type, time left, cost and savings
    %lowcost on [--type T]     move this kernel to a low-cost instance (it restarts)
    %lowcost off               move it back to a regular instance (it restarts)
    %lowcost types             the instance types and their prices
    %lowcost interrupt [--notice S] [--in S]
                               simulate an interruption of this kernel's low-cost instance
    %lowcost checkpoint        save the kernel's variables now (kernel side, no REST call)
    %lowcost checkpoints [--all]
                               list the saved checkpoints (--all: of every kernel,
                               also those no server runs any more)
    %lowcost restore [ID | KERNEL[/ID]]
                               put a checkpoint's variables back (this kernel's, or
                               another kernel's as --all lists them)
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from IPython.core.magic import Magics, line_magic, magics_class

from ..words import format_duration, human_bytes
from .checkpointing import installed
from .magic_line import USAGE, parse_line

if TYPE_CHECKING:  # the client imports requests: kept out of every kernel's start-up
    from .client import LowCostClient

__all__ = ["USAGE", "LowCostMagics", "describe_all_checkpoints", "describe_status"]


def describe_status(kernel: dict[str, Any]) -> str:
    """What ``%lowcost`` prints for a ``GET kernels/<id>`` model."""
    placement = kernel.get("placement")
    instance = kernel.get("instance")
    if placement is None:
        return (
            "This kernel runs on the Jupyter server's machine, not on a low-cost instance.\n"
            "%lowcost on [--type T] moves it to one; %lowcost types lists the types."
        )
    lines = [f"This kernel runs on a {placement['tier']} {placement['instance_type']} instance"]
    if instance is None:
        return lines[0] + " (starting)."
    lines[0] += f" ({instance['state']}, instance {instance['id']})."
    if instance.get("state") == "notice":
        lines.append(
            f"Interruption notice: {instance['reason']} (deadline {instance['notice_deadline']})."
        )
    if instance.get("notice_warning"):
        lines.append(f"Warning: {instance['notice_warning']}.")
    if instance.get("seconds_left") is not None:
        lines.append(
            f"Time left before the lifetime cap: {format_duration(instance['seconds_left'])}."
        )
    lines.append(
        f"Cost so far: ${instance['cost']:.2f} at ${instance['price_per_hour']:.2f}/h"
        + (
            f"; saved ${instance['savings']:.2f} against the regular "
            f"${instance['regular_price_per_hour']:.2f}/h."
            if placement["low_cost"]
            else "."
        )
    )
    return "\n".join(lines)


def describe_checkpoint(report: Any) -> str:
    """What ``%lowcost checkpoint`` prints for the checkpoint it took."""
    line = (
        f"Checkpoint {report.checkpoint_id}: {len(report.variables)} variables, "
        f"{report.bytes / 1e6:.1f} MB ({report.bytes_written / 1e6:.1f} MB written) "
        f"in {report.seconds:.2f} s."
    )
    for skipped in report.skipped:
        line += f"\nNot saved: {skipped.name} ({skipped.type}): {skipped.why}"
    return line


def describe_own_checkpoints(store: Any) -> str:
    """``%lowcost checkpoints``: this kernel's checkpoints, oldest first."""
    lines = []
    for checkpoint_id in store.checkpoint_ids():
        manifest = store.manifest(checkpoint_id)
        ago = format_duration(time.time() - manifest["taken_at"])
        lines.append(
            f"{checkpoint_id}  {ago} ago  {len(manifest['variables'])} variables  "
            f"{manifest['bytes'] / 1e6:.1f} MB"
        )
    return "\n".join(lines) or "No checkpoint yet."


def describe_types(types: list[dict[str, Any]]) -> str:
    """The catalog as a table."""
    header = (
        f"{'type':<10} {'GPU':<28} {'vCPUs':>5} {'memory':>8} {'regular':>9} "
        f"{'low-cost':>9} {'less':>5}"
    )
    rows = [header]
    for t in types:
        rows.append(
            f"{t['name']:<10} {t['gpu'] + ' x' + str(t['gpu_count']):<28} {t['vcpus']:>5} "
            f"{str(t['memory_gb']) + ' GB':>8} {'$%.2f/h' % t['price_regular']:>9} "
            f"{'$%.2f/h' % t['price_low_cost']:>9} {str(t['discount_percent']) + '%':>5}"
        )
    return "\n".join(rows)


@magics_class
class LowCostMagics(Magics):
    """``%lowcost``: see and change where this kernel runs."""

    @line_magic
    def lowcost(self, line: str = "") -> None:
        """Show or change this kernel's low-cost placement.

        %lowcost                   status: tier, type, time left, cost, savings
        %lowcost on [--type T]     move this kernel to a low-cost instance (restarts it)
        %lowcost off               move it back to a regular instance (restarts it)
        %lowcost types             the instance types and their prices
        %lowcost interrupt [--notice S] [--in S]
                                   simulate an interruption of this kernel's low-cost
                                   instance: a notice of S seconds (30), announced now or
                                   in S seconds, as a provider taking it back would give
        %lowcost checkpoint        save the variables now
        %lowcost checkpoints       the saved checkpoints
        %lowcost checkpoints --all the checkpoints of every kernel of this server's data,
                                   with their notebook, age and size, also of kernels
                                   that no server runs any more
        %lowcost restore [ID]      put a checkpoint's variables back (the latest by default)
        %lowcost restore KERNEL[/ID]
                                   put another kernel's checkpoint (its latest by
                                   default) into this kernel, as --all lists them
        """
        from .client import LowCostClient, LowCostError

        args = parse_line(line)
        if args.command in ("checkpoint", "checkpoints", "restore"):
            self._checkpoints(args)
            return
        try:
            client = LowCostClient.from_environment()
            if args.command == "status":
                self._status(client)
            elif args.command == "types":
                print(describe_types(client.instance_types()))
            elif args.command == "on":
                self._on(client, args.instance_type)
            elif args.command == "off":
                self._off(client)
            else:
                notice = 30.0 if args.notice is None else args.notice
                self._interrupt(client, notice, args.delay or 0.0)
        except LowCostError as err:
            print(f"%lowcost: {err}", file=sys.stderr)

    def _checkpoints(self, args: Any) -> None:
        """The subcommands that read and write this kernel's checkpoints (no REST call)."""
        checkpoints = installed()
        if checkpoints is None:
            print(
                "%lowcost: this kernel has no checkpoint directory (it was not started by a "
                "Jupyter server with jupyter-lowcost, or checkpoints are off)",
                file=sys.stderr,
            )
        elif args.command == "checkpoint":
            print(describe_checkpoint(checkpoints.checkpoint(manual=True)))
        elif args.command == "checkpoints" and not args.all:
            print(describe_own_checkpoints(checkpoints.store))
        elif args.command == "checkpoints":
            print(describe_all_checkpoints(checkpoints.store.root.parent, checkpoints.store.root))
        else:
            self._restore(checkpoints, args.target)

    def _status(self, client: LowCostClient) -> None:
        print(describe_status(client.kernel()))
        demo = client.status().get("demo")
        if demo:
            print(demo)
        checkpoints = installed()
        if checkpoints is not None:
            print(checkpoints.status())

    def _restore(self, checkpoints: Any, target: str | None) -> None:
        """``%lowcost restore [ID | KERNEL[/ID]]``."""
        try:
            if target:
                restored = _restore_target(checkpoints, target)
            elif not _has_variables(checkpoints.store):
                print(
                    "Nothing to restore: this kernel has no checkpoint with variables "
                    "yet. %lowcost checkpoints --all lists the checkpoints of every "
                    "kernel, and %lowcost restore KERNEL takes one.",
                    file=sys.stderr,
                )
                return
            else:
                restored = checkpoints.restore()
        except (OSError, LookupError, ValueError) as err:
            print(f"%lowcost: {err}", file=sys.stderr)
            return
        print(f"Restored checkpoint {restored.checkpoint_id}: {restored.summary()}.")

    def _on(self, client: LowCostClient, instance_type: str | None) -> None:
        # The server validates the type (and picks one when none is given).
        target = client.switch(True, instance_type)["placement"]["instance_type"]
        t = {t["name"]: t for t in client.instance_types()}[target]
        cap = format_duration(t["low_cost_lifetime_cap_seconds"])
        print(
            f"Moving this kernel to a low-cost {target} instance: ${t['price_low_cost']:.2f}/h "
            f"instead of ${t['price_regular']:.2f}/h, {t['discount_percent']}% less.\n"
            "Low-cost instances can be interrupted at any time, even in the first minutes, and "
            f"always stop after {cap}; {_memory_rule()}\n"
            "The kernel restarts on the new instance when this cell ends."
        )

    def _off(self, client: LowCostClient) -> None:
        placement = client.kernel().get("placement")
        if not placement or not placement["low_cost"]:
            print("This kernel is not on a low-cost instance; nothing to change.")
            return
        client.switch(False, placement["instance_type"])
        print(
            f"Moving this kernel to a regular {placement['instance_type']} instance. "
            "The kernel restarts on the new instance when this cell ends."
        )

    def _interrupt(self, client: LowCostClient, notice_seconds: float, delay: float) -> None:
        from .client import LowCostError

        instance = client.kernel().get("instance")
        if instance is None or not instance.get("low_cost"):
            print(
                "%lowcost: this kernel is not on a low-cost instance; only those are "
                "interrupted (%lowcost on moves it to one)",
                file=sys.stderr,
            )
            return
        if instance["state"] != "running":
            print(
                f"%lowcost: this kernel's instance is {instance['state']}, not running; "
                "nothing to interrupt",
                file=sys.stderr,
            )
            return
        when = f"in {delay:g} s" if delay else "now"
        said = (
            f"Simulated interruption of instance {instance['id']}, announced {when} with "
            f"{notice_seconds:g} s notice, as a provider taking a spot instance back would "
            "give: the `notice` flag turns true and on_notice callbacks run; at the end of "
            "the notice the instance is taken away, and the kernel resumes on a new "
            "instance from its checkpoint."
        )
        if not delay:
            client.interrupt(instance["id"], notice_seconds)  # (a refusal is all it says)
            print(said)
            return
        print(said)

        def announce() -> None:
            from .interruption import notice

            if notice:  # another interruption came first: it is the one that counts
                return
            try:
                client.interrupt(instance["id"], notice_seconds)
            except LowCostError as err:
                print(f"%lowcost interrupt: {err}", file=sys.stderr)

        timer = threading.Timer(delay, announce)
        timer.daemon = True
        timer.start()


def _has_variables(store: Any) -> bool:
    latest = store.latest()
    return latest is not None and bool(store.manifest(latest)["variables"])


def _restore_target(checkpoints: Any, target: str) -> Any:
    """``%lowcost restore ID`` (one of this kernel's) or ``KERNEL[/ID]``."""
    if target in checkpoints.store.checkpoint_ids():
        return checkpoints.restore(target)
    if target.isdigit():
        # A kernel id can start with 8 digits too; else this kernel's message
        try:
            return _restore_other(checkpoints, target)
        except LookupError:
            return checkpoints.restore(target)
    return _restore_other(checkpoints, target)


def _restore_other(checkpoints: Any, target: str) -> Any:
    """``%lowcost restore KERNEL[/ID]``: another kernel's checkpoint into this kernel."""
    from ..storage.checkpoint_dirs import find
    from ..storage.checkpoints import CheckpointStore

    kernel, _, checkpoint_id = target.partition("/")
    directory = find(checkpoints.store.root.parent, kernel)
    store = CheckpointStore(directory.path)
    try:
        report = checkpoints.restore(checkpoint_id or None, store=store)
    finally:
        store.close()
    report.checkpoint_id = f"{directory.kernel_id[:8]}/{report.checkpoint_id}"
    return report


def describe_all_checkpoints(root: Any, own: Any) -> str:
    """``%lowcost checkpoints --all``: every kernel's checkpoints under ``root``, newest
    first, saying which kernel is this one, which the server runs, which no server does."""
    from ..storage.checkpoint_dirs import list_checkpoints
    from .client import LowCostClient, LowCostError

    found = list_checkpoints(root)
    if not found:
        return f"No checkpoints in {root}."
    try:
        running: set[str] | None = LowCostClient.from_environment().running_kernel_ids()
    except LowCostError:
        running = None
    header = (
        f"{'kernel':<8}  {'latest':<8}  {'taken':>14}  {'variables':>9}  {'size':>9}  "
        f"{'kernel state':<14}  notebook"
    )
    rows = [header]
    for entry in found:
        if entry.path == own:
            state = "this kernel"
        elif running is None:
            state = "?"
        elif entry.kernel_id in running:
            state = "running"
        else:
            state = "no server runs"
        age = entry.age()
        rows.append(
            f"{entry.kernel_id[:8]:<8}  {entry.latest or '':<8}  "
            f"{format_duration(age) + ' ago' if age is not None else '?':>14}  "
            f"{entry.variables:>9}  {human_bytes(entry.disk_size()):>9}  {state:<14}  "
            f"{entry.notebook or '(unknown)'}"
        )
    rows.append("%lowcost restore KERNEL puts a kernel's latest checkpoint into this kernel.")
    return "\n".join(rows)


def _memory_rule() -> str:
    checkpoints = installed()
    if checkpoints is not None and checkpoints.when != "off":
        return "the kernel's variables are checkpointed, and restored after an interruption."
    return "what is in the kernel's memory is lost on an interruption."
