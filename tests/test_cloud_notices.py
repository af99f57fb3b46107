"""The cloud's own interruption notice (AWS, Google Cloud, Azure instance metadata)
reaches the kernel and the server: the watchers against emulators that follow each
provider's protocol, then real launchers of the local backend pointed at them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cloud_metadata import AwsMetadata, AzureMetadata, Emulator, GcpMetadata
from conftest import BASE_CONFIG, EventRecorder, _merge, execute, start_lowcost_kernel, wait_until
from traitlets.config import Config

from jupyter_lowcost.instance import cloud_notices
from jupyter_lowcost.instance.cloud_notices import (
    AwsWatcher,
    AzureWatcher,
    CloudNotice,
    GcpWatcher,
)

EMULATORS = {"aws": AwsMetadata, "gcp": GcpMetadata, "azure": AzureMetadata}


@pytest.fixture
def aws() -> Iterator[AwsMetadata]:
    emulator = AwsMetadata()
    yield emulator
    emulator.close()


@pytest.fixture
def gcp() -> Iterator[GcpMetadata]:
    emulator = GcpMetadata()
    yield emulator
    emulator.close()


@pytest.fixture
def azure() -> Iterator[AzureMetadata]:
    emulator = AzureMetadata()
    yield emulator
    emulator.close()


class Received:
    def __init__(self) -> None:
        self.notices: list[CloudNotice] = []
        self.at: list[float] = []

    def __call__(self, notice: CloudNotice) -> None:
        self.notices.append(notice)
        self.at.append(time.monotonic())


# -- the watchers, against the emulators ------------------------------------------------


def test_aws_token_flow_notice_and_rebalance(aws: AwsMetadata) -> None:
    received = Received()
    watcher = AwsWatcher(aws.url, received)
    watcher.check()
    watcher.check()
    assert received.notices == [] and aws.tokens_issued == 1  # one token, reused
    aws.rebalance()
    watcher.check()
    assert [n.early_warning for n in received.notices] == [True]
    assert received.notices[0].reason.startswith("AWS rebalance recommendation at ")
    deadline = aws.notice(seconds=120)
    watcher.check()
    watcher.check()  # (the same notice is delivered once)
    notice = received.notices[-1]
    assert len(received.notices) == 2 and not notice.early_warning
    assert notice.deadline == deadline and notice.provider == "aws"
    assert "AWS spot instance-action: terminate at" in notice.reason


def test_aws_a_401_drops_the_token_and_tokens_are_renewed_before_they_expire(
    aws: AwsMetadata,
) -> None:
    received = Received()
    watcher = AwsWatcher(aws.url, received)
    watcher.check()
    aws.revoke_tokens()
    watcher.check()  # 401 on the first GET: the token is dropped, a new one taken
    assert aws.tokens_issued == 2
    aws.notice()
    watcher.check()
    assert aws.tokens_issued == 2 and len(received.notices) == 1
    # A token near its end is renewed before it expires: never a 401.
    short = AwsWatcher(aws.url, Received())
    short.token_ttl, short.refresh_before = 2, 1.0
    short.check()
    time.sleep(1.2)
    before = aws.tokens_issued
    short.check()
    assert aws.tokens_issued == before + 1 and short.token is not None


def test_aws_emulator_follows_imdsv2(aws: AwsMetadata) -> None:
    status = cloud_notices._request("PUT", f"{aws.url}/latest/api/token", {}, 2)[0]
    assert status == 400  # no TTL
    too_long = {"X-aws-ec2-metadata-token-ttl-seconds": "21601"}
    assert cloud_notices._request("PUT", f"{aws.url}/latest/api/token", too_long, 2)[0] == 400
    path = f"{aws.url}/latest/meta-data/spot/instance-action"
    assert cloud_notices._request("GET", path, {}, 2)[0] == 401


def test_gcp_hanging_get_delivers_the_preemption_at_once(gcp: GcpMetadata) -> None:
    received = Received()
    watcher = GcpWatcher(gcp.url, received)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    end = time.monotonic() + 10
    while not any("wait_for_change=true&last_etag=" in p for _, p in gcp.requests):
        assert time.monotonic() < end
        time.sleep(0.01)
    time.sleep(0.2)
    hanging = len(gcp.requests)
    preempted = time.monotonic()
    gcp.preempt()
    thread.join(timeout=5)
    assert len(received.notices) == 1 and hanging == 2  # one GET, then one hanging GET
    assert received.at[0] - preempted < 0.2
    notice = received.notices[0]
    assert notice.provider == "gcp" and "Google Cloud preempted this Spot VM" in notice.reason
    assert abs(notice.deadline - (time.time() + 30)) < 2
    assert cloud_notices._request("GET", gcp.url + GcpMetadata.PATH, {}, 2)[0] == 403


def test_azure_preempt_event_and_acknowledgement_after_the_checkpoint(
    azure: AzureMetadata,
) -> None:
    received = Received()
    saved = threading.Event()
    watcher = AzureWatcher(azure.url, received, True, lambda since: saved.is_set())
    watcher.check()
    assert received.notices == []
    event_id, not_before = azure.preempt(seconds=30)
    watcher.check()
    watcher.check()  # same DocumentIncarnation: nothing new
    assert len(received.notices) == 1
    notice = received.notices[0]
    assert notice.deadline == not_before and event_id in notice.reason
    assert "Azure Scheduled Event Preempt" in notice.reason
    time.sleep(0.3)
    assert azure.acknowledged == []  # not before the checkpoint is written
    saved.set()
    end = time.monotonic() + 5
    while not azure.acknowledged:
        assert time.monotonic() < end
        time.sleep(0.02)
    assert azure.acknowledged[0][0] == event_id
    assert cloud_notices._request("GET", azure.url + azure.PATH, {}, 2)[0] == 400


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_auto_finds_the_provider_that_answers(
    provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GcpWatcher, "hang_seconds", 1)  # (so that it stops at once)
    emulator: Emulator = EMULATORS[provider]()
    try:
        found: list[str] = []
        stop = threading.Event()
        thread = cloud_notices.start("auto", emulator.url, Received(), found.append, stop=stop)
        assert thread is not None
        end = time.monotonic() + 10
        while not found:
            assert time.monotonic() < end
            time.sleep(0.02)
        assert found[0].startswith(f"watching {provider}'s interruption notices")
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive()
    finally:
        emulator.close()


def test_a_watcher_survives_garbage_from_the_endpoint() -> None:
    """Not HTTP at all (another server took the port), then JSON of the wrong shape: the
    watcher goes on, and still delivers the notice once the endpoint is right."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    def garbage() -> None:
        for _ in range(2):
            connection, _ = listener.accept()
            connection.recv(1024)
            connection.sendall(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f")
            connection.close()

    threading.Thread(target=garbage, daemon=True).start()
    with pytest.raises(OSError, match="not an HTTP answer"):
        cloud_notices._request("GET", url, {}, 2)
    received = Received()
    watcher = AzureWatcher(url, received)
    stop = threading.Event()
    watcher.stop = stop
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    time.sleep(0.1)
    assert thread.is_alive()
    stop.set()
    thread.join(timeout=5)
    listener.close()
    azure = AzureMetadata()
    try:
        azure.events.append({"EventType": "Preempt"})  # (no id, no NotBefore)
        azure.events.append("not an event")  # type: ignore[arg-type]
        azure.incarnation += 1
        survivor = AzureWatcher(azure.url, received)
        try:
            survivor.check()
        except AttributeError:
            pass  # (run() goes on after it)
        azure.events.clear()
        event_id, _ = azure.preempt()
        survivor.check()
        assert any(event_id in n.reason for n in received.notices)
    finally:
        azure.close()


# -- a real launcher of the local backend, pointed at an emulator ----------------------


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    made: Emulator = EMULATORS[request.param]()
    yield made
    made.close()


@pytest.fixture
def jp_server_config(request: pytest.FixtureRequest, emulator: Emulator) -> Config:
    provider = next(k for k, v in EMULATORS.items() if isinstance(emulator, v))
    lowcost = {
        "cloud_notices": provider,
        "cloud_metadata_url": emulator.url,
        "azure_acknowledge": True,
        "checkpoints": "notice",
    }
    return Config(_merge(BASE_CONFIG, {"LowCostApp": lowcost}))


async def until_watched(emulator: Emulator) -> None:
    await wait_until(lambda: len(emulator.requests) >= 2, timeout=30)


@pytest.mark.parametrize("emulator", ["aws", "gcp", "azure"], indirect=True)
async def test_the_clouds_notice_reaches_the_kernel_and_the_server(
    api: Any,
    jp_serverapp: Any,
    instance_events: EventRecorder,
    emulator: Emulator,
    tmp_path: Path,
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, instance_id = body["kernel"]["id"], body["instance"]["id"]
    marker = tmp_path / "noticed.txt"
    await execute(
        jp_serverapp,
        kernel_id,
        "import pathlib\nfrom jupyter_lowcost import on_notice\nkept = [1, 2, 3]\n"
        f"on_notice(lambda n: pathlib.Path({str(marker)!r}).write_text(n.reason))\n",
    )
    await until_watched(emulator)
    if isinstance(emulator, AwsMetadata):
        deadline = emulator.notice(seconds=120)
        words = "AWS spot instance-action: terminate"
    elif isinstance(emulator, GcpMetadata):
        emulator.preempt()
        deadline = time.time() + 30
        words = "Google Cloud preempted this Spot VM"
    else:
        event_id, deadline = emulator.preempt(seconds=40)
        words = f"Azure Scheduled Event Preempt {event_id}"
    noticed = await instance_events.wait_for(instance_id=instance_id, state="notice", timeout=20)
    assert words in noticed["reason"]
    status, model = await api("GET", f"instances/{instance_id}")
    assert model["state"] == "notice"
    served = datetime.fromisoformat(model["notice_deadline"]).timestamp()
    assert abs(served - deadline) < 2
    # The kernel saw it: the flag, the callback, and the notice checkpoint.
    await wait_until(marker.exists, timeout=10)
    assert words in marker.read_text()
    out = await execute(
        jp_serverapp, kernel_id, "from jupyter_lowcost import notice\nprint(bool(notice))"
    )
    assert out == "True\n"
    checkpoints = jp_serverapp.web_app.settings["jupyter_lowcost_manager"].settings.checkpoint_dir
    await wait_until(lambda: any((checkpoints / kernel_id / "manifests").glob("*.json")))
    if isinstance(emulator, AzureMetadata):
        # Acknowledged, and only once the notice checkpoint was written.
        await wait_until(lambda: emulator.acknowledged, timeout=10)
        manifests = sorted((checkpoints / kernel_id / "manifests").glob("*.json"))
        written = manifests[-1].stat().st_mtime
        assert emulator.acknowledged[0][0] == event_id
        assert emulator.acknowledged[0][1] >= written - 0.05


@pytest.mark.parametrize("emulator", ["aws"], indirect=True)
async def test_a_rebalance_recommendation_is_an_early_warning_not_a_notice(
    api: Any, instance_events: EventRecorder, emulator: AwsMetadata
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    instance_id = body["instance"]["id"]
    await until_watched(emulator)
    emulator.rebalance()
    warned = await instance_events.wait_for(
        instance_id=instance_id,
        where=lambda e: e["reason"].startswith("early warning: AWS rebalance"),
        timeout=20,
    )
    assert warned["state"] == "running"
    status, model = await api("GET", f"instances/{instance_id}")
    assert model["state"] == "running" and model["notice_deadline"] is None


@pytest.mark.parametrize("emulator", ["aws"], indirect=True)
async def test_regular_instances_do_not_watch_spot_notices(api: Any, emulator: AwsMetadata) -> None:
    await start_lowcost_kernel(api, "T4", low_cost=False)
    await start_lowcost_kernel(api, "T4", low_cost=True)
    await until_watched(emulator)
    # Only the low-cost instance's launcher asked for a token.
    assert emulator.tokens_issued == 1
