"""What kernels report about their checkpoints, through the REST API: a resume's restore
(``POST kernels/<id>/restored``) and a change in whether checkpoints work
(``POST kernels/<id>/checkpoint-status``). Each report is kept for ``GET kernels/<id>``,
emitted as an event (JupyterLab's notifications) and logged.
"""

from __future__ import annotations

import time
from typing import Any

from tornado import web

from ...storage.records import InstanceState, iso
from ...words import human_bytes, listed, resume_point
from .. import events
from .ledger import Context


class KernelReports:
    """Turns a kernel's reports into models, events and log lines."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger

    def restored(self, kernel_id: str, report: dict[str, Any]) -> dict[str, Any]:
        """A resumed kernel says what came back (the caller checked the kernel exists)."""
        lost = [
            r
            for r in self.ledger.records()
            if r.kernel_id == kernel_id and r.recovery is not None and r.ended_at is not None
        ]
        taken_at = float(report.get("taken_at") or 0)
        if lost:
            event = max(lost, key=lambda r: r.ended_at or 0)
            what = {
                InstanceState.INTERRUPTED: "the interruption",
                InstanceState.EXPIRED: "the cap",
            }.get(event.state, "the loss of its instance")
            before = f"{max(0.0, (event.ended_at or 0) - taken_at):.0f} s before {what}"
        else:
            before = f"{max(0.0, time.time() - taken_at):.0f} s before the move"
        variables = report.get("variable_count", len(report.get("variables") or []))
        size = int(report.get("bytes") or 0)
        lost_variables = [
            {"name": str(s.get("name")), "type": str(s.get("type")), "why": str(s.get("why"))}
            for s in report.get("not_restored") or []
        ]
        lost_count = report.get("not_restored_count", len(lost_variables))
        if lost_count < len(lost_variables):
            raise web.HTTPError(
                400,
                f"not_restored_count is {lost_count}, but not_restored names "
                f"{len(lost_variables)} variables (POST kernels/<kernel_id>/restored)",
            )
        cells = {
            key: report.get(key)
            for key in ("execution_count", "taken_during", "last_execution_count")
        }
        where, lost_cells = resume_point(**cells)
        not_restored = listed([f"{s['name']} ({s['type']})" for s in lost_variables], lost_count)
        model: dict[str, Any] = {
            "kernel_id": kernel_id,
            "checkpoint_id": str(report.get("checkpoint_id", "")),
            "taken_at": iso(taken_at),
            "variables": variables,
            "bytes": size,
            "not_restored": lost_variables,
            "not_restored_count": lost_count,
            **cells,
            "message": (
                f"resumed from the checkpoint taken {before}{', ' + where if where else ''}: "
                + (f"{lost_cells}; " if lost_cells else "")
                + f"{variables:,} variable{'' if variables == 1 else 's'}, {human_bytes(size)}"
                + (f"; not restored: {not_restored}" if not_restored else "")
            ),
        }
        self.ledger.kernel(kernel_id).restored = model
        events.emit_restored(self.ctx.event_logger, model)
        self.ctx.log.info("jupyter_lowcost | kernel %s %s", kernel_id, model["message"])
        return model

    def checkpoint_status(self, kernel_id: str, report: dict[str, Any]) -> dict[str, Any]:
        """A kernel says its checkpoints fail (a full disk), or work again (the caller
        checked the kernel exists)."""
        checkpoint_id = str(report.get("checkpoint_id") or "") or None
        if report["ok"]:
            message = "checkpoints work again" + (
                f": checkpoint {checkpoint_id} was written" if checkpoint_id else ""
            )
        else:
            message = f"checkpoint failed: {report.get('error') or 'unknown error'}; " + (
                f"an interruption now resumes from checkpoint {checkpoint_id}, the last one written"
                if checkpoint_id
                else "there is no earlier checkpoint: an interruption now loses the variables"
            )
        model = {
            "kernel_id": kernel_id,
            "ok": bool(report["ok"]),
            "error": None if report["ok"] else str(report.get("error") or ""),
            "checkpoint_id": checkpoint_id,
            "message": message,
        }
        self.ledger.kernel(kernel_id).checkpoint_status = model
        events.emit_checkpoint_status(self.ctx.event_logger, model)
        log = self.ctx.log.info if report["ok"] else self.ctx.log.error
        log("jupyter_lowcost | kernel %s: %s", kernel_id, message)
        return model
