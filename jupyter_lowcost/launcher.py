"""``python -m jupyter_lowcost.launcher``: what every backend runs on an instance.

The one code path for all backends. Started by a backend with the environment the
manager prepared, it:

1. dials the server's launch channel (``JUPYTER_LOWCOST_CHANNEL``) and proves, with the
   per-launch secret, that it is this launch (the secret is removed from the environment
   before any user code runs);
2. receives the kernel's session key and the address to bind, and starts ipykernel in this
   very process on ports it picks itself;
3. reports those ports to the server, then serves the kernel;
4. turns every interruption notice the server sends into what the kernel sees: the
   ``jupyter_lowcost.notice`` flag, the ``SIGUSR1`` signal and the ``on_notice`` callbacks;
5. where SIGTERM is the notice (a Slurm job: preemption and the time limit send SIGTERM,
   then SIGKILL ``KillWait`` seconds later; ``JUPYTER_LOWCOST_SIGTERM_NOTICE`` gives those
   seconds), delivers that notice to the kernel at once and reports it to the server.

The kernel binds ``config["ip"]``; ``auto`` means the address through which this launcher
reached the server, which the server can reach back (a compute node's address).

If the server goes away and does not come back within ``JUPYTER_LOWCOST_ORPHAN_TIMEOUT``
seconds (default 30), the launcher stops the kernel: an instance never outlives the
server that knows about it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

from . import interruption
from .channel import encode, sign

ENV_CHANNEL = "JUPYTER_LOWCOST_CHANNEL"
ENV_INSTANCE_ID = "JUPYTER_LOWCOST_INSTANCE_ID"
ENV_SECRET = "JUPYTER_LOWCOST_LAUNCH_SECRET"
ENV_ORPHAN_TIMEOUT = "JUPYTER_LOWCOST_ORPHAN_TIMEOUT"
ENV_SIGTERM_NOTICE = "JUPYTER_LOWCOST_SIGTERM_NOTICE"

PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


class _ForgivingStream:
    """The launcher's stdout or stderr (its log file): a write that fails, on a full disk,
    costs that line of the log, not the kernel (ipykernel prints to ``sys.__stdout__``
    while it starts)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _forgive_log_errors() -> None:
    for name in ("stdout", "stderr"):
        stream = _ForgivingStream(getattr(sys, f"__{name}__"))
        setattr(sys, f"__{name}__", stream)
        setattr(sys, name, stream)


def is_ipykernel_command(argv: list[str]) -> bool:
    """True for ``python -m ipykernel_launcher ...``: the kernels the launcher can run."""
    return len(argv) >= 3 and argv[1] == "-m" and argv[2] in ("ipykernel_launcher", "ipykernel")


class Channel:
    """The launcher's end of the launch channel (see ``jupyter_lowcost.channel``)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.reader = self.sock.makefile("rb")
        self._send_lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            self.sock.sendall(encode(message))

    def receive(self) -> dict[str, Any] | None:
        line = self.reader.readline()
        return json.loads(line) if line else None


def _listen(channel: Channel, orphan_timeout: float) -> None:
    """Channel thread: deliver notices; stop the kernel if the server is gone for good."""
    while True:
        try:
            message = channel.receive()
        except (OSError, ValueError):
            message = None
        if message is None:
            break
        if message.get("type") == "notice":
            interruption.deliver(float(message["deadline"]), str(message.get("reason", "")))
    print(
        f"jupyter_lowcost launcher: lost the server; stopping the kernel in {orphan_timeout:g} s",
        file=sys.stderr,
        flush=True,
    )
    time.sleep(orphan_timeout)
    os._exit(3)


def _report_sigterm(channel: Channel, notice_seconds: float) -> None:
    """Make SIGTERM an interruption notice ``notice_seconds`` long: the kernel sees it at
    once (flag, callbacks), and the server hears of it from a thread (the handler may
    have interrupted the main thread anywhere)."""

    def handle(signum: int, frame: Any) -> None:
        deadline = time.time() + notice_seconds
        reason = f"the instance received SIGTERM: it stops in {notice_seconds:g} s"

        def report() -> None:
            try:
                channel.send({"type": "notice", "deadline": deadline, "reason": reason})
            except OSError:
                pass

        threading.Thread(target=report, name="lowcost-sigterm", daemon=True).start()
        interruption.deliver(deadline, reason)

    signal.signal(signal.SIGTERM, handle)


def main() -> None:
    """Entry point of ``python -m jupyter_lowcost.launcher``."""
    _forgive_log_errors()
    try:
        address = os.environ.pop(ENV_CHANNEL)
        instance_id = os.environ.pop(ENV_INSTANCE_ID)
        secret = os.environ.pop(ENV_SECRET)
    except KeyError as err:
        sys.exit(
            f"jupyter_lowcost launcher: {err.args[0]} is not set; backends start this "
            "module for the server, it is not meant to be run by hand"
        )
    orphan_timeout = float(os.environ.get(ENV_ORPHAN_TIMEOUT, "30"))

    channel = Channel(address)
    challenge = channel.receive() or {}
    channel.send(
        {"type": "hello", "instance_id": instance_id, "mac": sign(secret, challenge["nonce"])}
    )
    config = channel.receive()
    if config is None or config.get("type") != "config":
        sys.exit("jupyter_lowcost launcher: the server refused this launch")
    channel.sock.settimeout(None)
    ip = config["ip"]
    if ip == "auto":
        ip = channel.sock.getsockname()[0]

    try:
        from ipykernel.kernelapp import IPKernelApp

        workdir = tempfile.mkdtemp(prefix="jupyter-lowcost-")
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        connection_file = os.path.join(workdir, "kernel.json")
        with open(connection_file, "w") as handle:
            json.dump(
                {
                    "key": config["key"],
                    "signature_scheme": config["signature_scheme"],
                    "transport": config.get("transport", "tcp"),
                    "ip": ip,
                    **{name: 0 for name in PORT_NAMES},
                },
                handle,
            )
        os.chmod(connection_file, 0o600)
        interruption.install_signal_handler()
        sigterm_notice = os.environ.pop(ENV_SIGTERM_NOTICE, "")
        if sigterm_notice:
            _report_sigterm(channel, float(sigterm_notice))
        app = IPKernelApp.instance()
        app.initialize(["-f", connection_file, "--IPKernelApp.extra_extensions=jupyter_lowcost"])
        ports = {name: getattr(app, name) for name in PORT_NAMES}
    except Exception:
        channel.send({"type": "failed", "error": traceback.format_exc()})
        raise
    channel.send(
        {
            "type": "ready",
            "connection_info": {"ip": ip, "transport": app.transport, **ports},
        }
    )
    threading.Thread(
        target=_listen, args=(channel, orphan_timeout), name="lowcost-channel", daemon=True
    ).start()
    app.start()


if __name__ == "__main__":
    main()
