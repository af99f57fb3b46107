"""The launch channel: how a launcher on an instance talks to the server, and back.

Both ends speak JSON lines over one TCP connection per instance. The server end
(:class:`LaunchChannel`, owned by the manager) listens on ``LowCostApp.channel_ip``; the
launcher end is :mod:`jupyter_lowcost.launcher`. Only the launch that was given the
per-launch secret can use its connection::

    server -> {"type": "challenge", "nonce": N}
    launcher -> {"type": "hello", "instance_id": I, "mac": HMAC-SHA256(secret, N)}
    server -> {"type": "config", ...}         the kernel's session key, transport, ip
    launcher -> {"type": "ready", "connection_info": {...}}    ports the kernel bound
    server -> {"type": "notice", "deadline": T, "reason": R}   an interruption notice
    launcher -> {"type": "notice", "deadline": T, "reason": R} a notice seen on the instance

A secret is good for one connection: once used it can never authenticate again (nor
can an unknown one). An instance has at most one live launcher connection; a second
hello for it, a wrong MAC, or a frame that is not a JSON object closes the connection
and is logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Seconds a new connection has to prove who it is.
HELLO_TIMEOUT = 10.0


def sign(secret: str, nonce: str) -> str:
    """The MAC a launcher sends to prove it holds ``secret`` (used by both ends)."""
    return hmac.new(secret.encode(), nonce.encode(), hashlib.sha256).hexdigest()


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of JSON."""
    return json.dumps(message).encode() + b"\n"


class LaunchFailed(Exception):
    """The launcher went away, or said it failed, before its kernel was ready."""


@dataclass
class _Expected:
    #: None once used: a secret is good for one connection.
    secret: str | None
    config: dict[str, Any]
    ready: asyncio.Future[dict[str, Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class LaunchChannel:
    """The server end: accepts launchers, hands them their config, relays notices."""

    def __init__(
        self,
        log: logging.Logger,
        on_message: Callable[[str, dict[str, Any]], None],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.log = log
        self.on_message = on_message
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None
        self._expected: dict[str, _Expected] = {}
        self._writers: dict[str, asyncio.StreamWriter] = {}

    @property
    def address(self) -> str:
        """``host:port`` as the launchers must dial it."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen (called once by the manager)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        for writer in list(self._writers.values()):
            writer.close()
        self._writers.clear()
        for expected in self._expected.values():
            if not expected.ready.done():
                expected.ready.set_exception(LaunchFailed("the server is shutting down"))
                expected.ready.exception()  # retrieved: nobody may be waiting any more
        self._expected.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def expect(self, instance_id: str, config: dict[str, Any]) -> tuple[str, asyncio.Future[Any]]:
        """Register a launch: returns its secret and a future of its connection info."""
        expected = _Expected(secrets.token_urlsafe(32), config)
        self._expected[instance_id] = expected
        return expected.secret, expected.ready

    def fail(self, instance_id: str, message: str) -> None:
        """Fail a launch that is still waiting (its process ended, say)."""
        expected = self._expected.pop(instance_id, None)
        if expected is not None and not expected.ready.done():
            expected.ready.set_exception(LaunchFailed(message))

    def forget(self, instance_id: str) -> None:
        """Drop everything about an instance that has ended."""
        self.fail(instance_id, "the instance ended")
        writer = self._writers.pop(instance_id, None)
        if writer is not None:
            writer.close()

    async def send(self, instance_id: str, message: dict[str, Any]) -> bool:
        """Send ``message`` to the instance's launcher; False if it is not connected."""
        writer = self._writers.get(instance_id)
        if writer is None or writer.is_closing():
            return False
        writer.write(encode(message))
        try:
            await writer.drain()
        except ConnectionError:
            return False
        return True

    def _authenticate(self, hello: dict[str, Any], nonce: str) -> str | None:
        """The instance id a hello proves, or None (and why, in the log)."""
        instance_id = hello.get("instance_id")
        mac = hello.get("mac")
        expected = self._expected.get(instance_id) if isinstance(instance_id, str) else None
        if expected is None or not isinstance(mac, str):
            self.log.warning(
                "jupyter_lowcost | launch channel: refused a hello for unknown instance %r",
                str(instance_id)[:64],
            )
            return None
        if instance_id in self._writers:
            self.log.warning(
                "jupyter_lowcost | launch channel: refused a second hello for instance %s, "
                "whose launcher is connected",
                instance_id,
            )
            return None
        if not expected.secret or not hmac.compare_digest(sign(expected.secret, nonce), mac):
            self.log.warning(
                "jupyter_lowcost | launch channel: refused a hello for instance %s: %s",
                instance_id,
                "its secret was already used" if not expected.secret else "wrong MAC",
            )
            return None
        expected.secret = None  # one connection per secret, ever
        return instance_id

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        instance_id = None
        try:
            nonce = secrets.token_hex(16)
            writer.write(encode({"type": "challenge", "nonce": nonce}))
            await writer.drain()
            hello = _object(await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT) or b"{}")
            instance_id = self._authenticate(hello, nonce)
            if instance_id is None:
                return
            expected = self._expected[instance_id]
            self._writers[instance_id] = writer
            writer.write(encode({"type": "config", **expected.config}))
            await writer.drain()
            while line := await reader.readline():
                message = _object(line)
                kind = message.get("type")
                if kind == "ready" and not expected.ready.done():
                    info = message.get("connection_info")
                    if not isinstance(info, dict):
                        raise TypeError("a ready message without connection_info")
                    expected.ready.set_result(info)
                elif kind == "failed" and not expected.ready.done():
                    expected.ready.set_exception(LaunchFailed(str(message.get("error", ""))))
                else:
                    self.on_message(instance_id, message)
        except (asyncio.TimeoutError, ConnectionError, ValueError, TypeError) as err:
            self.log.warning(
                "jupyter_lowcost | launch channel%s: %s",
                f" (instance {instance_id})" if instance_id else "",
                err or type(err).__name__,
            )
        finally:
            if instance_id is not None and self._writers.get(instance_id) is writer:
                del self._writers[instance_id]
                self.fail(instance_id, "the launcher disconnected before its kernel was ready")
            writer.close()


def _object(line: bytes) -> dict[str, Any]:
    """One frame as a JSON object; ``ValueError`` or ``TypeError`` for anything else (the
    caller closes the connection)."""
    try:
        message = json.loads(line)
    except RecursionError:
        raise ValueError("a frame nested too deeply") from None
    if not isinstance(message, dict):
        raise TypeError(f"a frame that is not a JSON object: {line[:80]!r}")
    return message
