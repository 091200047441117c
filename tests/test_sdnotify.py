"""The systemd notify protocol against real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fluxmon.sdnotify import Notifier, watchdog_interval


def _receive(sock: socket.socket) -> dict[str, str]:
    """Read one datagram and parse its ``KEY=value`` lines."""
    data = sock.recv(4096).decode()
    assert data.endswith("\n")
    return dict(line.split("=", 1) for line in data.splitlines())


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket at a filesystem path, with that path."""
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) >= 108:  # sun_path limit
        pytest.skip(f"tmp_path too long for an AF_UNIX address: {path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        yield str(path), sock


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket in the abstract namespace, with its ``@name`` address."""
    name = f"fluxmon-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        yield "@" + name, sock


def test_ready_sends_ready_and_status_in_one_datagram(
    path_socket: tuple[str, socket.socket],
) -> None:
    """ready() sends READY=1 and STATUS= together in a single datagram to a path socket."""
    address, sock = path_socket
    assert Notifier(address).ready("connected, 3 jobs tracked")
    assert _receive(sock) == {"READY": "1", "STATUS": "connected, 3 jobs tracked"}


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        pytest.param(lambda n: n.watchdog(), {"WATCHDOG": "1"}, id="watchdog"),
        pytest.param(lambda n: n.stopping(), {"STOPPING": "1"}, id="stopping"),
        pytest.param(lambda n: n.status("idle"), {"STATUS": "idle"}, id="status"),
        pytest.param(
            lambda n: n.send(RELOADING="1", MONOTONIC_USEC="42"),
            {"RELOADING": "1", "MONOTONIC_USEC": "42"},
            id="send-arbitrary",
        ),
    ],
)
def test_each_helper_sends_its_assignment(
    path_socket: tuple[str, socket.socket],
    call: Callable[[Notifier], bool],
    expected: dict[str, str],
) -> None:
    """Each helper sends exactly its documented assignments and reports success."""
    address, sock = path_socket
    assert call(Notifier(address)) is True
    assert _receive(sock) == expected


def test_abstract_address_reaches_abstract_socket(
    abstract_socket: tuple[str, socket.socket],
) -> None:
    """An ``@name`` address is sent to the abstract socket ``\\0name``."""
    address, sock = abstract_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.watchdog()
    assert _receive(sock) == {"WATCHDOG": "1"}


def test_newline_in_value_cannot_inject_an_assignment(
    path_socket: tuple[str, socket.socket],
) -> None:
    """A newline inside a status text is flattened so it cannot smuggle in READY=1."""
    address, sock = path_socket
    assert Notifier(address).status("bad\nREADY=1")
    assert _receive(sock) == {"STATUS": "bad READY=1"}


def test_invalid_field_name_is_refused_without_raising(
    path_socket: tuple[str, socket.socket],
) -> None:
    """A field name containing '=' is not sent and send() returns False."""
    address, sock = path_socket
    assert Notifier(address).send(**{"A=B": "1"}) is False
    sock.settimeout(0.1)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({}, id="unset"),
        pytest.param({"NOTIFY_SOCKET": ""}, id="empty"),
        pytest.param({"NOTIFY_SOCKET": "relative/path"}, id="relative"),
        pytest.param({"NOTIFY_SOCKET": "@"}, id="bare-at"),
    ],
)
def test_without_usable_socket_every_call_is_a_noop(environ: dict[str, str]) -> None:
    """With no usable $NOTIFY_SOCKET the notifier is disabled and every call returns False."""
    notifier = Notifier.from_environ(environ)
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.status("x") is False


def test_missing_socket_returns_false_instead_of_raising(tmp_path: Path) -> None:
    """Sending to a path where nobody listens returns False rather than raising OSError."""
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert notifier.enabled
    assert notifier.ready("up") is False


def test_closed_peer_returns_false(tmp_path: Path) -> None:
    """A socket file left behind by a closed receiver makes send() return False."""
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()
    assert path.exists()
    assert Notifier(str(path)).watchdog() is False


@pytest.mark.parametrize(
    ("environ", "pid", "expected"),
    [
        pytest.param({"WATCHDOG_USEC": "30000000"}, 10, 15.0, id="no-pid-half-of-usec"),
        pytest.param(
            {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "10"}, 10, 15.0, id="pid-matches"
        ),
        pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "11"}, 10, None, id="pid-other"),
        pytest.param(
            {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, 10, None, id="pid-garbage"
        ),
        pytest.param({"WATCHDOG_USEC": "500000"}, 10, 0.25, id="sub-second"),
        pytest.param({}, 10, None, id="unset"),
        pytest.param({"WATCHDOG_PID": "10"}, 10, None, id="pid-without-usec"),
        pytest.param({"WATCHDOG_USEC": "0"}, 10, None, id="zero"),
        pytest.param({"WATCHDOG_USEC": "-5"}, 10, None, id="negative"),
        pytest.param({"WATCHDOG_USEC": "soon"}, 10, None, id="garbage"),
    ],
)
def test_watchdog_interval(environ: dict[str, str], pid: int, expected: float | None) -> None:
    """The ping interval is half of WATCHDOG_USEC, only for the process WATCHDOG_PID names."""
    assert watchdog_interval(environ, pid) == expected


@pytest.mark.slow
def test_daemon_notifies_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    """`fluxmon demo` under a fake systemd sends READY=1, repeated WATCHDOG=1, then STOPPING=1."""
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) >= 108:
        pytest.skip(f"tmp_path too long for an AF_UNIX address: {path}")
    environ = {
        **os.environ,
        "NOTIFY_SOCKET": str(path),
        "WATCHDOG_USEC": "400000",  # ping every 0.2 s
    }
    environ.pop("WATCHDOG_PID", None)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(15)
        proc = subprocess.Popen(
            [sys.executable, "-m", "fluxmon", "demo", "--listen", "127.0.0.1:0", "--rate", "5"],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            messages = [_receive(sock)]
            while "READY" not in messages[-1]:
                messages.append(_receive(sock))
            assert messages[-1]["READY"] == "1"
            assert messages[-1]["STATUS"].startswith("connected")
            after_ready = [_receive(sock) for _ in range(8)]
            assert sum(m.get("WATCHDOG") == "1" for m in after_ready) >= 3
            proc.send_signal(signal.SIGTERM)
            tail = [_receive(sock)]
            while "STOPPING" not in tail[-1]:
                tail.append(_receive(sock))
            assert tail[-1] == {"STOPPING": "1"}
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=15)
            assert proc.stderr is not None
            proc.stderr.close()
