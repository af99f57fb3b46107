"""The launch channel: only the launch holding the per-launch secret gets its kernel's key,
and a launcher believes only a server that proves it holds the same secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import process_alive, wait_until
from test_server_restart import Notebook, Server, launchers, poll_until

from jupyter_lowcost.instance import launcher as launcher_module
from jupyter_lowcost.protocol import (
    LAUNCHER,
    SERVER,
    VERSION,
    Session,
    encode,
    key_id,
    next_secret,
    proof,
)
from jupyter_lowcost.server.channel import LaunchChannel, LaunchFailed


@dataclass
class Dialed:
    """A launcher's connection as the tests speak it (with the protocol's functions): the
    server's first sealed frame (None: refused), and the next reconnect secret."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    answer: dict[str, Any] | None
    session: Session | None = None
    reconnect_secret: str = ""

    async def send(self, message: dict[str, Any]) -> None:
        assert self.session is not None
        self.writer.write(self.session.seal(message))
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


async def _dial(channel: LaunchChannel, secret: str, version: int = VERSION) -> Dialed:
    reader, writer = await asyncio.open_connection("127.0.0.1", channel.port)
    challenge = json.loads(await reader.readline())
    server_nonce, launcher_nonce = challenge["nonce"], "n" * 32
    opening = {"type": "open", "key": key_id(secret), "nonce": launcher_nonce}
    writer.write(encode({**opening, "version": version}))
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    if not line:
        return Dialed(reader, writer, None)
    assert json.loads(line)["proof"] == proof(secret, SERVER, server_nonce, launcher_nonce)
    writer.write(
        encode({"type": "hello", "proof": proof(secret, LAUNCHER, server_nonce, launcher_nonce)})
    )
    await writer.drain()
    session = Session(secret, server_nonce, launcher_nonce, LAUNCHER)
    line = await asyncio.wait_for(reader.readline(), 10)
    answer = session.open(line) if line else None
    return Dialed(
        reader, writer, answer, session, next_secret(secret, server_nonce, launcher_nonce)
    )


async def test_only_the_holder_of_the_secret_gets_the_config_and_only_once() -> None:
    messages: list[tuple[str, dict[str, Any]]] = []
    channel = LaunchChannel(logging.getLogger("test"), lambda i, m: messages.append((i, m)))
    await channel.start()
    try:
        secret, ready = channel.expect(
            "inst1", {"key": "kernel-key", "signature_scheme": "hmac-sha256"}
        )

        refused = await _dial(channel, "wrong-secret")
        assert refused.answer is None  # refused: the connection is closed, nothing is sent
        refused.close()
        assert not ready.done()

        launcher = await _dial(channel, secret)
        # (the next reconnect secret never travels: both ends derive it)
        assert launcher.answer == {
            "type": "config",
            "key": "kernel-key",
            "signature_scheme": "hmac-sha256",
        }
        await launcher.send({"type": "ready", "connection_info": {"shell_port": 1}})
        await launcher.send({"type": "notice", "deadline": 5.0, "reason": "SIGTERM"})
        assert await asyncio.wait_for(ready, 10) == {"shell_port": 1}

        # The secret was good for one connection only.
        second = await _dial(channel, secret)
        assert second.answer is None
        second.close()

        # Notices go both ways on the open connection.
        assert await channel.send("inst1", {"type": "notice", "deadline": 1.0, "reason": "test"})
        assert launcher.session is not None
        notice = launcher.session.open(await launcher.reader.readline())
        assert notice == {"type": "notice", "deadline": 1.0, "reason": "test"}
        for _ in range(100):
            if messages:
                break
            await asyncio.sleep(0.01)
        assert messages == [("inst1", {"type": "notice", "deadline": 5.0, "reason": "SIGTERM"})]
        launcher.close()
    finally:
        await channel.stop()


async def test_a_used_secret_never_authenticates_and_one_launcher_per_instance(
    caplog: Any,
) -> None:
    """The takeover: after a launch, a hello signed with the empty string (what the used
    secret was blanked to) got the kernel's session key."""
    messages: list[tuple[str, dict[str, Any]]] = []
    channel = LaunchChannel(logging.getLogger("test"), lambda i, m: messages.append((i, m)))
    await channel.start()
    try:
        secret, ready = channel.expect("inst1", {"key": "kernel-key"})
        launcher = await _dial(channel, secret)
        assert launcher.answer is not None and launcher.answer["key"] == "kernel-key"
        caplog.clear()
        for forged in ("", secret, "None", launcher.reconnect_secret):
            dialed = await _dial(channel, forged)
            assert dialed.answer is None, f"a hello signed with {forged!r} was accepted"
            dialed.close()
        assert "a second connection for instance inst1" in caplog.text
        # The real launcher's connection is still the one notices go to.
        assert await channel.send("inst1", {"type": "notice", "deadline": 1.0, "reason": "x"})
        await launcher.send({"type": "ready", "connection_info": {"shell_port": 1}})
        assert await asyncio.wait_for(ready, 10) == {"shell_port": 1}
        # Once the launcher is gone, its used secret still gets nobody in.
        launcher.close()
        await wait_until(lambda: not channel._links)
        for forged in ("", secret):
            dialed = await _dial(channel, forged)
            assert dialed.answer is None
            dialed.close()
    finally:
        await channel.stop()


async def test_frames_that_are_not_objects_or_not_sealed_close_the_connection(
    caplog: Any,
) -> None:
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
    messages: list[tuple[str, dict[str, Any]]] = []
    channel = LaunchChannel(logging.getLogger("test"), lambda i, m: messages.append((i, m)))
    await channel.start()
    try:
        secret, ready = channel.expect("inst1", {"key": "k"})
        for opening in (b"[1, 2]", b'"hello"', b"3", b"null", b"[" * 100000, b"\xff\xfe"):
            reader, writer = await asyncio.open_connection("127.0.0.1", channel.port)
            await reader.readline()
            writer.write(opening + b"\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.readline(), 10) == b""  # closed
            writer.close()
        # After a good handshake: a frame that is garbage, or not sealed, or sealed for
        # another connection, closes that connection; the launch fails cleanly (its
        # future says why) instead of an exception in the server.
        launcher = await _dial(channel, secret)
        assert launcher.answer is not None
        launcher.writer.write(b'["ready", {"shell_port": 1}]\n')
        await launcher.writer.drain()
        with pytest.raises(LaunchFailed, match="disconnected"):
            await asyncio.wait_for(ready, 10)
        launcher.close()
        assert "not a JSON object" in caplog.text

        for forged in (
            encode({"type": "ready", "connection_info": {"shell_port": 1}}),
            Session("another secret", "a", "b", LAUNCHER).seal({"type": "notice"}),
        ):
            secret, ready = channel.expect("inst1", {"key": "k"})
            launcher = await _dial(channel, secret)
            assert launcher.answer is not None
            launcher.writer.write(forged)
            await launcher.writer.drain()
            with pytest.raises(LaunchFailed, match="disconnected"):
                await asyncio.wait_for(ready, 10)
            launcher.close()
        assert "not sealed" in caplog.text and "wrong MAC" in caplog.text
        assert messages == []
        assert loop_errors == []
    finally:
        await channel.stop()


async def test_a_launcher_that_lost_its_server_comes_back_with_its_reconnect_secret_once(
    caplog: Any,
) -> None:
    """A restarted server takes a running instance back: only its launcher, proving itself
    with the reconnect secret of its last connection, which is spent at once (the next one
    saved before the launcher is answered)."""
    saved: dict[str, str] = {}
    channel = LaunchChannel(
        logging.getLogger("test"),
        lambda i, m: None,
        on_reconnect_secret=lambda instance_id, secret: saved.update({instance_id: secret}),
    )
    await channel.start()
    try:
        secret, ready = channel.expect("inst1", {"key": "kernel-key"})
        launcher = await _dial(channel, secret)
        assert launcher.answer is not None and launcher.reconnect_secret == saved["inst1"]
        first = launcher.reconnect_secret
        await launcher.send({"type": "ready", "connection_info": {"shell_port": 1}})
        await asyncio.wait_for(ready, 10)
        launcher.close()  # the connection is lost (the server went away, say)
        await wait_until(lambda: not channel._links)

        # Neither the launch secret nor a wrong one brings it back.
        for forged in (secret, "", "wrong"):
            dialed = await _dial(channel, forged)
            assert dialed.answer is None, f"a reconnection signed with {forged!r} was accepted"
            dialed.close()
        launcher = await _dial(channel, first)
        assert launcher.answer == {"type": "reattached"}  # (it has its kernel's key already)
        second = launcher.reconnect_secret
        assert second != first and saved["inst1"] == second
        launcher.close()
        await wait_until(lambda: not channel._links)
        # The spent reconnect secret never works again; the new one does, once.
        dialed = await _dial(channel, first)
        assert dialed.answer is None
        dialed.close()
        launcher = await _dial(channel, second)
        assert launcher.answer == {"type": "reattached"}
        launcher.close()
        assert "its secret is unknown, or was already used" in caplog.text
    finally:
        await channel.stop()


async def test_a_restarted_server_awaits_the_instances_it_takes_back() -> None:
    channel = LaunchChannel(logging.getLogger("test"), lambda i, m: None)
    await channel.start()
    try:
        back = channel.expect_back("inst1", "saved-secret")
        launcher = await _dial(channel, "saved-secret")
        assert launcher.answer == {"type": "reattached"}
        await launcher.send({"type": "ready", "connection_info": {"shell_port": 7}})
        assert await asyncio.wait_for(back, 10) == {
            "shell_port": 7,
            "execution_state": None,
            "kernel_info": None,
        }
        # A secret nobody expects is refused.
        dialed = await _dial(channel, "another-secret")
        assert dialed.answer is None
        dialed.close()
        launcher.close()
    finally:
        await channel.stop()


async def test_each_end_refuses_a_peer_that_speaks_another_protocol_version(
    caplog: Any,
) -> None:
    channel = LaunchChannel(logging.getLogger("test"), lambda i, m: None)
    await channel.start()
    try:
        secret, _ = channel.expect("inst1", {"key": "kernel-key"})
        dialed = await _dial(channel, secret, version=VERSION + 1)
        assert dialed.answer is None  # refused, closed
        dialed.close()
        assert f"launch protocol version {VERSION + 1}" in caplog.text
        assert f"this server version {VERSION}" in caplog.text
        # The refusal spent nothing: the launch speaking this version still gets its config.
        launcher = await _dial(channel, secret)
        assert launcher.answer is not None and launcher.answer["type"] == "config"
        launcher.close()
    finally:
        await channel.stop()

    # A launcher that a server of another version challenges stops, and says why.
    async def newer_server(reader: Any, writer: Any) -> None:
        writer.write(encode({"type": "challenge", "nonce": "n", "version": VERSION + 1}))
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(newer_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = {
        **os.environ,
        "JUPYTER_LOWCOST_CHANNEL": f"127.0.0.1:{port}",
        "JUPYTER_LOWCOST_INSTANCE_ID": "inst1",
        "JUPYTER_LOWCOST_LAUNCH_SECRET": "s",
    }
    launcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jupyter_lowcost.launcher", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(launcher.communicate(), 60)
    server.close()
    assert launcher.returncode != 0
    assert f"the server speaks launch protocol version {VERSION + 1}" in err.decode()


class Impostor:
    """What a local user can run once a server is gone: a server on the port its launchers
    dial, which speaks the launch protocol without knowing any secret. It forges what it
    cannot know (the proof, a config, a reconnect secret), tries to end the instance and to
    send it a notice, and records every line a launcher sends it.

    ``first`` is its first frame; ``answer`` what it sends back to each line (by default:
    a forged proof to an opening, then the frames a launcher must never obey)."""

    def __init__(
        self,
        port: int = 0,
        first: dict[str, Any] | None = None,
        answer: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.first = first or {"type": "challenge", "nonce": "0" * 32, "version": VERSION}
        self.answer = answer or self.forge
        #: Every line received, and how many connections sent at least one.
        self.heard: list[bytes] = []
        self.spoken_to = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def forge(message: dict[str, Any]) -> list[dict[str, Any]]:
        attack = [
            {"type": "reattached", "reconnect_secret": "the impostor's"},
            {"type": "notice", "deadline": time.time() + 600, "reason": "a fake notice"},
            {"type": "ended"},
        ]
        if message.get("type") == "open":
            return [{"type": "proof", "proof": "0" * 64}, *attack]
        return attack

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock, sock.makefile("rb") as lines:
            try:
                sock.sendall(encode(self.first))
                for number, line in enumerate(lines):
                    self.heard.append(line)
                    self.spoken_to += number == 0
                    for frame in self.answer(json.loads(line)):
                        sock.sendall(encode(frame))
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self.listener.close()


async def test_a_launch_whose_server_is_gone_tells_an_impostor_nothing() -> None:
    """The launcher speaks first to whatever listens at the address it was given: nothing
    that names the instance or its kernel goes to a peer that has not proved it holds the
    launch secret, and the launch stops, saying why."""
    impostor = Impostor()
    env = {
        **os.environ,
        "JUPYTER_LOWCOST_CHANNEL": f"127.0.0.1:{impostor.port}",
        "JUPYTER_LOWCOST_INSTANCE_ID": "inst-secret-name",
        "JUPYTER_LOWCOST_LAUNCH_SECRET": "the launch secret",
    }
    launcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jupyter_lowcost.launcher", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(launcher.communicate(), 60)
    impostor.close()
    assert launcher.returncode != 0
    assert "did not prove" in err.decode()
    heard = b"".join(impostor.heard)
    assert b"inst-secret-name" not in heard and b"hello" not in heard
    assert b"connection_info" not in heard and b"the launch secret" not in heard


async def test_a_recorded_server_proof_convinces_no_launcher(monkeypatch: Any) -> None:
    """A peer that relayed one handshake between a launcher and its server (keeping the
    launcher's hello from the server) replays what it recorded: the server's frames to
    the launcher's next attempt, the launcher's to the server. Neither believes it; the
    launcher keeps its reconnect secret, and its server still takes it back."""
    monkeypatch.setattr(launcher_module, "_log", io.StringIO())
    channel = LaunchChannel(logging.getLogger("test"), lambda i, m: None)
    await channel.start()
    relay = impostor = None
    try:
        back = channel.expect_back("inst1", "the reconnect secret")
        reattach = launcher_module.Reattach(
            instance_id="inst1",
            address=channel.address,
            channel_file="",
            reconnect_secret="the reconnect secret",
            connection_info={"shell_port": 7},
            orphan_timeout=60,
            orphan_until=None,
        )
        from_server: list[bytes] = []
        from_launcher: list[bytes] = []

        async def record(reader: Any, writer: Any) -> None:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", channel.port)
            for _ in range(2):  # the challenge and the opening, the proof and the hello
                from_server.append(await server_reader.readline())
                writer.write(from_server[-1])
                from_launcher.append(await reader.readline())
                if len(from_launcher) == 1:
                    server_writer.write(from_launcher[-1])
            server_writer.close()
            writer.close()

        relay = await asyncio.start_server(record, "127.0.0.1", 0)
        relayed = launcher_module.Channel(f"127.0.0.1:{relay.sockets[0].getsockname()[1]}")
        with pytest.raises(launcher_module.HandshakeFailed):
            await asyncio.to_thread(launcher_module._reattach_once, relayed, reattach)
        relayed.close()
        assert [json.loads(line)["type"] for line in from_server] == ["challenge", "proof"]
        assert reattach.reconnect_secret == "the reconnect secret"

        # The server's frames, replayed to the launcher's next attempt.
        recorded = [json.loads(line) for line in from_server]
        impostor = Impostor(first=recorded[0], answer=lambda message: [recorded[1]])
        fooled = launcher_module.Channel(f"127.0.0.1:{impostor.port}")
        with pytest.raises(launcher_module.NotTheServer):
            await asyncio.to_thread(launcher_module._reattach_once, fooled, reattach)
        fooled.close()
        assert [json.loads(line)["type"] for line in impostor.heard] == ["open"]
        assert b"inst1" not in b"".join(impostor.heard)
        assert reattach.reconnect_secret == "the reconnect secret"

        # The launcher's frames, replayed to the server.
        reader, writer = await asyncio.open_connection("127.0.0.1", channel.port)
        await reader.readline()
        writer.write(from_launcher[0])
        assert json.loads(await reader.readline())["type"] == "proof"
        writer.write(from_launcher[1])
        assert await asyncio.wait_for(reader.readline(), 10) == b""  # refused
        writer.close()
        assert not back.done()

        # Its server, still waiting for it, takes it back.
        real = launcher_module.Channel(channel.address)
        assert await asyncio.to_thread(launcher_module._reattach_once, real, reattach)
        assert (await asyncio.wait_for(back, 10))["shell_port"] == 7
        assert reattach.reconnect_secret != "the reconnect secret"
        real.close()
    finally:
        if relay is not None:
            relay.close()
        if impostor is not None:
            impostor.close()
        await channel.stop()


def test_a_launcher_obeys_no_impostor_on_its_dead_servers_port(tmp_path: Path) -> None:
    """After a server dies, a local user binds its freed channel port: the launcher tells
    it nothing, takes no notice, end or secret from it, and the next real server takes the
    kernel back alive (the same process, its variables in memory, no checkpoint)."""
    server = Server(tmp_path)
    server.start()
    impostor = None
    try:
        notebook = Notebook(server, "kept.ipynb")
        _, pid = notebook.run(
            "import os, jupyter_lowcost\nx = 41\nheard = []\n"
            "jupyter_lowcost.on_notice(lambda n: heard.append(n.reason))\nprint(os.getpid())"
        )
        [instance] = server.get("instances").json()
        launcher_pid = launchers()[instance["id"]]
        channel_file = tmp_path / "data" / "lowcost" / "channels" / f"{instance['id']}.json"
        port = int(json.loads(channel_file.read_text())["address"].rpartition(":")[2])

        server.kill_hard()
        impostor = poll_until(lambda: _bind(port), 30, "the freed channel port")
        # The launcher dials it again and again (it may be the real server, come back).
        poll_until(
            lambda: impostor.spoken_to >= 3 or not process_alive(launcher_pid),
            60,
            "the launcher to dial the impostor",
        )
        impostor.close()
        assert process_alive(launcher_pid), "the impostor ended the instance"
        heard = b"".join(impostor.heard)
        assert instance["id"].encode() not in heard
        assert b"hello" not in heard and b"connection_info" not in heard

        server.start()
        reply, text = notebook.run("print(os.getpid(), x + 1, heard, bool(jupyter_lowcost.notice))")
        assert text == f"{pid.strip()} 42 [] False\n"
        assert reply["execution_count"] == 2
        model = server.get(f"kernels/{notebook.kernel_id}").json()
        assert model["restored"] is None
        assert model["instance"]["id"] == instance["id"]
        assert "re-attached" in model["instance"]["reason"]
        log = (tmp_path / "data" / "lowcost" / "logs" / f"{instance['id']}.log").read_text()
        assert f"127.0.0.1:{port} is not this instance's server" in log
    finally:
        if impostor is not None:
            impostor.close()
        server.stop()


def _bind(port: int) -> Impostor | None:
    try:
        return Impostor(port)
    except OSError:  # (the dead server's port is not free yet)
        return None
