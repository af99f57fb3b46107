"""AWS's spot notice, read from the instance metadata service (IMDSv2, polled).

:func:`jupyter_lowcost.instance.cloud_notices.watcher_for` makes an :class:`AwsWatcher`
when the launcher watches AWS; the loop, the failures and the warnings are
:class:`~jupyter_lowcost.instance.cloud_notices.Watcher`'s.
"""

from __future__ import annotations

import time
from datetime import datetime

from .cloud_notices import (
    CloudNotice,
    Deliver,
    Log,
    Unreadable,
    Warn,
    Watcher,
    header_value,
    json_answer,
)


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
            status, body, headers = self.ask(
                "PUT",
                "/latest/api/token",
                {self.TTL_HEADER: str(self.token_ttl)},
                min(self.request_timeout(), self.short_timeout()),
            )
        except TimeoutError:
            return self._tokenless(
                "token-unanswered",
                "the token request was not answered (a container's hop limit of 1?)",
            )
        if status != 200 or not body.strip():
            return self._tokenless(f"token-{status}", f"the token request was refused ({status})")
        try:
            granted = float(header_value(headers, self.TTL_HEADER))
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
            status, body, _ = self.ask("GET", path, headers, self.request_timeout())
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
            action = json_answer(body, "AWS's spot/instance-action")
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
            recommendation = json_answer(body, "AWS's rebalance recommendation")
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


def _rfc3339(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
