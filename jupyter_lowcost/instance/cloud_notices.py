"""The cloud's own interruption notice, read from the instance metadata where the kernel
runs: AWS (IMDSv2, polled), Google Cloud (a hanging GET), Azure (Scheduled Events, polled).

Called by the launcher (``instance/launcher.py``): :func:`start` runs one watcher thread
(``LowCostApp.cloud_notices``: ``auto`` probes each provider's endpoint with a short
timeout, in that thread, so that a kernel's start never waits for it). A watcher turns
the provider's notice into a :class:`CloudNotice`; the launcher delivers it as any other
notice (the kernel's flag and callbacks, the notice checkpoint) and reports it to the
server. Stdlib only (``urllib``): the launcher runs on the instance. The protocols are in
``../shared/notes/CLOUD-NOTICES.md``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

PROVIDERS = ("aws", "gcp", "azure")
#: Where each provider serves its metadata (``LowCostApp.cloud_metadata_url`` replaces
#: it: an emulator, a proxy).
DEFAULT_URLS = {
    "aws": "http://169.254.169.254",
    "gcp": "http://metadata.google.internal",
    "azure": "http://169.254.169.254",
}
#: How often the polling providers are asked (AWS advises 5 s, Azure 1 s).
POLL_SECONDS = 1.0
#: How long ``auto`` waits for each provider's endpoint.
PROBE_TIMEOUT = 0.5
REQUEST_TIMEOUT = 2.0
#: Google Cloud stops a Spot VM this long after the preemption notice.
GCP_NOTICE_SECONDS = 30.0
#: Azure's Preempt: at least this long, when its NotBefore is not given.
AZURE_NOTICE_SECONDS = 30.0


@dataclass
class CloudNotice:
    """An interruption the provider announced (``early_warning``: only a risk, such as
    AWS's rebalance recommendation)."""

    provider: str
    deadline: float
    reason: str
    early_warning: bool = False


Deliver = Callable[[CloudNotice], None]


def _request(
    method: str,
    url: str,
    headers: dict[str, str],
    timeout: float,
    body: bytes | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers); a connection error raises OSError. (urllib is imported
    here, in the watcher's thread: the kernel's start does not wait for it.)"""
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read() or b"", dict(err.headers or {})
    except http.client.HTTPException as err:  # not HTTP at all (garbage, another server)
        raise OSError(f"{url}: not an HTTP answer: {err!r}") from err


class Watcher:
    """One provider's metadata, watched until ``stop`` is set."""

    name = ""

    def __init__(self, base_url: str, deliver: Deliver) -> None:
        self.base = base_url.rstrip("/")
        self.deliver = deliver
        self.stop = threading.Event()

    def probe(self) -> bool:
        """Does this provider's metadata answer here (within PROBE_TIMEOUT)?"""
        raise NotImplementedError

    def check(self) -> None:
        """One poll (the polling providers)."""
        raise NotImplementedError

    def run(self) -> None:
        """Poll every POLL_SECONDS until ``stop`` (Google's hanging GET has its own)."""
        while not self.stop.is_set():
            try:
                self.check()
            except Exception:  # garbage from the endpoint: the watcher goes on
                pass
            self.stop.wait(POLL_SECONDS)


class AwsWatcher(Watcher):
    """IMDSv2: a session token (``PUT /latest/api/token``), refreshed before it expires
    and dropped on a 401; ``spot/instance-action`` (404 until a notice) and the rebalance
    recommendation (an early warning), polled."""

    name = "aws"
    #: The token's lifetime asked for, and how long before its end it is renewed.
    token_ttl = 21600
    refresh_before = 15.0

    def __init__(self, base_url: str, deliver: Deliver) -> None:
        super().__init__(base_url, deliver)
        self.token: str | None = None
        self.token_expires = 0.0
        self._seen: set[str] = set()

    def _token(self, timeout: float) -> str | None:
        if self.token is None or time.monotonic() > self.token_expires - self.refresh_before:
            status, body, _ = _request(
                "PUT",
                f"{self.base}/latest/api/token",
                {"X-aws-ec2-metadata-token-ttl-seconds": str(self.token_ttl)},
                timeout,
            )
            if status != 200:
                self.token = None
                return None
            self.token = body.decode().strip()
            self.token_expires = time.monotonic() + self.token_ttl
        return self.token

    def probe(self) -> bool:
        try:
            return self._token(PROBE_TIMEOUT) is not None
        except OSError:
            return False

    def _get(self, path: str) -> tuple[int, bytes]:
        token = self._token(REQUEST_TIMEOUT)
        if token is None:
            return 0, b""
        status, body, _ = _request(
            "GET", f"{self.base}{path}", {"X-aws-ec2-metadata-token": token}, REQUEST_TIMEOUT
        )
        if status == 401:  # expired or revoked: a new one next time
            self.token = None
        return status, body

    def check(self) -> None:
        """One round: the instance action, then the rebalance recommendation."""
        status, body = self._get("/latest/meta-data/spot/instance-action")
        if status == 200 and body not in self._seen:
            self._seen.add(body)
            action = json.loads(body)
            deadline = _rfc3339(str(action.get("time", ""))) or time.time() + 120
            self.deliver(
                CloudNotice(
                    "aws",
                    deadline,
                    f"AWS spot instance-action: {action.get('action', 'terminate')} at "
                    f"{action.get('time', '?')} (EC2 reclaims the Spot Instance)",
                )
            )
        status, body = self._get("/latest/meta-data/events/recommendations/rebalance")
        if status == 200 and body not in self._seen:
            self._seen.add(body)
            notice_time = json.loads(body).get("noticeTime", "?")
            self.deliver(
                CloudNotice(
                    "aws",
                    time.time(),
                    f"AWS rebalance recommendation at {notice_time}: this Spot Instance is at "
                    "elevated risk of interruption",
                    early_warning=True,
                )
            )


class GcpWatcher(Watcher):
    """``instance/preempted`` with a hanging GET (``wait_for_change`` and the last ETag):
    the notice arrives as soon as the value changes."""

    name = "gcp"
    #: The longest one hanging GET waits before it is asked again.
    hang_seconds = 60

    def _get(self, query: str, timeout: float) -> tuple[int, str, str]:
        status, body, headers = _request(
            "GET",
            f"{self.base}/computeMetadata/v1/instance/preempted{query}",
            {"Metadata-Flavor": "Google"},
            timeout,
        )
        etag = next((v for k, v in headers.items() if k.lower() == "etag"), "")
        return status, body.decode().strip(), etag

    def probe(self) -> bool:
        try:
            return self._get("", PROBE_TIMEOUT)[0] == 200
        except OSError:
            return False

    def run(self) -> None:
        etag = ""
        while not self.stop.is_set():
            try:
                if not etag:
                    status, value, etag = self._get("", REQUEST_TIMEOUT)
                else:
                    status, value, etag = self._get(
                        f"?wait_for_change=true&last_etag={etag}&timeout_sec={self.hang_seconds}",
                        self.hang_seconds + 10,
                    )
            except Exception:  # unreachable, or garbage: ask again
                etag = ""
                self.stop.wait(POLL_SECONDS)
                continue
            if status != 200:
                etag = ""
                self.stop.wait(POLL_SECONDS)
                continue
            if value.upper() == "TRUE":
                self.deliver(
                    CloudNotice(
                        "gcp",
                        time.time() + GCP_NOTICE_SECONDS,
                        "Google Cloud preempted this Spot VM (instance/preempted is TRUE): "
                        f"it is stopped in {GCP_NOTICE_SECONDS:g} s",
                    )
                )
                return


class AzureWatcher(Watcher):
    """Scheduled Events, polled; a ``Preempt`` event is the notice. With ``acknowledge``,
    the event is approved (``StartRequests``) once the kernel's notice checkpoint is
    written (``checkpoint_written(since)`` says so), so that the eviction need not wait
    for its NotBefore."""

    name = "azure"
    path = "/metadata/scheduledevents?api-version=2020-07-01"

    def __init__(
        self,
        base_url: str,
        deliver: Deliver,
        acknowledge: bool = False,
        checkpoint_written: Callable[[float], bool] | None = None,
    ) -> None:
        super().__init__(base_url, deliver)
        self.acknowledge = acknowledge
        self.checkpoint_written = checkpoint_written or (lambda since: True)
        self.incarnation: int | None = None
        self._seen: set[str] = set()

    def _get(self, timeout: float) -> tuple[int, dict[str, Any]]:
        status, body, _ = _request("GET", self.base + self.path, {"Metadata": "true"}, timeout)
        return status, (json.loads(body) if status == 200 and body else {})

    def probe(self) -> bool:
        try:
            status, document = self._get(PROBE_TIMEOUT)
        except (OSError, ValueError):
            return False
        return status == 200 and isinstance(document, dict) and "DocumentIncarnation" in document

    def check(self) -> None:
        status, document = self._get(REQUEST_TIMEOUT)
        if status != 200 or document.get("DocumentIncarnation") == self.incarnation:
            return
        self.incarnation = document.get("DocumentIncarnation")
        for event in document.get("Events") or []:
            event_id = str(event.get("EventId", ""))
            if event.get("EventType") != "Preempt" or event_id in self._seen:
                continue
            self._seen.add(event_id)
            deadline = _rfc1123(str(event.get("NotBefore") or "")) or (
                time.time() + AZURE_NOTICE_SECONDS
            )
            noticed = time.time()
            self.deliver(
                CloudNotice(
                    "azure",
                    deadline,
                    f"Azure Scheduled Event Preempt {event_id}: this Spot VM is evicted, "
                    f"not before {event.get('NotBefore') or 'in 30 s'}",
                )
            )
            if self.acknowledge:
                threading.Thread(
                    target=self._acknowledge_when_saved,
                    args=(event_id, noticed, deadline),
                    name="lowcost-azure-ack",
                    daemon=True,
                ).start()

    def _acknowledge_when_saved(self, event_id: str, noticed: float, deadline: float) -> None:
        while not self.checkpoint_written(noticed):
            if time.time() > deadline or self.stop.is_set():
                return  # not saved in time: the eviction comes at NotBefore anyway
            time.sleep(0.05)
        body = json.dumps({"StartRequests": [{"EventId": event_id}]}).encode()
        try:
            _request(
                "POST",
                self.base + self.path,
                {"Metadata": "true", "Content-Type": "application/json"},
                REQUEST_TIMEOUT,
                body,
            )
        except OSError:
            pass


def watcher_for(
    provider: str,
    base_url: str,
    deliver: Deliver,
    acknowledge: bool = False,
    checkpoint_written: Callable[[float], bool] | None = None,
) -> Watcher:
    url = base_url or DEFAULT_URLS[provider]
    if provider == "aws":
        return AwsWatcher(url, deliver)
    if provider == "gcp":
        return GcpWatcher(url, deliver)
    return AzureWatcher(url, deliver, acknowledge, checkpoint_written)


def start(
    setting: str,
    base_url: str,
    deliver: Deliver,
    log: Callable[[str], None],
    acknowledge: bool = False,
    checkpoint_written: Callable[[float], bool] | None = None,
    stop: threading.Event | None = None,
) -> threading.Thread | None:
    """Watch the provider ``setting`` names (``auto``: the first that answers) in a
    daemon thread, until ``stop`` is set (the launcher's: never, it ends with the
    process); None when ``off``."""
    if setting not in (*PROVIDERS, "auto"):
        return None

    def watch() -> None:
        providers = PROVIDERS if setting == "auto" else (setting,)
        for provider in providers:
            watcher = watcher_for(provider, base_url, deliver, acknowledge, checkpoint_written)
            if stop is not None:
                watcher.stop = stop
            if watcher.stop.is_set():
                return
            if setting != "auto" or watcher.probe():
                log(f"watching {provider}'s interruption notices at {watcher.base}")
                watcher.run()
                return

    thread = threading.Thread(target=watch, name="lowcost-cloud-notices", daemon=True)
    thread.start()
    return thread


def _rfc3339(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _rfc1123(text: str) -> float | None:
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
