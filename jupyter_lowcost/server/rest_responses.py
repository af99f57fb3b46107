"""The JSON Schema of every REST response body: the one description of the API's shapes.

Who uses it: :mod:`.typescript` generates the front end's types from it
(``labextension/src/rest.ts``), and the tests validate what a real server answers against
it, so the server, this file and the front end cannot drift apart. Each schema is strict
(every property required, no other property): a field added to a model without being
added here fails the tests. ``x-ts`` is the TypeScript name of a shape. The shapes that are
also events' data are read from the events' schemas (``event_schemas/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from . import events

_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_NUMBER = {"type": "number"}
_INTEGER = {"type": "integer"}
_BOOLEAN = {"type": "boolean"}


def _strict(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "x-ts": name,
        "description": description,
        "type": "object",
        "additionalProperties": False,
        "required": list(properties),
        "properties": properties,
    }


def _from_event(
    path: Path, name: str, description: str, named: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The strict shape of an event's data, from the event's schema (every property it
    declares is always sent); ``named`` replaces properties by named shapes."""
    schema = yaml.safe_load(path.read_text())
    return _strict(name, description, {**schema["properties"], **(named or {})})


INSTANCE_STATE = {
    "x-ts": "InstanceState",
    "description": "States of an instance, as the server's records name them.",
    "enum": ["pending", "running", "notice", "interrupted", "expired", "terminated", "failed"],
}

INSTANCE_TYPE = _strict(
    "IInstanceType",
    "One entry of `GET instance-types`.",
    {
        "name": _STRING,
        "gpu": _STRING,
        "gpu_count": _INTEGER,
        "vcpus": _INTEGER,
        "memory_gb": _NUMBER,
        "price_regular": _NUMBER,
        "price_low_cost": _NUMBER,
        "discount_percent": _INTEGER,
        "low_cost_lifetime_cap_seconds": _NUMBER,
    },
)

INSTANCE = _strict(
    "IInstance",
    "One instance, as served by `GET instances` and `GET kernels/<id>`.",
    {
        "id": _STRING,
        "kernel_id": _NULLABLE_STRING,
        "instance_type": _STRING,
        "low_cost": _BOOLEAN,
        "tier": _STRING,
        "backend": _STRING,
        "state": INSTANCE_STATE,
        "reason": _STRING,
        "created": _NULLABLE_STRING,
        "started": _NULLABLE_STRING,
        "ended": _NULLABLE_STRING,
        "expires": _NULLABLE_STRING,
        "notice_deadline": _NULLABLE_STRING,
        "notice_warning": _NULLABLE_STRING,
        "recovery": _NULLABLE_STRING,
        "seconds_left": {"type": ["number", "null"]},
        "price_per_hour": _NUMBER,
        "regular_price_per_hour": _NUMBER,
        "cost": _NUMBER,
        "savings": _NUMBER,
    },
)

PLACEMENT = _strict(
    "IPlacement",
    "A kernel's placement: where it is asked to run.",
    {"instance_type": _STRING, "low_cost": _BOOLEAN, "tier": _STRING},
)

_NOT_RESTORED = _strict(
    "INotRestored",
    "A variable a resume did not bring back, with its type and why.",
    {"name": _STRING, "type": _STRING, "why": _STRING},
)

# The kernel model's ``restored`` and ``checkpoints`` are the data of the checkpoint and
# checkpoint-status events: their shapes are the events' own schemas, made strict.
RESTORED = _from_event(
    events.RESTORED_SCHEMA_PATH,
    "IRestored",
    "What a resume brought back (`GET kernels/<id>`, and the checkpoint event's data).",
    {"not_restored": {"type": "array", "items": _NOT_RESTORED}},
)

CHECKPOINT_STATUS = _from_event(
    events.CHECKPOINT_STATUS_SCHEMA_PATH,
    "ICheckpointStatus",
    "Whether the kernel's checkpoints work (`GET kernels/<id>`, and the "
    "checkpoint-status event's data).",
)

KERNEL = _strict(
    "IKernelPlacement",
    "`GET kernels/<id>` (and `PUT`): the placement, the current instance, the history.",
    {
        "kernel_id": _STRING,
        "placement": {"anyOf": [PLACEMENT, {"type": "null"}]},
        "instance": {"anyOf": [INSTANCE, {"type": "null"}]},
        "moving": _BOOLEAN,
        "restored": {"anyOf": [RESTORED, {"type": "null"}]},
        "checkpoint_status": {"anyOf": [CHECKPOINT_STATUS, {"type": "null"}]},
        "history": {"type": "array", "items": INSTANCE},
    },
)

STATUS = _strict(
    "IStatus",
    "`GET status`.",
    {
        "backend": _STRING,
        "backends_installed": {"type": "array", "items": _STRING},
        "version": _STRING,
        "capacity": {
            "type": "object",
            "description": "What the backend says of its room (slots, GPUs; partitions).",
        },
        "lifetime_cap_seconds": _NUMBER,
        "recovery_policy": _STRING,
        "checkpoint_policy": {
            "type": "string",
            "description": "When kernels checkpoint their variables: cell, interval:<s>, "
            "notice or off.",
        },
        "live_instances": _INTEGER,
        "root_dir": {
            "type": ["string", "null"],
            "description": "The folder the server's contents are in (where `jupyter "
            "lowcost run` can have a job write its output); null when not on disk.",
        },
        "demo": {
            "type": ["string", "null"],
            "description": "What this demo server does that a real one does not "
            "(`LowCostApp.demo`); null on a real server.",
        },
    },
)

STARTED_KERNEL = _strict(
    "IStartedKernel",
    "`POST kernels`: the standard kernel model, and its instance.",
    {
        "kernel": {"type": "object", "description": "jupyter_server's kernel model."},
        "instance": {"anyOf": [INSTANCE, {"type": "null"}]},
    },
)

INSTANCE_EVENT = _from_event(
    events.SCHEMA_PATH,
    "IInstanceEvent",
    "The data of one instance event (schema `.../jupyter_lowcost/instance/v1`).",
    {"state": INSTANCE_STATE},
)

JOB_STATE = {
    "x-ts": "JobState",
    "description": "States of a job (`jupyter lowcost run`).",
    "enum": ["queued", "running", "resuming", "succeeded", "failed", "cancelled"],
}

JOB_INTERRUPTION = _strict(
    "IJobInterruption",
    "An interruption of a job: the cell it hit, the instance, how it ended, why, when.",
    {
        "cell": _INTEGER,
        "instance_id": _NULLABLE_STRING,
        "state": _STRING,
        "reason": _STRING,
        "at": _NULLABLE_STRING,
    },
)

JOB_ERROR = _strict(
    "IJobError",
    "The error of a job's failing cell.",
    {
        "cell": _INTEGER,
        "ename": _STRING,
        "evalue": _STRING,
        "traceback": {"type": "array", "items": _STRING},
    },
)

# A job's model is the job event's data: its shape is the event's own schema, made strict.
JOB = _from_event(
    events.JOB_SCHEMA_PATH,
    "IJob",
    "A job: `POST jobs`, `GET jobs`, `GET jobs/<id>`, `DELETE jobs/<id>` (and the job "
    "event's data).",
    {
        "state": JOB_STATE,
        "interruptions": {"type": "array", "items": JOB_INTERRUPTION},
        "error": {"anyOf": [JOB_ERROR, {"type": "null"}]},
    },
)

JOB_LOG = _strict(
    "IJobLog",
    "`GET jobs/<id>/log?offset=N`: the log from byte N on, where it ends, the job's state.",
    {"text": _STRING, "offset": _INTEGER, "state": JOB_STATE},
)

#: Every shape, in the order the TypeScript file declares them.
SHAPES = [
    INSTANCE_TYPE,
    INSTANCE_STATE,
    INSTANCE,
    PLACEMENT,
    _NOT_RESTORED,
    RESTORED,
    CHECKPOINT_STATUS,
    KERNEL,
    STATUS,
    STARTED_KERNEL,
    INSTANCE_EVENT,
    JOB_STATE,
    JOB_INTERRUPTION,
    JOB_ERROR,
    JOB,
    JOB_LOG,
]
