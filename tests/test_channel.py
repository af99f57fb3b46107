"""The launch channel: only the launch holding the per-launch secret gets its kernel's key."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from jupyter_lowcost.channel import LaunchChannel, encode, sign


async def _dial(
    channel: LaunchChannel, instance_id: str, secret: str
) -> tuple[Any, Any, dict[str, Any] | None]:
    reader, writer = await asyncio.open_connection("127.0.0.1", channel.port)
    challenge = json.loads(await reader.readline())
    writer.write(
        encode(
            {"type": "hello", "instance_id": instance_id, "mac": sign(secret, challenge["nonce"])}
        )
    )
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
