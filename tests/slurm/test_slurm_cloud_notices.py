"""On the Slurm backend too, a kernel's launcher (in a Slurm job) reads the cloud's own
notice: each provider's notice reaches the kernel and the server with the provider's
deadline, before Slurm itself knows anything."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from cloud_metadata import AwsMetadata, AzureMetadata, Emulator, GcpMetadata
from conftest import BASE_CONFIG, EventRecorder, _merge, execute, start_lowcost_kernel, wait_until
from slurm_cluster import SlurmCluster
from traitlets.config import Config

from slurm.conftest import SLURM_CONFIG
from slurm.test_slurm_backend import job_of

EMULATORS = {"aws": AwsMetadata, "gcp": GcpMetadata, "azure": AzureMetadata}


@pytest.fixture(params=list(EMULATORS))
def emulator(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    made: Emulator = EMULATORS[request.param]()
    yield made
    made.close()


@pytest.fixture
def jp_server_config(slurm: SlurmCluster, emulator: Emulator) -> Config:
    provider = next(k for k, v in EMULATORS.items() if isinstance(emulator, v))
    lowcost = {"cloud_notices": provider, "cloud_metadata_url": emulator.url}
    return Config(_merge(_merge(BASE_CONFIG, SLURM_CONFIG), {"LowCostApp": lowcost}))


async def test_the_clouds_notice_reaches_a_kernel_in_a_slurm_job(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder, slurm: SlurmCluster,
    emulator: Emulator,
) -> None:  # fmt: skip
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, instance_id = body["kernel"]["id"], body["instance"]["id"]
    assert job_of(slurm, instance_id)["partition"] == "lowcost"
    await wait_until(lambda: len(emulator.requests) >= 2, timeout=30)
    if isinstance(emulator, AwsMetadata):
        deadline, words = emulator.notice(seconds=120), "AWS spot instance-action: terminate"
    elif isinstance(emulator, GcpMetadata):
        emulator.preempt()
        deadline, words = time.time() + 30, "Google Cloud preempted this Spot VM"
    else:
        event_id, deadline = emulator.preempt(seconds=40)
        words = f"Azure Scheduled Event Preempt {event_id}"
    noticed = await instance_events.wait_for(instance_id=instance_id, state="notice", timeout=20)
    assert words in noticed["reason"]
    assert abs(datetime.fromisoformat(noticed["deadline"]).timestamp() - deadline) < 2
    out = await execute(
        jp_serverapp,
        kernel_id,
        "from jupyter_lowcost import notice\nprint(bool(notice), notice.reason[:20])",
    )
    assert out == f"True {words[:20]}\n"
    # Slurm itself has not preempted anything: the job still runs.
    assert job_of(slurm, instance_id)["state"] == "RUNNING"
