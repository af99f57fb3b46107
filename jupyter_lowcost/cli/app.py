"""``jupyter lowcost``: notebooks as low-cost jobs, from a terminal.

``jupyter lowcost run NOTEBOOK [--preemptible] [--type T] [-p NAME=VALUE ...]
[--output PATH] [--detach]``, then ``jobs``, ``show JOB``, ``logs JOB [--follow]``,
``cancel JOB``, ``types`` and ``status``. Each is a small jupyter_core application (as
``jupyter server`` is) that calls the REST API of a Jupyter server with jupyter-lowcost
(:mod:`.server` finds or starts one). Exit codes: 0 success, 1 a job that failed or was
cancelled (or a server that failed), 2 bad input, with one line that says what is wrong.
The console script ``jupyter-lowcost`` (which ``jupyter lowcost`` runs) calls :func:`main`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jupyter_core.application import JupyterApp
from traitlets import Bool, List, Unicode

from .._version import __version__
from ..storage.atomic import replacing
from ..storage.jobs import JOB_ID, MAX_JOB_BYTES
from ..storage.private import open_private
from . import progress
from .server import CommandError, Server, connect

#: How often a command in the foreground asks how the job is doing.
POLL_SECONDS = 0.5
EXIT_FAILED = 1
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Command(JupyterApp):
    """What every ``jupyter lowcost`` command shares: the server, and errors as one line."""

    version = __version__
    url = Unicode("", config=True, help="The Jupyter server's URL (default: a running one).")
    token = Unicode("", config=True, help="Its token (default: as `jupyter server list` has it).")
    aliases = {"url": "Command.url", "token": "Command.token"}
    flags: dict[str, Any] = {}
    #: The positional arguments this command takes, by name (for its messages).
    arguments: tuple[str, ...] = ()

    def parse_command_line(self, argv: Any = None) -> None:
        """Bad options are one line and exit code 2 (argparse prints its usage)."""
        arguments = list(sys.argv[1:] if argv is None else argv)
        for argument in arguments:
            if argument == "--":
                break
            name = argument.lstrip("-").split("=", 1)[0]
            if argument.startswith("-") and len(argument) > 1 and not _number(argument):
                if name not in self.aliases and name not in self.flags and "." not in name:
                    if name not in ("help", "h", "help-all", "version", "debug"):
                        self._fail(
                            CommandError(
                                f"unknown option {argument.split('=')[0]} "
                                f"(see jupyter lowcost {self.name} --help)"
                            )
                        )
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                super().parse_command_line(argv)
        except SystemExit as exit:
            if exit.code in (0, None):  # --help
                sys.stdout.write(captured.getvalue())
                raise
            lines = [x for x in captured.getvalue().splitlines() if "error:" in x]
            why = lines[-1].split("error:", 1)[1].strip() if lines else "bad arguments"
            traits = {v.split(".")[-1]: k for k, v in self.aliases.items() if len(k) > 1}
            why = re.sub(
                r"--(?:\w+\.)?(\w+)", lambda m: "--" + traits.get(m.group(1), m.group(1)), why
            )
            self._fail(CommandError(f"{why} (see jupyter lowcost {self.name} --help)"))
        options = [a for a in self.extra_args if a.startswith("-")]
        if options:
            self._fail(CommandError(f"unknown option {options[0]} (see --help)"))
        if len(self.extra_args) != len(self.arguments):
            wanted = " ".join(a.upper() for a in self.arguments)
            given = " ".join(self.extra_args) or "nothing"
            self._fail(
                CommandError(
                    f"expected {wanted}, got {given}"
                    if wanted
                    else f"takes no arguments, got {given}"
                )
            )

    def start(self) -> None:
        try:
            code = self.run(*self.extra_args)
        except CommandError as err:
            self._fail(err)
        except KeyboardInterrupt:
            self.exit(130)
        self.exit(code or 0)

    def run(self, *arguments: str) -> int | None:
        raise NotImplementedError

    def server(self) -> Server:
        return connect(self.url or None, self.token or None)

    def _fail(self, err: CommandError) -> None:
        print(f"jupyter lowcost {self.name}: {err.message}", file=sys.stderr)
        self.exit(err.exit_code)


class RunCommand(Command):
    name = "run"
    description = "Run a notebook's code cells as a job, resumed after every interruption."
    arguments = ("notebook",)
    preemptible = Bool(False, config=True, help="On a low-cost (preemptible, spot) instance.")
    instance_type = Unicode("", config=True, help="The instance type (default: the first).")
    kernel = Unicode("", config=True, help="The kernelspec (default: the notebook's).")
    parameters = List(Unicode(), config=True, help="NAME=VALUE, as papermill's -p").tag(
        multiplicity="append"
    )
    output = Unicode("", config=True, help="The output notebook (default: NAME.output.ipynb).")
    detach = Bool(False, config=True, help="Print the job's id and return; the job goes on.")
    aliases = {
        **Command.aliases,
        "type": "RunCommand.instance_type",
        "kernel": "RunCommand.kernel",
        "p": "RunCommand.parameters",
        "parameters": "RunCommand.parameters",
        "output": "RunCommand.output",
        "o": "RunCommand.output",
    }
    flags = {
        "preemptible": ({"RunCommand": {"preemptible": True}}, "On a low-cost instance."),
        "isPreemptible": ({"RunCommand": {"preemptible": True}}, "The same (Paperspace)."),
        "detach": ({"RunCommand": {"detach": True}}, "Print the job id and return."),
    }

    def run(self, notebook_arg: str) -> int:
        path = Path(notebook_arg).expanduser()
        notebook = read_notebook(path)
        parameters = parse_parameters(self.parameters)
        output = Path(self.output).expanduser() if self.output else default_output(path)
        if not output.parent.is_dir():
            raise CommandError(f"--output {output}: no folder {output.parent}")
        if output.exists() and not output.is_file():
            raise CommandError(
                f"--output {output} is not a regular file (a folder, a FIFO, a device): "
                "a notebook cannot be written there"
            )
        if output.resolve() == path.resolve():
            raise CommandError("--output would overwrite the notebook itself; choose another")
        server = self.server()
        output_path = server.relative_path(output)
        if self.detach and output_path is None:
            raise CommandError(
                f"--output {output} is not under the Jupyter server's root "
                f"({server.root_dir or 'unknown'}): a detached job cannot write it there; "
                "choose a path under it, or run in the foreground"
            )
        body: dict[str, Any] = {
            "notebook": notebook,
            "name": path.name,
            "low_cost": self.preemptible,
            "parameters": parameters,
            "path": server.relative_path(path),
            "output_path": output_path,
        }
        if self.instance_type:
            body["instance_type"] = self.instance_type
        if self.kernel:
            body["kernel_name"] = self.kernel
        job = server.call("POST", "jobs", json=body)
        if self.detach:
            print(job["id"])
            return 0
        print(
            f"job {job['id']}: {path.name} on {job['tier']} {job['instance_type']}, "
            f"{job['cells_total']} cells; output {output}",
            file=sys.stderr,
        )
        try:
            job = follow(server, job, None if output_path else output)
        except KeyboardInterrupt:
            print(
                f"\njob {job['id']} goes on: jupyter lowcost logs {job['id']} --follow, "
                f"or jupyter lowcost cancel {job['id']}",
                file=sys.stderr,
            )
            return 130
        return report_end(job, output)


class JobsCommand(Command):
    name = "jobs"
    description = "List the jobs of the Jupyter server."

    def run(self) -> int:
        print(progress.table(self.server().call("GET", "jobs")))
        return 0


class ShowCommand(Command):
    name = "show"
    description = "Everything about one job (--output PATH: also save its output notebook)."
    arguments = ("job",)
    output = Unicode("", config=True, help="Save the job's output notebook (so far) here.")
    aliases = {**Command.aliases, "output": "ShowCommand.output", "o": "ShowCommand.output"}

    def run(self, job_id: str) -> int:
        job_id = job_id_argument(job_id)
        server = self.server()
        job = server.call("GET", f"jobs/{job_id}")
        print(progress.details(job))
        if self.output:
            write_notebook(
                Path(self.output).expanduser(), server.call("GET", f"jobs/{job_id}/output")
            )
            print(f"  saved:         {self.output}")
        return 0


class LogsCommand(Command):
    name = "logs"
    description = "A job's log: its cells, their printed output, its interruptions."
    arguments = ("job",)
    follow = Bool(False, config=True, help="Keep printing until the job ends.")
    flags = {
        "follow": ({"LogsCommand": {"follow": True}}, "Until the job ends."),
        "f": ({"LogsCommand": {"follow": True}}, "Until the job ends."),
    }

    def run(self, job_id: str) -> int:
        job_id = job_id_argument(job_id)
        server = self.server()
        offset = 0
        while True:
            answer = server.call("GET", f"jobs/{job_id}/log", params={"offset": offset})
            sys.stdout.write(answer["text"])
            sys.stdout.flush()
            offset = answer["offset"]
            if not self.follow:
                return 0
            if answer["state"] in ("succeeded", "failed", "cancelled") and not answer["text"]:
                return 0 if answer["state"] == "succeeded" else EXIT_FAILED
            if not answer["text"]:
                time.sleep(POLL_SECONDS)


class CancelCommand(Command):
    name = "cancel"
    description = "Stop a job (its kernel is shut down; its output so far stays)."
    arguments = ("job",)

    def run(self, job_id: str) -> int:
        job = self.server().call("DELETE", f"jobs/{job_id_argument(job_id)}")
        print(f"job {job['id']} cancelled after {job['cells_done']}/{job['cells_total']} cells")
        return 0


class TypesCommand(Command):
    name = "types"
    description = "The instance types and their prices, regular and low-cost."

    def run(self) -> int:
        types = self.server().call("GET", "instance-types")
        rows = [("TYPE", "GPU", "REGULAR $/h", "LOW-COST $/h", "DISCOUNT")]
        for t in types:
            gpu = f"{t['gpu_count']}x {t['gpu']}" if t.get("gpu") else "-"
            rows.append(
                (
                    t["name"],
                    gpu,
                    f"{t['price_regular']:.3f}",
                    f"{t['price_low_cost']:.3f}",
                    f"{t['discount_percent']:.0f}%",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        return 0


class StatusCommand(Command):
    name = "status"
    description = "The Jupyter server, its backend, its live instances and jobs."

    def run(self) -> int:
        server = self.server()
        status = server.call("GET", "status")
        jobs = server.call("GET", "jobs")
        running = [j for j in jobs if j["state"] not in ("succeeded", "failed", "cancelled")]
        print(f"Jupyter server: {server.url} (jupyter-lowcost {status['version']})")
        print(f"Backend: {status['backend']}, {status['live_instances']} live instance(s)")
        print(f"Recovery policy: {status['recovery_policy']}; checkpoints: {status['checkpoints']}")
        print(f"Jobs: {len(running)} running or queued, {len(jobs)} in all")
        if status.get("demo"):
            print(status["demo"])
        return 0


class LowCostCommand(JupyterApp):
    """``jupyter lowcost``: the commands."""

    name = "jupyter-lowcost"
    version = __version__
    description = "Run notebooks as jobs on low-cost (preemptible) instances."
    subcommands = {
        cls.name: (cls, cls.description)
        for cls in (
            RunCommand,
            JobsCommand,
            ShowCommand,
            LogsCommand,
            CancelCommand,
            TypesCommand,
            StatusCommand,
        )
    }

    def start(self) -> None:
        if self.subapp is not None:
            self.subapp.start()
            return
        names = ", ".join(self.subcommands)
        if self.extra_args:
            print(
                f"jupyter lowcost: unknown command {self.extra_args[0]!r}; the commands "
                f"are: {names}",
                file=sys.stderr,
            )
        else:
            print(f"jupyter lowcost: say what to do: {names} (see --help)", file=sys.stderr)
        self.exit(2)


# -- what run does ---------------------------------------------------------------------


def read_notebook(path: Path) -> dict[str, Any]:
    """The notebook at ``path`` (JSON), or a CommandError that says why it is not one.
    Regular files only, of at most :data:`MAX_JOB_BYTES` (what ``POST jobs`` takes): a
    FIFO would wait for a writer, ``/dev/zero`` would fill the memory. Opened without
    blocking, then looked at (``fstat``) before anything is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise CommandError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise CommandError(f"{path} is a folder, not a notebook") from None
    except OSError as err:
        raise CommandError(f"{path} cannot be read: {err.strerror or err}") from err
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise CommandError(f"{path} is a folder, not a notebook")
        raise CommandError(
            f"{path} is not a regular file (a FIFO, a device or a socket): not a notebook"
        )
    with os.fdopen(fd, "rb") as file:
        if info.st_size > MAX_JOB_BYTES:
            raise CommandError(
                f"{path} is {info.st_size} bytes: a job's notebook is at most "
                f"{MAX_JOB_BYTES // 2**20} MiB"
            )
        try:
            data = file.read(MAX_JOB_BYTES + 1)
        except OSError as err:
            raise CommandError(f"{path} cannot be read: {err.strerror or err}") from err
    if len(data) > MAX_JOB_BYTES:  # (it grew meanwhile)
        raise CommandError(f"{path}: a job's notebook is at most {MAX_JOB_BYTES // 2**20} MiB")
    try:
        content = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CommandError(f"{path} is not a notebook (not JSON: {err})") from err
    if not isinstance(content, dict) or "cells" not in content:
        raise CommandError(f"{path} is not a notebook (no cells)")
    return content


def parse_parameters(items: list[str]) -> dict[str, Any]:
    """``-p NAME=VALUE`` as papermill reads them: True, False, None, ints and floats, else
    the text."""
    parameters: dict[str, Any] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name.isidentifier():
            raise CommandError(f"-p {item}: say NAME=VALUE, with NAME a Python variable name")
        parameters[name] = parse_value(value)
    return parameters


def parse_value(value: str) -> Any:
    """A ``-p`` value as papermill reads it: ``True``, ``False`` and ``None`` as Python
    spells them (``true`` is text), an int, a float (``nan``, ``inf`` and ``1e400``, an
    infinity, included), else the text."""
    if value == "True":
        return True
    if value == "False":
        return False
    if value == "None":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def job_id_argument(job_id: str) -> str:
    """``job_id`` checked against the form of job ids (12 hex digits) before it goes in a
    URL (called by ``show``, ``logs`` and ``cancel``): ``../instances/<id>`` would be
    another route."""
    if not JOB_ID.fullmatch(job_id):
        shown = job_id if len(job_id) <= 40 else job_id[:37] + "..."
        raise CommandError(
            f"{shown!r} is not a job id (12 hex digits, as jupyter lowcost jobs lists them)"
        )
    return quote(job_id, safe="")


def default_output(path: Path) -> Path:
    return path.with_name(f"{path.stem}.output.ipynb")


def write_notebook(path: Path, notebook: dict[str, Any]) -> None:
    """Replace ``path`` with ``notebook``, atomically (called by ``run`` and ``show`` for a
    job's output notebook). A new file is 0600: job output is for its owner; a file that
    exists keeps its mode (its user chose it)."""
    try:
        mode: int | None = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = None
    with replacing(path) as temporary:
        with open_private(temporary, "wb", exclusive=True) as file:
            file.write((json.dumps(notebook, indent=1) + "\n").encode("utf-8"))
        if mode is not None:
            temporary.chmod(mode)


def follow(server: Server, job: dict[str, Any], output: Path | None) -> dict[str, Any]:
    """Show the job's progress until it ends (a bar redrawn in place on a terminal, a
    line per change otherwise); write its output notebook at ``output`` as it grows
    (None: the server writes it)."""
    tty = sys.stderr.isatty()
    shown, written = "", -1
    noted: set[int] = set()
    while True:
        # (what a resume did not bring back: said once each, above the progress)
        for number, note in progress.resume_notes(job).items():
            if number not in noted:
                noted.add(number)
                sys.stderr.write(("\r\x1b[K" if tty else "") + note + "\n")
                shown = "" if tty else shown  # (the bar it erased is drawn again)
        line = progress.progress_line(job)
        key = line if tty else (job["cells_done"], job["state"], len(job["interruptions"]))
        if str(key) != shown:
            shown = str(key)
            if tty:
                sys.stderr.write("\r\x1b[K" + line)
            else:
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
        final = job["state"] in ("succeeded", "failed", "cancelled")
        if output is not None and (job["cells_done"] != written or final):
            write_notebook(output, server.call("GET", f"jobs/{job['id']}/output"))
            written = job["cells_done"]
        if final:
            if tty:
                sys.stderr.write("\n")
            return job
        time.sleep(POLL_SECONDS)
        job = server.call("GET", f"jobs/{job['id']}")


def report_end(job: dict[str, Any], output: Path) -> int:
    """Say how the job ended; its exit code."""
    summary = (
        f"{job['cells_done']}/{job['cells_total']} cells, "
        f"{len(job['interruptions'])} interruption(s), {progress.money(job)}"
    )
    written = f"output {output}" if output.is_file() else f"no output notebook at {output}"
    if job["state"] == "succeeded":
        print(f"job {job['id']} succeeded: {summary}; {written}", file=sys.stderr)
        return 0
    error = job.get("error")
    if error:
        traceback = _ANSI.sub("", "\n".join(error.get("traceback") or []))
        if traceback:
            print(traceback, file=sys.stderr)
    print(
        f"job {job['id']} {job['state']}: {job['reason']}; {summary}; {written}",
        file=sys.stderr,
    )
    return EXIT_FAILED


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main() -> None:
    """The ``jupyter-lowcost`` console script."""
    LowCostCommand.launch_instance()
