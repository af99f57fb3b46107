"""The launch protocol's shared parts: its version, framing and signature.

Both ends import this module: the server's :mod:`jupyter_lowcost.server.channel` and the
launcher, :mod:`jupyter_lowcost.instance.launcher`. The conversation itself is described
in the channel's module docstring. Stdlib only.

Versions: the server's challenge and the launcher's hello both carry ``"version"``. Each
end refuses a peer that speaks another version, with a message that names both, rather
than misreading its frames (a launcher left running by an older server that a newer one
adopts after a restart, say). A hello without the field is from before the field existed,
which spoke version 1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

#: The version of the launch protocol spoken by this package. Raise it when a message
#: changes meaning; adding an optional field is not such a change.
VERSION = 1


def is_ipykernel_command(argv: list[str]) -> bool:
    """True for ``python -m ipykernel_launcher ...``: the kernels a launcher can run (the
    server checks a kernelspec with it before it asks for an instance)."""
    return len(argv) >= 3 and argv[1] == "-m" and argv[2] in ("ipykernel_launcher", "ipykernel")


def version_of(message: dict[str, Any]) -> Any:
    """The protocol version a challenge or hello announces (1 when it names none)."""
    return message.get("version", 1)


def sign(secret: str, nonce: str) -> str:
    """The MAC a launcher sends to prove it holds ``secret`` (used by both ends)."""
    return hmac.new(secret.encode(), nonce.encode(), hashlib.sha256).hexdigest()


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of JSON."""
    return json.dumps(message).encode() + b"\n"
