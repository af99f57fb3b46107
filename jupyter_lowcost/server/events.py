"""The events: their schemas (instance, checkpoint, checkpoint-status, job), registration
and emission.

``LowCostApp`` calls :func:`register` once with the server's ``event_logger``; the manager
calls :func:`emit_transition` on every state change. JupyterLab receives the events through
the server's ``/api/events/subscribe`` websocket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jupyter_events import EventLogger

from ..storage.records import InstanceRecord, iso

SCHEMA_ID = "https://events.jupyter.org/jupyter_lowcost/instance/v1"
SCHEMA_PATH = Path(__file__).parent / "event_schemas" / "instance" / "v1.yaml"
RESTORED_SCHEMA_ID = "https://events.jupyter.org/jupyter_lowcost/checkpoint/v1"
RESTORED_SCHEMA_PATH = Path(__file__).parent / "event_schemas" / "checkpoint" / "v1.yaml"
CHECKPOINT_STATUS_SCHEMA_ID = "https://events.jupyter.org/jupyter_lowcost/checkpoint-status/v1"
CHECKPOINT_STATUS_SCHEMA_PATH = (
    Path(__file__).parent / "event_schemas" / "checkpoint-status" / "v1.yaml"
)

JOB_SCHEMA_ID = "https://events.jupyter.org/jupyter_lowcost/job/v1"
JOB_SCHEMA_PATH = Path(__file__).parent / "event_schemas" / "job" / "v1.yaml"


def register(event_logger: EventLogger) -> None:
    """Register the schemas (a second registration is a no-op)."""
    for schema_id, path in (
        (SCHEMA_ID, SCHEMA_PATH),
        (RESTORED_SCHEMA_ID, RESTORED_SCHEMA_PATH),
        (CHECKPOINT_STATUS_SCHEMA_ID, CHECKPOINT_STATUS_SCHEMA_PATH),
        (JOB_SCHEMA_ID, JOB_SCHEMA_PATH),
    ):
        if schema_id not in event_logger.schemas.schema_ids:
            event_logger.register_event_schema(path)


def emit_transition(event_logger: EventLogger | None, record: InstanceRecord) -> None:
    """Emit the transition ``record`` has just made."""
    if event_logger is None:
        return
    event_logger.emit(
        schema_id=SCHEMA_ID,
        data={
            "instance_id": record.id,
            "kernel_id": record.kernel_id,
            "state": record.state.value,
            "reason": record.reason,
            "deadline": iso(record.notice_deadline),
            "instance_type": record.instance_type,
            "tier": record.tier,
            "recovery": record.recovery,
        },
    )


def emit_restored(event_logger: EventLogger | None, model: dict[str, Any]) -> None:
    """A kernel resumed from a checkpoint (``model``: see the checkpoint schema)."""
    if event_logger is None:
        return
    event_logger.emit(schema_id=RESTORED_SCHEMA_ID, data=dict(model))


def emit_checkpoint_status(event_logger: EventLogger | None, model: dict[str, Any]) -> None:
    """A kernel's checkpoints failed, or work again (see the checkpoint-status schema)."""
    if event_logger is None:
        return
    event_logger.emit(schema_id=CHECKPOINT_STATUS_SCHEMA_ID, data=dict(model))


def emit_job(event_logger: EventLogger | None, model: dict[str, Any]) -> None:
    """A job changed (``model``: see the job schema; jobs/service.py)."""
    if event_logger is None:
        return
    event_logger.emit(schema_id=JOB_SCHEMA_ID, data=dict(model))
