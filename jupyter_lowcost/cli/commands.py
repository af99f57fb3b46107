"""The ``jupyter lowcost`` commands: each takes the parsed command line (:mod:`.app`'s
parser) and returns its exit code, or raises a :class:`~.server.CommandError`.

``run`` sends a notebook as a job and follows it; ``jobs``, ``show``, ``logs``,
``cancel``, ``types`` and ``status`` ask the server about jobs and itself. They reach the
server through :func:`~.server.connect` (given by ``--url``/``--token``, found, or started).
"""

from __future__ import annotations

import re
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

from . import progress
from .notebooks import (
    default_output,
    job_id_argument,
    parse_parameters,
    read_notebook,
    write_notebook,
)
from .server import CommandError, Server, connect

#: How often a command in the foreground asks how the job is doing.
POLL_SECONDS = 0.5
EXIT_FAILED = 1
#: The job states after which nothing changes.
ENDED = ("succeeded", "failed", "cancelled")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def server_of(args: Namespace) -> Server:
    """The server the command line names (``--url``, ``--token``), or one found or started."""
    return connect(args.url or None, args.token or None)


def run(args: Namespace, notebook_arg: str) -> int:
    """``run NOTEBOOK``: send it as a job; with ``--detach`` print its id, else follow it
    until it ends and say how it ended."""
    path = Path(notebook_arg).expanduser()
    notebook = read_notebook(path)
    parameters = parse_parameters(args.parameters)
    output = Path(args.output).expanduser() if args.output else default_output(path)
    check_output(output, path)
    server = server_of(args)
    output_path = server.relative_path(output)
    if args.detach and output_path is None:
        raise CommandError(
            f"--output {output} is not under the Jupyter server's root "
            f"({server.root_dir or 'unknown'}): a detached job cannot write it there; "
            "choose a path under it, or run in the foreground"
        )
    body: dict[str, Any] = {
        "notebook": notebook,
        "name": path.name,
        "low_cost": args.preemptible,
        "parameters": parameters,
        "path": server.relative_path(path),
        "output_path": output_path,
    }
    if args.instance_type:
        body["instance_type"] = args.instance_type
    if args.kernel:
        body["kernel_name"] = args.kernel
    job = server.call("POST", "jobs", json=body)
    if args.detach:
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


def check_output(output: Path, notebook: Path) -> None:
    """``run --output``: a file that can be written, and not the notebook itself."""
    if not output.parent.is_dir():
        raise CommandError(f"--output {output}: no folder {output.parent}")
    if output.exists() and not output.is_file():
        raise CommandError(
            f"--output {output} is not a regular file (a folder, a FIFO, a device): "
            "a notebook cannot be written there"
        )
    if output.resolve() == notebook.resolve():
        raise CommandError("--output would overwrite the notebook itself; choose another")


def jobs(args: Namespace) -> int:
    """``jobs``: the server's jobs, one line each."""
    print(progress.table(server_of(args).call("GET", "jobs")))
    return 0


def show(args: Namespace, job_id: str) -> int:
    """``show JOB [--output PATH]``: everything about one job (and its output so far)."""
    job_id = job_id_argument(job_id)
    server = server_of(args)
    job = server.call("GET", f"jobs/{job_id}")
    print(progress.details(job))
    if args.output:
        write_notebook(Path(args.output).expanduser(), server.call("GET", f"jobs/{job_id}/output"))
        print(f"  saved:         {args.output}")
    return 0


def logs(args: Namespace, job_id: str) -> int:
    """``logs JOB [--follow]``: the job's log (with ``--follow``, until the job ends)."""
    job_id = job_id_argument(job_id)
    server = server_of(args)
    offset = 0
    while True:
        answer = server.call("GET", f"jobs/{job_id}/log", params={"offset": offset})
        sys.stdout.write(answer["text"])
        sys.stdout.flush()
        offset = answer["offset"]
        if not args.follow:
            return 0
        if answer["state"] in ENDED and not answer["text"]:
            return 0 if answer["state"] == "succeeded" else EXIT_FAILED
        if not answer["text"]:
            time.sleep(POLL_SECONDS)


def cancel(args: Namespace, job_id: str) -> int:
    """``cancel JOB``: stop it."""
    job = server_of(args).call("DELETE", f"jobs/{job_id_argument(job_id)}")
    print(f"job {job['id']} cancelled after {job['cells_done']}/{job['cells_total']} cells")
    return 0


def types(args: Namespace) -> int:
    """``types``: the catalog, with both prices and the discount."""
    catalog = server_of(args).call("GET", "instance-types")
    rows = [("TYPE", "GPU", "REGULAR $/h", "LOW-COST $/h", "DISCOUNT")]
    for t in catalog:
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


def status(args: Namespace) -> int:
    """``status``: the server, its backend, its live instances and jobs."""
    server = server_of(args)
    answer = server.call("GET", "status")
    all_jobs = server.call("GET", "jobs")
    running = [j for j in all_jobs if j["state"] not in ENDED]
    print(f"Jupyter server: {server.url} (jupyter-lowcost {answer['version']})")
    print(f"Backend: {answer['backend']}, {answer['live_instances']} live instance(s)")
    print(
        f"Recovery policy: {answer['recovery_policy']}; checkpoints: {answer['checkpoint_policy']}"
    )
    print(f"Jobs: {len(running)} running or queued, {len(all_jobs)} in all")
    if answer.get("demo"):
        print(answer["demo"])
    return 0


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
        final = job["state"] in ENDED
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
