"""Google Cloud's preemption notice, read from the metadata server with a hanging GET.

:func:`jupyter_lowcost.instance.cloud_notices.watcher_for` makes a :class:`GcpWatcher`
when the launcher watches Google Cloud; the failures and the warnings are
:class:`~jupyter_lowcost.instance.cloud_notices.Watcher`'s.
"""

from __future__ import annotations

import time

from .cloud_notices import CloudNotice, Unreadable, Watcher, header_value

#: Google Cloud stops a Spot VM this long after the preemption notice.
GCP_NOTICE_SECONDS = 30.0


class GcpWatcher(Watcher):
    """``instance/preempted`` with a hanging GET (``wait_for_change`` and the last ETag):
    the notice arrives as soon as the value changes. An answer without an ETag (a proxy,
    another service) makes it poll instead, never faster than POLL_SECONDS."""

    name = "gcp"
    #: The longest one hanging GET waits before it is asked again.
    hang_seconds = 60

    def _get(self, query: str, timeout: float) -> tuple[str, str]:
        self.wait_turn()
        status, body, headers = self.ask(
            "GET",
            f"/computeMetadata/v1/instance/preempted{query}",
            {"Metadata-Flavor": "Google"},
            timeout,
        )
        if status == 403:
            raise Unreadable("403", "the metadata server refused the request (403)", definite=True)
        if status != 200:
            raise Unreadable(f"status-{status}", f"instance/preempted answered {status}")
        return body.decode(errors="replace").strip(), header_value(headers, "ETag")

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
                    f"service on the path?): asking every {self.poll_seconds:g} s instead of "
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
