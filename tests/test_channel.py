"""The launch channel: only the launch holding the per-launch secret gets its kernel's key."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Any

import pytest

from jupyter_lowcost.protocol import VERSION, encode, sign
from jupyter_lowcost.server.channel import LaunchChannel, LaunchFailed


async def _dial(
    channel: LaunchChannel, instance_id: str, secret: str, reattach: bool = False
) -> tuple[Any, Any, dict[str, Any] | None]:
    reader, writer = await asyncio.open_connection("127.0.0.1", channel.port)
    challenge = json.loads(await reader.readline())
    hello = {"type": "hello", "instance_id": instance_id, "mac": sign(secret, challenge["nonce"])}
    writer.write(encode({**hello, "reattach": True} if reattach else hello))
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    return reader, writer, (json.loads(line) if line else None)


async def test_only_the_holder_of_the_secret_gets_the_config_and_only_once() -> None:
    messages: list[tuple[str, dict[str, Any]]] = []
    channel = LaunchChannel(logging.getLogger("test"), lambda i, m: messages.append((i, m)))
    await channel.start()
    try:
        secret, ready = channel.expect(
            "inst1", {"key": "kernel-key", "signature_scheme": "hmac-sha256"}
        )

        _, writer, answer = await _dial(channel, "inst1", "wrong-secret")
        assert answer is None  # refused: the connection is closed, nothing is sent
        writer.close()
        _, writer, answer = await _dial(channel, "other", secret)
        assert answer is None
        writer.close()
        assert not ready.done()

        _, writer, config = await _dial(channel, "inst1", secret)
        assert config is not None and config.pop("reconnect_secret")
        assert config == {"type": "config", "key": "kernel-key", "signature_scheme": "hmac-sha256"}
        writer.write(encode({"type": "ready", "connection_info": {"shell_port": 1}}))
        writer.write(encode({"type": "notice", "deadline": 5.0, "reason": "SIGTERM"}))
        await writer.drain()
        assert await asyncio.wait_for(ready, 10) == {"shell_port": 1}

        # The secret was good for one connection only.
        _, second, answer = await _dial(channel, "inst1", secret)
        assert answer is None
        second.close()

        # Notices go both ways on the open connection.
        assert await channel.send("inst1", {"type": "notice", "deadline": 1.0, "reason": "test"})
        for _ in range(100):
            if messages:
                break
            await asyncio.sleep(0.01)
        assert messages == [("inst1", {"type": "notice", "deadline": 5.0, "reason": "SIGTERM"})]
        writer.close()
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
        _, launcher, config = await _dial(channel, "inst1", secret)
        assert config is not None and config["key"] == "kernel-key"
        caplog.clear()
        for forged in ("", secret, "None"):
            _, writer, answer = await _dial(channel, "inst1", forged)
            assert answer is None, f"a hello signed with {forged!r} was accepted"
            writer.close()
        assert "second hello for instance inst1" in caplog.text
        # The real launcher's connection is still the one notices go to.
        assert await channel.send("inst1", {"type": "notice", "deadline": 1.0, "reason": "x"})
        reader = launcher
        launcher.write(encode({"type": "ready", "connection_info": {"shell_port": 1}}))
        await launcher.drain()
        assert await asyncio.wait_for(ready, 10) == {"shell_port": 1}
        # Once the launcher is gone, its used secret still gets nobody in.
        launcher.close()
        await asyncio.sleep(0.1)
        _, writer, answer = await _dial(channel, "inst1", "")
        assert answer is None
        writer.close()
        _, writer, answer = await _dial(channel, "inst1", secret)
        assert answer is None
        writer.close()
        del reader
    finally:
        await channel.stop()


async def test_frames_that_are_not_objects_close_the_connection_without_an_error(
    caplog: Any,
) -> None:
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
    messages: list[tuple[str, dict[str, Any]]] = []
    channel = LaunchChannel(logging.getLogger("test"), lambda i, m: messages.append((i, m)))
    await channel.start()
    try:
        secret, ready = channel.expect("inst1", {"key": "k"})
        for hello in (b"[1, 2]", b'"hello"', b"3", b"null", b"[" * 100000, b"\xff\xfe"):
            reader, writer = await asyncio.open_connection("127.0.0.1", channel.port)
            await reader.readline()
            writer.write(hello + b"\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.readline(), 10) == b""  # closed
            writer.close()
        # After a good hello: garbage frames close that connection; the launch fails
        # cleanly (its future says why) instead of an exception in the server.
        _, writer, config = await _dial(channel, "inst1", secret)
        assert config is not None
        writer.write(b'["ready", {"shell_port": 1}]\n')
        await writer.drain()
        with pytest.raises(LaunchFailed, match="disconnected"):
            await asyncio.wait_for(ready, 10)
        assert "not a JSON object" in caplog.text
        assert messages == []
        assert loop_errors == []
    finally:
        await channel.stop()


async def test_a_launcher_that_lost_its_server_comes_back_with_its_reconnect_secret_once(
    caplog: Any,
) -> None:
    """A restarted server takes a running instance back: only its launcher, proving itself
    with the reconnect secret it was given, which is spent at once (saved before sent)."""
    saved: dict[str, str] = {}
    channel = LaunchChannel(
        logging.getLogger("test"),
        lambda i, m: None,
        on_reconnect_secret=lambda instance_id, secret: saved.update({instance_id: secret}),
    )
    await channel.start()
    try:
        secret, ready = channel.expect("inst1", {"key": "kernel-key"})
        _, launcher, config = await _dial(channel, "inst1", secret)
        assert config is not None and config["reconnect_secret"] == saved["inst1"]
        first = config["reconnect_secret"]
        launcher.write(encode({"type": "ready", "connection_info": {"shell_port": 1}}))
        await launcher.drain()
        await asyncio.wait_for(ready, 10)
        launcher.close()  # the connection is lost (the server went away, say)
        await asyncio.sleep(0.1)

        # Neither the launch secret nor a wrong one brings it back.
        for forged in (secret, "", "wrong"):
            _, writer, answer = await _dial(channel, "inst1", forged, reattach=True)
            assert answer is None, f"a reconnection signed with {forged!r} was accepted"
            writer.close()
        _, launcher, answer = await _dial(channel, "inst1", first, reattach=True)
        assert answer is not None and answer["type"] == "reattached"
        assert "key" not in answer  # the launcher has its kernel's key already
        second = answer["reconnect_secret"]
        assert second != first and saved["inst1"] == second
        launcher.close()
        await asyncio.sleep(0.1)
        # The spent reconnect secret never works again; the new one does, once.
        _, writer, answer = await _dial(channel, "inst1", first, reattach=True)
        assert answer is None
        writer.close()
        _, launcher, answer = await _dial(channel, "inst1", second, reattach=True)
        assert answer is not None and answer["type"] == "reattached"
        launcher.close()
        assert "refused a reconnecting hello for instance inst1" in caplog.text
    finally:
        await channel.stop()


async def test_a_restarted_server_awaits_the_instances_it_takes_back() -> None:
    channel = LaunchChannel(logging.getLogger("test"), lambda i, m: None)
    await channel.start()
    try:
        back = channel.expect_back("inst1", "saved-secret")
        _, launcher, answer = await _dial(channel, "inst1", "saved-secret", reattach=True)
        assert answer is not None and answer["type"] == "reattached"
        launcher.write(encode({"type": "ready", "connection_info": {"shell_port": 7}}))
        await launcher.drain()
        assert await asyncio.wait_for(back, 10) == {
            "shell_port": 7,
            "execution_state": None,
            "kernel_info": None,
        }
        # An instance nobody expects is refused, whatever it signs.
        _, writer, answer = await _dial(channel, "inst2", "saved-secret", reattach=True)
        assert answer is None
        writer.close()
        launcher.close()
    finally:
        await channel.stop()


async def test_each_end_refuses_a_peer_that_speaks_another_protocol_version(
    caplog: Any,
) -> None:
    channel = LaunchChannel(logging.getLogger("test"), lambda i, m: None)
    await channel.start()
    try:
        secret, ready = channel.expect("inst1", {"key": "kernel-key"})
        reader, writer = await asyncio.open_connection("127.0.0.1", channel.port)
        challenge = json.loads(await reader.readline())
        assert challenge["version"] == VERSION
        hello = {"type": "hello", "instance_id": "inst1", "mac": sign(secret, challenge["nonce"])}
        writer.write(encode({**hello, "version": VERSION + 1}))
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 10) == b""  # refused, closed
        writer.close()
        assert f"launch protocol version {VERSION + 1}" in caplog.text
        assert f"this server version {VERSION}" in caplog.text
        # The refusal spent nothing: the launch speaking this version still gets its config.
        _, writer, config = await _dial(channel, "inst1", secret)
        assert config is not None and config["type"] == "config"
        writer.close()
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
