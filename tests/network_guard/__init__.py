"""The rule "the test suite sends nothing beyond loopback" (127.0.0.0/8, ::1), and its check.

Who calls what:

* ``tests/conftest.py`` calls :func:`install` in ``pytest_configure``, before any fixture
  starts anything: it builds ``guard.c`` (:func:`build`) into a session folder and puts it
  in ``LD_PRELOAD``, so that every dynamically linked program the tests start (Jupyter
  servers, kernels, launchers, Slurm's daemons and job steps, Chromium, anything started
  later) refuses and records each attempt to reach another address or to look up a name
  that needs a name server. pytest's own process started before ``LD_PRELOAD`` was set:
  an audit hook (:class:`AuditGuard`) does the same for its Python sockets. It cannot see
  C libraries that open sockets of their own (in pytest's process, libzmq connects the
  kernels' channels, to 127.0.0.1), nor the name lookup CPython makes inside
  ``sock.connect((name, port))`` before the audit event (the connect itself is refused
  and recorded; the tests connect to numbers and look names up through getaddrinfo,
  which is audited).
  Statically linked programs (a Go Kubernetes, say) never load the library: they need a
  guard of their own.
* The conftest's autouse fixture and its ``pytest_sessionfinish`` call
  :meth:`Checker.fail_on_new`: a test fails, naming each attempt (process, call,
  destination), when one was made while it ran.
* A test that must know a given process made no attempt (a kernel's launcher) calls
  :func:`network_attempts` with its pid.
* The only exemption: the pip and npm installs of the fresh-install tests (test_readme.py,
  test_binder.py) reach the package registries; they run with :func:`without_guard`'s
  environment, and nothing else does. (guard.c refuses without a record one thing that
  sends nothing: Chromium's IPv6 probe, a UDP connect() to 2001:4860:4860::8888.)

Every attempt is one line of the session's log, written by guard.c or the audit hook:
``pid \\t parent pid \\t program \\t call \\t destination \\t command line``.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: The log guard.so appends to (it falls back on the log named when it was built).
LOG_ENV = "JUPYTER_LOWCOST_NETWORK_LOG"
SOURCE = Path(__file__).with_name("guard.c")
LIBRARY_NAME = "jupyter-lowcost-network-guard.so"
LOG_NAME = "network-attempts.log"

#: The session's log, once :func:`install` ran.
LOG: Path | None = None
#: The audit hook of pytest's process, once :func:`install` ran.
AUDIT: AuditGuard | None = None


@dataclass(frozen=True)
class NetworkAttempt:
    """One refused attempt: who made it (process, parent, program, command line), the call
    (``connect``, ``getaddrinfo``, ``socket.connect`` from the audit hook...) and where it
    went (``192.0.2.1:80``, ``[2001:db8::1]:443``, ``name example.com``)."""

    pid: int
    ppid: int
    program: str
    call: str
    destination: str
    command: str

    def __str__(self) -> str:
        return (
            f"{self.call} {self.destination} by pid {self.pid} ({self.program}; "
            f"parent {self.ppid}): {self.command[:300]}"
        )


def build(directory: Path) -> Path:
    """Compile guard.c into ``directory``; the library's path. Its fallback log (a process
    whose environment lost :data:`LOG_ENV` but kept ``LD_PRELOAD``) is ``directory``'s."""
    hint = (
        "The test suite needs gcc to build its network guard (tests/network_guard/guard.c):"
        " install it with `apt-get install -y gcc libc6-dev` (.ci/run does)."
    )
    gcc = shutil.which("gcc")
    if gcc is None:
        raise pytest.UsageError(hint)
    library = directory / LIBRARY_NAME
    fallback_log = str(directory / LOG_NAME)
    built = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", f'-DGUARD_LOG="{fallback_log}"', "-o", str(library)]
        + [str(SOURCE), "-ldl"],
        check=False,
        capture_output=True,
        text=True,
    )
    if built.returncode:
        raise pytest.UsageError(f"{hint}\ngcc failed:\n{built.stderr}")
    return library


def install(directory: Path) -> Path:
    """Guard this process and everything it starts from now on (see the module's
    docstring); the log the attempts go to. Called once, by tests/conftest.py."""
    global LOG, AUDIT
    library = build(directory)
    LOG = directory / LOG_NAME
    LOG.touch()
    preload = os.environ.get("LD_PRELOAD", "")
    os.environ["LD_PRELOAD"] = f"{library} {preload}".strip()
    os.environ[LOG_ENV] = str(LOG)
    AUDIT = AuditGuard(LOG)
    sys.addaudithook(AUDIT)
    return LOG


def without_guard(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the guard: for the fresh installs' pip and npm only (the package
    registries), never for anything they start afterwards."""
    kept = {key: value for key, value in env.items() if key != LOG_ENV}
    preload = [
        p
        for p in re.split(r"[:\s]+", kept.get("LD_PRELOAD", ""))
        if p and Path(p).name != LIBRARY_NAME
    ]
    kept.pop("LD_PRELOAD", None)
    if preload:
        kept["LD_PRELOAD"] = " ".join(preload)
    return kept


def guarded(pid: int) -> bool:
    """True when process ``pid`` has the guard loaded (a ``/proc/<pid>/maps`` entry)."""
    with open(f"/proc/{pid}/maps") as handle:
        return LIBRARY_NAME in handle.read()


def read_attempts(log: Path) -> list[NetworkAttempt]:
    """Every attempt recorded in ``log``, in order (a line still being written is left)."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return []
    attempts = []
    for line in text.split("\n")[:-1]:
        fields = (line.split("\t") + [""] * 6)[:6]
        pid, ppid = (int(f) if f.isdigit() else -1 for f in fields[:2])
        attempts.append(NetworkAttempt(pid, ppid, *fields[2:]))
    return attempts


def network_attempts(pid: int | None = None, log: Path | None = None) -> list[NetworkAttempt]:
    """The attempts this session recorded so far (those of process ``pid`` only, when
    given), oldest first: ``assert not network_attempts(launcher_pid)``."""
    path = log or LOG
    assert path is not None, "the network guard is not installed (tests/conftest.py does)"
    return [a for a in read_attempts(path) if pid is None or a.pid == pid]


def describe(attempts: list[NetworkAttempt], when: str) -> str:
    """The failure message for ``attempts``."""
    return (
        f"{len(attempts)} network attempt(s) beyond loopback {when}, refused (the test "
        "suite must send nothing beyond 127.0.0.0/8 and ::1; see tests/network_guard):\n"
        + "\n".join(f"  {attempt}" for attempt in attempts)
    )


class Checker:
    """The attempts of a log not looked at yet (the conftest keeps one for the session)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.seen = 0

    def new(self) -> list[NetworkAttempt]:
        attempts = read_attempts(self.log)[self.seen :]
        self.seen += len(attempts)
        return attempts

    def fail_on_new(self, when: str) -> None:
        """Fail the current test (pytest.fail) when attempts were made since the last call."""
        attempts = self.new()
        if attempts:
            pytest.fail(describe(attempts, when), pytrace=False)


# -- pytest's own process -------------------------------------------------------------

LOCALHOST_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "localhost6", "localhost6.localdomain6"}
    | {"ip6-localhost", "ip6-loopback"}
)


@functools.cache
def _hosts(path: str = "/etc/hosts") -> list[tuple[str, list[str]]]:
    """``(address, names)`` of each line of /etc/hosts (read once: the audit hook asks on
    every lookup)."""
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        words = line.split("#", 1)[0].split()
        if len(words) > 1:
            entries.append((words[0], [w.lower() for w in words[1:]]))
    return entries


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefABCDEFxX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))  # 127.1, 0x7f.1
        except OSError:
            pass
    return None


def _local(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified  # (0.0.0.0, :: reach this host)


def _localhost_name(name: str) -> bool:
    name = name.lower().rstrip(".")
    return name in LOCALHOST_NAMES or name.endswith(".localhost")


def _name_is_local(name: str) -> bool:
    """True when looking ``name`` up needs no name server (as guard.c decides)."""
    name = name.lower()
    return _localhost_name(name) or any(name in names for _, names in _hosts())


class AuditGuard:
    """An audit hook (``sys.addaudithook``) that refuses and records, in ``log``, the
    socket calls of this Python process that guard.c would refuse (it is not preloaded
    here): a connect or send beyond loopback, a name lookup that needs a name server."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not event.startswith("socket."):
            return
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            sock, address = args
            if sock.family in (socket.AF_INET, socket.AF_INET6) and address is not None:
                self._check_destination(event, address)
        elif event in ("socket.getaddrinfo", "socket.gethostbyname"):
            host = args[0]
            if isinstance(host, bytes):
                host = host.decode(errors="replace")
            if host and _address(host) is None and not _name_is_local(host):
                self._refuse(event, f"name {host}", socket.gaierror)
        elif event == "socket.gethostbyaddr":
            host = str(args[0])
            address = _address(host)
            if address is None:
                if not _name_is_local(host):
                    self._refuse(event, f"name {host}", socket.herror)
            elif not _local(address) and not any(_address(a) == address for a, _ in _hosts()):
                self._refuse(event, f"address {host}", socket.herror)

    def _check_destination(self, event: str, address: Any) -> None:
        host, port = str(address[0]), address[1]
        ip = _address(host)
        if ip is None:  # a name, resolved inside the call
            hosts = [_address(a) for a, names in _hosts() if host.lower() in names]
            if _localhost_name(host) or (hosts and all(a and _local(a) for a in hosts)):
                return
        elif _local(ip):
            return
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._refuse(event, shown, OSError)

    def _refuse(self, call: str, destination: str, error: type[OSError]) -> None:
        line = "\t".join(
            [str(os.getpid()), str(os.getppid()), sys.executable, call, destination]
            + [" ".join(sys.orig_argv).replace("\t", " ").replace("\n", " ")[:1000]]
        )
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, (line + "\n").encode(errors="replace"))
        finally:
            os.close(fd)
        why = f"refused by the test suite's network guard: {call} {destination}"
        if error is socket.gaierror:
            raise socket.gaierror(socket.EAI_NONAME, why)
        if error is socket.herror:
            raise socket.herror(1, why)  # HOST_NOT_FOUND
        raise OSError(errno.ENETUNREACH, why)
