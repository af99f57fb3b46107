"""``python -m jupyter_lowcost.server.typescript [PATH]``: the front end's REST types.

Writes ``labextension/src/rest.ts`` (or prints it, without PATH) from the schemas of the
REST API: responses (:mod:`.rest_responses`) and request bodies (:mod:`.rest_schemas`).
The front end imports its types from that file only; a test checks that it is what this
module generates, so a change to a schema shows up as a type error where the front end
uses the field.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from . import rest_responses, rest_schemas

HEADER = """\
/**
 * The REST API's shapes, generated from the server's schemas
 * (jupyter_lowcost/server/rest_responses.py and rest_schemas.py): do not edit; run
 * `python -m jupyter_lowcost.server.typescript labextension/src/rest.ts` after a change.
 */
"""

#: Request bodies, with the TypeScript name of each.
REQUESTS = [
    ("IStartKernelRequest", rest_schemas.START_KERNEL),
    ("ISwitchKernelRequest", rest_schemas.SWITCH_KERNEL),
    ("IInterruptRequest", rest_schemas.INTERRUPT),
]


def ts_type(schema: dict[str, Any], indent: str = "", named: bool = True) -> str:
    """The TypeScript type of a (small subset of) JSON Schema; a shape with a name
    (``x-ts``) is written as that name when ``named``."""
    if named and "x-ts" in schema:
        return str(schema["x-ts"])
    if "enum" in schema:
        return " | ".join("null" if value is None else f"'{value}'" for value in schema["enum"])
    if "anyOf" in schema:
        return " | ".join(ts_type(option, indent) for option in schema["anyOf"])
    kinds = schema.get("type", "object")
    if isinstance(kinds, list):
        return " | ".join(ts_type({**schema, "type": kind}, indent) for kind in kinds)
    if kinds == "array":
        item = ts_type(schema.get("items", {}), indent)
        return f"({item})[]" if "|" in item else f"{item}[]"
    if kinds == "object":
        return _object(schema, indent) if "properties" in schema else "Record<string, unknown>"
    return {
        "string": "string",
        "number": "number",
        "integer": "number",
        "boolean": "boolean",
        "null": "null",
    }.get(kinds, "unknown")


def _doc(schema: dict[str, Any]) -> str | None:
    text = schema.get("description") or schema.get("title")
    return " ".join(str(text).split()) if text else None


def _object(schema: dict[str, Any], indent: str) -> str:
    required = set(schema.get("required", ()))
    lines = ["{"]
    for name, prop in schema["properties"].items():
        doc = _doc(prop)
        if doc and "x-ts" not in prop:
            lines.append(f"{indent}  /** {doc} */")
        optional = "" if name in required else "?"
        lines.append(f"{indent}  {name}{optional}: {ts_type(prop, indent + '  ')};")
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def _declare(name: str, schema: dict[str, Any]) -> str:
    doc = _doc(schema) or name
    body = ts_type(schema, named=False)
    if body.startswith("{"):
        return f"/** {doc} */\nexport interface {name} {body}\n"
    return f"/** {doc} */\nexport type {name} = {body};\n"


def generate() -> str:
    """The contents of ``labextension/src/rest.ts``."""
    parts = [HEADER]
    for schema in rest_responses.SHAPES:
        parts.append(_declare(schema["x-ts"], schema))
    for name, schema in REQUESTS:
        parts.append(_declare(name, schema))
    return "\n".join(parts)


def main(argv: list[str]) -> None:
    text = generate()
    if argv:
        Path(argv[0]).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
