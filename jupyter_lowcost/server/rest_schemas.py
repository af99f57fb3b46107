"""The JSON Schema of every REST request body, and the one function that checks a body.

Called by :class:`~jupyter_lowcost.server.handlers.LowCostHandler` for every route with a body.
A body that is too large, not JSON, nested too deeply, or not what the route's schema
declares is answered 400 (413 when too large) with a message that names the field and
the problem; the manager is not called. What a schema cannot say (an instance type in
the catalog, a range that is configuration) the manager checks, before changing anything.
jsonschema comes with jupyter_events, which validates the event schemas with it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from tornado import web

from ..storage.jobs import MAX_JOB_BYTES

#: Bodies larger than this are refused (413): every body of this API is a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024

_NAME = {"type": "string", "minLength": 1, "maxLength": 256}

START_KERNEL = {
    "title": "POST kernels",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": _NAME,
        "instance_type": _NAME,
        "low_cost": {"type": "boolean"},
        "path": {"type": ["string", "null"], "maxLength": 4096},
    },
}

SWITCH_KERNEL = {
    "title": "PUT kernels/<kernel_id>",
    "x-empty-message": "say where to move the kernel: low_cost and/or instance_type",
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "low_cost": {"type": "boolean"},
        "instance_type": _NAME,
    },
}

INTERRUPT = {
    "title": "POST instances/<instance_id>/interrupt",
    "type": "object",
    "additionalProperties": False,
    "required": ["notice_seconds"],
    "properties": {"notice_seconds": {"type": "number"}},
}

_SKIPPED = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "type", "why"],
    "properties": {
        "name": {"type": "string", "maxLength": 1024},
        "type": {"type": "string", "maxLength": 1024},
        "why": {"type": "string", "maxLength": 4096},
    },
}

_COUNT = {"type": "integer", "minimum": 0, "maximum": 2**31}
_CELL = {"type": ["integer", "null"], "minimum": 0, "maximum": 2**31}

#: A resumed kernel's report: counts, and a bounded list of what did not come back
#: (:meth:`~jupyter_lowcost.storage.checkpoints.RestoreReport.to_json`), so that it fits
#: in :data:`MAX_BODY_BYTES` whatever the namespace. (``variables``, the names, is what
#: kernels of earlier versions send instead of ``variable_count``.)
RESTORED = {
    "title": "POST kernels/<kernel_id>/restored",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "checkpoint_id": {"type": "string", "maxLength": 256},
        "taken_at": {"type": "number", "minimum": 0, "maximum": 1e11},
        "variables": {"type": "array", "items": {"type": "string", "maxLength": 1024}},
        "variable_count": _COUNT,
        "bytes": {"type": "integer", "minimum": 0, "maximum": 2**63},
        "seconds": {"type": "number", "minimum": 0, "maximum": 1e9},
        "not_restored": {"type": "array", "items": _SKIPPED, "maxItems": 100},
        "not_restored_count": _COUNT,
        "execution_count": _CELL,
        "taken_during": _CELL,
        "last_execution_count": _CELL,
    },
}

CHECKPOINT_STATUS = {
    "title": "POST kernels/<kernel_id>/checkpoint",
    "type": "object",
    "additionalProperties": False,
    "required": ["ok"],
    "properties": {
        "ok": {"type": "boolean"},
        "error": {"type": "string", "maxLength": 4096},
        "checkpoint_id": {"type": "string", "maxLength": 256},
    },
}

# (MAX_JOB_BYTES lives with the jobs' storage: the CLI, a layer below, checks it too)

START_JOB = {
    "title": "POST jobs",
    "x-max-bytes": MAX_JOB_BYTES,
    "type": "object",
    "additionalProperties": False,
    "required": ["notebook"],
    "properties": {
        "notebook": {"type": "object"},
        "name": {"type": "string", "minLength": 1, "maxLength": 1024},
        "kernel_name": _NAME,
        "instance_type": _NAME,
        "low_cost": {"type": "boolean"},
        "parameters": {
            "type": "object",
            "maxProperties": 1000,
            # ((?![\s\S]) is the end of the name: "$" also matches before a final
            # newline in Python's re, which jsonschema uses, so "x\n" would pass)
            "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*(?![\s\S])", "maxLength": 256},
        },
        "path": {"type": ["string", "null"], "maxLength": 4096},
        "output_path": {"type": ["string", "null"], "maxLength": 4096},
    },
    # (a notebook's parameters may be NaN or infinite, as papermill's are)
    "x-non-finite": ["parameters"],
}

_VALIDATORS = {
    schema["title"]: Draft202012Validator(schema)
    for schema in (START_KERNEL, SWITCH_KERNEL, INTERRUPT, RESTORED, CHECKPOINT_STATUS, START_JOB)
}


def parse_body(body: bytes, schema: dict[str, Any]) -> dict[str, Any]:
    """``body`` decoded and checked against ``schema`` (an empty body is ``{}``), or a
    ``tornado.web.HTTPError`` that says what is wrong."""
    limit = schema.get("x-max-bytes", MAX_BODY_BYTES)
    if len(body) > limit:
        raise web.HTTPError(
            413, f"the request body is {len(body)} bytes; at most {limit} are accepted"
        )
    if not body.strip():
        value: Any = {}
    else:
        try:
            value = json.loads(body)
        except RecursionError:
            raise web.HTTPError(400, "the request body is JSON nested too deeply") from None
        except ValueError as err:
            raise web.HTTPError(400, f"the request body is not JSON: {err}") from err
    try:
        error = best_match(_VALIDATORS[schema["title"]].iter_errors(value))
    except RecursionError:  # (the error's message shows the value)
        raise web.HTTPError(400, "the request body is JSON nested too deeply") from None
    if error is not None:
        raise web.HTTPError(400, f"{_describe(error, schema)} ({schema['title']})")
    # (after the schema: a field that should not be there is the first thing to say)
    try:
        where = _not_json_text_or_number(value, allowed=schema.get("x-non-finite", []))
    except RecursionError:
        raise web.HTTPError(400, "the request body is JSON nested too deeply") from None
    if where is not None:
        path, problem = where
        raise web.HTTPError(400, f"{path or 'the request body'} {problem} ({schema['title']})")
    return value


def _not_json_text_or_number(
    value: Any, allowed: list[str], path: str = ""
) -> tuple[str, str] | None:
    """Where ``value`` holds what Python's JSON parser accepts but no field may, and
    what: NaN or an infinity (which no range in a schema refuses: NaN compares false with
    every bound), allowed only under a top-level field in ``allowed``; a lone surrogate
    (``"\\ud800"``), in a value or a key, which is no text (it cannot be written as
    UTF-8: to a log, a file, a notebook). As (``taken_at``, ``must be a finite number,
    not NaN``); None when there is none."""
    if isinstance(value, float) and not math.isfinite(value):
        if path.split(".", 1)[0] in allowed:
            return None
        number = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return path, f"must be a finite number, not {number}"
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        if found is None:
            return None
        return path, (
            f"is not text: it holds a lone surrogate (\\u{ord(found.group()):04x}), which "
            "has no UTF-8 form"
        )
    if isinstance(value, dict):
        for key, child in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _SURROGATE.search(str(key)):
                return _not_json_text_or_number(str(key), allowed, f"a name in {path or 'it'}")
            found = _not_json_text_or_number(child, allowed, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found = _not_json_text_or_number(
                child, allowed, f"{path}.{index}" if path else str(index)
            )
            if found is not None:
                return found
    return None


#: A UTF-16 surrogate on its own (JSON's "\ud800" escape decodes to one).
_SURROGATE = re.compile("[\ud800-\udfff]")


_TYPE_WORDS = {
    "boolean": "true or false",
    "number": "a number",
    "integer": "an integer",
    "string": "a string",
    "object": "a JSON object",
    "array": "a list",
    "null": "null",
}


def _short(value: Any) -> str:
    """A value as a message shows it: short."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _describe(error: Any, schema: dict[str, Any]) -> str:
    """``low_cost must be true or false, not "yes"``: the field and the problem."""
    where = ".".join(str(part) for part in error.absolute_path)
    fields = ", ".join(schema.get("properties", {}))
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        shown = ", ".join(str(name)[:40] for name in unknown[:5])
        return f"unknown field(s) {shown}; the fields are: {fields}"
    if error.validator == "required":
        missing = [n for n in error.schema.get("required", []) if n not in error.instance]
        return f"{', '.join(missing)} is required" + (f" (in {where})" if where else "")
    if error.validator == "pattern" and where == "parameters":  # (its propertyNames)
        return f"parameter name {_short(error.instance)} is not a Python variable name"
    if error.validator == "minProperties" and not where:
        return schema.get("x-empty-message", f"say what to change: {fields}")
    if error.validator == "type":
        expected = error.validator_value
        kinds = expected if isinstance(expected, list) else [expected]
        wanted = " or ".join(_TYPE_WORDS.get(k, k) for k in kinds)
        subject = where or "the request body"
        return f"{subject} must be {wanted}, not {_short(error.instance)}"
    message = error.message
    if len(message) > 200:
        message = message[:197] + "..."
    return f"{where}: {message}" if where else f"the request body: {message}"
