"""``jupyter lowcost``: notebooks as low-cost jobs, from a terminal.

``jupyter lowcost run NOTEBOOK [--preemptible] [--type T] [-p NAME=VALUE ...]
[--output PATH] [--detach]``, then ``jobs``, ``show JOB``, ``logs JOB [--follow]``,
``cancel JOB``, ``types`` and ``status``, each with ``--url URL --token TOKEN`` (default:
a running server, found or started by :mod:`.server`). The command line is read by
argparse, a subparser per command (:func:`build_parser`); the commands themselves are in
:mod:`.commands`. Exit codes: 0 success, 1 a job that failed or was cancelled (or a
server that failed), 2 bad input, with one line that says what is wrong.
The console script ``jupyter-lowcost`` (which ``jupyter lowcost`` runs) calls :func:`main`.
"""

from __future__ import annotations

import sys
from argparse import SUPPRESS, ArgumentError, ArgumentParser, Namespace
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .._version import __version__
from . import commands
from .server import CommandError


@dataclass(frozen=True)
class Command:
    """One ``jupyter lowcost`` command: what it does, its arguments (by name, for its
    messages), and the function that does it."""

    description: str
    arguments: tuple[str, ...]
    function: Callable[..., int]


PROG = "jupyter lowcost"

COMMANDS = {
    "run": Command(
        "Run a notebook's code cells as a job, resumed after every interruption.",
        ("notebook",),
        commands.run,
    ),
    "jobs": Command("List the jobs of the Jupyter server.", (), commands.jobs),
    "show": Command(
        "Everything about one job (--output PATH: also save its output notebook).",
        ("job",),
        commands.show,
    ),
    "logs": Command(
        "A job's log: its cells, their printed output, its interruptions.",
        ("job",),
        commands.logs,
    ),
    "cancel": Command(
        "Stop a job (its kernel is shut down; its output so far stays).",
        ("job",),
        commands.cancel,
    ),
    "types": Command(
        "The instance types and their prices, regular and low-cost.", (), commands.types
    ),
    "status": Command(
        "The Jupyter server, its backend, its live instances and jobs.", (), commands.status
    ),
}


class BadCommandLine(CommandError):
    """A command line that is wrong (exit code 2), said by what reads it (``prog``)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{prog}: {message}")


class LowCostParser(ArgumentParser):
    """``jupyter lowcost``'s parser: its errors are raised (``ArgumentError``, and the few
    argparse does not raise as one: :meth:`error`), not printed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(exit_on_error=False, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise BadCommandLine(self.prog, message)


class CommandParser(LowCostParser):
    """One command's parser: a bad option is said naming it by its long form, with the
    command's name and where its help is."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Namespace | None = None
    ) -> tuple[Namespace, list[str]]:
        try:
            return super().parse_known_args(args, namespace)
        except ArgumentError as err:
            option = (err.argument_name or "").split("/")[-1]
            self.error(f"argument {option}: {err.message}" if option else err.message)

    def error(self, message: str) -> NoReturn:
        raise BadCommandLine(self.prog, f"{message} (see {self.prog} --help)")


def build_parser() -> ArgumentParser:
    """``jupyter lowcost``'s parser: a subparser per command, each with its options."""
    parser = LowCostParser(
        prog=PROG, description="Run notebooks as jobs on low-cost (preemptible) instances."
    )
    parser.add_argument("--version", action="version", version=__version__)
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=CommandParser
    )
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(
            name,
            help=command.description,
            description=command.description,
            prog=f"{PROG} {name}",
        )
        named = " ".join(command.arguments).upper()
        sub.add_argument(
            "arguments", nargs="*", metavar=named or SUPPRESS, help=None if named else SUPPRESS
        )
        sub.add_argument(
            "--url", default="", help="The Jupyter server's URL (default: a running one)."
        )
        sub.add_argument(
            "--token", default="", help="Its token (default: as `jupyter server list` has it)."
        )
    _add_run_options(subparsers.choices["run"])
    subparsers.choices["show"].add_argument(
        "-o",
        "--output",
        default="",
        metavar="PATH",
        help="Save the job's output notebook (so far) here.",
    )
    subparsers.choices["logs"].add_argument(
        "-f", "--follow", action="store_true", help="Keep printing until the job ends."
    )
    return parser


def _add_run_options(run: ArgumentParser) -> None:
    for flag, help in (
        ("--preemptible", "On a low-cost (preemptible, spot) instance."),
        ("--isPreemptible", "The same (Paperspace)."),
    ):
        run.add_argument(flag, dest="preemptible", action="store_true", help=help)
    run.add_argument(
        "--type",
        dest="instance_type",
        default="",
        metavar="T",
        help="The instance type (default: the first).",
    )
    run.add_argument(
        "--kernel", default="", metavar="K", help="The kernelspec (default: the notebook's)."
    )
    run.add_argument(
        "-p",
        "--parameters",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="NAME=VALUE, as papermill's -p",
    )
    run.add_argument(
        "-o",
        "--output",
        default="",
        metavar="PATH",
        help="The output notebook (default: NAME.output.ipynb).",
    )
    run.add_argument(
        "--detach", action="store_true", help="Print the job's id and return; the job goes on."
    )


def parse(argv: list[str]) -> tuple[str, Namespace, list[str]]:
    """The command, its options and its arguments; :class:`BadCommandLine` for bad input."""
    try:
        args, unknown = build_parser().parse_known_args(argv)
    except ArgumentError:  # (at the top only the command's name can be wrong)
        raise _no_such_command(argv) from None
    if args.command is None:
        if unknown:
            raise _no_such_command(unknown)
        raise BadCommandLine(PROG, f"say what to do: {', '.join(COMMANDS)} (see --help)")
    prog = f"{PROG} {args.command}"
    for option in unknown:
        if _is_option(option):
            name = option.split("=")[0]
            raise BadCommandLine(prog, f"unknown option {name} (see {prog} --help)")
    # (after --, and a negative number: what argparse took for an argument)
    arguments = [*args.arguments, *unknown]
    for option in arguments:
        if _is_option(option):
            raise BadCommandLine(prog, f"unknown option {option} (see --help)")
    wanted = " ".join(a.upper() for a in COMMANDS[args.command].arguments)
    if len(arguments) != len(COMMANDS[args.command].arguments):
        given = " ".join(arguments) or "nothing"
        raise BadCommandLine(
            prog,
            f"expected {wanted}, got {given}" if wanted else f"takes no arguments, got {given}",
        )
    return args.command, args, arguments


def _is_option(word: str) -> bool:
    return word.startswith("-") and len(word) > 1


def _no_such_command(words: list[str]) -> BadCommandLine:
    given = next((word for word in words if not word.startswith("-")), words[0])
    return BadCommandLine(
        PROG, f"unknown command {given!r}; the commands are: {', '.join(COMMANDS)}"
    )


def main(argv: list[str] | None = None) -> NoReturn:
    """The ``jupyter-lowcost`` console script: parse, run the command, exit with its code."""
    try:
        name, args, arguments = parse(sys.argv[1:] if argv is None else argv)
    except BadCommandLine as err:
        print(err.message, file=sys.stderr)
        sys.exit(err.exit_code)
    try:
        code = COMMANDS[name].function(args, *arguments)
    except CommandError as err:
        print(f"{PROG} {name}: {err.message}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code or 0)
