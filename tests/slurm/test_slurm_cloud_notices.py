"""On the Slurm backend too, a kernel's launcher (in a Slurm job) reads the cloud's own
notice: AWS's 2-minute spot notice reaches the kernel and the server with AWS's deadline,
before Slurm itself knows anything."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from cloud_metadata import AwsMetadata
from conftest import BASE_CONFIG, EventRecorder, _merge, execute, start_lowcost_kernel, wait_until
from slurm_cluster import SlurmCluster
from traitlets.config import Config

from slurm.conftest import SLURM_CONFIG
from slurm.test_slurm_backend import job_of


@pytest.fixture
def aws() -> Iterator[AwsMetadata]:
    emulator = AwsMetadata()
    yield emulator
    emulator.close()


@pytest.fixture
def jp_server_config(slurm: SlurmCluster, aws: AwsMetadata) -> Config:
    lowcost = {"cloud_notices": "aws", "cloud_metadata_url": aws.url}
    return Config(_merge(_merge(BASE_CONFIG, SLURM_CONFIG), {"LowCostApp": lowcost}))


async def test_an_aws_spot_notice_reaches_a_kernel_in_a_slurm_job(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder, slurm: SlurmCluster,
    aws: AwsMetadata,
) -> None:  # fmt: skip
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, instance_id = body["kernel"]["id"], body["instance"]["id"]
    assert job_of(slurm, instance_id)["partition"] == "lowcost"
    await wait_until(lambda: aws.tokens_issued >= 1, timeout=30)
    deadline = aws.notice(seconds=120)
    noticed = await instance_events.wait_for(instance_id=instance_id, state="notice", timeout=20)
    assert "AWS spot instance-action: terminate" in noticed["reason"]
    assert abs(datetime.fromisoformat(noticed["deadline"]).timestamp() - deadline) < 2
    out = await execute(
        jp_serverapp,
        kernel_id,
        "from jupyter_lowcost import notice\nprint(bool(notice), notice.reason[:3])",
    )
    assert out == "True AWS\n"
    # Slurm itself has not preempted anything: the job still runs.
    assert job_of(slurm, instance_id)["state"] == "RUNNING"
