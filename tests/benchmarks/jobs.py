"""Benchmark: a notebook as a low-cost job (``jupyter lowcost run``) against papermill.

Run it by hand (pytest does not collect it)::

    python tests/benchmarks/jobs.py [--repeats 3] [--cell-seconds 0.3]

One 20-cell notebook: every cell does ``--cell-seconds`` of numpy work and keeps a 1 MB
array (the namespace grows, as a real notebook's does). In one run, interleaving the
kinds so that drift hits them alike, it measures the wall time from the request to the
end of the run of:

- ``papermill``: ``papermill NOTEBOOK OUTPUT`` (its command) on a local kernel;
- ``job``: ``jupyter lowcost run NOTEBOOK --preemptible`` (its command, in the
  foreground) on a low-cost instance of the local backend of a running ``jupyter server``
  with the extension (checkpoints after every cell), until it exits;
- ``papermill interrupted``: papermill in a subprocess, killed (as the instance's loss
  would kill it) when cell 11 starts, then run again from the start (papermill cannot
  resume a run): the time of both runs together;
- ``job interrupted``: the same command, its instance interrupted (``notice_seconds: 0``,
  through the REST API) when cell 11 starts; it resumes at cell 11 on a new instance.

It prints medians and the ratios: job / papermill (target <= 1.15x), and job interrupted
/ papermill interrupted (expected well under 1).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import requests

TOKEN = "benchmark"
HEADERS = {"Authorization": f"token {TOKEN}"}
CELLS = 20
INTERRUPT_AT = 11


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_notebook(path: Path, cell_seconds: float) -> None:
    """20 cells of about ``cell_seconds`` of numpy work each, each keeping 1 MB."""
    cells = [
        nbformat.v4.new_code_cell(
            "import time\nimport numpy as np\n"
            "kept = []\nrng = np.random.default_rng(0)\nm = rng.random((200, 200))\n"
        )
    ]
    for number in range(2, CELLS + 1):
        cells.append(
            nbformat.v4.new_code_cell(
                f"end = time.perf_counter() + {cell_seconds}\n"
                "while time.perf_counter() < end:\n"
                "    m = (m @ m.T) / m.shape[0]\n"
                "kept.append(np.full(1024 * 128, float(len(kept))))\n"
                f"print('cell {number}', len(kept))\n"
            )
        )
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, str(path))


def start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "JUPYTER_DATA_DIR": str(home / "data")}
    process = subprocess.Popen(
        [
            sys.executable, "-m", "jupyter_server", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}",
            "--ServerApp.open_browser=False", "--ServerApp.allow_root=True",
            f"--ServerApp.root_dir={home}", "--LocalBackend.slots=4",
        ],
        env=env,
        stdout=open(home / "server.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/lowcost/api/status"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if requests.get(url, headers=HEADERS, timeout=5).status_code == 200:
                return process
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server did not start; see {home / 'server.log'}")


def run_papermill(source: Path, output: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "papermill", str(source), str(output), "--kernel", "python3"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def run_papermill_interrupted(source: Path, output: Path) -> float:
    """Papermill killed when cell ``INTERRUPT_AT`` starts, then run again from the start."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "papermill", str(source), str(output),
            "--kernel", "python3", "--request-save-on-cell-execute",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    while not _papermill_started(output, INTERRUPT_AT):
        if process.poll() is not None:
            raise SystemExit("papermill ended before the interruption point")
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the instance is gone: kernel and all
    process.wait()
    subprocess.run(
        [sys.executable, "-m", "papermill", str(source), str(output), "--kernel", "python3"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def _papermill_started(output: Path, number: int) -> bool:
    try:
        notebook = json.loads(output.read_text())
    except (OSError, ValueError):
        return False
    cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    status = cells[number - 1].get("metadata", {}).get("papermill", {}).get("status")
    return status in ("running", "completed")


def run_job(base: str, source: Path, output: Path, interrupt: bool) -> float:
    """``jupyter lowcost run`` in the foreground until it exits (the user's wait), its
    instance interrupted when cell ``INTERRUPT_AT`` starts when ``interrupt``."""
    server_url = base.split("lowcost/api/")[0]
    known = {job["id"] for job in requests.get(f"{base}jobs", headers=HEADERS, timeout=30).json()}
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "jupyter", "lowcost", "run", str(source), "--preemptible",
            "--type", "T4", "--output", str(output), "--url", server_url, "--token", TOKEN,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )  # fmt: skip
    interrupted = not interrupt
    while process.poll() is None:
        if not interrupted:
            jobs = requests.get(f"{base}jobs", headers=HEADERS, timeout=30).json()
            mine = [job for job in jobs if job["id"] not in known]
            if mine and mine[0]["current_cell"] == INTERRUPT_AT:
                requests.post(
                    f"{base}instances/{mine[0]['instance_id']}/interrupt",
                    json={"notice_seconds": 0},
                    headers=HEADERS,
                    timeout=30,
                ).raise_for_status()
                interrupted = True
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"jupyter lowcost run exited {process.returncode}:\n{stderr}")
    if interrupt and "1 interruption(s)" not in stderr:
        raise SystemExit(f"expected one interruption:\n{stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind")
    parser.add_argument("--cell-seconds", type=float, default=0.3, help="work per cell")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="lowcost-jobs-bench-"))
    source = home / "twenty.ipynb"
    make_notebook(source, args.cell_seconds)
    port = free_port()
    server = start_server(home, port)
    base = f"http://127.0.0.1:{port}/lowcost/api/"
    times: dict[str, list[float]] = {
        "papermill": [],
        "job": [],
        "papermill interrupted": [],
        "job interrupted": [],
    }
    try:
        run_papermill(source, home / "warm.ipynb")  # (imports warm, for both)
        run_job(base, source, home / "warm-job.ipynb", interrupt=False)
        for repeat in range(args.repeats):
            times["papermill"].append(run_papermill(source, home / f"pm-{repeat}.ipynb"))
            times["job"].append(run_job(base, source, home / f"j-{repeat}.ipynb", False))
            times["papermill interrupted"].append(
                run_papermill_interrupted(source, home / f"pmi-{repeat}.ipynb")
            )
            times["job interrupted"].append(
                run_job(base, source, home / f"ji-{repeat}.ipynb", True)
            )
            print(f"run {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    print(f"\n{CELLS} cells of {args.cell_seconds} s each, {args.repeats} runs of each kind "
          f"(medians):")  # fmt: skip
    for kind, value in medians.items():
        print(f"  {kind:<22} {value:6.2f} s")
    job_ratio = medians["job"] / medians["papermill"]
    interrupted_ratio = medians["job interrupted"] / medians["papermill interrupted"]
    print(f"job / papermill:                          {job_ratio:.3f}x (target <= 1.15x)")
    print(f"job interrupted / papermill interrupted:  {interrupted_ratio:.3f}x (expected < 1)")


if __name__ == "__main__":
    main()
