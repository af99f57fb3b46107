"""The launch channel: how a launcher on an instance talks to the server, and back.

Both ends speak JSON lines over one TCP connection per instance. The server end
(:class:`LaunchChannel`, owned by the manager) listens on ``LowCostApp.channel_ip``; the
launcher end is :mod:`jupyter_lowcost.launcher`. The two ends prove to each other that
they hold the same secret K (the per-launch secret, or a reconnect secret) before either
says anything else; the server first, because a launcher may dial a port that is no
longer its server's (anyone may listen on a dead server's port)::

    server -> {"type": "challenge", "nonce": Ns, "version": V}
    launcher -> {"type": "open", "key": key_id(K), "nonce": Nl, "version": V}
    server -> {"type": "proof", "proof": proof(K, "server", Ns, Nl)}
    launcher -> {"type": "hello", "proof": proof(K, "launcher", Ns, Nl)}

V is jupyter_lowcost.protocol.VERSION, the same both ends; the functions are those of
:mod:`jupyter_lowcost.protocol`: HMAC-SHA256 keyed with K over a label of their own and
both nonces, so that a proof is good for this connection only (each end makes a fresh
nonce) and one end's proof is never the other's. The key id, a one-way value of K, lets
the server find which instance and which of its secrets this is; the launcher names its
instance to nobody, and says nothing more to a peer whose proof is wrong: it closes the
connection, logs it, and (when it is reconnecting) keeps its reconnect secret and dials
again later (the real server may come).

From then on every frame, both ways, is sealed with a key both ends derive from K and
the nonces (``{"frame": JSON text, "mac": M}``, :class:`~jupyter_lowcost.protocol.Session`),
numbered in each direction: a frame not from the other end of this handshake, or out of
order, closes the connection. (A local user cannot inject into an established TCP
connection, but a peer that relays a handshake could, without this.)::

    server -> {"type": "config", ..., "orphan_timeout": s, "orphan_until": T}
                                       the kernel's session key, transport, ip; how long
                                       to wait for a server when it is lost
    launcher -> {"type": "ready", "connection_info": {...}}    ports the kernel bound
    server -> {"type": "notice", "deadline": T, "reason": R}   an interruption notice
    launcher -> {"type": "notice", "deadline": T, "reason": R} a notice seen on the instance
    server -> {"type": "ended"}     the server ended the instance: the launcher stops

A launcher that lost its server (a crash, a kill -9, a restart) dials again, with the
reconnect secret instead of the launch secret, to whichever server adopted its instance:
the same handshake, then::

    server -> {"type": "reattached"}
    launcher -> {"type": "ready", "connection_info": {...}}    (the same ports)

A secret is good for one connection: once used it can never authenticate again (nor
can an unknown one). After each handshake the next reconnect secret is
``next_secret(K, Ns, Nl)``, derived by both ends and never sent; the server saves it
(owner-only) before its config or reattached frame, and the launcher takes it when that
frame arrives. An instance has at most one live launcher connection; a second opening for
it, a wrong proof or MAC, or a frame that is not a JSON object closes the connection and
is logged.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
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

#: Seconds a new connection has for each step of its handshake.
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


@dataclass
class _Link:
    """An instance's authenticated launcher connection."""

    writer: asyncio.StreamWriter
    session: Session

    def write(self, message: dict[str, Any]) -> None:
        self.writer.write(self.session.seal(message))


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
        #: Called with (instance id, new reconnect secret) before the launcher is told
        #: the handshake is done, so that the caller saves it first (a server killed
        #: right after must know it).
        self.on_reconnect_secret = on_reconnect_secret or (lambda _i, _s: None)
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None
        self._expected: dict[str, _Expected] = {}
        self._links: dict[str, _Link] = {}

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
        for link in list(self._links.values()):
            link.writer.close()
        self._links.clear()
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

        The handshake also gives the launcher a reconnect secret (saved through
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
        link = self._links.pop(instance_id, None)
        if link is not None:
            if not link.writer.is_closing():
                link.write({"type": "ended"})
            link.writer.close()

    async def send(self, instance_id: str, message: dict[str, Any]) -> bool:
        """Send ``message`` to the instance's launcher; False if it is not connected."""
        link = self._links.get(instance_id)
        if link is None or link.writer.is_closing():
            return False
        link.write(message)
        try:
            await link.writer.drain()
        except ConnectionError:
            return False
        return True

    def _refuse(self, why: str, *args: Any) -> None:
        self.log.warning("jupyter_lowcost | launch channel: refused a launcher: " + why, *args)

    def _find(self, opening: dict[str, Any]) -> tuple[str, str, bool] | None:
        """The instance id, secret and whether it is a reconnection that a launcher's
        opening names by its key id; None (and why, in the log) if it names none."""
        if version_of(opening) != VERSION:
            self._refuse(
                "it speaks launch protocol version %s, this server version %s",
                str(version_of(opening))[:16],
                VERSION,
            )
            return None
        key = opening.get("key")
        if not isinstance(opening.get("nonce"), str) or not isinstance(key, str):
            self._refuse("an opening without a nonce or key id")
            return None
        for instance_id, expected in self._expected.items():
            for secret, reattach in ((expected.secret, False), (expected.reconnect_secret, True)):
                if secret and key_id(secret) == key:
                    if instance_id in self._links:
                        self._refuse(
                            "a second connection for instance %s, whose launcher is connected",
                            instance_id,
                        )
                        return None
                    return instance_id, secret, reattach
        self._refuse("its secret is unknown, or was already used")
        return None

    def _spend(self, instance_id: str, secret: str, reattach: bool) -> _Expected | None:
        """Spend ``secret`` (one connection per secret, ever) unless it was spent, or the
        instance connected, while this handshake waited for the launcher's proof."""
        expected = self._expected.get(instance_id)
        if expected is None or instance_id in self._links:
            return None
        if reattach and expected.reconnect_secret == secret:
            expected.reconnect_secret = None
        elif not reattach and expected.secret == secret:
            expected.secret = None
        else:
            return None
        return expected

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        instance_id = None
        link = None
        try:
            server_nonce = nonce()
            writer.write(encode({"type": "challenge", "nonce": server_nonce, "version": VERSION}))
            await writer.drain()
            opening = decode(await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT) or b"{}")
            found = self._find(opening)
            if found is None:
                return
            claimed, secret, reattach = found
            launcher_nonce = opening["nonce"]
            server_proof = proof(secret, SERVER, server_nonce, launcher_nonce)
            writer.write(encode({"type": "proof", "proof": server_proof}))
            await writer.drain()
            hello = decode(await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT) or b"{}")
            if not proved(hello.get("proof"), secret, LAUNCHER, server_nonce, launcher_nonce):
                self._refuse(
                    "a %sconnection for instance %s with a wrong proof",
                    "re" if reattach else "",
                    claimed,
                )
                return
            expected = self._spend(claimed, secret, reattach)
            if expected is None:
                self._refuse("a second connection for instance %s", claimed)
                return
            instance_id = claimed
            link = _Link(writer, Session(secret, server_nonce, launcher_nonce, SERVER))
            self._links[instance_id] = link
            expected.reconnect_secret = next_secret(secret, server_nonce, launcher_nonce)
            self.on_reconnect_secret(instance_id, expected.reconnect_secret)
            if reattach:
                self.log.info(
                    "jupyter_lowcost | launch channel: the launcher of instance %s is back",
                    instance_id,
                )
                link.write({"type": "reattached"})
            else:
                link.write({"type": "config", **expected.config})
            await writer.drain()
            while line := await reader.readline():
                message = link.session.open(line)
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
            if instance_id is not None and self._links.get(instance_id) is link:
                del self._links[instance_id]
                expected = self._expected.get(instance_id)
                if expected is not None and not expected.ready.done():
                    self.fail(instance_id, "the launcher disconnected before its kernel was ready")
                # (a launcher whose kernel runs may come back, with its reconnect secret)
            writer.close()
