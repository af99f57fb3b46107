"""Azure's interruption notices, read from Scheduled Events (polled), and their approval.

:func:`jupyter_lowcost.instance.cloud_notices.watcher_for` makes an :class:`AzureWatcher`
when the launcher watches Azure; the loop, the failures and the warnings are
:class:`~jupyter_lowcost.instance.cloud_notices.Watcher`'s.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

from .cloud_notices import CloudNotice, Deliver, Log, Unreadable, Warn, Watcher, json_answer

#: Azure's Preempt: at least this long, when its NotBefore is not given.
AZURE_NOTICE_SECONDS = 30.0

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
        status, body, _ = self.ask(
            "GET", self.name_path, {"Metadata": "true"}, self.request_timeout()
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
        status, body, _ = self.ask("GET", self.path, {"Metadata": "true"}, self.request_timeout())
        if status != 200:
            raise Unreadable(f"status-{status}", f"Scheduled Events answered {status}")
        document = json_answer(body, "Azure's Scheduled Events")
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
            status, _, _ = self.ask(
                "POST",
                self.path,
                {"Metadata": "true", "Content-Type": "application/json"},
                self.short_timeout(),
                body,
            )
        except OSError as err:
            self.log(f"Azure: could not approve event {event_id}: {err}")
            return
        self.log(f"Azure: approved event {event_id} (the notice checkpoint is written): {status}")


def _rfc1123(text: str) -> float | None:
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
