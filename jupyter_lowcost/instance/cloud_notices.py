"""The cloud's own interruption notice, read from the instance metadata where the kernel
runs: AWS (IMDSv2, polled), Google Cloud (a hanging GET), Azure (Scheduled Events, polled).

Called by the launcher (``instance/launcher.py``): :func:`start` runs one watcher thread.
``LowCostApp.cloud_notices = "auto"`` decides from the machine itself, without the network
(:func:`detect_provider` reads the DMI data the clouds set): on a machine that is none of
the three it opens no connection and resolves no name; on one that is, it watches that
provider only. A watcher turns the provider's notice into a :class:`CloudNotice`; the
launcher delivers it as any other notice (the kernel's flag and callbacks, the notice
checkpoint) and reports it to the server. When a watcher cannot read the notice at all,
it says so once (``warn``: the launcher's log, and the instance's ``notice_warning``), and
keeps asking, with a growing pause, until it can.

Metadata requests go straight to the service, never through ``http_proxy``: the services
are link-local, and a cluster node's proxy would never reach them. Stdlib only (``urllib``):
the launcher runs on the instance. The protocols are in ``../shared/notes/CLOUD-NOTICES.md``.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from .. import env

PROVIDERS = ("aws", "gcp", "azure")
PROVIDER_NAMES = {"aws": "AWS", "gcp": "Google Cloud", "azure": "Azure"}
#: Where each provider serves its metadata (``LowCostApp.cloud_metadata_url`` replaces
#: it: an emulator).
DEFAULT_URLS = {
    "aws": "http://169.254.169.254",
    "gcp": "http://metadata.google.internal",
    "azure": "http://169.254.169.254",
}
#: How often the polling providers are asked (AWS advises 5 s, Azure 1 s); no watcher
#: sends two requests less than this apart, whatever the service answers.
POLL_SECONDS = 1.0
REQUEST_TIMEOUT = 2.0
#: While the service does not answer, the pause between two tries doubles up to this, and
#: the time one request may take up to the longest (Azure's first call can take 2 min).
MAX_PAUSE = 16.0
MAX_REQUEST_TIMEOUT = 120.0
#: Failed tries in a row after which a watcher says it cannot read the notice.
WARN_AFTER_FAILURES = 3
#: Google Cloud stops a Spot VM this long after the preemption notice.
GCP_NOTICE_SECONDS = 30.0
#: Azure's Preempt: at least this long, when its NotBefore is not given.
AZURE_NOTICE_SECONDS = 30.0
#: What Azure writes in a VM's chassis asset tag.
AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"


@dataclass
class CloudNotice:
    """An interruption the provider announced (``early_warning``: only a risk, such as
    AWS's rebalance recommendation)."""

    provider: str
    deadline: float
    reason: str
    early_warning: bool = False


Deliver = Callable[[CloudNotice], None]
Log = Callable[[str], None]
#: ``warn(text)``: the notice cannot be read (``text`` says why and what it means);
#: ``warn(None)``: it can be read again.
Warn = Callable[[str | None], None]


class Unreadable(Exception):
    """One poll could not read the provider's notice. ``kind`` names the failure (each is
    logged once); ``definite``: no retry will change it by itself (a refusal), so the
    user is told at once rather than after a few tries."""

    def __init__(self, kind: str, text: str, definite: bool = False) -> None:
        super().__init__(text)
        self.kind = kind
        self.text = text
        self.definite = definite


# -- which cloud is this machine? (no network) ---------------------------------------------


def detect_provider(sysfs: str | None = None) -> tuple[str | None, str]:
    """The provider this machine is a VM of, from the DMI data the clouds set (what
    cloud-init reads), and what that was decided from. Reads files only: no connection,
    no name lookup. ``sysfs`` (default ``$JUPYTER_LOWCOST_SYSFS`` or ``/sys``)."""
    root = Path(sysfs or os.environ.get(env.SYSFS) or "/sys")
    dmi = root / "class" / "dmi" / "id"

    def read(path: Path) -> str | None:
        try:
            return path.read_text(errors="replace").strip()
        except OSError:
            return None

    fields = {
        name: read(dmi / name)
        for name in ("sys_vendor", "product_name", "bios_vendor", "bios_version")
    }
    fields["chassis_asset_tag"] = read(dmi / "chassis_asset_tag")
    hypervisor_uuid = read(root / "hypervisor" / "uuid")

    def said(name: str) -> str:
        return f"{dmi / name} is {fields[name]!r}"

    if fields["sys_vendor"] == "Amazon EC2":
        return "aws", said("sys_vendor")
    if "amazon" in (fields["bios_version"] or "").lower():
        return "aws", said("bios_version")
    if (hypervisor_uuid or "").lower().startswith("ec2"):
        return "aws", f"{root / 'hypervisor' / 'uuid'} starts with 'ec2'"
    if fields["product_name"] == "Google Compute Engine":
        return "gcp", said("product_name")
    if fields["bios_vendor"] == "Google":
        return "gcp", said("bios_vendor")
    if fields["chassis_asset_tag"] == AZURE_ASSET_TAG:
        return "azure", said("chassis_asset_tag") + " (Azure's)"
    seen = [f"{name} {value!r}" for name, value in fields.items() if value is not None]
    if not seen:
        return None, f"no DMI data in {dmi}"
    return None, f"{dmi}: " + ", ".join(seen)


# -- HTTP, straight to the service -------------------------------------------------------


@functools.cache
def _direct_opener() -> Any:
    """A urllib opener that ignores the proxy settings (made once, in the watcher's thread)."""
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(
    method: str,
    url: str,
    headers: dict[str, str],
    timeout: float,
    body: bytes | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers); a connection error or timeout raises OSError. No proxy:
    the metadata services are reached directly. (urllib is imported here, in the
    watcher's thread: the kernel's start does not wait for it.)"""
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with _direct_opener().open(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read() or b"", dict(err.headers or {})
    except urllib.error.URLError as err:  # refused, unreachable, timed out
        reason = err.reason
        raise reason if isinstance(reason, OSError) else OSError(str(reason)) from err
    except http.client.HTTPException as err:  # not HTTP at all (garbage, another server)
        raise OSError(f"{url}: not an HTTP answer: {err!r}") from err


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        shown = body[:60].decode(errors="replace")
        raise Unreadable(
            f"{what}:not-json",
            f"{what} answered 200 with something that is not JSON ({shown!r}): another "
            "service or a proxy may answer in its place",
        ) from None


def _header(headers: dict[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


class Watcher:
    """One provider's metadata, watched until ``stop`` is set."""

    name = ""

    def __init__(
        self,
        base_url: str,
        deliver: Deliver,
        log: Log | None = None,
        warn: Warn | None = None,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.deliver = deliver
        self.log: Log = log or (lambda line: None)
        self.warn: Warn = warn or (lambda text: None)
        self.stop = threading.Event()
        #: Failed tries in a row; the kinds of failure already logged; the warning given.
        self.failures = 0
        self._logged: set[str] = set()
        self._warned: str | None = None
        self._last_request = 0.0

    @property
    def provider(self) -> str:
        return PROVIDER_NAMES[self.name]

    def request_timeout(self) -> float:
        """Longer after each failure in a row (a service slow to answer at first)."""
        return min(REQUEST_TIMEOUT * 2**self.failures, MAX_REQUEST_TIMEOUT)

    def check(self) -> None:
        """One poll (the polling providers); raises :class:`Unreadable` or OSError."""
        raise NotImplementedError

    def run(self) -> None:
        """Poll until ``stop``: every POLL_SECONDS while the service answers, with a
        doubling pause (up to MAX_PAUSE) while it does not."""
        while not self.stop.is_set():
            self.poll_once(self.check)
            self.stop.wait(self.pause())

    def pause(self) -> float:
        if self.failures == 0:
            return POLL_SECONDS
        return min(POLL_SECONDS * 2 ** (self.failures - 1), MAX_PAUSE)

    def poll_once(self, action: Callable[[], Any]) -> Any:
        """Run ``action``; a failure is counted, logged once per kind, and told to the
        user once it is definite or has lasted WARN_AFTER_FAILURES tries."""
        try:
            result = action()
        except Unreadable as failure:
            self.failed(failure)
            return None
        except OSError as err:
            self.failed(self.unanswered(err))
            return None
        except Exception as err:  # noqa: BLE001 (garbage of a shape nobody expected: go on)
            self.failed(Unreadable("unexpected", f"unexpected answer: {err!r}"))
            return None
        self.succeeded()
        return result

    def unanswered(self, err: OSError) -> Unreadable:
        what = "did not answer in time" if isinstance(err, TimeoutError) else f"failed ({err})"
        return Unreadable(
            f"unanswered:{type(err).__name__}",
            f"{self.provider}'s metadata service at {self.base} {what}; asking again, less often",
        )

    def log_once(self, kind: str, text: str) -> None:
        """Log ``text`` the first time a failure of ``kind`` happens, not once per poll."""
        if kind not in self._logged:
            self._logged.add(kind)
            self.log(text)

    def failed(self, failure: Unreadable) -> None:
        self.failures += 1
        self.log_once(failure.kind, failure.text)
        if failure.definite or self.failures >= WARN_AFTER_FAILURES:
            text = (
                f"cannot read {self.provider}'s spot notice: {failure.text}; interruptions "
                "will come without notice"
            )
            if self._warned is None:
                self._warned = text
                self.warn(text)

    def succeeded(self) -> None:
        self.failures = 0
        if self._warned is not None:
            self._warned = None
            self.log(f"{self.provider}'s spot notice can be read again")
            self.warn(None)

    def wait_turn(self) -> None:
        """Never two requests less than POLL_SECONDS apart (an answer that comes at once
        when it should have waited must not make a loop spin)."""
        left = self._last_request + POLL_SECONDS - time.monotonic()
        if left > 0:
            self.stop.wait(left)
        self._last_request = time.monotonic()


class AwsWatcher(Watcher):
    """IMDSv2: a session token (``PUT /latest/api/token``) for the lifetime the answer
    grants, renewed before it ends and at once on a 401 (the same poll asks again);
    ``spot/instance-action`` (404 until a notice) and the rebalance recommendation (an
    early warning), polled. Where the token request is refused or never answered (IMDS
    v2 off, a container's hop limit of 1), token-less GETs, as AWS's SDKs do."""

    name = "aws"
    #: The token's lifetime asked for, and how long before its end it is renewed.
    token_ttl = 21600
    refresh_before = 15.0
    #: After a refused or unanswered token request, how long to go without one.
    tokenless_seconds = 60.0
    TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"

    def __init__(
        self, base_url: str, deliver: Deliver, log: Log | None = None, warn: Warn | None = None
    ) -> None:
        super().__init__(base_url, deliver, log, warn)
        self.token: str | None = None
        self.token_expires = 0.0
        self.token_margin = self.refresh_before
        #: Why the last token request failed (None: it did not), and until when to go
        #: without one.
        self.token_problem: str | None = None
        self.tokenless_until = 0.0
        self._seen: set[bytes] = set()

    def _token(self) -> str | None:
        now = time.monotonic()
        if self.token is not None and now < self.token_expires - self.token_margin:
            return self.token
        self.token = None
        if now < self.tokenless_until:
            return None
        try:
            status, body, headers = _request(
                "PUT",
                f"{self.base}/latest/api/token",
                {self.TTL_HEADER: str(self.token_ttl)},
                min(self.request_timeout(), REQUEST_TIMEOUT),
            )
        except TimeoutError:
            return self._tokenless(
                "token-unanswered",
                "the token request was not answered (a container's hop limit of 1?)",
            )
        if status != 200 or not body.strip():
            return self._tokenless(f"token-{status}", f"the token request was refused ({status})")
        try:
            granted = float(_header(headers, self.TTL_HEADER))
        except ValueError:
            granted = float(self.token_ttl)
        granted = max(0.0, min(granted, float(self.token_ttl)))
        self.token = body.decode(errors="replace").strip()
        self.token_expires = time.monotonic() + granted
        self.token_margin = min(self.refresh_before, granted / 2)
        self.token_problem = None
        return self.token

    def _tokenless(self, kind: str, problem: str) -> str | None:
        """Go without a token for a while (None: what ``_token`` returns then)."""
        self.log_once(kind, f"AWS: {problem}; reading the notice without a token (IMDSv1)")
        self.token_problem = problem
        self.tokenless_until = time.monotonic() + self.tokenless_seconds
        return None

    def _get(self, path: str) -> tuple[int, bytes]:
        """GET with the token (a new one and once more on a 401), or without one."""
        for attempt in range(2):
            token = self._token()
            headers = {"X-aws-ec2-metadata-token": token} if token else {}
            status, body, _ = _request("GET", f"{self.base}{path}", headers, self.request_timeout())
            if status != 401:
                return status, body
            if token is None:
                why = self.token_problem or "no token"
                raise Unreadable(
                    "tokenless-refused",
                    f"{why}, and requests without a token are refused (401: the instance "
                    "requires IMDSv2); in a container, raise the hop limit to 2 "
                    "(aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2)",
                    definite=True,
                )
            self.token = None  # expired or revoked: a new one, and ask again now
        raise Unreadable("token-rejected", "a new token was refused at once (401)")

    def _answer(self, path: str) -> bytes | None:
        status, body = self._get(path)
        if status == 200:
            return body
        if status == 404:
            return None
        if status == 403:
            raise Unreadable(
                "403", "the instance metadata service is turned off (403)", definite=True
            )
        raise Unreadable(f"status-{status}", f"{path} answered {status}")

    def check(self) -> None:
        """One round: the instance action, then the rebalance recommendation."""
        body = self._answer("/latest/meta-data/spot/instance-action")
        if body is not None and body not in self._seen:
            action = _json(body, "AWS's spot/instance-action")
            if not isinstance(action, dict):
                raise Unreadable("action-shape", f"spot/instance-action is {action!r}")
            self._seen.add(body)
            when = str(action.get("time", ""))
            deadline = _rfc3339(when) or time.time() + 120
            self.deliver(
                CloudNotice(
                    "aws",
                    deadline,
                    f"AWS spot instance-action: {action.get('action', 'terminate')} at "
                    f"{when or '?'} (EC2 reclaims the Spot Instance)",
                )
            )
        body = self._answer("/latest/meta-data/events/recommendations/rebalance")
        if body is not None and body not in self._seen:
            recommendation = _json(body, "AWS's rebalance recommendation")
            self._seen.add(body)
            notice_time = (
                recommendation.get("noticeTime", "?") if isinstance(recommendation, dict) else "?"
            )
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
    the notice arrives as soon as the value changes. An answer without an ETag (a proxy,
    another service) makes it poll instead, never faster than POLL_SECONDS."""

    name = "gcp"
    #: The longest one hanging GET waits before it is asked again.
    hang_seconds = 60

    def _get(self, query: str, timeout: float) -> tuple[str, str]:
        self.wait_turn()
        status, body, headers = _request(
            "GET",
            f"{self.base}/computeMetadata/v1/instance/preempted{query}",
            {"Metadata-Flavor": "Google"},
            timeout,
        )
        if status == 403:
            raise Unreadable("403", "the metadata server refused the request (403)", definite=True)
        if status != 200:
            raise Unreadable(f"status-{status}", f"instance/preempted answered {status}")
        return body.decode(errors="replace").strip(), _header(headers, "ETag")

    def run(self) -> None:
        etag = ""
        while not self.stop.is_set():
            if etag:
                query = f"?wait_for_change=true&last_etag={etag}&timeout_sec={self.hang_seconds}"
                answer = self.poll_once(
                    lambda query=query: self._get(query, self.hang_seconds + 10)  # type: ignore[misc]
                )
            else:
                answer = self.poll_once(lambda: self._get("", self.request_timeout()))
            if answer is None:
                etag = ""
                self.stop.wait(self.pause())
                continue
            value, etag = answer
            if not etag:
                self.log_once(
                    "no-etag",
                    "Google Cloud's metadata answered without an ETag (a proxy or another "
                    f"service on the path?): asking every {POLL_SECONDS:g} s instead of "
                    "waiting for a change",
                )
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


#: What each Azure event that ends a kernel does to this VM.
AZURE_INTERRUPTIONS = {
    "Preempt": "this Spot VM is evicted",
    "Terminate": "this VM is deleted",
    "Reboot": "this VM is rebooted (its memory is lost)",
    "Redeploy": "this VM moves to another host (its memory is lost)",
}


class AzureWatcher(Watcher):
    """Scheduled Events, polled. The events list every VM of an availability set or scale
    set: only those whose ``Resources`` hold this VM's own name (IMDS
    ``compute/name``) count. ``Preempt``, ``Terminate``, ``Reboot`` and ``Redeploy`` are
    notices (each loses the kernel's memory), with their ``NotBefore`` as the deadline;
    ``Freeze`` (seconds, memory kept) is only logged. With ``acknowledge``, this VM's event
    is approved (``StartRequests``) once the kernel's notice checkpoint is written (or
    there was nothing to write: ``checkpoint_written(since)`` says so), so that it need
    not wait for its NotBefore."""

    name = "azure"
    path = "/metadata/scheduledevents?api-version=2020-07-01"
    name_path = "/metadata/instance/compute/name?api-version=2021-02-01&format=text"

    def __init__(
        self,
        base_url: str,
        deliver: Deliver,
        acknowledge: bool = False,
        checkpoint_written: Callable[[float], bool] | None = None,
        log: Log | None = None,
        warn: Warn | None = None,
    ) -> None:
        super().__init__(base_url, deliver, log, warn)
        self.acknowledge = acknowledge
        self.checkpoint_written = checkpoint_written or (lambda since: True)
        self.incarnation: Any = None
        self.vm_name: str | None = None
        self._seen: set[str] = set()

    def _read_vm_name(self) -> str:
        status, body, _ = _request(
            "GET", self.base + self.name_path, {"Metadata": "true"}, self.request_timeout()
        )
        name = body.decode(errors="replace").strip() if status == 200 else ""
        if not name:
            raise Unreadable(
                f"name-{status}",
                f"this VM's name (compute/name) could not be read ({status}), so no event "
                "can be told to be this VM's",
            )
        return name

    def _document(self) -> dict[str, Any]:
        status, body, _ = _request(
            "GET", self.base + self.path, {"Metadata": "true"}, self.request_timeout()
        )
        if status != 200:
            raise Unreadable(f"status-{status}", f"Scheduled Events answered {status}")
        document = _json(body, "Azure's Scheduled Events")
        if not isinstance(document, dict):
            raise Unreadable("shape", f"Scheduled Events is {str(document)[:60]!r}")
        return document

    def check(self) -> None:
        if self.vm_name is None:
            self.vm_name = self._read_vm_name()
            self.log(f"Azure: this VM is {self.vm_name!r}; events of other VMs are ignored")
        document = self._document()
        incarnation = document.get("DocumentIncarnation")
        if incarnation is not None and incarnation == self.incarnation:
            return
        self.incarnation = incarnation
        events = document.get("Events")
        for event in events if isinstance(events, list) else []:
            if isinstance(event, dict):
                self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        event_id = str(event.get("EventId", ""))
        kind = str(event.get("EventType", ""))
        if event_id in self._seen:
            return
        self._seen.add(event_id)
        resources = event.get("Resources")
        names = [str(r).casefold() for r in resources] if isinstance(resources, list) else []
        if str(self.vm_name).casefold() not in names:
            self.log(f"Azure Scheduled Event {kind} {event_id} concerns other VMs: ignored")
            return
        not_before = str(event.get("NotBefore") or "")
        if kind not in AZURE_INTERRUPTIONS:
            what = " (a pause of seconds; memory is kept)" if kind == "Freeze" else ""
            self.log(
                f"Azure Scheduled Event {kind} {event_id} for this VM{what}: not an interruption"
            )
            return
        started = event.get("EventStatus") == "Started"
        deadline = _rfc1123(not_before)
        if deadline is None:
            deadline = time.time() + (0.0 if started else AZURE_NOTICE_SECONDS)
        when = f"not before {not_before}" if not_before else "now" if started else "in 30 s"
        noticed = time.time()
        self.deliver(
            CloudNotice(
                "azure",
                deadline,
                f"Azure Scheduled Event {kind} {event_id}: {AZURE_INTERRUPTIONS[kind]}, {when}",
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
                return  # not saved in time: the event starts at NotBefore anyway
            time.sleep(0.05)
        body = json.dumps({"StartRequests": [{"EventId": event_id}]}).encode()
        try:
            status, _, _ = _request(
                "POST",
                self.base + self.path,
                {"Metadata": "true", "Content-Type": "application/json"},
                REQUEST_TIMEOUT,
                body,
            )
        except OSError as err:
            self.log(f"Azure: could not approve event {event_id}: {err}")
            return
        self.log(f"Azure: approved event {event_id} (the notice checkpoint is written): {status}")


def watcher_for(
    provider: str,
    base_url: str,
    deliver: Deliver,
    acknowledge: bool = False,
    checkpoint_written: Callable[[float], bool] | None = None,
    log: Log | None = None,
    warn: Warn | None = None,
) -> Watcher:
    url = base_url or DEFAULT_URLS[provider]
    if provider == "aws":
        return AwsWatcher(url, deliver, log, warn)
    if provider == "gcp":
        return GcpWatcher(url, deliver, log, warn)
    return AzureWatcher(url, deliver, acknowledge, checkpoint_written, log, warn)


def start(
    setting: str,
    base_url: str,
    deliver: Deliver,
    log: Log,
    acknowledge: bool = False,
    checkpoint_written: Callable[[float], bool] | None = None,
    stop: threading.Event | None = None,
    warn: Warn | None = None,
) -> threading.Thread | None:
    """Watch the provider ``setting`` names (``auto``: the one :func:`detect_provider`
    finds, none on a machine that is no cloud's VM) in a daemon thread, until ``stop`` is
    set (the launcher's: never, it ends with the process). None when nothing is watched;
    ``log`` says what was decided, and from what."""
    if setting == "auto":
        provider, evidence = detect_provider()
        if provider is None:
            log(
                "cloud notices (auto): this machine is not an AWS, Google Cloud or Azure VM "
                f"({evidence}): no metadata service is asked"
            )
            return None
        log(f"cloud notices (auto): {PROVIDER_NAMES[provider]}, since {evidence}")
    elif setting in PROVIDERS:
        provider = setting
    else:
        return None
    watcher = watcher_for(provider, base_url, deliver, acknowledge, checkpoint_written, log, warn)
    if stop is not None:
        watcher.stop = stop
    log(f"watching {provider}'s interruption notices at {watcher.base}")
    thread = threading.Thread(target=watcher.run, name="lowcost-cloud-notices", daemon=True)
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
