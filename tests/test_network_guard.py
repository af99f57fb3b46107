"""The network guard (tests/network_guard): what the tests start, in Python, in C and in
Chromium, is refused and recorded when it tries to reach beyond loopback, loopback still
works, and a test during which something tried fails, naming it.

The children here log to a file of their own (JUPYTER_LOWCOST_NETWORK_LOG), so that the
session's check does not count their refused attempts against these tests.
"""

from __future__ import annotations

import errno
import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import network_guard
import pytest
from browser.lab import CHROMIUM_ARGS, find_chromium
from network_guard import LOG_ENV, Checker, NetworkAttempt, read_attempts

#: Tries a TCP connect (IPv4, IPv6), a UDP send and a name lookup beyond loopback.
BEYOND = r"""
import os, socket
print(os.getpid(), flush=True)

def attempt(what, family, call):
    sock = socket.socket(*family)
    sock.settimeout(5)
    try:
        call(sock)
        print(what, "went through")
    except OSError as error:
        print(what, error.errno)

attempt("tcp", (socket.AF_INET,), lambda s: s.connect(("192.0.2.1", 9)))
attempt("tcp6", (socket.AF_INET6,), lambda s: s.connect(("2001:db8::1", 9)))
attempt("udp", (socket.AF_INET, socket.SOCK_DGRAM), lambda s: s.sendto(b"x", ("192.0.2.1", 9)))
attempt("lookup", (), lambda s: socket.getaddrinfo("example.com", 80))
"""

#: Loopback over TCP, UDP, AF_UNIX; the lookup of localhost and of a name in /etc/hosts.
LOOPBACK = r"""
import os, socket, sys
server = socket.create_server(("127.0.0.1", 0))
port = server.getsockname()[1]
socket.create_connection(("127.0.0.1", port), timeout=5).close()
socket.create_connection(("localhost", port), timeout=5).close()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
udp.sendto(b"u", udp.getsockname())
assert udp.recv(1) == b"u"
unix = socket.socket(socket.AF_UNIX)
unix.bind(sys.argv[1])
unix.listen()
client = socket.socket(socket.AF_UNIX)
client.connect(sys.argv[1])
client.sendall(b"x")
assert unix.accept()[0].recv(1) == b"x"
socket.getaddrinfo(sys.argv[2], 80, socket.AF_INET)
socket.gethostbyname(sys.argv[2])
print("guard loaded:", "jupyter-lowcost-network-guard.so" in open("/proc/self/maps").read())
"""


def guarded_env(log: Path) -> dict[str, str]:
    """This session's environment (the guard preloaded), logging to ``log``."""
    assert network_guard.LIBRARY_NAME in os.environ.get("LD_PRELOAD", "")
    return {**os.environ, LOG_ENV: str(log)}


def run_guarded(log: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` under the guard, logging to ``log``; its output as text."""
    return subprocess.run(
        list(argv), check=False, env=guarded_env(log), capture_output=True, text=True, timeout=60
    )


def hosts_name() -> str:
    """A name /etc/hosts gives an IPv4 address (other than localhost's names), else localhost."""
    for address, names in network_guard._hosts():
        if "." in address and ":" not in address:
            for name in names:
                if not network_guard._localhost_name(name):
                    return name
    return "localhost"


def test_a_python_child_is_refused_and_recorded(tmp_path: Path) -> None:
    log = tmp_path / "attempts.log"
    result = run_guarded(log, sys.executable, "-c", BEYOND)
    assert result.returncode == 0, result.stderr
    pid, *outcomes = result.stdout.split("\n")[:-1]
    assert outcomes == [
        f"tcp {errno.ENETUNREACH}",
        f"tcp6 {errno.ENETUNREACH}",
        f"udp {errno.ENETUNREACH}",
        f"lookup {socket.EAI_NONAME}",
    ]
    attempts = read_attempts(log)
    assert [(a.call, a.destination) for a in attempts] == [
        ("connect", "192.0.2.1:9"),
        ("connect", "[2001:db8::1]:9"),
        ("sendto", "192.0.2.1:9"),
        ("getaddrinfo", "name example.com"),
    ]
    assert {a.pid for a in attempts} == {int(pid)}
    assert attempts[0].ppid == os.getpid()
    assert Path(attempts[0].program).name.startswith("python")
    assert "import os, socket" in attempts[0].command


def test_c_programs_are_refused_and_recorded(tmp_path: Path) -> None:
    log = tmp_path / "attempts.log"
    env = guarded_env(log)
    lookup = subprocess.run(["getent", "hosts", "example.com"], check=False, env=env, timeout=60)
    assert lookup.returncode == 2  # not found
    connect = run_guarded(log, "bash", "-c", "exec 3<>/dev/tcp/192.0.2.1/9")
    assert connect.returncode == 1
    assert "Network is unreachable" in connect.stderr
    attempts = read_attempts(log)
    assert {(Path(a.program).name, a.call, a.destination) for a in attempts} == {
        ("getent", "gethostbyname2", "name example.com"),  # (IPv6, then IPv4)
        ("bash", "connect", "192.0.2.1:9"),
    }


def test_a_process_that_lost_the_log_s_variable_records_into_the_guard_s_own_log(
    tmp_path: Path,
) -> None:
    """(Environments built from a filtered os.environ keep LD_PRELOAD, not always
    JUPYTER_LOWCOST_NETWORK_LOG: the fresh installs' venvs, test_kernel_side.py.)"""
    library = network_guard.build(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != LOG_ENV}
    subprocess.run(
        ["getent", "hosts", "example.com"],
        check=False,
        env={**env, "LD_PRELOAD": str(library)},
        timeout=60,
    )
    attempts = read_attempts(tmp_path / network_guard.LOG_NAME)
    assert {(a.call, a.destination) for a in attempts} == {("gethostbyname2", "name example.com")}


def test_loopback_unix_sockets_and_local_names_still_work(tmp_path: Path) -> None:
    log = tmp_path / "attempts.log"
    result = run_guarded(
        log, sys.executable, "-c", LOOPBACK, str(tmp_path / "unix.socket"), hosts_name()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "guard loaded: True\n"
    assert read_attempts(log) == []


def test_pytest_s_own_process_is_guarded_by_an_audit_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert network_guard.AUDIT is not None
    log = tmp_path / "attempts.log"
    monkeypatch.setattr(network_guard.AUDIT, "log", log)
    with socket.socket() as tcp:
        with pytest.raises(OSError) as refused:
            tcp.connect(("192.0.2.1", 9))
        assert refused.value.errno == errno.ENETUNREACH
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(OSError):
        udp.sendto(b"x", ("192.0.2.1", 9))
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("example.com", 80)
    with pytest.raises(socket.herror):
        socket.gethostbyaddr("192.0.2.1")
    # Loopback and local names still work.
    with socket.create_server(("127.0.0.1", 0)) as server:
        socket.create_connection(server.getsockname(), timeout=5).close()
        socket.create_connection(("localhost", server.getsockname()[1]), timeout=5).close()
    socket.getaddrinfo(hosts_name(), 80)
    socket.getaddrinfo("192.0.2.1", 80)  # numeric: no lookup
    attempts = read_attempts(log)
    assert [(a.call, a.destination) for a in attempts] == [
        ("socket.connect", "192.0.2.1:9"),
        ("socket.sendto", "192.0.2.1:9"),
        ("socket.getaddrinfo", "name example.com"),
        ("socket.gethostbyaddr", "address 192.0.2.1"),
    ]
    assert {a.pid for a in attempts} == {os.getpid()}


def test_a_test_during_which_an_attempt_was_made_fails_naming_it(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Every test is checked (tests/conftest.py's autouse fixture).
    assert "nothing_beyond_loopback" in request.fixturenames
    log = tmp_path / "attempts.log"
    checker = Checker(log)
    checker.fail_on_new("during this test")  # nothing yet
    subprocess.run(
        ["getent", "hosts", "example.com"], check=False, env=guarded_env(log), timeout=60
    )
    with pytest.raises(pytest.fail.Exception) as failed:
        checker.fail_on_new("during this test")
    message = str(failed.value)
    assert "2 network attempt(s) beyond loopback during this test" in message
    assert "gethostbyname2 name example.com by pid" in message
    assert "/getent" in message and "getent hosts example.com" in message
    checker.fail_on_new("during this test")  # each attempt is reported once


def test_network_attempts_finds_a_process_s_attempts(tmp_path: Path) -> None:
    log = tmp_path / "attempts.log"
    log.write_text("12\t1\t/usr/bin/x\tconnect\t10.0.0.1:80\tx --go\n13\t1\t/usr/bin/y\tconnect")
    assert network_guard.network_attempts(12, log) == [
        NetworkAttempt(12, 1, "/usr/bin/x", "connect", "10.0.0.1:80", "x --go")
    ]
    assert network_guard.network_attempts(13, log) == []  # (a line still being written)


def chromium_processes(log: Path) -> list[int]:
    """The browser started with ``log`` as the guard's log (the only process whose
    environment names it: Chromium rewrites its children's), and its descendants."""
    wanted = f"{LOG_ENV}={log}".encode()
    parents: dict[int, int] = {}
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            parents[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:  # gone, or not ours to read
            pass
    grown = True
    while grown:
        children = [p for p, parent in parents.items() if parent in found and p not in found]
        found += children
        grown = bool(children)
    return found


def test_chromium_is_refused_and_recorded(tmp_path: Path) -> None:
    """Chromium's network service (a child process) runs under the guard. (Without the
    browser tests' --host-resolver-rules, which keep Chromium from even trying.)"""
    from playwright.sync_api import Error, sync_playwright

    log = tmp_path / "attempts.log"
    args = [a for a in CHROMIUM_ARGS if not a.startswith("--host-resolver-rules")]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=find_chromium(), args=args, env={**guarded_env(log)}
        )
        try:
            with pytest.raises(Error, match="ERR_ADDRESS_UNREACHABLE"):
                browser.new_page().goto("http://192.0.2.1/", timeout=30_000)
        finally:
            browser.close()
    tried = [a for a in read_attempts(log) if a.destination == "192.0.2.1:80"]
    assert tried, read_attempts(log)
    assert {a.call for a in tried} == {"connect"}
    assert all("chromium" in a.program and "--type=utility" in a.command for a in tried)


def test_chromium_as_the_browser_tests_start_it_tries_nothing(tmp_path: Path) -> None:
    """Started as tests/browser starts it, Chromium tries nothing beyond loopback on its
    own (update checks, sign-in, ...) nor for a page that asks for another address."""
    from playwright.sync_api import sync_playwright

    log = tmp_path / "attempts.log"
    page_dir = tmp_path / "site"
    page_dir.mkdir()
    (page_dir / "index.html").write_text(
        '<img src="http://192.0.2.1/a.png"><img src="http://example.com/b.png">'
    )
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0),
        functools.partial(QuietHandler, directory=str(page_dir)),
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=find_chromium(), args=CHROMIUM_ARGS, env={**guarded_env(log)}
            )
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
                page.wait_for_timeout(3000)
                chromium = chromium_processes(log)
                assert any(
                    b"--type=utility" in Path(f"/proc/{pid}/cmdline").read_bytes()
                    for pid in chromium
                ), chromium
                assert [pid for pid in chromium if not network_guard.guarded(pid)] == []
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert read_attempts(log) == []


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
