"""The HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz`` and a landing page.

:class:`MetricsServer` serves a private :class:`~prometheus_client.CollectorRegistry`
and a :class:`Health` from a standard-library ``ThreadingHTTPServer`` running in a
daemon thread. Everything a server needs is passed in; the one module-level object is
the fallback logger (structlog's global configuration) used when no logger is.

* ``GET /metrics`` -- the registry's exposition, in the format the ``Accept`` header
  asks for (text format 0.0.4 by default, OpenMetrics on request), gzipped when the
  ``Accept-Encoding`` header allows it.
* ``GET /healthz`` -- 200 while :meth:`Health.liveness` is ok, else 503 with the reason.
* ``GET /readyz`` -- 200 while :meth:`Health.readiness` is ok, else 503 with the reason.
* ``GET /`` -- a small HTML page linking to the above.

``HEAD`` works wherever ``GET`` does; other methods get 405, unknown paths 404.
Optional TLS (with optional client certificates) and HTTP basic auth (bcrypt hashes;
``/healthz`` stays open so liveness probes need no credentials). Access logs are off,
and clients that go away mid-request are not reported.

The endpoint is bounded: at most ``max_connections`` connections are open at once
(a newcomer past the cap takes the place of the oldest one still sending its request,
else it gets 503 at once), a request's head must arrive whole within
``header_timeout`` seconds and ``max_header_bytes`` bytes, one request per
connection, and malformed or truncated requests are closed at once. Every refusal is
counted in ``fluxmon_http_refused_total{reason}``. TLS files and auth users are
replaced by :meth:`MetricsServer.reload`, which also runs when the TLS files change.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import hmac
import html
import io
import ipaddress
import re
import secrets
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NamedTuple, Protocol
from urllib.parse import urlsplit

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fluxmon.config import (
    BCRYPT_MISSING,
    HttpSettings,
    TlsError,
    is_bcrypt_hash,
    load_tls_context,
    tls_problems,
)
from fluxmon.exposition import choose

__all__ = ["REFUSAL_REASONS", "Health", "MetricsServer", "format_address"]

#: Used only when no logger is passed in (the daemon passes its own).
_default_log: Any = structlog.get_logger("fluxmon.http")

_TEXT: Final = "text/plain; charset=utf-8"
_HTML: Final = "text/html; charset=utf-8"
_REALM: Final = 'Basic realm="fluxmon"'
_ALLOWED: Final = "GET, HEAD"
#: Seconds a socket send may block while a response is written.
_WRITE_TIMEOUT: Final = 30.0
#: How often the serving loop checks whether :meth:`MetricsServer.stop` was called.
_POLL_INTERVAL: Final = 0.1
#: Listen backlog; the kernel caps it at net.core.somaxconn. Connections past
#: max_connections are accepted and refused at once, so the queue drains fast.
_BACKLOG: Final = 1024
#: Seconds between checks of the TLS files' modification times.
_TLS_CHECK_INTERVAL: Final = 2.0
#: bcrypt checks of passwords not already known good that may run at once. The rest get
#: 503 at once rather than queue: a flood of wrong passwords gets this much CPU, no more.
_BCRYPT_CONCURRENCY: Final = 1

#: Why a connection or request was refused: the ``reason`` label of
#: ``fluxmon_http_refused_total``.
REFUSAL_REASONS: Final = (
    "max_connections",  # the cap was reached with every connection busy: 503, closed
    "evicted",  # closed while still sending its request, to make room for a newcomer
    "header_timeout",  # TLS handshake and request head not done within header_timeout
    "header_too_large",  # request head over max_header_bytes: 431, closed
    "bad_request",  # malformed request line or headers, HTTP/0.9: 400, closed
    "truncated",  # the client closed the connection in the middle of its request head
    "auth_busy",  # a password to check with bcrypt while another check runs: 503
)


class Health(Protocol):
    """What ``/healthz`` and ``/readyz`` ask; each answer is ``(ok, reason)``."""

    def liveness(self) -> tuple[bool, str]:
        """Whether the event loop turns."""
        ...

    def readiness(self) -> tuple[bool, str]:
        """Whether the source is connected and history is caught up."""
        ...


class _Request(NamedTuple):
    """What the routes look at in a GET or HEAD request."""

    path: str
    accept: str = ""
    accept_encoding: str = ""
    authorization: str | None = None


class _Response(NamedTuple):
    status: HTTPStatus
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _text(status: HTTPStatus, text: str, *headers: tuple[str, str]) -> _Response:
    if not text.endswith("\n"):
        text += "\n"
    return _Response(status, _TEXT, text.encode("utf-8"), headers)


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (and does not give it q=0)."""
    for item in accept_encoding.split(","):
        coding, *params = item.split(";")
        if coding.strip().lower() not in ("gzip", "x-gzip"):
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def _probe(check: Callable[[], tuple[bool, str]], name: str, log: Any) -> tuple[bool, str]:
    """Run a health check; one that raises counts as failing, with the error as reason."""
    try:
        ok, reason = check()
    except Exception as exc:
        log.exception("http.health_check_failed", check=name)
        return False, f"{name} check failed: {type(exc).__name__}: {exc}"
    return bool(ok), reason


class _Auth(Enum):
    """The outcome of checking a request's credentials."""

    OK = "ok"
    DENIED = "denied"
    BUSY = "busy"


class _BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    bcrypt is slow on purpose, and Prometheus scrapes every few seconds with the same
    credentials, so a successful check is remembered per user as a keyed hash of the
    password (the key is random per process) and later requests compare against that
    in constant time, without bcrypt. A user's entry is replaced, never added to, so
    the cache stays as small as the user list, and it carries over a reload for users
    whose hash is unchanged. Other passwords are always checked with bcrypt, but only
    ``_BCRYPT_CONCURRENCY`` at a time (``gate``): one more gets :attr:`_Auth.BUSY` at
    once, so a flood of wrong passwords cannot take the CPU or the connections from
    scrapers whose credentials are known good.
    """

    def __init__(
        self,
        users: Mapping[str, str],
        gate: threading.Semaphore,
        previous: _BasicAuth | None = None,
    ) -> None:
        try:
            import bcrypt
        except ImportError as exc:
            raise RuntimeError(BCRYPT_MISSING) from exc
        self._checkpw: Callable[[bytes, bytes], bool] = bcrypt.checkpw
        self._hashes: dict[str, bytes] = {}
        for user, hashed in users.items():
            if not is_bcrypt_hash(hashed):
                msg = f"basic auth: the password hash for user {user!r} is not a bcrypt hash"
                raise ValueError(msg)
            self._hashes[user] = hashed.encode("ascii")
        # Unknown users are checked against a real hash too, so they take as long.
        self._decoy = next(iter(self._hashes.values()))
        self._gate = gate
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self._lock = threading.Lock()
        if previous is not None:
            self._key = previous._key
            with previous._lock:
                self._verified = {
                    user: digest
                    for user, digest in previous._verified.items()
                    if previous._hashes.get(user) == self._hashes.get(user)
                }

    def check(self, authorization: str | None) -> _Auth:
        """Whether an ``Authorization`` header value carries valid credentials."""
        credentials = _parse_basic(authorization)
        if credentials is None:
            return _Auth.DENIED
        user, password = credentials
        digest = hmac.new(self._key, password, hashlib.sha256).digest()
        with self._lock:
            known = self._verified.get(user)
        if known is not None and hmac.compare_digest(known, digest):
            return _Auth.OK
        if not self._gate.acquire(blocking=False):
            return _Auth.BUSY
        hashed = self._hashes.get(user)
        try:
            ok = self._checkpw(password, hashed or self._decoy) and hashed is not None
        except ValueError:  # e.g. a password longer than bcrypt's 72 bytes
            ok = False
        finally:
            self._gate.release()
        if ok:
            with self._lock:
                self._verified[user] = digest
        return _Auth.OK if ok else _Auth.DENIED


def _parse_basic(authorization: str | None) -> tuple[str, bytes] | None:
    """``(user, password)`` from a ``Basic`` ``Authorization`` header, or ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class _Limits:
    """What one connection may take."""

    max_connections: int
    max_header_bytes: int
    header_timeout: float


@dataclass(frozen=True)
class _State:
    """Everything :meth:`MetricsServer.reload` replaces, swapped as one reference."""

    http: HttpSettings
    tls: ssl.SSLContext | None
    auth: _BasicAuth | None
    limits: _Limits
    #: The TLS files' stat signature when they were loaded, to notice a rotation.
    files: tuple[tuple[int, int, int] | None, ...] = ()


class _Problems(Exception):
    """Settings the server cannot use: ``(key, what is wrong)`` each, keys as in [http]."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(f"{key}: {what}" for key, what in problems))
        self.problems = problems


def _tls_files(http: HttpSettings) -> tuple[Path, ...]:
    return tuple(p for p in (http.tls_cert, http.tls_key, http.tls_client_ca) if p is not None)


def _signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    """Modification time, size and inode of each file (None if it cannot be read)."""
    result: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            result.append(None)
        else:
            result.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(result)


def _load_state(http: HttpSettings, gate: threading.Semaphore, old: _State | None) -> _State:
    """Check and load ``http``'s TLS files, users and limits.

    Raises :class:`_Problems` for TLS files and limits, and what :class:`_BasicAuth`
    raises for users (ValueError, or RuntimeError without bcrypt).
    """
    given = {
        key
        for key, value in (
            ("tls_cert", http.tls_cert), ("tls_key", http.tls_key),
            ("tls_client_ca", http.tls_client_ca),
        )
        if value is not None
    }  # fmt: skip
    problems = list(tls_problems(given))
    limits = _Limits(http.max_connections, http.max_header_bytes, http.header_timeout)
    if limits.max_connections < 1:
        problems.append(("max_connections", f"{limits.max_connections} is less than 1"))
    if limits.max_header_bytes < 1024:
        problems.append(("max_header_bytes", f"{limits.max_header_bytes} is less than 1024"))
    if not limits.header_timeout > 0:
        problems.append(("header_timeout", f"{limits.header_timeout} is not greater than 0"))
    if problems:
        raise _Problems(problems)
    files = _tls_files(http)
    signature = _signature(files)
    tls = None
    if http.tls_cert is not None and http.tls_key is not None:
        try:
            tls = load_tls_context(http.tls_cert, http.tls_key, http.tls_client_ca)
        except TlsError as e:
            raise _Problems(e.problems) from None
    previous = old.auth if old is not None else None
    auth = _BasicAuth(http.basic_auth, gate, previous) if http.basic_auth else None
    return _State(http, tls, auth, limits, signature)


class _Counts:
    """Refusals by reason and open connections, as metrics; shared by all threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.refused: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        self.open = 0

    def refuse(self, reason: str) -> None:
        with self._lock:
            self.refused[reason] += 1

    def collector(self) -> Collector:
        """A collector of ``fluxmon_http_refused_total`` and ``fluxmon_http_connections``."""
        counts = self

        class _Collector(Collector):
            def collect(self) -> Iterator[Metric]:
                with counts._lock:
                    refused, open_now = dict(counts.refused), counts.open
                family = CounterMetricFamily(
                    "fluxmon_http_refused",
                    "Connections and requests the endpoint refused or cut off, by reason.",
                    labels=["reason"],
                )
                for reason, value in refused.items():
                    family.add_metric([reason], value)
                yield family
                yield GaugeMetricFamily(
                    "fluxmon_http_connections",
                    "Connections open on the endpoint now (at most http.max_connections).",
                    value=open_now,
                )

        return _Collector()


@dataclass(eq=False)
class _Conn:
    """One admitted connection, as the cap sees it."""

    sock: socket.socket
    #: Deadline (monotonic) for its request head while it is still being sent, else None.
    deadline: float | None
    admitted: float
    evicted: bool = False


@dataclass(eq=False)
class _Connections:
    """The open connections: admits up to the cap, evicting the oldest unfinished request."""

    counts: _Counts
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _open: dict[int, _Conn] = field(default_factory=dict)

    def admit(self, sock: socket.socket, limits: _Limits) -> _Conn | None:
        """A slot for ``sock``, or None when every slot serves a complete request."""
        now = time.monotonic()
        victim = None
        with self._lock:
            if len(self._open) >= limits.max_connections:
                waiting = [c for c in self._open.values() if c.deadline is not None]
                if not waiting:
                    return None
                victim = min(waiting, key=lambda c: c.admitted)
                victim.evicted = True
                del self._open[id(victim)]
            conn = _Conn(sock, now + limits.header_timeout, now)
            self._open[id(conn)] = conn
            self.counts.open = len(self._open)
        if victim is not None:
            self.counts.refuse("evicted")
            _close_early(victim.sock, _BUSY_REPLY)
        return conn

    def start(self, conn: _Conn) -> bool:
        """Mark ``conn``'s request as received; False if it was evicted meanwhile."""
        with self._lock:
            if conn.evicted:
                return False
            conn.deadline = None
            return True

    def release(self, conn: _Conn) -> None:
        with self._lock:
            self._open.pop(id(conn), None)
            self.counts.open = len(self._open)


def _reply(status: HTTPStatus, text: str, *headers: str) -> bytes:
    """A whole HTTP/1.0 response that closes the connection, for refusals."""
    body = f"{text}\n".encode()
    head = [
        f"HTTP/1.0 {status.value} {status.phrase}",
        f"Content-Type: {_TEXT}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_BUSY_REPLY: Final = _reply(
    HTTPStatus.SERVICE_UNAVAILABLE, "too many connections, try again", "Retry-After: 1"
)


def _close_early(sock: socket.socket, reply: bytes) -> None:
    """Send ``reply`` if it fits without blocking (plain HTTP only), then cut the connection.

    Safe from another thread than the one reading ``sock``: that read returns at once.
    """
    try:
        if not isinstance(sock, ssl.SSLSocket):
            socket.socket.send(sock, reply, socket.MSG_DONTWAIT)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _refuse_now(sock: socket.socket, reply: bytes) -> None:
    """Answer and close a connection never handed to a thread, without blocking.

    What the client already sent is read first, so that closing does not reset the
    connection before it has read the answer.
    """
    try:
        if not isinstance(sock, ssl.SSLSocket):
            socket.socket.send(sock, reply, socket.MSG_DONTWAIT)
            socket.socket.recv(sock, 65536, socket.MSG_DONTWAIT)
            socket.socket.shutdown(sock, socket.SHUT_WR)
    except OSError:
        pass
    finally:
        sock.close()


class _Flight:
    """One exposition being rendered, and the requests waiting for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.body = b""
        self.error: Exception | None = None


class _Renderer:
    """Renders the registry once for all the scrapes that arrive while it is rendered.

    A scrape arriving while an exposition of the same format is being rendered waits
    for that one and shares it, so a burst of scrapes costs a few renderings, not one
    each, and no thread starves the accept loop of the GIL. The shared exposition is
    at most one rendering older than the request.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}

    def render(self, content_type: str, encode: Callable[[], bytes]) -> bytes:
        """``encode()``'s result, from this thread or from one already running it."""
        with self._lock:
            flight = self._flights.get(content_type)
            leader = flight is None
            if flight is None:
                flight = self._flights[content_type] = _Flight()
        if leader:
            try:
                flight.body = encode()
            except Exception as exc:
                flight.error = exc
            finally:
                with self._lock:
                    del self._flights[content_type]
                flight.done.set()
        else:
            flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.body


@dataclass(frozen=True)
class _Endpoints:
    """The routes, independent of sockets: a request in, a :class:`_Response` out."""

    registry: CollectorRegistry
    health: Health
    version: str
    auth: Callable[[], _BasicAuth | None]
    counts: _Counts
    log: Any
    renderer: _Renderer = field(default_factory=_Renderer)

    def respond(self, request: _Request) -> _Response:
        """Answer a GET (or HEAD)."""
        path = urlsplit(request.path).path
        if path == "/healthz":
            ok, reason = _probe(self.health.liveness, "liveness", self.log)
            if ok:
                return _text(HTTPStatus.OK, "ok")
            return _text(HTTPStatus.SERVICE_UNAVAILABLE, reason)
        auth = self.auth()
        verdict = _Auth.OK if auth is None else auth.check(request.authorization)
        if verdict is _Auth.BUSY:
            self.counts.refuse("auth_busy")
            return _text(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "busy checking other passwords, try again",
                ("Retry-After", "1"),
            )
        if verdict is _Auth.DENIED:
            return _text(HTTPStatus.UNAUTHORIZED, "unauthorized", ("WWW-Authenticate", _REALM))
        if path == "/metrics":
            return self._metrics(request)
        if path == "/readyz":
            ok, reason = _probe(self.health.readiness, "readiness", self.log)
            if ok:
                return _text(HTTPStatus.OK, "ready")
            return _text(HTTPStatus.SERVICE_UNAVAILABLE, reason)
        if path == "/":
            return _Response(HTTPStatus.OK, _HTML, self._landing_page())
        return _text(HTTPStatus.NOT_FOUND, "not found")

    def _metrics(self, request: _Request) -> _Response:
        encoder, content_type = choose(request.accept)
        try:
            body = self.renderer.render(content_type, lambda: encoder(self.registry))
        except Exception:
            self.log.exception("http.collect_failed")
            return _text(HTTPStatus.INTERNAL_SERVER_ERROR, "error collecting metrics")
        extra = [("Vary", "Accept, Accept-Encoding"), ("Cache-Control", "no-store")]
        if _accepts_gzip(request.accept_encoding):
            body = gzip.compress(body)
            extra.append(("Content-Encoding", "gzip"))
        return _Response(HTTPStatus.OK, content_type, body, tuple(extra))

    def _landing_page(self) -> bytes:
        version = html.escape(self.version)
        links = "\n".join(
            f'<li><a href="{name}">/{name}</a> &mdash; {what}</li>'
            for name, what in (
                ("metrics", "Prometheus metrics"),
                ("healthz", "liveness"),
                ("readyz", "readiness"),
            )
        )
        page = (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n'
            '<head><meta charset="utf-8"><title>fluxmon</title></head>\n'
            "<body>\n"
            "<h1>fluxmon</h1>\n"
            f"<p>Prometheus metrics and job logs from Flux eventlogs, version {version}.</p>\n"
            f"<ul>\n{links}\n</ul>\n"
            "</body>\n"
            "</html>\n"
        )
        return page.encode("utf-8")


#: A request line fluxmon answers: METHOD TARGET HTTP/x.y (no HTTP/0.9, no stray spaces).
_REQUEST_LINE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^\s]+ HTTP/[0-9]\.[0-9]\r?")
#: The empty line that ends a request head.
_HEAD_END: Final = re.compile(rb"\n\r?\n")
#: What send_error's statuses count as in fluxmon_http_refused_total.
_ERROR_REASONS: Final = {
    HTTPStatus.BAD_REQUEST: "bad_request",
    HTTPStatus.REQUEST_URI_TOO_LONG: "header_too_large",
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: "header_too_large",
}


class _Handler(BaseHTTPRequestHandler):
    """Translates between HTTP and :class:`_Endpoints`; subclassed per server.

    One request per connection (HTTP/1.0 replies). The request head is read here, not
    by :class:`BaseHTTPRequestHandler`, so that its size and time are bounded as a
    whole, not per line or per read.
    """

    endpoints: _Endpoints
    timeout = _WRITE_TIMEOUT
    server: _Server

    def __init__(self, request: Any, client_address: Any, server: _Server, conn: _Conn) -> None:
        self.conn = conn
        self.limits = server.state().limits
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        """Finish the TLS handshake here, in the request's thread, within header_timeout."""
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self._remaining())
            try:
                self.request.do_handshake()
            except TimeoutError:
                self._refused("header_timeout")
                raise
        super().setup()
        self.rfile.close()  # the head is read from the socket by _read_head
        self.rfile = io.BytesIO()

    def handle(self) -> None:
        """Serve the connection's one request."""
        self.close_connection = True
        self.handle_one_request()

    def handle_one_request(self) -> None:
        """Read a bounded request head, then let the base class parse and dispatch it."""
        head = self._read_head()
        if head is None or not self.server.connections.start(self.conn):
            return
        self.connection.settimeout(self.timeout)
        self.rfile = io.BytesIO(head)
        super().handle_one_request()

    def _remaining(self) -> float:
        deadline = self.conn.deadline
        return 0.0 if deadline is None else max(deadline - time.monotonic(), 0.0)

    def _refused(self, reason: str, reply: bytes = b"") -> None:
        """Count a refusal (unless the connection was evicted) and send ``reply``."""
        if self.conn.evicted:
            return
        self.server.counts.refuse(reason)
        if reply:
            try:
                self.connection.settimeout(1.0)
                self.connection.sendall(reply)
            except OSError:
                pass

    def _read_head(self) -> bytes | None:
        """The request head up to its empty line, or None when it was refused."""
        sock, cap = self.connection, self.limits.max_header_bytes
        buf = bytearray()
        line_checked = False
        while True:
            if not line_checked and (newline := buf.find(b"\n")) >= 0:
                line_checked = True
                if not _REQUEST_LINE.fullmatch(buf, 0, newline):
                    bad = _reply(HTTPStatus.BAD_REQUEST, "malformed request line")
                    self._refused("bad_request", bad)
                    return None
            end = _HEAD_END.search(buf) if line_checked else None
            if end is not None and end.end() <= cap:
                return bytes(buf[: end.end()])
            if end is not None or len(buf) > cap:
                text = f"request head over {cap} bytes"
                self._refused(
                    "header_too_large", _reply(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, text)
                )
                return None
            remaining = self._remaining()
            if remaining <= 0:
                self._refused("header_timeout")
                return None
            try:
                sock.settimeout(remaining)
                chunk = sock.recv(16384)
            except TimeoutError:
                self._refused("header_timeout")
                return None
            except OSError:  # reset, or cut by an eviction
                return None
            if not chunk:
                if buf:
                    self._refused("truncated")
                return None
            buf += chunk

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Count the base class's refusals (400, 414, 431) before sending them."""
        reason = _ERROR_REASONS.get(HTTPStatus(code))
        if reason is not None:
            self._refused(reason)
        super().send_error(code, message, explain)

    def version_string(self) -> str:
        """The Server header: fluxmon and its version, not Python's."""
        return self.server_version

    def do_GET(self) -> None:
        """Serve a GET."""
        self._send(self.endpoints.respond(self._request()), body=True)

    def do_HEAD(self) -> None:
        """Serve a HEAD: a GET's status and headers without its body."""
        self._send(self.endpoints.respond(self._request()), body=False)

    def _request(self) -> _Request:
        return _Request(
            path=self.path,
            accept=self.headers.get("Accept", ""),
            accept_encoding=self.headers.get("Accept-Encoding", ""),
            authorization=self.headers.get("Authorization"),
        )

    def _method_not_allowed(self) -> None:
        self._send(
            _text(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed", ("Allow", _ALLOWED)),
            body=True,
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = (
        _method_not_allowed
    )

    def _send(self, response: _Response, *, body: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs are off: scrapes every few seconds would drown the job log."""


def _handler_for(endpoints: _Endpoints, version: str) -> type[_Handler]:
    class Handler(_Handler):
        pass

    Handler.endpoints = endpoints
    Handler.server_version = f"fluxmon/{version}"
    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # rebinding right after a restart; not SO_REUSEPORT
    allow_reuse_port = False
    request_queue_size = _BACKLOG

    def __init__(
        self,
        family: socket.AddressFamily,
        address: tuple[str, int],
        handler: type[_Handler],
        *,
        dual_stack: bool,
        state: Callable[[], _State],
        counts: _Counts,
        tick: Callable[[], None],
    ) -> None:
        self.address_family = family
        self._dual_stack = dual_stack
        self.log: Any = _default_log
        self.state = state
        self.counts = counts
        self.connections = _Connections(counts)
        self._tick = tick
        self._handler = handler
        super().__init__(address, handler)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse DNS lookup of the listen address."""
        if self._dual_stack:
            # "::" should also accept IPv4 clients, whatever the sysctl default.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection; with TLS, wrap it (the handshake waits for its thread)."""
        sock, address = self.socket.accept()
        tls = self.state().tls
        if tls is None:
            return sock, address
        try:
            return tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address
        except OSError:
            sock.close()
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve in a thread of its own if the cap allows, else answer 503 and close."""
        conn = self.connections.admit(request, self.state().limits)
        if conn is None:
            self.counts.refuse("max_connections")
            _refuse_now(request, _BUSY_REPLY)
            return
        thread = threading.Thread(
            target=self._serve, args=(request, client_address, conn), daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no more threads
            self.connections.release(conn)
            self.counts.refuse("max_connections")
            _refuse_now(request, _BUSY_REPLY)

    def _serve(self, request: Any, client_address: Any, conn: _Conn) -> None:
        try:
            self._handler(request, client_address, self, conn)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.connections.release(conn)
            self.shutdown_request(request)

    def service_actions(self) -> None:
        """Between accepts: check the TLS files for a rotation."""
        self._tick()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that hang up or fail TLS; log anything else."""
        exc = sys.exception()
        if isinstance(exc, OSError):  # broken pipes, resets, timeouts, TLS errors
            return
        self.log.error("http.request_failed", client=str(client_address), exc_info=exc)


def _split_host(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _family(host: str, port: int) -> socket.AddressFamily:
    """The address family to listen with: IPv6 for IPv6 addresses and names that are."""
    if not host:
        return socket.AF_INET
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        return infos[0][0]
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, with an IPv6 host in brackets: the form ``--listen`` takes."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MetricsServer:
    """Serves a registry and health checks over HTTP(S) from a daemon thread.

    Construction checks and loads the TLS files and auth settings; :meth:`start` binds
    and serves; :meth:`reload` swaps TLS files, users and limits while serving (and
    runs by itself when the TLS files change); :meth:`stop` shuts down and may be
    called any number of times. While serving, ``fluxmon_http_refused_total`` and
    ``fluxmon_http_connections`` are in the registry.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Health,
        *,
        listen: tuple[str, int],
        version: str,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_client_ca: Path | None = None,
        basic_auth: Mapping[str, str] | None = None,
        max_connections: int = HttpSettings.max_connections,
        max_header_bytes: int = HttpSettings.max_header_bytes,
        header_timeout: float = HttpSettings.header_timeout,
        log: Any = None,
    ) -> None:
        """``log`` is a structlog logger for request errors (default: a global one).

        Raises ValueError naming each problem of the TLS files or users (RuntimeError
        when users are given and bcrypt is missing).
        """
        self._log = log if log is not None else _default_log
        http = HttpSettings(
            listen=listen,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            basic_auth=MappingProxyType(dict(basic_auth or {})),
            max_connections=max_connections,
            max_header_bytes=max_header_bytes,
            header_timeout=header_timeout,
        )
        self._gate = threading.Semaphore(_BCRYPT_CONCURRENCY)
        try:
            self._state = _load_state(http, self._gate, None)
        except _Problems as e:
            raise ValueError(str(e)) from None
        self._counts = _Counts()
        self._collector = self._counts.collector()
        self._registry = registry
        self._handler = _handler_for(
            _Endpoints(
                registry, health, version, lambda: self._state.auth, self._counts, self._log
            ),
            version,
        )
        self._listen = (_split_host(listen[0]), listen[1])
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._next_check = 0.0
        self._failed_files: tuple[tuple[int, int, int] | None, ...] | None = None

    def reload(self, http: HttpSettings) -> list[str]:
        """Apply ``http``'s TLS files, basic-auth users and limits, all or none.

        Returns the problems, one ``http.KEY: what is wrong`` line each; on any problem
        the server keeps everything as it was. Open connections finish as they began;
        the listen address is not changed (that needs a restart).
        """
        with self._reload_lock:
            return self._reload_locked(http)

    def _reload_locked(self, http: HttpSettings) -> list[str]:
        try:
            self._state = _load_state(http, self._gate, self._state)
        except _Problems as e:
            return [f"http.{key}: {what}" for key, what in e.problems]
        except (ValueError, RuntimeError) as e:
            return [f"http.basic_auth: {e}"]
        self._failed_files = None
        return []

    def _check_tls_files(self) -> None:
        """Reload the TLS files when they changed; keep the old ones if the new fail."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + _TLS_CHECK_INTERVAL
        with self._reload_lock:
            state = self._state
            files = _tls_files(state.http)
            if state.tls is None:
                return
            signature = _signature(files)
            if signature in (state.files, self._failed_files):
                return
            problems = self._reload_locked(state.http)
            if problems:
                self._failed_files = signature
                self._log.error(
                    "http.tls_reload_failed",
                    files=" ".join(map(str, files)),
                    problems="; ".join(problems),
                )
            else:
                self._log.info("http.tls_reloaded", files=" ".join(map(str, files)))

    def start(self) -> None:
        """Bind the listen address and serve in a daemon thread.

        Raises :class:`OSError` naming the address when it cannot be bound (in use,
        not local, no permission); the error number is the original one.
        """
        with self._lock:
            if self._server is not None or self._thread is not None:
                msg = "MetricsServer.start() called twice"
                raise RuntimeError(msg)
            host, port = self._listen
            try:
                family = _family(host, port)
                server = _Server(
                    family,
                    (host, port),
                    self._handler,
                    dual_stack=family == socket.AF_INET6 and _is_unspecified(host),
                    state=lambda: self._state,
                    counts=self._counts,
                    tick=self._check_tls_files,
                )
            except OSError as exc:
                reason = exc.strerror or str(exc)
                msg = f"cannot listen on {format_address(host, port)}: {reason}"
                raise OSError(exc.errno, msg) from exc
            server.log = self._log
            self._registry.register(self._collector)
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name="fluxmon-http",
                daemon=True,
            )
            self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the real port when 0 was asked for)."""
        server = self._server
        if server is None:
            msg = "MetricsServer is not running"
            raise RuntimeError(msg)
        return server.server_name, server.server_port

    def stop(self) -> None:
        """Stop serving, close the socket and join the thread; safe to call again."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = None
            if server is None or thread is None:
                return
            server.shutdown()
            server.server_close()
            thread.join()
            self._registry.unregister(self._collector)
