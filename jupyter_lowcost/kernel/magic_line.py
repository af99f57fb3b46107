"""Kernel side: what a ``%lowcost`` line asks for, read with argparse (one subparser per
subcommand), or a ``UsageError`` in one line that names the problem.

Called by :meth:`~jupyter_lowcost.kernel.magics.LowCostMagics.lowcost` through
:func:`parse_line`. argparse's own errors come back as :class:`argparse.ArgumentError`
(``exit_on_error=False``) and are worded here from what they carry (the argument, its
message), never from argparse's printed text.
"""

from __future__ import annotations

import math
import re
from argparse import ArgumentError, ArgumentParser, ArgumentTypeError, Namespace
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.utils.process import arg_split

#: The subcommands, in the order ``%lowcost`` lists them.
COMMANDS = ("status", "on", "off", "types", "interrupt", "checkpoint", "checkpoints", "restore")

USAGE = (
    "usage: %lowcost [status | on [--type T] | off | types | interrupt [--notice S] [--in S] "
    "| checkpoint | checkpoints [--all] | restore [ID | KERNEL[/ID]]]"
)

#: The longest ``--in`` (a week): a later interruption would come after any instance's
#: lifetime cap, and Python's timers refuse much longer waits.
MAX_DELAY = 7 * 86400.0
#: The longest checkpoint argument ``%lowcost restore`` takes: a kernel id (36) and a
#: checkpoint id, with room to spare.
MAX_TARGET = 80
#: What the seconds options hold when they are given without a value.
_NO_VALUE = object()
#: The options of each subcommand that takes some (a word that is one of them given to
#: another subcommand is refused with the usage, not as an unknown option).
_OPTIONS = {"on": ("-t", "--type"), "interrupt": ("--notice", "--in"), "checkpoints": ("--all",)}
#: The options that take seconds (``interrupt``'s).
_SECONDS = _OPTIONS["interrupt"]
#: What every subcommand's namespace holds when its line does not say it.
_DEFAULTS = {"instance_type": None, "notice": None, "delay": None, "target": None, "all": False}


class _Parser(ArgumentParser):
    """argparse that raises its errors (the few it does not raise as ArgumentError too)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(add_help=False, exit_on_error=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{USAGE}\n{message}")


def _seconds(option: str, most: float = math.inf) -> Any:
    """The ``type`` of an option that takes a finite number of seconds, from 0 to ``most``."""

    def parse(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            raise ArgumentTypeError(
                f"{option} needs a number of seconds, not {shown(value)}"
            ) from None
        if not math.isfinite(seconds):
            raise ArgumentTypeError(f"{option} needs a finite number of seconds, not {value!r}")
        if seconds < 0:
            raise ArgumentTypeError(f"{option} must be 0 or more seconds")
        if seconds > most:
            raise ArgumentTypeError(
                f"{option} must be at most {most:g} seconds, not {shown(value)}"
            )
        return seconds

    return parse


def build_parser() -> ArgumentParser:
    """``%lowcost``'s parser: a subparser per subcommand, each with only its options."""
    parser = _Parser(prog="%lowcost")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    parser.set_defaults(command="status", **_DEFAULTS)
    subparsers = {name: commands.add_parser(name, prog=f"%lowcost {name}") for name in COMMANDS}
    subparsers["on"].add_argument(*_OPTIONS["on"], dest="instance_type", metavar="T")
    for (dest, most), option in zip((("notice", math.inf), ("delay", MAX_DELAY)), _SECONDS):
        subparsers["interrupt"].add_argument(
            option, dest=dest, nargs="?", const=_NO_VALUE, type=_seconds(option, most)
        )
    subparsers["checkpoints"].add_argument(*_OPTIONS["checkpoints"], action="store_true")
    subparsers["restore"].add_argument("target", nargs="?")
    return parser


def parse_line(line: str) -> Namespace:
    """``%lowcost``'s arguments, with errors that name the option and say what it needs;
    options and arguments a subcommand does not take are refused."""
    words = _words(line)
    try:
        args, unknown = build_parser().parse_known_args(words)
    except ArgumentError as err:
        if err.argument_name in _SECONDS:
            raise UsageError(f"%lowcost interrupt: {err.message}") from None
        raise UsageError(f"{USAGE}\n{err}") from None
    for option, value in zip(_SECONDS, (args.notice, args.delay)):
        if value is _NO_VALUE:
            raise UsageError(f"%lowcost interrupt: {option} needs a number of seconds")
    _refuse_unknown(args.command, unknown)
    args.target = _checkpoint_target(args.target)
    return args


def _words(line: str) -> list[str]:
    """The line split as a shell splits it."""
    try:
        return arg_split(line)
    except ValueError as err:  # shlex: an unbalanced quote
        raise UsageError(f"%lowcost: {str(err).lower()} in {shown(line)}") from None


def _refuse_unknown(command: str, unknown: list[str]) -> None:
    """What ``command``'s subparser left: an option no subcommand has, then an option of
    another subcommand (the usage), then arguments (the first one of a subcommand that
    takes none is refused with the usage, as that option is)."""
    options = [word for word in unknown if word.startswith("-")]
    for option in options:
        if not _of_another_command(option):
            raise UsageError(f"%lowcost {command}: unknown option {option!r}; {USAGE}")
    if options:
        raise UsageError(USAGE)
    if command != "restore" and unknown:
        unknown = unknown[1:]
        if not unknown:
            raise UsageError(USAGE)
    if unknown:
        raise UsageError(f"%lowcost {command}: unknown argument {unknown[0]!r}; {USAGE}")


def _of_another_command(word: str) -> bool:
    """Whether ``word`` is an option some subcommand takes (as argparse reads it: with
    ``=VALUE``, a short option with its value attached, a long one abbreviated)."""
    name = word.split("=", 1)[0]
    for option in (option for options in _OPTIONS.values() for option in options):
        if option.startswith("--") and name.startswith("--") and option.startswith(name):
            return True
        if not option.startswith("--") and word.startswith(option):
            return True
    return False


def shown(text: str) -> str:
    """What the user typed, as an error message quotes it: short."""
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"


def _checkpoint_target(text: str | None) -> str | None:
    """``%lowcost restore``'s argument, checked before any file is looked up: a checkpoint
    id or ``KERNEL[/ID]`` as ``%lowcost checkpoints --all`` lists them."""
    if text is None:
        return None
    if len(text) > MAX_TARGET or not re.fullmatch(r"[A-Za-z0-9-]+(/[0-9]+)?", text):
        raise UsageError(
            f"%lowcost restore: {shown(text)} is not a checkpoint ID or KERNEL[/ID]; "
            "%lowcost checkpoints --all lists them"
        )
    return text
