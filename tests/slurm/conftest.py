"""Fixtures: one real Slurm cluster for the whole session (munged, slurmctld, slurmd in a
temporary folder; see tests/slurm_cluster.py), and servers configured for it.

The cluster has 2 CPUs, a preemptible ``lowcost`` partition and an ``ondemand`` partition
that preempts it; every kernel job asks for 1 CPU, so one job that needs 2 CPUs on
``ondemand`` preempts whatever low-cost kernel runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import BASE_CONFIG, _merge
from slurm_cluster import SlurmCluster
from traitlets.config import Config

#: The Slurm side of the server configuration of every test here.
SLURM_CONFIG: dict[str, Any] = {
    "LowCostApp": {"backend": "slurm"},
    "SlurmBackend": {
        "low_cost_partition": "lowcost",
        "regular_partition": "ondemand",
        "poll_interval": 0.5,
        "instance_types": {
            "T4": {"cpus": 1},
            "A100-80G": {"cpus": 1, "mem": "200M"},
            # The cluster has no such partition: the type is not offered.
            "H100": {"cpus": 1, "low_cost_partition": "spot-h100"},
        },
    },
}


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlurmCluster]:
    """The cluster, with SLURM_CONF set for this test's server; its queue emptied after."""
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    yield slurm_cluster
    slurm_cluster.cancel_all()


@pytest.fixture
def jp_server_config(request: pytest.FixtureRequest, slurm: SlurmCluster) -> Config:
    marker = request.node.get_closest_marker("lowcost")
    config = _merge(_merge(BASE_CONFIG, SLURM_CONFIG), marker.kwargs if marker else {})
    return Config(config)
