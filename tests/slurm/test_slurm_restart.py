"""A hard-killed server, restarted, takes its Slurm jobs back, resumes the lost ones, and
leaves no job running unaccounted for."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_process import LowCostServer
from notebook_runner import NotebookRunner
from slurm_cluster import SlurmCluster

from .conftest import SLURM_CONFIG

TOKEN = "slurm-restart-token"


class SlurmServer(LowCostServer):
    """``jupyter server`` on the slurm backend, on a data directory kept across runs."""

    def __init__(self, home: Path, slurm: SlurmCluster) -> None:
        config_dir = home / "config"
        config_dir.mkdir(exist_ok=True)
        (config_dir / "jupyter_server_config.json").write_text(json.dumps(SLURM_CONFIG))
        super().__init__(home, TOKEN, {**slurm.env, "JUPYTER_CONFIG_DIR": str(config_dir)})


@pytest.fixture
def server(tmp_path: Path, slurm: SlurmCluster) -> Iterator[SlurmServer]:
    made = SlurmServer(tmp_path, slurm)
    yield made
    made.stop()


def live_jobs(slurm: SlurmCluster) -> dict[str, str]:
    """name -> id of the kernel jobs still holding resources."""
    return {
        j["name"]: j["id"]
        for j in slurm.jobs()
        if j["name"].startswith("jupyter-lowcost-") and j["state"] in ("RUNNING", "COMPLETING")
    }


def run(server: SlurmServer, kernel_id: str, code: str) -> str:
    runner = NotebookRunner(server.base, TOKEN, "")
    runner.kernel_id = kernel_id
    reply, outputs = runner.execute(code, 60)
    assert reply["status"] == "ok", reply
    return "".join(o.get("text", "") for o in outputs)


def test_a_restarted_server_takes_its_jobs_back_and_resumes_the_cancelled_one(
    server: SlurmServer, slurm: SlurmCluster
) -> None:
    server.start()
    kernels = {}
    for name in ("kept", "lost"):
        response = server.post("kernels", {"instance_type": "T4", "low_cost": True})
        assert response.status_code == 201, response.text
        kernels[name] = response.json()
    kept, lost = kernels["kept"]["kernel"]["id"], kernels["lost"]["kernel"]["id"]
    pid = run(server, kept, "import os\nx = 41\nprint(os.getpid())").strip()
    run(server, lost, "z = 'saved'")
    jobs = live_jobs(slurm)
    instance_of = {name: body["instance"]["id"] for name, body in kernels.items()}
    assert set(jobs) == {f"jupyter-lowcost-{i}" for i in instance_of.values()}

    server.kill_hard()
    # Without a server the jobs run on; one is cancelled meanwhile.
    slurm.command("scancel", jobs[f"jupyter-lowcost-{instance_of['lost']}"])

    server.start()
    kept_job = f"jupyter-lowcost-{instance_of['kept']}"
    # The running job is the kernel's still: the same process, its variables there.
    assert run(server, kept, "print(os.getpid(), x + 1)") == f"{pid} 42\n"
    assert live_jobs(slurm)[kept_job] == jobs[kept_job]
    instance = server.get(f"kernels/{kept}").json()["instance"]
    assert instance["id"] == instance_of["kept"] and instance["state"] == "running"
    assert "re-attached after the Jupyter server restarted" in instance["reason"]

    # The cancelled one is resumed from its checkpoint, in a new job.
    end = time.monotonic() + 120
    while True:
        model = server.get(f"kernels/{lost}").json()
        if model["restored"] and model["instance"]["state"] == "running":
            break
        assert time.monotonic() < end, f"the lost kernel did not resume: {model}"
        time.sleep(0.5)
    assert model["instance"]["id"] != instance_of["lost"]
    history = {i["id"]: i for i in model["history"]}
    assert history[instance_of["lost"]]["state"] == "interrupted"
    assert (
        "the Jupyter server restarted; the instance was lost"
        in (history[instance_of["lost"]]["reason"])
    )
    assert "before the interruption" in model["restored"]["message"]
    assert run(server, lost, "print(z)") == "saved\n"

    # Every job in the queue is one the server knows is running, and no other.
    running = {i["id"] for i in server.get("instances").json() if i["state"] == "running"}
    assert set(live_jobs(slurm)) == {f"jupyter-lowcost-{i}" for i in running}
