"""The cloud's own interruption notice, read from the instance metadata where the kernel
runs: AWS (IMDSv2, polled), Google Cloud (a hanging GET), Azure (Scheduled Events, polled).

Called by the launcher (:func:`jupyter_lowcost.instance.notice_sources.watch_cloud`):
:func:`start` runs one watcher thread. ``LowCostApp.cloud_notices = "auto"`` decides from
the machine itself, without the network (:func:`detect_provider`, in ``cloud_detection.py``,
reads the DMI data the clouds set): on a machine that is none of the three it opens no
connection and resolves no name; on one that is, it watches that provider only. A watcher turns the provider's notice into a :class:`CloudNotice`; the
launcher delivers it as any other notice (the kernel's flag and callbacks, the notice
checkpoint) and reports it to the server. When a watcher cannot read the notice at all,
it says so once (``warn``: the launcher's log, and the instance's ``notice_warning``), and
keeps asking, with a growing pause, until it can.

This module holds what every provider shares: the notice, the timing, the requests and
:class:`Watcher`, the loop that polls, counts failures and warns. Each provider's own
protocol is a subclass in a module of its own (``aws_notices.py``, ``gcp_notices.py``,
``azure_notices.py``), imported only when that provider is watched.

Metadata requests go straight to the service, never through ``http_proxy``: the services
are link-local, and a cluster node's proxy would never reach them. Stdlib only (``urllib``):
the launcher runs on the instance. The protocols are in ``../shared/notes/CLOUD-NOTICES.md``.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cloud_detection import AZURE_ASSET_TAG, detect_provider

__all__ = [
    "AZURE_ASSET_TAG",
    "DEFAULT_URLS",
    "MAX_PAUSE",
    "MAX_REQUEST_TIMEOUT",
    "POLL_SECONDS",
    "PROVIDERS",
    "PROVIDER_NAMES",
    "REQUEST_TIMEOUT",
    "WARN_AFTER_FAILURES",
    "CloudNotice",
    "Deliver",
    "Log",
    "Unreadable",
    "Warn",
    "Watcher",
    "detect_provider",
    "header_value",
    "json_answer",
    "start",
    "watcher_for",
]

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
    watcher's thread: the kernel's start does not wait for it.) Watchers call it through
    :meth:`Watcher.ask`."""
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


def json_answer(body: bytes, what: str) -> Any:
    """``body`` (a 200's) as JSON; :class:`Unreadable` when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        shown = body[:60].decode(errors="replace")
        raise Unreadable(
            f"{what}:not-json",
            f"{what} answered 200 with something that is not JSON ({shown!r}): another "
            "service or a proxy may answer in its place",
        ) from None


def header_value(headers: dict[str, str], name: str) -> str:
    """The header ``name`` of an answer, whatever its case; empty when absent."""
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


class Watcher:
    """One provider's metadata, watched until ``stop`` is set. A subclass sets ``name``
    and implements :meth:`check` (the polling providers) or :meth:`run`."""

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

    @property
    def poll_seconds(self) -> float:
        """The shortest time between two requests (:data:`POLL_SECONDS`)."""
        return POLL_SECONDS

    def request_timeout(self) -> float:
        """Longer after each failure in a row (a service slow to answer at first)."""
        return min(REQUEST_TIMEOUT * 2**self.failures, MAX_REQUEST_TIMEOUT)

    def short_timeout(self) -> float:
        """The time a request that must not hold the watcher up may take, however many
        failures came before (AWS's token, Azure's approval)."""
        return REQUEST_TIMEOUT

    def ask(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        timeout: float,
        body: bytes | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        """One request to ``path`` of this provider's service: (status, body, headers);
        OSError when it does not answer."""
        return _request(method, self.base + path, headers, timeout, body)

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


# -- which watcher, in which thread ------------------------------------------------------


def watcher_for(
    provider: str,
    base_url: str,
    deliver: Deliver,
    acknowledge: bool = False,
    checkpoint_written: Callable[[float], bool] | None = None,
    log: Log | None = None,
    warn: Warn | None = None,
) -> Watcher:
    """The watcher of ``provider`` at ``base_url`` (empty: the provider's own address).
    Only that provider's module is imported (the launcher loads nothing it does not use)."""
    url = base_url or DEFAULT_URLS[provider]
    if provider == "aws":
        from .aws_notices import AwsWatcher

        return AwsWatcher(url, deliver, log, warn)
    if provider == "gcp":
        from .gcp_notices import GcpWatcher

        return GcpWatcher(url, deliver, log, warn)
    from .azure_notices import AzureWatcher

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
