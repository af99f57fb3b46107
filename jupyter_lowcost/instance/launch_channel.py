"""The launcher's end of the launch channel: the connection to the server and the
handshake in which each side proves it holds the launch's secret.

Used by :mod:`jupyter_lowcost.instance.launcher` (the first connection and every
reconnection) and by :mod:`jupyter_lowcost.instance.notice_sources` (which report
notices over it). The server's end is ``jupyter_lowcost.server.channel``; the frames,
proofs and sealing are :mod:`jupyter_lowcost.protocol`'s.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from ..protocol import (
    LAUNCHER,
    SERVER,
    VERSION,
    Session,
    decode,
    encode,
    key_id,
    next_secret,
    nonce,
    proof,
    proved,
    version_of,
)


class HandshakeFailed(Exception):
    """The peer was not the server of this launch, or refused it (see :func:`handshake`)."""


class NotTheServer(HandshakeFailed):
    """The peer did not prove that it holds the secret: whatever listens on that port is
    not a server that knows this instance."""


class OtherVersion(HandshakeFailed):
    """The server speaks another version of the launch protocol."""


class Channel:
    """The launcher's end of the launch channel (see ``jupyter_lowcost.server.channel``).

    Until :func:`handshake` has authenticated the server, :meth:`send` refuses (an
    ``OSError``, as for a lost connection): the threads that report notices say nothing
    to a peer that has not proved itself, nor in the middle of a handshake."""

    def __init__(self, address: str) -> None:
        self._send_lock = threading.Lock()
        self.session: Session | None = None
        self.connect(address)

    def connect(self, address: str, timeout: float = 30) -> None:
        """(Re)open the connection to ``host:port``, not yet authenticated."""
        self.session = None
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.session = None
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, message: dict[str, Any]) -> None:
        """Send a sealed frame to the authenticated server (any thread)."""
        with self._send_lock:
            if self.session is None:
                raise OSError("not connected to an authenticated server")
            self.sock.sendall(self.session.seal(message))

    def send_handshake(self, message: dict[str, Any]) -> None:
        """Send a frame of the handshake (only :func:`handshake` does)."""
        with self._send_lock:
            self.sock.sendall(encode(message))

    def receive(self) -> dict[str, Any] | None:
        """The next frame (sealed once authenticated), or None when the connection is
        closed; ``ValueError`` or ``TypeError`` for a frame that is not one (a wrong
        MAC, say)."""
        line = self.reader.readline()
        if not line:
            return None
        return self.session.open(line) if self.session is not None else decode(line)


def handshake(channel: Channel, secret: str) -> tuple[dict[str, Any], str]:
    """Authenticate the server on ``channel`` with ``secret`` (the launch secret, or the
    reconnect secret), then prove this launcher holds it too: the server's first sealed
    frame (its config, or ``reattached``) and the next reconnect secret, to keep once that
    frame is the one expected. Called by the launcher's first connection and by each
    attempt to be taken back (``launcher._reattach_once``).

    Nothing but the key id and a fresh nonce goes out before the server's proof is
    checked. ``NotTheServer`` for a wrong proof, ``OtherVersion``, or ``HandshakeFailed``
    when the server closes (it refused: it does not know this secret)."""
    challenge = channel.receive()
    if challenge is None:
        raise HandshakeFailed("the server closed the connection")
    if version_of(challenge) != VERSION:
        raise OtherVersion(
            f"the server speaks launch protocol version {str(version_of(challenge))[:16]}, "
            f"this launcher version {VERSION}: install the same jupyter-lowcost on the "
            "instance as on the server"
        )
    server_nonce, launcher_nonce = str(challenge.get("nonce")), nonce()
    channel.send_handshake(
        {"type": "open", "key": key_id(secret), "nonce": launcher_nonce, "version": VERSION}
    )
    answer = channel.receive()
    if answer is None:
        raise HandshakeFailed("the server refused this launcher")
    if not proved(answer.get("proof"), secret, SERVER, server_nonce, launcher_nonce):
        raise NotTheServer("the peer did not prove that it holds the secret")
    channel.send_handshake(
        {"type": "hello", "proof": proof(secret, LAUNCHER, server_nonce, launcher_nonce)}
    )
    channel.session = Session(secret, server_nonce, launcher_nonce, LAUNCHER)
    reply = channel.receive()
    if reply is None:
        raise HandshakeFailed("the server refused this launcher")
    return reply, next_secret(secret, server_nonce, launcher_nonce)
