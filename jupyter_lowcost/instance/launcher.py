"""The launcher: what every backend runs on an instance (``python -m jupyter_lowcost.launcher``).

The one code path for all backends. Started by a backend with the environment the
manager prepared, it:

1. dials the server's launch channel (``JUPYTER_LOWCOST_CHANNEL``); once the server has
   proved that it holds the per-launch secret, proves that it is this launch (the secret is
   removed from the environment before any user code runs; a peer that cannot prove it is
   told nothing and the launch stops);
2. receives the kernel's session key and the address to bind, and starts ipykernel in this
   very process on ports it picks itself;
3. reports those ports to the server, then serves the kernel;
4. turns every interruption notice the server sends into what the kernel sees: the
   ``jupyter_lowcost.notice`` flag, the ``SIGUSR1`` signal and the ``on_notice`` callbacks;
5. watches the cloud's own notice in the instance metadata (AWS, Google Cloud, Azure;
   ``cloud_notices.py``), a notice as any other (``notice_sources.py``);
6. where SIGTERM is the notice (a Slurm job: preemption and the time limit send SIGTERM,
   then SIGKILL ``KillWait`` seconds later; ``JUPYTER_LOWCOST_SIGTERM_NOTICE`` gives those
   seconds), delivers that notice to the kernel at once and reports it to the server
   (``notice_sources.py``).

The kernel binds ``config["ip"]``; ``auto`` means the address through which this launcher
reached the server, which the server can reach back (a compute node's address).

If the server goes away (a crash, a kill -9, a restart), the kernel goes on: the launcher
dials again every half second, at the address in ``JUPYTER_LOWCOST_CHANNEL_FILE`` (the
server that adopts the instance writes its own there), and proves who it is with the
reconnect secret of its last connection, once that server has proved it holds it too
(anyone may listen on a dead server's port: such a peer is told nothing and obeyed in
nothing; the launcher keeps its secret and dials again). If no server takes it back
within the orphan timeout the server set (``LowCostApp.orphan_timeout``;
``JUPYTER_LOWCOST_ORPHAN_TIMEOUT`` seconds overrides it) or by the end of its lifetime
cap, it stops the kernel: an instance never outlives every server that could know about
it.

This module holds :func:`main` (the steps above), the launcher's log, and the coming back
to a server (:class:`Reattach`); the channel and its handshake are ``launch_channel.py``'s,
the kernel's connection file and command line ``kernel_setup.py``'s.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from .. import env
from ..kernel import interruption, ipykernel_adapters
from .kernel_setup import (
    WORKDIR_PREFIX,
    kernel_arguments,
    remove_stale_workdirs,
    write_connection_file,
)
from .launch_channel import Channel, HandshakeFailed, NotTheServer, OtherVersion, handshake
from .notice_sources import report_sigterm, watch_cloud

__all__ = [
    "FORWARDED_SIGNALS",
    "PORT_NAMES",
    "RECONNECT_INTERVAL",
    "REFUSED_INTERVAL",
    "WORKDIR_PREFIX",
    "Channel",
    "HandshakeFailed",
    "NotTheServer",
    "OtherVersion",
    "Reattach",
    "handshake",
    "kernel_arguments",
    "main",
    "remove_stale_workdirs",
]

#: Seconds between two attempts to reach a server again.
RECONNECT_INTERVAL = 0.5
#: Seconds before asking again a server that refused to take the instance back.
REFUSED_INTERVAL = 5.0

#: Signals the server may forward over the channel (``{"type": "signal"}``): an interrupt.
FORWARDED_SIGNALS = (int(signal.SIGINT),)
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


# -- the launcher's log ------------------------------------------------------------------

#: The launcher's own log (its stderr as the backend opened it: ipykernel sends what is
#: written to file descriptor 2 later to the notebook).
_log: Any = sys.stderr


def _say(line: str) -> None:
    """One line of the launcher's log."""
    print(f"jupyter_lowcost launcher: {line}", file=_log, flush=True)


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


def _open_log() -> None:
    """Keep a failing write to the log from costing the kernel, and log to the launcher's
    own stderr from now on (file descriptor 2 as the backend opened it)."""
    global _log
    _forgive_log_errors()
    try:
        _log = _ForgivingStream(os.fdopen(os.dup(2), "w", buffering=1))
    except OSError:
        pass


# -- coming back to a server -------------------------------------------------------------


@dataclass
class Reattach:
    """What the launcher needs to come back to a server (see :func:`_reconnect`)."""

    instance_id: str
    address: str
    channel_file: str
    reconnect_secret: str
    connection_info: dict[str, Any]
    #: Seconds to wait for a server after losing one, and a UNIX time not to wait past
    #: (the lifetime cap), from the server's config.
    orphan_timeout: float
    orphan_until: float | None
    #: The kernel's last status for its shell requests ("busy" while a cell runs).
    shell_status: list[str] = field(default_factory=lambda: ["idle"])

    kernel: Any = None

    def execution_state(self) -> str:
        return self.shell_status[-1]

    def kernel_info(self) -> dict[str, Any]:
        """What the kernel answers to kernel_info_request (a server that takes it back
        needs it for its clients, and the shell cannot answer while a cell runs)."""
        try:
            return dict(self.kernel.kernel_info)
        except Exception:  # (an old ipykernel: the server asks the kernel itself)
            return {}

    def follow_status(self, kernel: Any) -> None:
        """Keep the kernel's last shell status (a server that takes the kernel back
        tells its clients; without it, one that runs a long cell looks as if starting)."""
        self.kernel = kernel
        ipykernel_adapters.on_shell_status(kernel, self._shell_status_changed)

    def _shell_status_changed(self, status: str) -> None:
        self.shell_status[-1] = status

    def server_address(self) -> str:
        """Where the server that adopted this instance listens (its file), else where
        the first one did."""
        try:
            with open(self.channel_file) as handle:
                return str(json.load(handle)["address"])
        except (OSError, ValueError, KeyError, TypeError):
            return self.address


def _listen(channel: Channel, reattach: Reattach) -> None:
    """Channel thread: deliver notices; when the server is lost, wait for one to take the
    instance back (the kernel goes on meanwhile), and stop the kernel if none does."""
    while True:
        while True:
            try:
                message = channel.receive()
            except (OSError, ValueError, TypeError):  # (a frame not from its server)
                message = None
            if message is None:
                break
            if message.get("type") == "notice":
                interruption.deliver(float(message["deadline"]), str(message.get("reason", "")))
            elif message.get("type") == "signal" and message.get("signal") in FORWARDED_SIGNALS:
                # (a backend that cannot signal the instance's processes itself: a pod)
                os.kill(os.getpid(), int(message["signal"]))
            elif message.get("type") == "ended":
                _say("the server ended this instance")
                os._exit(0)
        channel.close()
        give_up = time.time() + reattach.orphan_timeout
        if reattach.orphan_until is not None:
            give_up = min(give_up, reattach.orphan_until)
        _say(
            "lost the server; the kernel goes on, waiting for a server until "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(give_up))}"
        )
        if not _reconnect(channel, reattach, give_up):
            _say("no server took the instance back; stopping the kernel")
            os._exit(3)
        _say("a server took the instance back")


def _reconnect(channel: Channel, reattach: Reattach, give_up: float) -> bool:
    """Dial until a server takes the instance back (True) or ``give_up`` passes."""
    said = ""
    while time.time() < give_up:
        address = reattach.server_address()
        try:
            channel.connect(address, timeout=5)
            if _reattach_once(channel, reattach):
                return True
            pause = RECONNECT_INTERVAL
        except NotTheServer as err:
            # (said once per address: it may listen there for long)
            if said != address:
                said = address
                _say(
                    f"{address} is not this instance's server ({err}): told nothing, obeyed "
                    "in nothing; dialing again"
                )
            pause = RECONNECT_INTERVAL
        except HandshakeFailed:
            # Refused: that server does not know this instance (yet?); ask again later,
            # without filling its log.
            pause = REFUSED_INTERVAL
        except (OSError, ValueError, TypeError):
            pause = RECONNECT_INTERVAL
        channel.close()
        time.sleep(pause)
    return False


def _reattach_once(channel: Channel, reattach: Reattach) -> bool:
    """One attempt to have the server on ``channel`` (just connected; by
    :func:`_reconnect`) take the instance back: True once it has (the reconnect secret is
    then the next one, and the server has the kernel's ports). On any failure the
    reconnect secret is unchanged; ``HandshakeFailed`` (and its kinds) or ``OSError``,
    ``ValueError``, ``TypeError`` say why."""
    reply, secret = handshake(channel, reattach.reconnect_secret)
    if reply.get("type") != "reattached":
        return False
    reattach.reconnect_secret = secret
    channel.sock.settimeout(None)
    channel.send(
        {
            "type": "ready",
            "connection_info": reattach.connection_info,
            "execution_state": reattach.execution_state(),
            "kernel_info": reattach.kernel_info(),
        }
    )
    return True


# -- the steps of main ------------------------------------------------------------------


@dataclass
class _Launch:
    """What the backend's environment says of this launch (the secrets are taken out of
    the environment, so that no user code sees them)."""

    address: str
    instance_id: str
    secret: str
    channel_file: str
    orphan_timeout: str


def _read_launch() -> _Launch:
    """What the backend's environment says; the launcher exits when it says nothing (it
    was run by hand)."""
    try:
        address = os.environ.pop(env.CHANNEL)
        instance_id = os.environ.pop(env.INSTANCE_ID)
        secret = os.environ.pop(env.LAUNCH_SECRET)
    except KeyError as err:
        sys.exit(
            f"jupyter_lowcost launcher: {err.args[0]} is not set; backends start this "
            "module for the server, it is not meant to be run by hand"
        )
    channel_file = os.environ.pop(env.CHANNEL_FILE, "")
    orphan_timeout = os.environ.get(env.ORPHAN_TIMEOUT, "")
    return _Launch(address, instance_id, secret, channel_file, orphan_timeout)


def _dial_server(launch: _Launch) -> tuple[Channel, dict[str, Any], str]:
    """Step 1: the channel, the server's config, and the first reconnect secret; the
    launcher exits, saying why, when the peer is not this launch's server."""
    address = launch.address
    channel = Channel(address)
    try:
        config, reconnect_secret = handshake(channel, launch.secret)
    except NotTheServer as err:
        sys.exit(f"jupyter_lowcost launcher: {address} is not this launch's server: {err}")
    except HandshakeFailed as err:
        sys.exit(f"jupyter_lowcost launcher: {err}")
    except (OSError, ValueError, TypeError) as err:
        sys.exit(f"jupyter_lowcost launcher: the server at {address} did not answer: {err}")
    if config.get("type") != "config":
        sys.exit("jupyter_lowcost launcher: the server refused this launch")
    channel.sock.settimeout(None)
    return channel, config, reconnect_secret


def _kernel_ip(channel: Channel, config: dict[str, Any]) -> str:
    """The address the kernel binds (``auto``: the one that reached the server)."""
    ip = config["ip"]
    if ip == "auto":
        ip = channel.sock.getsockname()[0]
    return str(ip)


def _take_sigterm_as_notice(channel: Channel) -> None:
    """Step 6, where the backend says SIGTERM is the notice (and how long it is)."""
    sigterm_notice = os.environ.pop(env.SIGTERM_NOTICE, "")
    leave_when_saved = os.environ.pop(env.SIGTERM_LEAVE_WHEN_SAVED, "") == "1"
    if sigterm_notice:
        report_sigterm(channel, float(sigterm_notice), leave_when_saved, _say)


def _start_kernel(channel: Channel, config: dict[str, Any], ip: str) -> Any:
    """Step 2 (and the notices' sources, 5 and 6): ipykernel initialized in this process,
    on ports it picked; its IPKernelApp."""
    from ipykernel.kernelapp import IPKernelApp

    connection_file = write_connection_file(config, ip, PORT_NAMES)
    interruption.install_signal_handler()
    _take_sigterm_as_notice(channel)
    app = IPKernelApp.instance()
    app.initialize(kernel_arguments(connection_file))
    watch_cloud(channel, config, _say)
    return app


def _reattach_state(
    launch: _Launch, config: dict[str, Any], reconnect_secret: str, connection_info: dict[str, Any]
) -> Reattach:
    orphan_until = config.get("orphan_until")
    return Reattach(
        instance_id=launch.instance_id,
        address=launch.address,
        channel_file=launch.channel_file,
        reconnect_secret=reconnect_secret,
        connection_info=connection_info,
        orphan_timeout=float(launch.orphan_timeout or config.get("orphan_timeout") or 30),
        orphan_until=float(orphan_until) if orphan_until else None,
    )


def main() -> None:
    """Entry point of ``python -m jupyter_lowcost.launcher``: the steps of the module
    docstring."""
    _open_log()
    launch = _read_launch()
    channel, config, reconnect_secret = _dial_server(launch)
    ip = _kernel_ip(channel, config)
    try:
        app = _start_kernel(channel, config, ip)
        ports = {name: getattr(app, name) for name in PORT_NAMES}
    except Exception:
        channel.send({"type": "failed", "error": traceback.format_exc()})
        raise
    # Step 3: the server learns the ports; step 4 is the channel thread's.
    connection_info = {"ip": ip, "transport": app.transport, **ports}
    channel.send({"type": "ready", "connection_info": connection_info})
    reattach = _reattach_state(launch, config, reconnect_secret, connection_info)
    reattach.follow_status(app.kernel)
    threading.Thread(
        target=_listen, args=(channel, reattach), name="lowcost-channel", daemon=True
    ).start()
    app.start()


if __name__ == "__main__":
    main()
