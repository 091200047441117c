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
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import gzip
import hashlib
import hmac
import html
import ipaddress
import secrets
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol
from urllib.parse import urlsplit

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from fluxmon.config import BCRYPT_MISSING, HttpSettings, is_bcrypt_hash, tls_problems

__all__ = ["Health", "MetricsServer", "format_address"]

#: Used only when no logger is passed in (the daemon passes its own).
_default_log: Any = structlog.get_logger("fluxmon.http")

_TEXT: Final = "text/plain; charset=utf-8"
_HTML: Final = "text/html; charset=utf-8"
_REALM: Final = 'Basic realm="fluxmon"'
_ALLOWED: Final = "GET, HEAD"
#: Seconds a client may take to finish the TLS handshake or send its request.
_REQUEST_TIMEOUT: Final = 30.0
#: How often the serving loop checks whether :meth:`MetricsServer.stop` was called.
_POLL_INTERVAL: Final = 0.1


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


class _BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    bcrypt is slow on purpose, and Prometheus scrapes every few seconds with the same
    credentials, so a successful check is remembered per user as a keyed hash of the
    password (the key is random per process) and later requests compare against that
    in constant time. A user's entry is replaced, never added to, so the cache stays
    as small as the user list.
    """

    def __init__(self, users: Mapping[str, str]) -> None:
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
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def check(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries valid credentials."""
        credentials = _parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        digest = hmac.new(self._key, password, hashlib.sha256).digest()
        with self._lock:
            known = self._verified.get(user)
        if known is not None and hmac.compare_digest(known, digest):
            return True
        hashed = self._hashes.get(user)
        try:
            ok = self._checkpw(password, hashed or self._decoy) and hashed is not None
        except ValueError:  # e.g. a password longer than bcrypt's 72 bytes
            ok = False
        if ok:
            with self._lock:
                self._verified[user] = digest
        return ok


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
class _Endpoints:
    """The routes, independent of sockets: a request in, a :class:`_Response` out."""

    registry: CollectorRegistry
    health: Health
    version: str
    auth: _BasicAuth | None
    log: Any

    def respond(self, request: _Request) -> _Response:
        """Answer a GET (or HEAD)."""
        path = urlsplit(request.path).path
        if path == "/healthz":
            ok, reason = _probe(self.health.liveness, "liveness", self.log)
            if ok:
                return _text(HTTPStatus.OK, "ok")
            return _text(HTTPStatus.SERVICE_UNAVAILABLE, reason)
        if self.auth is not None and not self.auth.check(request.authorization):
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
        encoder, content_type = choose_encoder(request.accept)
        try:
            body = encoder(self.registry)
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


class _Handler(BaseHTTPRequestHandler):
    """Translates between HTTP and :class:`_Endpoints`; subclassed per server."""

    endpoints: _Endpoints
    timeout = _REQUEST_TIMEOUT

    def setup(self) -> None:
        """Finish the TLS handshake here, in the request's thread, not in accept()."""
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

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

    def __init__(
        self,
        family: socket.AddressFamily,
        address: tuple[str, int],
        handler: type[_Handler],
        *,
        dual_stack: bool,
    ) -> None:
        self.address_family = family
        self._dual_stack = dual_stack
        self.log: Any = _default_log
        #: Wraps each accepted connection (read per connection, so a reload swaps it).
        self.tls: ssl.SSLContext | None = None
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection, wrapped in the TLS context of the moment (if any)."""
        sock, address = self.socket.accept()
        tls = self.tls
        if tls is not None:
            # The handshake is done by the request's thread (see _Handler.setup).
            sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse DNS lookup of the listen address."""
        if self._dual_stack:
            # "::" should also accept IPv4 clients, whatever the sysctl default.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

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


def _tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert, keyfile=key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca)
    return context


class MetricsServer:
    """Serves a registry and health checks over HTTP(S) from a daemon thread.

    Construction checks the TLS files and auth settings; :meth:`start` binds and
    serves; :meth:`stop` shuts down and may be called any number of times.
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
        log: Any = None,
    ) -> None:
        """``log`` is a structlog logger for request errors (default: a global one)."""
        self._log = log if log is not None else _default_log
        given = {
            key
            for key, value in (
                ("tls_cert", tls_cert), ("tls_key", tls_key), ("tls_client_ca", tls_client_ca)
            )
            if value is not None
        }  # fmt: skip
        problems = [f"{key}: {problem}" for key, problem in tls_problems(given)]
        if problems:
            raise ValueError("\n".join(problems))
        self._tls = (
            _tls_context(tls_cert, tls_key, tls_client_ca)
            if tls_cert is not None and tls_key is not None
            else None
        )
        auth = _BasicAuth(basic_auth) if basic_auth else None
        self._handler = _handler_for(
            _Endpoints(registry, health, version, auth, self._log), version
        )
        self._listen = (_split_host(listen[0]), listen[1])
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

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
                )
            except OSError as exc:
                reason = exc.strerror or str(exc)
                msg = f"cannot listen on {format_address(host, port)}: {reason}"
                raise OSError(exc.errno, msg) from exc
            server.log = self._log
            server.tls = self._tls
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name="fluxmon-http",
                daemon=True,
            )
            self._thread.start()

    def reload(self, http: HttpSettings) -> list[str]:
        """Apply ``http``'s basic-auth users and TLS files (read again even when unchanged).

        All or nothing: returns the problems and changes nothing, or returns ``[]``.
        New connections get the new certificate; ``http.listen`` is not looked at.
        """
        try:
            auth = _BasicAuth(http.basic_auth) if http.basic_auth else None
        except (ValueError, RuntimeError) as exc:
            return [f"http.basic_auth: {exc}"]
        tls = None
        if http.tls_cert is not None and http.tls_key is not None:
            files = [str(f) for f in (http.tls_cert, http.tls_key, http.tls_client_ca) if f]
            try:
                tls = _tls_context(http.tls_cert, http.tls_key, http.tls_client_ca)
            except OSError as exc:  # ssl.SSLError is an OSError
                return [f"http.tls_cert: cannot load {', '.join(files)}: {exc}"]
        with self._lock:
            self._tls = tls
            if self._server is not None:
                self._server.tls = tls
            endpoints = dataclasses.replace(self._handler.endpoints, auth=auth)
            self._handler.endpoints = endpoints
        return []

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
