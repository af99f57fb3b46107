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
   ``cloud_notices.py``), a notice as any other;
6. where SIGTERM is the notice (a Slurm job: preemption and the time limit send SIGTERM,
   then SIGKILL ``KillWait`` seconds later; ``JUPYTER_LOWCOST_SIGTERM_NOTICE`` gives those
   seconds), delivers that notice to the kernel at once and reports it to the server.

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
from dataclasses import dataclass, field
from typing import Any

from .. import env
from ..kernel import checkpointing, interruption, ipykernel_adapters
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
from . import cloud_notices

#: Seconds between two attempts to reach a server again.
RECONNECT_INTERVAL = 0.5
#: Seconds before asking again a server that refused to take the instance back.
REFUSED_INTERVAL = 5.0

#: Signals the server may forward over the channel (``{"type": "signal"}``): an interrupt.
FORWARDED_SIGNALS = (int(signal.SIGINT),)
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
#: A launcher's own directory in the temporary directory (its kernel's connection file):
#: this, its process id, "-", a random part.
WORKDIR_PREFIX = "jupyter-lowcost-launcher-"


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
    frame is the one expected. Called by :func:`main` and :func:`_reattach_once`.

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
                print("jupyter_lowcost launcher: the server ended this instance", file=_log)
                os._exit(0)
        channel.close()
        give_up = time.time() + reattach.orphan_timeout
        if reattach.orphan_until is not None:
            give_up = min(give_up, reattach.orphan_until)
        print(
            "jupyter_lowcost launcher: lost the server; the kernel goes on, waiting for a "
            f"server until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(give_up))}",
            file=_log,
            flush=True,
        )
        if not _reconnect(channel, reattach, give_up):
            print(
                "jupyter_lowcost launcher: no server took the instance back; stopping the kernel",
                file=_log,
                flush=True,
            )
            os._exit(3)
        print(
            "jupyter_lowcost launcher: a server took the instance back",
            file=_log,
            flush=True,
        )


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
                print(
                    f"jupyter_lowcost launcher: {address} is not this instance's server ({err}):"
                    " told nothing, obeyed in nothing; dialing again",
                    file=_log,
                    flush=True,
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


def _report_sigterm(channel: Channel, notice_seconds: float, leave_when_saved: bool) -> None:
    """Make SIGTERM an interruption notice ``notice_seconds`` long: the kernel sees it at
    once (flag, callbacks), and the server hears of it from a thread (the handler may
    have interrupted the main thread anywhere). With ``leave_when_saved`` (a pod: see
    :func:`_leave_when_saved`), the instance may end before the deadline."""
    received: list[float] = []

    def handle(signum: int, frame: Any) -> None:
        if received:  # (a second SIGTERM: the first one's notice stands)
            return
        received.append(time.time())
        deadline = received[0] + notice_seconds
        reason = f"the instance received SIGTERM: it stops in {notice_seconds:g} s"

        def report() -> None:
            print(f"jupyter_lowcost launcher: {reason}", file=_log, flush=True)
            try:
                channel.send({"type": "notice", "deadline": deadline, "reason": reason})
            except OSError:
                pass
            if leave_when_saved:
                _leave_when_saved(deadline)

        threading.Thread(target=report, name="lowcost-sigterm", daemon=True).start()
        interruption.deliver(deadline, reason)

    signal.signal(signal.SIGTERM, handle)


def _leave_when_saved(deadline: float) -> None:
    """End the instance before its deadline once its latest checkpoint holds the kernel's
    namespace as it is, with no cell running (:meth:`KernelCheckpoints.holds_everything`):
    nothing more can be saved, and the recovery resumes the kernel on a new instance at
    once instead of after the whole grace period (30 s on GKE, say) of a pod that is
    killed anyway. A cell that runs keeps the instance until it ends and its checkpoint
    is written, or until the deadline. Called by the SIGTERM handler's thread, once the
    notice was sent to the server."""
    while time.time() < deadline:
        checkpoints = checkpointing.installed()
        if checkpoints is not None and checkpoints.holds_everything():
            print(
                "jupyter_lowcost launcher: the latest checkpoint holds the kernel's variables "
                "and no cell runs: the instance ends now, before its deadline",
                file=_log,
                flush=True,
            )
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            # As if SIGTERM had ended it (128 + 15): the server sees an instance taken
            # during its notice, and resumes the kernel.
            os._exit(128 + signal.SIGTERM)
        time.sleep(0.05)


def _watch_cloud(channel: Channel, config: dict[str, Any]) -> None:
    """Watch the cloud's own notice (``LowCostApp.cloud_notices``): deliver it to the
    kernel at once and report it to the server; an early warning only to the server."""

    def deliver(cloud: cloud_notices.CloudNotice) -> None:
        print(f"jupyter_lowcost launcher: {cloud.reason}", file=_log, flush=True)
        kind = "warning" if cloud.early_warning else "notice"
        message = {"type": kind, "deadline": cloud.deadline, "reason": cloud.reason}
        try:
            channel.send({**message, "source": cloud.provider})
        except OSError:
            pass
        if not cloud.early_warning:
            interruption.deliver(cloud.deadline, cloud.reason)

    def checkpoint_written(since: float) -> bool:
        """Is the notice checkpoint of a notice that came at ``since`` done with: written,
        failed, or not needed (nothing to save, checkpoints off)?"""
        checkpoints = checkpointing.installed()
        if checkpoints is None or checkpoints.when == "off":
            return True
        handled = checkpoints.notice_handled_at
        return handled is not None and handled >= since

    def warn(text: str | None) -> None:
        """The notice cannot be read (``text``), or can again (None): the server shows it
        on the instance (``notice_warning``), JupyterLab and ``%lowcost`` say it."""
        if text is not None:
            print(f"jupyter_lowcost launcher: {text}", file=_log, flush=True)
        try:
            channel.send({"type": "notice_warning", "warning": text})
        except OSError:
            pass

    cloud_notices.start(
        str(config.get("cloud_notices") or "off"),
        str(config.get("cloud_metadata_url") or ""),
        deliver,
        lambda line: print(f"jupyter_lowcost launcher: {line}", file=_log, flush=True),
        acknowledge=bool(config.get("azure_acknowledge")),
        checkpoint_written=checkpoint_written,
        warn=warn,
    )


#: The launcher's own log (its stderr as the backend opened it: ipykernel sends what is
#: written to file descriptor 2 later to the notebook).
_log: Any = sys.stderr


def remove_stale_workdirs() -> None:
    """Remove the directories that launchers killed before they could clean up left in
    the temporary directory (their kernels' connection files, with the session keys): a
    lost instance is killed, and atexit does not run then. Called by every launcher as it
    starts; only this user's, only those whose process no longer runs."""
    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(WORKDIR_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        path = os.path.join(root, name)
        try:
            if not pid.isdigit() or os.lstat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its launcher is gone
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # gone already; or a process of another user has that id now
            continue


def kernel_arguments(connection_file: str) -> list[str]:
    """ipykernel's command line on the instance: our extension in every kernel; a job's
    kernel (``JUPYTER_LOWCOST_JOB``) keeps IPython's history in memory, as nbclient and
    papermill run kernels, instead of writing the profile's SQLite history file."""
    arguments = ["-f", connection_file, "--IPKernelApp.extra_extensions=jupyter_lowcost"]
    if os.environ.get(env.JOB):
        arguments.append("--HistoryManager.hist_file=:memory:")
    return arguments


def main() -> None:
    """Entry point of ``python -m jupyter_lowcost.launcher``."""
    global _log
    _forgive_log_errors()
    try:
        _log = _ForgivingStream(os.fdopen(os.dup(2), "w", buffering=1))
    except OSError:
        pass
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

    channel = Channel(address)
    try:
        config, reconnect_secret = handshake(channel, secret)
    except NotTheServer as err:
        sys.exit(f"jupyter_lowcost launcher: {address} is not this launch's server: {err}")
    except HandshakeFailed as err:
        sys.exit(f"jupyter_lowcost launcher: {err}")
    except (OSError, ValueError, TypeError) as err:
        sys.exit(f"jupyter_lowcost launcher: the server at {address} did not answer: {err}")
    if config.get("type") != "config":
        sys.exit("jupyter_lowcost launcher: the server refused this launch")
    channel.sock.settimeout(None)
    ip = config["ip"]
    if ip == "auto":
        ip = channel.sock.getsockname()[0]

    try:
        from ipykernel.kernelapp import IPKernelApp

        remove_stale_workdirs()
        workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")
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
        sigterm_notice = os.environ.pop(env.SIGTERM_NOTICE, "")
        leave_when_saved = os.environ.pop(env.SIGTERM_LEAVE_WHEN_SAVED, "") == "1"
        if sigterm_notice:
            _report_sigterm(channel, float(sigterm_notice), leave_when_saved)
        app = IPKernelApp.instance()
        app.initialize(kernel_arguments(connection_file))
        _watch_cloud(channel, config)
        ports = {name: getattr(app, name) for name in PORT_NAMES}
    except Exception:
        channel.send({"type": "failed", "error": traceback.format_exc()})
        raise
    connection_info = {"ip": ip, "transport": app.transport, **ports}
    channel.send({"type": "ready", "connection_info": connection_info})
    orphan_until = config.get("orphan_until")
    reattach = Reattach(
        instance_id=instance_id,
        address=address,
        channel_file=channel_file,
        reconnect_secret=reconnect_secret,
        connection_info=connection_info,
        orphan_timeout=float(orphan_timeout or config.get("orphan_timeout") or 30),
        orphan_until=float(orphan_until) if orphan_until else None,
    )
    reattach.follow_status(app.kernel)
    threading.Thread(
        target=_listen, args=(channel, reattach), name="lowcost-channel", daemon=True
    ).start()
    app.start()


if __name__ == "__main__":
    main()
