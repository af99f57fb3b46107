"""Local emulators of the three clouds' instance metadata, following each provider's
documented protocol (../shared/notes/CLOUD-NOTICES.md), for the cloud notice tests and
benchmark. Each runs an HTTP server in a thread; the test says when the notice appears.

- :class:`AwsMetadata`: IMDSv2. ``PUT /latest/api/token`` with a TTL header (400 without
  one or out of range, 403 with ``X-Forwarded-For``), granting at most ``max_ttl``
  seconds (the answer says how long); every GET needs a live token (401 otherwise) unless
  ``tokenless`` (IMDSv1 allowed); ``spot/instance-action`` and
  ``events/recommendations/rebalance`` answer 404 until :meth:`notice` / :meth:`rebalance`.
  ``token_answer``: a status for every token PUT (403 IMDSv2 off, 404, 405), or
  ``"silent"``: never answered (a container's hop limit of 1 drops the answer).
  ``body``: what a GET of a path answers instead (garbage).
- :class:`GcpMetadata`: ``computeMetadata/v1/instance/preempted`` (403 without
  ``Metadata-Flavor: Google``), ``FALSE`` then ``TRUE``, an ``ETag`` on every answer
  (``etags = False``: none, as a proxy on the path may answer, and at once);
  ``wait_for_change=true`` hangs until the value changes (at once with a stale
  ``last_etag``), or ``timeout_sec`` passes.
- :class:`AzureMetadata`: Scheduled Events (400 without ``Metadata: true`` or the
  api-version), ``DocumentIncarnation`` grows with each change, an event after
  :meth:`event` (``Preempt`` by default; for this VM, or for others of its scale set);
  ``POST`` with ``StartRequests`` records the acknowledgement; ``compute/name`` (text)
  answers this VM's name.
- :class:`Proxy`: an HTTP proxy that records what it is asked, and answers 502.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
import uuid
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


class Emulator:
    """An HTTP server on a free local port, in a daemon thread."""

    def __init__(self) -> None:
        emulator = self
        self.requests: list[tuple[str, str]] = []
        #: When each request came (time.monotonic()), and what delays the next answers
        #: (seconds each: a service slow to answer at first).
        self.times: list[float] = []
        self.delays: list[float] = []
        self.lock = threading.Condition()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                emulator.arrived("GET", self.path)
                emulator.get(self)

            def do_PUT(self) -> None:  # noqa: N802
                emulator.arrived("PUT", self.path)
                emulator.put(self)

            def do_POST(self) -> None:  # noqa: N802
                emulator.arrived("POST", self.path)
                emulator.post(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arrived(self, method: str, path: str) -> None:
        self.requests.append((method, path))
        self.times.append(time.monotonic())
        if self.delays:
            time.sleep(self.delays.pop(0))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def answer(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = body.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def get(self, handler: BaseHTTPRequestHandler) -> None:
        self.answer(handler, 404)

    def put(self, handler: BaseHTTPRequestHandler) -> None:
        self.answer(handler, 405)

    def post(self, handler: BaseHTTPRequestHandler) -> None:
        self.answer(handler, 405)


class AwsMetadata(Emulator):
    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, float] = {}
        self.action: dict[str, str] | None = None
        self.rebalance_time: str | None = None
        self.tokens_issued = 0
        self.max_ttl = 21600
        self.tokenless = False
        self.token_answer: int | str | None = None
        self.body: dict[str, str] = {}
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        super().close()

    def notice(self, seconds: float = 120, action: str = "terminate") -> float:
        """The 2-minute notice appears; its time (UNIX seconds, whole; ``seconds`` 0:
        now, as hibernate's)."""
        when = int(time.time() + seconds)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        self.action = {"action": action, "time": stamp}
        return float(when)

    def rebalance(self) -> None:
        self.rebalance_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def put(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.path != "/latest/api/token":
            return self.answer(handler, 404)
        if self.token_answer == "silent":
            self.closed.wait(60)  # the answer never reaches the caller
            return None
        if isinstance(self.token_answer, int):
            return self.answer(handler, self.token_answer)
        if handler.headers.get("X-Forwarded-For"):
            return self.answer(handler, 403)
        try:
            ttl = int(handler.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
        except ValueError:
            return self.answer(handler, 400)
        if not 1 <= ttl <= 21600:
            return self.answer(handler, 400)
        ttl = min(ttl, self.max_ttl)
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.monotonic() + ttl
        self.tokens_issued += 1
        self.answer(handler, 200, token, {"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})

    def get(self, handler: BaseHTTPRequestHandler) -> None:
        token = handler.headers.get("X-aws-ec2-metadata-token")
        if token is None and not self.tokenless:
            return self.answer(handler, 401)
        if token is not None and self.tokens.get(token, 0) < time.monotonic():
            return self.answer(handler, 401)
        if handler.path in self.body:
            return self.answer(handler, 200, self.body[handler.path])
        if handler.path == "/latest/meta-data/spot/instance-action" and self.action:
            return self.answer(handler, 200, json.dumps(self.action))
        if handler.path == "/latest/meta-data/spot/termination-time" and self.action:
            return self.answer(handler, 200, self.action["time"])
        if handler.path == "/latest/meta-data/events/recommendations/rebalance":
            if self.rebalance_time:
                return self.answer(handler, 200, json.dumps({"noticeTime": self.rebalance_time}))
        self.answer(handler, 404)


class GcpMetadata(Emulator):
    PATH = "/computeMetadata/v1/instance/preempted"

    def __init__(self) -> None:
        super().__init__()
        self.value = "FALSE"
        self.etags = True

    def etag(self) -> str:
        return hashlib.sha256(self.value.encode()).hexdigest()[:16]

    def preempt(self) -> None:
        with self.lock:
            self.value = "TRUE"
            self.lock.notify_all()

    def get(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlparse(handler.path)
        if handler.headers.get("Metadata-Flavor") != "Google":
            return self.answer(handler, 403, "Missing Metadata-Flavor:Google header.")
        if url.path != self.PATH:
            return self.answer(handler, 404)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if not self.etags:  # (a proxy or another service: at once, no ETag)
            return self.answer(handler, 200, self.value)
        if query.get("wait_for_change") == "true":
            last = query.get("last_etag", self.etag())
            timeout = float(query.get("timeout_sec", "300"))
            with self.lock:
                self.lock.wait_for(lambda: self.etag() != last, timeout=timeout)
        self.answer(handler, 200, self.value, {"ETag": self.etag(), "Metadata-Flavor": "Google"})


class AzureMetadata(Emulator):
    PATH = "/metadata/scheduledevents"
    NAME_PATH = "/metadata/instance/compute/name"

    def __init__(self) -> None:
        super().__init__()
        self.incarnation = 1
        self.events: list[dict[str, Any]] = []
        self.acknowledged: list[tuple[str, float]] = []
        self.vm_name = "lowcost-vm"

    def preempt(self, seconds: float = 30) -> tuple[str, float]:
        """A Preempt event for this VM appears; its id and its NotBefore (UNIX seconds)."""
        return self.event("Preempt", seconds)

    def event(
        self, kind: str = "Preempt", seconds: float = 30, resources: list[str] | None = None
    ) -> tuple[str, float]:
        """An event of ``kind`` for ``resources`` (this VM by default) appears; its id
        and its NotBefore (UNIX seconds, whole)."""
        not_before = int(time.time() + seconds)
        event_id = str(uuid.uuid4()).upper()
        self.events.append(
            {
                "EventId": event_id,
                "EventType": kind,
                "ResourceType": "VirtualMachine",
                "Resources": [self.vm_name] if resources is None else resources,
                "EventStatus": "Scheduled",
                "NotBefore": formatdate(not_before, usegmt=True),
                "Description": "",
                "EventSource": "Platform",
                "DurationInSeconds": -1,
            }
        )
        self.incarnation += 1
        return event_id, float(not_before)

    def _check(self, handler: BaseHTTPRequestHandler) -> bool:
        url = urlparse(handler.path)
        if handler.headers.get("Metadata") != "true":
            self.answer(handler, 400, json.dumps({"error": "Bad request. Metadata header"}))
            return False
        known = url.path == self.PATH or (handler.command == "GET" and url.path == self.NAME_PATH)
        if not known or "api-version" not in parse_qs(url.query):
            self.answer(handler, 400 if known else 404)
            return False
        return True

    def get(self, handler: BaseHTTPRequestHandler) -> None:
        if not self._check(handler):
            return
        if urlparse(handler.path).path == self.NAME_PATH:
            self.answer(handler, 200, self.vm_name)
            return
        document = {"DocumentIncarnation": self.incarnation, "Events": self.events}
        self.answer(handler, 200, json.dumps(document))

    def post(self, handler: BaseHTTPRequestHandler) -> None:
        if not self._check(handler):
            return
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}")
        for request in body.get("StartRequests", []):
            self.acknowledged.append((str(request.get("EventId")), time.time()))
        self.answer(handler, 200)


class Proxy(Emulator):
    """An HTTP proxy (``http_proxy``) that records what it is asked, and answers 502: a
    request that reaches it went through the proxy."""

    def get(self, handler: BaseHTTPRequestHandler) -> None:
        self.answer(handler, 502)

    put = post = get
