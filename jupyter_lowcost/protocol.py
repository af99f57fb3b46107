"""The launch protocol's shared parts: its version, framing, proofs and sealed frames.

Both ends import this module: the server's :mod:`jupyter_lowcost.server.channel` and the
launcher, :mod:`jupyter_lowcost.instance.launcher`. The conversation itself is described
in the channel's module docstring. Stdlib only.

Versions: the server's challenge and the launcher's opening both carry ``"version"``.
Each end refuses a peer that speaks another version, with a message that names both,
rather than misreading its frames (a launcher left running by an older server that a
newer one adopts after a restart, say). A frame without the field is from before the
field existed, which spoke version 1.

Every value below that proves something is an HMAC-SHA256 keyed with the connection's
secret (the launch secret, or a reconnect secret) over a label and the parts it binds,
so that no value made for one purpose (the server's proof, the launcher's, a frame's MAC)
is ever valid for another.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any

#: The version of the launch protocol spoken by this package. Raise it when a message
#: changes meaning; adding an optional field is not such a change. 2: the server proves
#: it holds the secret before the launcher says anything, and frames are sealed.
VERSION = 2

#: The two ends, as the labels of their proofs and of the frames each one sends.
SERVER = "server"
LAUNCHER = "launcher"


def is_ipykernel_command(argv: list[str]) -> bool:
    """True for ``python -m ipykernel_launcher ...``: the kernels a launcher can run (the
    server checks a kernelspec with it before it asks for an instance)."""
    return len(argv) >= 3 and argv[1] == "-m" and argv[2] in ("ipykernel_launcher", "ipykernel")


def version_of(message: dict[str, Any]) -> Any:
    """The protocol version a challenge or opening announces (1 when it names none)."""
    return message.get("version", 1)


def nonce() -> str:
    """A fresh nonce (each end makes one per connection)."""
    return secrets.token_hex(16)


def _mac(secret: str, label: str, *parts: str) -> str:
    # (a JSON list: no two lists of parts give the same bytes)
    data = json.dumps([label, *parts]).encode()
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def key_id(secret: str) -> str:
    """What a launcher's opening names its secret by (not the secret, not the instance):
    the server finds the launch or reconnect secret it is by this."""
    return _mac(secret, "key id")


def proof(secret: str, role: str, server_nonce: str, launcher_nonce: str) -> str:
    """The proof that ``role`` (:data:`SERVER` or :data:`LAUNCHER`) holds ``secret`` on the
    connection of these two nonces (made by that end, checked by the other)."""
    return _mac(secret, f"{role} proof", server_nonce, launcher_nonce)


def proved(answer: Any, secret: str, role: str, server_nonce: str, launcher_nonce: str) -> bool:
    """Is ``answer`` the proof of :func:`proof` (in constant time)?"""
    expected = proof(secret, role, server_nonce, launcher_nonce)
    return isinstance(answer, str) and hmac.compare_digest(answer.encode(), expected.encode())


def next_secret(secret: str, server_nonce: str, launcher_nonce: str) -> str:
    """The reconnect secret that follows a connection authenticated with ``secret``. Both
    ends derive it; it never travels (so that what a connection carries is no key to the
    next one)."""
    return _mac(secret, "reconnect secret", server_nonce, launcher_nonce)


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of JSON (the frames of the handshake)."""
    return json.dumps(message).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One line as a JSON object; ``ValueError`` or ``TypeError`` for anything else."""
    try:
        message = json.loads(line)
    except RecursionError:
        raise ValueError("a frame nested too deeply") from None
    if not isinstance(message, dict):
        raise TypeError(f"a frame that is not a JSON object: {line[:80]!r}")
    return message


class Session:
    """The frames of one authenticated connection, after the handshake: each end seals
    what it sends (``{"frame": text, "mac": M}``, M over its role, the frame's number in
    its direction and the text) and opens what it receives, so that a frame that does not
    come, in order, from the other end of this very handshake (one injected, replayed,
    reflected, or from a relay) is refused. Each end makes one for the connection."""

    def __init__(self, secret: str, server_nonce: str, launcher_nonce: str, role: str) -> None:
        self._key = _mac(secret, "session key", server_nonce, launcher_nonce)
        self._role = role
        self._peer = LAUNCHER if role == SERVER else SERVER
        self._sent = 0
        self._received = 0

    def seal(self, message: dict[str, Any]) -> bytes:
        """``message`` as the next line this end sends (callers keep the order of the
        lines they seal, e.g. under a lock)."""
        text = json.dumps(message)
        mac = _mac(self._key, self._role, str(self._sent), text)
        self._sent += 1
        return encode({"frame": text, "mac": mac})

    def open(self, line: bytes) -> dict[str, Any]:
        """The message of the next line from the other end; ``ValueError`` (a wrong MAC,
        a frame out of order) or ``TypeError`` for anything else."""
        sealed = decode(line)
        text, mac = sealed.get("frame"), sealed.get("mac")
        if not isinstance(text, str) or not isinstance(mac, str):
            raise TypeError("a frame that is not sealed")
        expected = _mac(self._key, self._peer, str(self._received), text)
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            raise ValueError("a frame with a wrong MAC")
        self._received += 1
        return decode(text.encode())
