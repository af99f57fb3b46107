"""The launch channel: how a launcher on an instance talks to the server, and back.

Both ends speak JSON lines over one TCP connection per instance. The server end
(:class:`LaunchChannel`, owned by the manager) listens on ``LowCostApp.channel_ip``; the
launcher end is :mod:`jupyter_lowcost.launcher`. Only the launch that was given the
per-launch secret can use its connection::

    server -> {"type": "challenge", "nonce": N, "version": V}
    launcher -> {"type": "hello", "instance_id": I, "mac": HMAC-SHA256(secret, N),
                 "version": V}          V: jupyter_lowcost.protocol.VERSION, the same both ends
    server -> {"type": "config", ..., "reconnect_secret": S, "orphan_timeout": s,
               "orphan_until": T}      the kernel's session key, transport, ip; how to
                                       come back, and how long to wait for a server
    launcher -> {"type": "ready", "connection_info": {...}}    ports the kernel bound
    server -> {"type": "notice", "deadline": T, "reason": R}   an interruption notice
    launcher -> {"type": "notice", "deadline": T, "reason": R} a notice seen on the instance
    server -> {"type": "ended"}     the server ended the instance: the launcher stops

A launcher that lost its server (a crash, a kill -9, a restart) dials again, with the
reconnect secret instead of the launch secret, to whichever server adopted its instance::

    launcher -> {"type": "hello", "instance_id": I, "mac": HMAC(S, N), "reattach": true}
    server -> {"type": "reattached", "reconnect_secret": S2}    S is spent, S2 is next
    launcher -> {"type": "ready", "connection_info": {...}}    (the same ports)

A secret is good for one connection: once used it can never authenticate again (nor
can an unknown one); a reconnect secret is replaced by a new one at each use, and the
server saves the new one (owner-only) before it sends it. An instance has at most one
live launcher connection; a second hello for it, a wrong MAC, or a frame that is not a
JSON object closes the connection and is logged.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..protocol import VERSION, encode, sign, version_of

#: Seconds a new connection has to prove who it is.
HELLO_TIMEOUT = 10.0


class LaunchFailed(Exception):
    """The launcher went away, or said it failed, before its kernel was ready."""


def _future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


@dataclass
class _Expected:
    #: None once used: a secret is good for one connection.
    secret: str | None
    config: dict[str, Any]
    ready: asyncio.Future[dict[str, Any]] = field(default_factory=_future)
    #: The secret of the launcher's next reconnection (replaced at each use).
    reconnect_secret: str | None = None
    #: Resolved with the connection info a reconnected launcher reports (see
    #: :meth:`LaunchChannel.reattached`).
    back: asyncio.Future[dict[str, Any]] = field(default_factory=_future)


class LaunchChannel:
    """The server end: accepts launchers, hands them their config, relays notices."""

    def __init__(
        self,
        log: logging.Logger,
        on_message: Callable[[str, dict[str, Any]], None],
        host: str = "127.0.0.1",
        port: int = 0,
        on_reconnect_secret: Callable[[str, str], None] | None = None,
    ) -> None:
        self.log = log
        self.on_message = on_message
        #: Called with (instance id, new reconnect secret) before the secret is sent, so
        #: that the caller saves it first (a server killed right after must know it).
        self.on_reconnect_secret = on_reconnect_secret or (lambda _i, _s: None)
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
            for future in (expected.ready, expected.back):
                if not future.done():
                    future.set_exception(LaunchFailed("the server is shutting down"))
                    future.exception()  # retrieved: nobody may be waiting any more
        self._expected.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def expect(self, instance_id: str, config: dict[str, Any]) -> tuple[str, asyncio.Future[Any]]:
        """Register a launch: returns its secret and a future of its connection info.

        The config the launcher receives carries a reconnect secret (saved through
        ``on_reconnect_secret`` first), with which it can come back after losing the
        connection."""
        expected = _Expected(secrets.token_urlsafe(32), config)
        self._expected[instance_id] = expected
        return expected.secret, expected.ready  # type: ignore[return-value]

    def expect_back(self, instance_id: str, reconnect_secret: str) -> asyncio.Future[Any]:
        """Register an instance whose launcher a previous server started (called at
        start-up for each instance to re-attach): a future of the connection info it
        reports when it reconnects with ``reconnect_secret``."""
        expected = _Expected(None, {}, reconnect_secret=reconnect_secret)
        expected.ready.set_result({})
        self._expected[instance_id] = expected
        return expected.back

    def fail(self, instance_id: str, message: str) -> None:
        """Fail a launch, or a re-attach, that is still waiting (its process ended, say)."""
        expected = self._expected.pop(instance_id, None)
        if expected is not None:
            for future in (expected.ready, expected.back):
                if not future.done():
                    future.set_exception(LaunchFailed(message))
                    future.exception()  # retrieved: its waiter may be gone

    def forget(self, instance_id: str) -> None:
        """Drop everything about an instance that has ended; its launcher, if connected,
        is told so (it stops at once instead of waiting for a server to take it back)."""
        self.fail(instance_id, "the instance ended")
        writer = self._writers.pop(instance_id, None)
        if writer is not None:
            if not writer.is_closing():
                writer.write(encode({"type": "ended"}))
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
        """The instance id a hello proves, or None (and why, in the log). A hello with
        ``reattach`` proves itself with the reconnect secret, which is then spent."""
        instance_id = hello.get("instance_id")
        mac = hello.get("mac")
        if version_of(hello) != VERSION:
            self.log.warning(
                "jupyter_lowcost | launch channel: refused a hello for instance %r: it speaks "
                "launch protocol version %s, this server version %s",
                str(instance_id)[:64],
                str(version_of(hello))[:16],
                VERSION,
            )
            return None
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
        reattach = hello.get("reattach") is True
        secret = expected.reconnect_secret if reattach else expected.secret
        if not secret or not hmac.compare_digest(sign(secret, nonce), mac):
            self.log.warning(
                "jupyter_lowcost | launch channel: refused a %shello for instance %s: %s",
                "reconnecting " if reattach else "",
                instance_id,
                "its secret was already used" if not secret else "wrong MAC",
            )
            return None
        # One connection per secret, ever.
        if reattach:
            expected.reconnect_secret = None
        else:
            expected.secret = None
        return instance_id

    def _new_reconnect_secret(self, instance_id: str, expected: _Expected) -> str:
        """Make the launcher's next reconnect secret, saved by the caller before sent."""
        expected.reconnect_secret = secrets.token_urlsafe(32)
        self.on_reconnect_secret(instance_id, expected.reconnect_secret)
        return expected.reconnect_secret

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        instance_id = None
        try:
            nonce = secrets.token_hex(16)
            writer.write(encode({"type": "challenge", "nonce": nonce, "version": VERSION}))
            await writer.drain()
            hello = _object(await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT) or b"{}")
            instance_id = self._authenticate(hello, nonce)
            if instance_id is None:
                return
            expected = self._expected[instance_id]
            self._writers[instance_id] = writer
            reconnect_secret = self._new_reconnect_secret(instance_id, expected)
            if hello.get("reattach") is True:
                self.log.info(
                    "jupyter_lowcost | launch channel: the launcher of instance %s is back",
                    instance_id,
                )
                reply = {"type": "reattached", "reconnect_secret": reconnect_secret}
            else:
                reply = {"type": "config", **expected.config, "reconnect_secret": reconnect_secret}
            writer.write(encode(reply))
            await writer.drain()
            while line := await reader.readline():
                message = _object(line)
                kind = message.get("type")
                if kind == "ready":
                    info = message.get("connection_info")
                    if not isinstance(info, dict):
                        raise TypeError("a ready message without connection_info")
                    if not expected.ready.done():
                        expected.ready.set_result(info)
                    elif not expected.back.done():
                        # (a launcher that comes back says whether its kernel is busy)
                        expected.back.set_result(
                            {
                                **info,
                                "execution_state": message.get("execution_state"),
                                "kernel_info": message.get("kernel_info"),
                            }
                        )
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
                expected = self._expected.get(instance_id)
                if expected is not None and not expected.ready.done():
                    self.fail(instance_id, "the launcher disconnected before its kernel was ready")
                # (a launcher whose kernel runs may come back, with its reconnect secret)
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
