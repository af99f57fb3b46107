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
from conftest import (
    BASE_CONFIG,
    EventRecorder,
    _merge,
    execute,
    manager_of,
    start_lowcost_kernel,
    wait_until,
)
from traitlets.config import Config

from jupyter_lowcost.instance import cloud_notices
from jupyter_lowcost.instance.aws_notices import AwsWatcher
from jupyter_lowcost.instance.azure_notices import AzureWatcher
from jupyter_lowcost.instance.cloud_notices import CloudNotice
from jupyter_lowcost.instance.gcp_notices import GcpWatcher

EMULATORS = {"aws": AwsMetadata, "gcp": GcpMetadata, "azure": AzureMetadata}


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


#: What each cloud writes in its VMs' DMI data (../shared/notes/CLOUD-NOTICES.md), and a
#: machine that is none of them (a laptop's).
MACHINES = {
    "aws": {"class/dmi/id/sys_vendor": "Amazon EC2", "class/dmi/id/product_name": "m5.large"},
    "aws-xen": {"class/dmi/id/bios_version": "4.11.amazon", "hypervisor/uuid": "ec2e1916-9099"},
    "gcp": {
        "class/dmi/id/product_name": "Google Compute Engine",
        "class/dmi/id/bios_vendor": "Google",
    },
    "azure": {
        "class/dmi/id/sys_vendor": "Microsoft Corporation",
        "class/dmi/id/chassis_asset_tag": cloud_notices.AZURE_ASSET_TAG,
    },
    "laptop": {"class/dmi/id/sys_vendor": "LENOVO", "class/dmi/id/product_name": "20XW"},
}


def fake_machine(root: Path, name: str) -> Path:
    """A sysfs folder that looks like the machine ``name`` of MACHINES."""
    for path, text in MACHINES[name].items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text + "\n")
    return root


@pytest.mark.parametrize("machine", list(MACHINES))
def test_auto_tells_the_cloud_from_the_machine_itself(machine: str, tmp_path: Path) -> None:
    provider, evidence = cloud_notices.detect_provider(str(fake_machine(tmp_path, machine)))
    assert provider == (None if machine == "laptop" else machine.split("-")[0])
    assert str(tmp_path) in evidence  # (what it read, where)
    empty = tmp_path / "container"
    empty.mkdir()
    assert cloud_notices.detect_provider(str(empty)) == (
        None,
        f"no DMI data in {empty / 'class' / 'dmi' / 'id'}",
    )


def test_auto_on_a_machine_of_no_cloud_watches_nothing_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_LOWCOST_SYSFS", str(fake_machine(tmp_path, "laptop")))
    said: list[str] = []
    assert cloud_notices.start("auto", "", Received(), said.append) is None
    assert said == [
        "cloud notices (auto): this machine is not an AWS, Google Cloud or Azure VM "
        f"({tmp_path / 'class/dmi/id'}: sys_vendor 'LENOVO', product_name '20XW'): no "
        "metadata service is asked"
    ]


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_auto_watches_the_provider_the_machine_is_of(
    provider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GcpWatcher, "hang_seconds", 1)  # (so that it stops at once)
    monkeypatch.setenv("JUPYTER_LOWCOST_SYSFS", str(fake_machine(tmp_path, provider)))
    emulator: Emulator = EMULATORS[provider]()
    try:
        said: list[str] = []
        stop = threading.Event()
        thread = cloud_notices.start("auto", emulator.url, Received(), said.append, stop=stop)
        assert thread is not None
        assert said[0].startswith(
            f"cloud notices (auto): {cloud_notices.PROVIDER_NAMES[provider]}, since {tmp_path}"
        )
        assert said[1] == f"watching {provider}'s interruption notices at {emulator.url}"
        end = time.monotonic() + 10
        while not emulator.requests:
            assert time.monotonic() < end
            time.sleep(0.02)
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive()
    finally:
        emulator.close()


def test_a_service_slow_to_answer_at_first_is_asked_again_less_often_until_it_answers(
    azure: AzureMetadata, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azure documents up to 2 minutes for the first call: the watcher does not give up
    after a short probe; it asks again with a growing pause and a growing timeout."""
    monkeypatch.setattr(cloud_notices, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(cloud_notices, "REQUEST_TIMEOUT", 0.1)
    monkeypatch.setenv("JUPYTER_LOWCOST_SYSFS", str(fake_machine(tmp_path, "azure")))
    azure.delays = [0.6, 0.6, 0.6]  # (the first three answers come too late)
    received, said = Received(), []
    stop = threading.Event()
    thread = cloud_notices.start("auto", azure.url, received, said.append, stop=stop)
    try:
        event_id, _ = azure.preempt(seconds=30)
        end = time.monotonic() + 20
        while not received.notices:
            assert time.monotonic() < end, said
            time.sleep(0.02)
        assert event_id in received.notices[0].reason
        # Three tries that timed out (0.1 s, 0.2 s, 0.4 s), each after a longer pause;
        # the fourth waited 0.8 s and had its answer.
        gaps = [b - a for a, b in zip(azure.times, azure.times[1:4])]
        assert gaps == sorted(gaps) and gaps[-1] > gaps[0] + 0.2
        assert sum("did not answer in time" in line for line in said) == 1  # (once)
    finally:
        stop.set()
        thread.join(timeout=10)


async def test_auto_on_this_machine_makes_the_launcher_ask_no_one_beyond_loopback(
    api: Any, jp_serverapp: Any
) -> None:
    """The default (``auto``) on a machine that is no cloud's VM, as this one: a low-cost
    kernel's launcher opens no connection and looks up no name outside 127.0.0.0/8 and
    ::1 (the network guard, loaded in it, records every attempt), and its log says what
    it decided and from what."""
    from network_guard import guarded, network_attempts

    assert cloud_notices.detect_provider()[0] is None, "this test needs a machine of no cloud"
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, instance_id = body["kernel"]["id"], body["instance"]["id"]
    # (on the local backend, the kernel runs in its launcher's process)
    launcher = int(await execute(jp_serverapp, kernel_id, "import os\nprint(os.getpid())"))
    assert guarded(launcher)
    log = manager_of(jp_serverapp).settings.logs_dir / f"{instance_id}.log"
    await wait_until(lambda: "cloud notices (auto)" in log.read_text(), timeout=10)
    assert (
        "cloud notices (auto): this machine is not an AWS, Google Cloud or Azure VM ("
        in log.read_text()
    )
    assert "no metadata service is asked" in log.read_text()
    # (the decision is made before any watcher could start: none did, nothing was asked)
    assert network_attempts(launcher) == []
    assert "watching" not in log.read_text()


# -- what the providers send that a watcher must get right --------------------------------


class Said:
    """A watcher's log lines and the warnings it gave the user (``None``: cleared)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.warnings: list[str | None] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    def warn(self, text: str | None) -> None:
        self.warnings.append(text)


def test_azure_ignores_the_events_of_other_vms_of_its_scale_set(azure: AzureMetadata) -> None:
    received, said = Received(), Said()
    acknowledge = AzureWatcher(azure.url, received, True, lambda since: True, said.log)
    other, _ = azure.event("Preempt", seconds=1, resources=["lowcost-vm-2", "lowcost-vm-3"])
    acknowledge.check()
    time.sleep(0.3)
    assert received.notices == [] and azure.acknowledged == []  # neither acted on nor approved
    assert f"Azure Scheduled Event Preempt {other} concerns other VMs: ignored" in said.lines
    assert "Azure: this VM is 'lowcost-vm'; events of other VMs are ignored" in said.lines
    mine, not_before = azure.event("Preempt", seconds=30, resources=["other", "LOWCOST-VM"])
    acknowledge.check()
    assert [n.deadline for n in received.notices] == [not_before]
    end = time.monotonic() + 5
    while not azure.acknowledged:
        assert time.monotonic() < end
        time.sleep(0.02)
    assert [event_id for event_id, _ in azure.acknowledged] == [mine]


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("Terminate", "this VM is deleted"),
        ("Reboot", "this VM is rebooted (its memory is lost)"),
        ("Redeploy", "this VM moves to another host (its memory is lost)"),
        ("Preempt", "this Spot VM is evicted"),
    ],
)
def test_azure_events_that_lose_the_kernels_memory_are_notices(
    azure: AzureMetadata, kind: str, words: str
) -> None:
    received = Received()
    watcher = AzureWatcher(azure.url, received)
    event_id, not_before = azure.event(kind, seconds=600)
    watcher.check()
    assert len(received.notices) == 1
    notice = received.notices[0]
    assert notice.deadline == not_before and not notice.early_warning
    assert notice.reason.startswith(
        f"Azure Scheduled Event {kind} {event_id}: {words}, not before "
    )


def test_azure_freeze_is_not_an_interruption(azure: AzureMetadata) -> None:
    received, said = Received(), Said()
    watcher = AzureWatcher(azure.url, received, log=said.log)
    event_id, _ = azure.event("Freeze", seconds=5)
    watcher.check()
    assert received.notices == []
    assert (
        f"Azure Scheduled Event Freeze {event_id} for this VM (a pause of seconds; memory is "
        "kept): not an interruption" in said.lines
    )


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short timeouts, for services that never answer."""
    monkeypatch.setattr(cloud_notices, "REQUEST_TIMEOUT", 0.3)


@pytest.mark.parametrize("refusal", [403, 404, 405, "silent"])
def test_aws_reads_the_notice_without_a_token_when_the_token_request_fails(
    aws: AwsMetadata, refusal: int | str, quick: None
) -> None:
    """As AWS's SDKs do: a refused token request (IMDSv2 off: 403; 404, 405) or one never
    answered (a container's hop limit of 1) falls back to token-less (IMDSv1) GETs."""
    aws.token_answer, aws.tokenless = refusal, True
    received, said = Received(), Said()
    watcher = AwsWatcher(aws.url, received, said.log, said.warn)
    watcher.check()
    deadline = aws.notice(seconds=120)
    watcher.check()
    assert [n.deadline for n in received.notices] == [deadline]
    assert said.warnings == []
    why = (
        "the token request was not answered (a container's hop limit of 1?)"
        if refusal == "silent"
        else f"the token request was refused ({refusal})"
    )
    assert said.lines == [f"AWS: {why}; reading the notice without a token (IMDSv1)"]


@pytest.mark.parametrize("refusal", [403, "silent"])
def test_aws_says_once_when_nothing_can_be_read(
    aws: AwsMetadata, refusal: int | str, quick: None
) -> None:
    aws.token_answer = refusal  # and IMDSv1 is off: every token-less GET gets 401
    said = Said()
    watcher = AwsWatcher(aws.url, Received(), said.log, said.warn)
    watcher.tokenless_seconds = 0  # (the token is asked for again on every poll)
    for _ in range(4):
        watcher.poll_once(watcher.check)
    why = (
        "the token request was not answered (a container's hop limit of 1?)"
        if refusal == "silent"
        else f"the token request was refused ({refusal})"
    )
    assert said.warnings == [
        f"cannot read AWS's spot notice: {why}, and requests without a token are refused "
        "(401: the instance requires IMDSv2); in a container, raise the hop limit to 2 (aws "
        "ec2 modify-instance-metadata-options --http-put-response-hop-limit 2); "
        "interruptions will come without notice"
    ]
    assert len(said.lines) == 2  # each failure once, not once per poll
    # Once it can be read again, the warning is withdrawn and the notice comes.
    aws.token_answer = None
    deadline = aws.notice()
    received = Received()
    watcher.deliver = received
    watcher.poll_once(watcher.check)
    assert said.warnings[-1] is None and [n.deadline for n in received.notices] == [deadline]


def test_aws_uses_the_lifetime_the_token_is_granted(aws: AwsMetadata) -> None:
    """Tokens that live 1 s (whatever was asked for) still deliver the notice, in the poll
    that sees it: a 401 gets a new token and asks again at once."""
    aws.max_ttl = 1
    received = Received()
    watcher = AwsWatcher(aws.url, received)
    watcher.check()
    deadline = aws.notice()
    time.sleep(1.1)  # (the token has expired)
    watcher.check()
    assert [n.deadline for n in received.notices] == [deadline]
    aws.revoke_tokens()
    aws.rebalance()
    watcher.check()  # a 401 within the same poll: a new token, asked again
    assert [n.early_warning for n in received.notices] == [False, True]


def test_metadata_is_read_directly_not_through_the_proxy(
    aws: AwsMetadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud_metadata import Proxy

    proxy = Proxy()
    try:
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        received = Received()
        watcher = AwsWatcher(aws.url, received)
        deadline = aws.notice()
        watcher.check()
        assert [n.deadline for n in received.notices] == [deadline]
        assert proxy.requests == []
    finally:
        proxy.close()


def test_gcp_answers_without_an_etag_do_not_make_the_watcher_spin(gcp: GcpMetadata) -> None:
    gcp.etags = False  # (and each answer comes at once, hanging GET or not)
    said = Said()
    watcher = GcpWatcher(gcp.url, Received(), said.log)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    time.sleep(2.5)
    watcher.stop.set()
    thread.join(timeout=5)
    assert 2 <= len(gcp.requests) <= 4  # (one a second, not 1,200)
    assert sum("without an ETag" in line for line in said.lines) == 1


@pytest.mark.parametrize("provider", ["aws", "azure"])
def test_an_answer_it_cannot_use_is_logged_once_with_what_it_means(
    provider: str, aws: AwsMetadata, azure: AzureMetadata
) -> None:
    said = Said()
    watcher: Any
    if provider == "aws":
        aws.body["/latest/meta-data/spot/instance-action"] = "<html>captive portal</html>"
        watcher = AwsWatcher(aws.url, Received(), said.log, said.warn)
    else:
        azure.events.append({"EventId": "x"})
        watcher = AzureWatcher(azure.url, Received(), log=said.log, warn=said.warn)
        azure.PATH = "/nowhere"  # (the document is now answered by a 404)
    for _ in range(4):
        watcher.poll_once(watcher.check)
    problems = [line for line in said.lines if "answered" in line]
    assert len(problems) == 1, said.lines
    if provider == "aws":
        assert (
            "answered 200 with something that is not JSON ('<html>captive portal</html>'): "
            "another service or a proxy may answer in its place" in problems[0]
        )
    else:
        assert "Scheduled Events answered 404" in problems[0]
    assert len(said.warnings) == 1 and "interruptions will come without notice" in str(
        said.warnings[0]
    )


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
def jp_server_config(request: pytest.FixtureRequest) -> Config:
    """The server's config: the defaults (``auto``), or with an ``emulator`` of a
    provider, that provider's notices read from it."""
    if "emulator" not in request.fixturenames:
        return Config(_merge(BASE_CONFIG, {}))
    emulator: Emulator = request.getfixturevalue("emulator")
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


@pytest.mark.parametrize("emulator", ["aws"], indirect=True)
async def test_a_notice_that_cannot_be_read_is_shown_on_the_instance(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder, emulator: AwsMetadata
) -> None:
    """The token request refused and IMDSv1 off: the launcher says so in its log, the
    instance carries the warning (REST, %lowcost), and one event says it (JupyterLab's
    toast)."""
    emulator.token_answer = 403
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, instance_id = body["kernel"]["id"], body["instance"]["id"]
    warned = await instance_events.wait_for(
        instance_id=instance_id, where=lambda e: e["reason"].startswith("warning: "), timeout=30
    )
    text = (
        "cannot read AWS's spot notice: the token request was refused (403), and requests "
        "without a token are refused (401: the instance requires IMDSv2)"
    )
    assert warned["state"] == "running" and warned["reason"].startswith(f"warning: {text}")
    assert warned["reason"].endswith("interruptions will come without notice")
    status, model = await api("GET", f"instances/{instance_id}")
    assert model["notice_warning"].startswith(text) and model["state"] == "running"
    out = await execute(jp_serverapp, kernel_id, "%lowcost")
    assert f"Warning: {text}" in out
    await wait_until(lambda: len(emulator.requests) >= 5, timeout=30)  # (more polls)
    assert len(instance_events.matching(where=lambda e: e["reason"].startswith("warning: "))) == 1
    log = manager_of(jp_serverapp).settings.logs_dir / f"{instance_id}.log"
    assert log.read_text().count(text) == 1


@pytest.mark.parametrize("emulator", ["aws"], indirect=True)
async def test_a_notice_whose_time_has_passed_still_leaves_time_for_the_notice_checkpoint(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder, emulator: AwsMetadata
) -> None:
    """AWS's hibernate starts at once (its time is now), as does a notice read late: the
    server does not end the instance before the provider does, and the kernel's notice
    checkpoint (checkpoints = "notice") is written; the relaunched kernel has it back."""
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, instance_id = body["kernel"]["id"], body["instance"]["id"]
    await execute(jp_serverapp, kernel_id, "big = bytearray(20_000_000)\nbig[-1] = 7")
    await until_watched(emulator)
    manifests = manager_of(jp_serverapp).settings.checkpoint_dir / kernel_id / "manifests"
    assert not list(manifests.glob("*.json"))  # (checkpoints at notices only)
    emulator.notice(seconds=0, action="hibernate")
    noticed = await instance_events.wait_for(instance_id=instance_id, state="notice", timeout=20)
    assert "AWS spot instance-action: hibernate" in noticed["reason"]
    await instance_events.wait_for(instance_id=instance_id, state="interrupted", timeout=60)
    assert list(manifests.glob("*.json"))  # the notice checkpoint was written
    await instance_events.wait_for(
        kernel_id=kernel_id,
        state="running",
        where=lambda e: e["instance_id"] != instance_id,
        timeout=90,
    )
    out = await execute(jp_serverapp, kernel_id, "print(len(big), big[-1])")
    assert out == "20000000 7\n"


@pytest.mark.parametrize("emulator", ["azure"], indirect=True)
async def test_azure_is_approved_at_once_when_the_kernel_has_nothing_to_checkpoint(
    api: Any, instance_events: EventRecorder, emulator: AzureMetadata
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    instance_id = body["instance"]["id"]
    await until_watched(emulator)
    event_id, _ = emulator.preempt(seconds=60)
    await instance_events.wait_for(instance_id=instance_id, state="notice", timeout=20)
    await wait_until(lambda: emulator.acknowledged, timeout=10)  # (not at NotBefore)
    assert emulator.acknowledged[0][0] == event_id
