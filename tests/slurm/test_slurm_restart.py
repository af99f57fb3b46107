"""A hard-killed server, restarted, leaves no Slurm job running unaccounted for."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_process import LowCostServer
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


def test_a_restarted_server_cancels_the_jobs_of_the_killed_one(
    server: SlurmServer, slurm: SlurmCluster
) -> None:
    server.start()
    for low_cost in (True, False):
        response = server.post("kernels", {"instance_type": "T4", "low_cost": low_cost})
        assert response.status_code == 201, response.text
    instances = {i["id"] for i in server.get("instances").json()}
    assert set(live_jobs(slurm)) == {f"jupyter-lowcost-{i}" for i in instances}

    server.kill_hard()
    # Without a server the jobs run on: this is what the restart must clean up.
    assert len(live_jobs(slurm)) == 2

    server.start()
    end = time.monotonic() + 20
    while live_jobs(slurm):
        assert time.monotonic() < end, f"jobs left running: {live_jobs(slurm)}"
        time.sleep(0.2)
    records = {i["id"]: i for i in server.get("instances").json()}
    assert set(records) == instances
    for record in records.values():
        assert record["state"] == "terminated"
        assert "could not be re-attached: the instance was stopped" in record["reason"]
    assert server.get("status").json()["live_instances"] == 0
