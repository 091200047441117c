"""Load for the HTTP endpoint: bursts of scrapes, slow-header and large-header clients.

Shared by ``benchmarks/http_load.py`` and the slow test in ``tests/test_http_load.py``.
Everything connects to 127.0.0.1 only and every loop is bounded by a deadline.
"""

from __future__ import annotations

import errno
import http.client
import multiprocessing
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_demo(
    port: int, rate: float = 200.0, config: Path | None = None
) -> subprocess.Popen[bytes]:
    """``fluxmon demo`` on 127.0.0.1:port, logs discarded, once it answers /healthz."""
    argv = [sys.executable, "-m", "fluxmon", "demo", "--listen", f"127.0.0.1:{port}"]
    argv += ["--rate", str(rate)] + (["--config", str(config)] if config else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if scrape(port, "/healthz")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("fluxmon demo did not answer /healthz within 30 s")


def scrape(port: int, path: str = "/metrics", timeout: float = 10.0) -> tuple[int, float, int]:
    """(status, seconds, body bytes) of one GET."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        body = reply.read()
        return reply.status, time.monotonic() - start, len(body)
    finally:
        conn.close()


@dataclass
class Outcome:
    """One request of a burst: its status (0: closed or reset without one) and age at the end."""

    status: int = -1
    seconds: float = 0.0


def burst(port: int, n: int, timeout: float = 20.0) -> list[Outcome]:
    """Open ``n`` connections at once, each sending one scrape; wait for every answer.

    Status -1 means still waiting at ``timeout``.
    """
    sel = selectors.DefaultSelector()
    outcomes = [Outcome() for _ in range(n)]
    buffers: dict[int, bytearray] = {}
    start = time.monotonic()
    for i in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        err = sock.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS):
            outcomes[i] = Outcome(0, time.monotonic() - start)
            sock.close()
            continue
        sel.register(sock, selectors.EVENT_WRITE, i)
    deadline = start + timeout
    while sel.get_map() and time.monotonic() < deadline:
        for key, events in sel.select(timeout=0.5):
            sock, i = _sock(key.fileobj), key.data
            if events & selectors.EVENT_WRITE:
                try:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        raise ConnectionRefusedError
                    sock.send(SCRAPE)
                except OSError:
                    _done(sel, sock, outcomes, i, buffers, start)
                    continue
                sel.modify(sock, selectors.EVENT_READ, i)
                buffers[i] = bytearray()
                continue
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                buffers[i] += chunk
            else:
                _done(sel, sock, outcomes, i, buffers, start)
    for key in list(sel.get_map().values()):
        assert isinstance(key.fileobj, socket.socket)
        outcomes[key.data].seconds = time.monotonic() - start
        sel.unregister(key.fileobj)
        key.fileobj.close()
    return outcomes


def _sock(fileobj: object) -> socket.socket:
    assert isinstance(fileobj, socket.socket)
    return fileobj


def _done(
    sel: selectors.BaseSelector,
    sock: socket.socket,
    outcomes: list[Outcome],
    i: int,
    buffers: dict[int, bytearray],
    start: float,
) -> None:
    data = bytes(buffers.pop(i, b""))
    status = 0
    if data.startswith(b"HTTP/1."):
        status = int(data.split(b" ", 2)[1])
    outcomes[i] = Outcome(status, time.monotonic() - start)
    sel.unregister(sock)
    sock.close()


@dataclass
class Attack:
    """Slow-header and large-header clients, kept connected from a thread until stopped."""

    port: int
    slow: int = 200
    large: int = 20
    large_bytes: int = 5 * 1024 * 1024
    stop: threading.Event = field(default_factory=threading.Event)
    connections: int = 0

    def run(self, seconds: float) -> None:
        """Keep ``slow`` connections trickling headers and ``large`` ones pushing bytes."""
        sel = selectors.DefaultSelector()
        chunk = b"X-Pad: " + b"a" * 8184 + b"\r\n"
        sent: dict[socket.socket, int] = {}
        next_trickle = 0.0
        end = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < end:
            open_slow = sum(1 for k in sel.get_map().values() if k.data == "slow")
            open_large = sum(1 for k in sel.get_map().values() if k.data == "large")
            for kind, missing in (
                ("slow", self.slow - open_slow),
                ("large", self.large - open_large),
            ):
                for _ in range(missing):
                    sock = self._connect()
                    if sock is not None:
                        sent[sock] = 0
                        sel.register(
                            sock,
                            selectors.EVENT_READ | selectors.EVENT_WRITE
                            if kind == "large"
                            else selectors.EVENT_READ,
                            kind,
                        )
            now = time.monotonic()
            trickle = now >= next_trickle
            if trickle:
                next_trickle = now + 1.0
            for key, events in sel.select(timeout=0.05):
                sock = _sock(key.fileobj)
                try:
                    if events & selectors.EVENT_READ and not sock.recv(65536):
                        raise ConnectionResetError
                    if events & selectors.EVENT_WRITE and sent[sock] < self.large_bytes:
                        sent[sock] += sock.send(chunk)
                except OSError:
                    sel.unregister(sock)
                    sent.pop(sock, None)
                    sock.close()
            if trickle:
                for key in list(sel.get_map().values()):
                    if key.data == "slow":
                        sock = _sock(key.fileobj)
                        try:
                            sock.send(b"X-Slow: 1\r\n")
                        except OSError:
                            sel.unregister(sock)
                            sent.pop(sock, None)
                            sock.close()
        for key in list(sel.get_map().values()):
            sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]

    def spawn(self, seconds: float) -> multiprocessing.process.BaseProcess:
        """Run the attack for ``seconds`` in a child process (not competing for our GIL)."""
        child = multiprocessing.get_context("fork").Process(
            target=self.run, args=(seconds,), daemon=True
        )
        child.start()
        return child

    def _connect(self) -> socket.socket | None:
        sock = socket.socket()
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", self.port))
            sock.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        self.connections += 1
        return sock
