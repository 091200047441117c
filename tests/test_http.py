"""Tests for fluxmon.http: real sockets on 127.0.0.1, ephemeral ports."""

from __future__ import annotations

import base64
import errno
import gzip
import http.client
import shutil
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from structlog.testing import capture_logs

from fluxmon.config import HttpSettings, parse_listen
from fluxmon.http import REFUSAL_REASONS, MetricsServer, format_address
from tests.tls import make_cert, needs_openssl

VERSION = "9.8.7-test"


@dataclass
class FakeHealth:
    live: tuple[bool, str] = (True, "")
    ready: tuple[bool, str] = (True, "")

    def liveness(self) -> tuple[bool, str]:
        return self.live

    def readiness(self) -> tuple[bool, str]:
        return self.ready


class Reply(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class Metrics(NamedTuple):
    registry: CollectorRegistry
    events: Counter
    jobs: Gauge


@pytest.fixture
def metrics() -> Metrics:
    registry = CollectorRegistry(auto_describe=True)
    events = Counter("flux_test_events", "Events seen in a test.", ["name"], registry=registry)
    jobs = Gauge("flux_test_jobs", "Jobs in a test.", registry=registry)
    events.labels(name="submit").inc(3)
    jobs.set(7)
    return Metrics(registry, events, jobs)


@pytest.fixture
def health() -> FakeHealth:
    return FakeHealth()


StartServer = Callable[..., MetricsServer]


@pytest.fixture
def start_server(metrics: Metrics, health: FakeHealth) -> Iterator[StartServer]:
    servers: list[MetricsServer] = []

    def start(**kwargs: Any) -> MetricsServer:
        options: dict[str, Any] = {"listen": ("127.0.0.1", 0), "version": VERSION}
        options.update(kwargs)
        server = MetricsServer(
            options.pop("registry", metrics.registry), options.pop("health", health), **options
        )
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: StartServer) -> MetricsServer:
    return start_server()


def request(
    server: MetricsServer,
    path: str,
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "GET",
    tls: ssl.SSLContext | None = None,
) -> Reply:
    host, port = server.address
    conn: http.client.HTTPConnection
    if tls is None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=10, context=tls)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def samples(text: str) -> dict[str, float]:
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# --- /metrics ---------------------------------------------------------------------------


def test_metrics_text_format_by_default(server: MetricsServer) -> None:
    """Without an Accept header /metrics answers in text format 0.0.4 with the registry's series."""
    reply = request(server, "/metrics")
    assert reply.status == 200
    content_type = reply.headers["Content-Type"]
    assert content_type.startswith("text/plain")
    assert "version=0.0.4" in content_type
    assert reply.headers.get("Content-Encoding") is None
    values = samples(reply.body.decode())
    assert values["flux_test_events_total[('name', 'submit')]"] == 3
    assert values["flux_test_jobs[]"] == 7


def test_metrics_openmetrics_when_accepted(server: MetricsServer) -> None:
    """An Accept header asking for OpenMetrics gets it, ending with the # EOF marker."""
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    reply = request(server, "/metrics", {"Accept": accept})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
    text = reply.body.decode()
    assert text.endswith("# EOF\n")
    assert 'flux_test_events_total{name="submit"} 3.0' in text


def test_metrics_gzip_when_accepted(server: MetricsServer) -> None:
    """Accept-Encoding: gzip gets a gzipped body that decompresses to the plain exposition."""
    plain = request(server, "/metrics").body
    reply = request(server, "/metrics", {"Accept-Encoding": "deflate, gzip;q=0.8, br"})
    assert reply.status == 200
    assert reply.headers["Content-Encoding"] == "gzip"
    assert int(reply.headers["Content-Length"]) == len(reply.body)
    # Open connections may differ between the two scrapes (the first one's close can be
    # counted after the second arrives); everything else is the same exposition.
    assert _without_connections(gzip.decompress(reply.body)) == _without_connections(plain)


def _without_connections(exposition: bytes) -> list[bytes]:
    return [
        line
        for line in exposition.splitlines()
        if not line.startswith(b"fluxmon_http_connections ")
    ]


@pytest.mark.parametrize(
    "accept_encoding",
    [
        pytest.param("identity", id="identity"),
        pytest.param("gzip;q=0", id="gzip-refused"),
        pytest.param("gzipped", id="not-a-coding-we-know"),
    ],
)
def test_metrics_not_gzipped_unless_allowed(server: MetricsServer, accept_encoding: str) -> None:
    """Codings other than gzip, and gzip with q=0, get an uncompressed body."""
    reply = request(server, "/metrics", {"Accept-Encoding": accept_encoding})
    assert reply.headers.get("Content-Encoding") is None
    assert b"flux_test_jobs 7.0" in reply.body


def test_metrics_head_has_headers_and_no_body(server: MetricsServer) -> None:
    """HEAD /metrics gives GET's status and Content-Length but no body."""
    got = request(server, "/metrics")
    head = request(server, "/metrics", method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["Content-Length"] == str(len(got.body))
    assert head.headers["Content-Type"] == got.headers["Content-Type"]


def test_metrics_ignores_query_string(server: MetricsServer) -> None:
    """A query string on /metrics (as some scrapers send) does not change the route."""
    assert request(server, "/metrics?name[]=x").status == 200


def test_metrics_collect_error_is_500_and_logged(
    start_server: StartServer, metrics: Metrics
) -> None:
    """A collector that raises makes /metrics answer 500, and the error is logged."""

    class Broken(Collector):
        def describe(self) -> list[Any]:
            return []

        def collect(self) -> Iterator[Any]:
            raise ValueError("boom")

    metrics.registry.register(Broken())
    server = start_server()
    with capture_logs() as logs:
        reply = request(server, "/metrics")
    assert reply.status == 500
    assert [log["event"] for log in logs] == ["http.collect_failed"]


def test_concurrent_scrapes_while_counting(server: MetricsServer, metrics: Metrics) -> None:
    """Fifty concurrent scrapes all parse while another thread increments a counter flat out."""
    done = threading.Event()

    def count() -> None:
        while not done.is_set():
            metrics.events.labels(name="alloc").inc()
            metrics.jobs.inc()

    counter = threading.Thread(target=count)
    counter.start()
    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            replies = list(pool.map(lambda _: request(server, "/metrics"), range(50)))
    finally:
        done.set()
        counter.join()
    for reply in replies:
        assert reply.status == 200
        values = samples(reply.body.decode())
        assert values["flux_test_events_total[('name', 'submit')]"] == 3
        assert values["flux_test_events_total[('name', 'alloc')]"] >= 0


# --- health -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "attribute", "ok_body"),
    [
        pytest.param("/healthz", "live", b"ok\n", id="healthz"),
        pytest.param("/readyz", "ready", b"ready\n", id="readyz"),
    ],
)
def test_health_endpoints_follow_health(
    server: MetricsServer, health: FakeHealth, path: str, attribute: str, ok_body: bytes
) -> None:
    """/healthz and /readyz give 200 while their check passes and 503 with its reason otherwise."""
    ok = request(server, path)
    assert (ok.status, ok.body) == (200, ok_body)
    setattr(health, attribute, (False, "no event for 93 s"))
    failing = request(server, path)
    assert (failing.status, failing.body) == (503, b"no event for 93 s\n")
    assert failing.headers["Content-Type"] == "text/plain; charset=utf-8"
    setattr(health, attribute, (True, ""))
    assert request(server, path).status == 200


def test_readiness_is_independent_of_liveness(server: MetricsServer, health: FakeHealth) -> None:
    """A live but not yet caught-up daemon is healthy and not ready."""
    health.ready = (False, "replaying history")
    assert request(server, "/healthz").status == 200
    assert request(server, "/readyz").status == 503


def test_health_check_that_raises_is_503(start_server: StartServer) -> None:
    """A health check that raises counts as failing, with the exception as the reason."""

    class Raising(FakeHealth):
        def readiness(self) -> tuple[bool, str]:
            raise KeyError("source")

    server = start_server(health=Raising())
    with capture_logs():
        reply = request(server, "/readyz")
    assert reply.status == 503
    assert b"KeyError" in reply.body


# --- other routes -----------------------------------------------------------------------


def test_landing_page_links(server: MetricsServer) -> None:
    """/ is an HTML page with the name, the version and links to the three endpoints."""
    reply = request(server, "/")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    page = reply.body.decode()
    assert "fluxmon" in page
    assert VERSION in page
    for name in ("metrics", "healthz", "readyz"):
        assert f'href="{name}"' in page


def test_server_header_names_fluxmon(server: MetricsServer) -> None:
    """The Server header names fluxmon and its version, not the Python version."""
    assert request(server, "/").headers["Server"] == f"fluxmon/{VERSION}"


def test_server_header_has_no_trailing_space(server: MetricsServer) -> None:
    """The raw Server header line ends right after the version, with no trailing space."""
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    lines = reply.split(b"\r\n")
    assert f"Server: fluxmon/{VERSION}".encode() in lines


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        pytest.param("127.0.0.1", 10900, "127.0.0.1:10900", id="ipv4"),
        pytest.param("::1", 80, "[::1]:80", id="ipv6"),
        pytest.param("::", 0, "[::]:0", id="ipv6-any"),
        pytest.param("localhost", 9, "localhost:9", id="name"),
    ],
)
def test_format_address_is_what_listen_parses(host: str, port: int, text: str) -> None:
    """format_address writes HOST:PORT with IPv6 in brackets, and parse_listen reads it back."""
    assert format_address(host, port) == text
    assert parse_listen(text) == (host, port)


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/healthz/x", "/favicon.ico"])
def test_unknown_path_is_404(server: MetricsServer, path: str) -> None:
    """Paths other than the four routes get 404."""
    assert request(server, path).status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405(server: MetricsServer, method: str) -> None:
    """Methods other than GET and HEAD get 405 with an Allow header."""
    reply = request(server, "/metrics", method=method)
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, HEAD"


def test_requests_are_not_logged_to_stderr(
    server: MetricsServer, capfd: pytest.CaptureFixture[str]
) -> None:
    """Normal requests, 404s and 405s write nothing to stderr (no access log)."""
    request(server, "/metrics")
    request(server, "/nope")
    request(server, "/", method="POST")
    assert capfd.readouterr().err == ""


def test_client_hanging_up_prints_no_traceback(
    start_server: StartServer, metrics: Metrics, capfd: pytest.CaptureFixture[str]
) -> None:
    """A client that resets the connection mid-response leaves no traceback on stderr."""

    class Huge(Collector):
        """One gauge with 16 MiB of help text: more than the kernel buffers on loopback."""

        def describe(self) -> list[Any]:
            return []

        def collect(self) -> Iterator[Any]:
            yield GaugeMetricFamily("flux_test_huge", "x" * (16 << 20), value=1)

    metrics.registry.register(Huge())
    server = start_server()
    for _ in range(3):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect(server.address)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(1)
            # Close with RST while the server is still writing: its next send fails.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert request(server, "/healthz").status == 200
    assert capfd.readouterr().err == ""


# --- lifecycle --------------------------------------------------------------------------


def test_address_reports_ephemeral_port(server: MetricsServer) -> None:
    """Listening on port 0 reports the real port the kernel chose."""
    host, port = server.address
    assert host == "127.0.0.1"
    assert port > 0


def test_address_in_use_is_oserror(start_server: StartServer) -> None:
    """Binding an address another server holds raises OSError naming the address."""
    first = start_server()
    port = first.address[1]
    with pytest.raises(OSError, match=f"127.0.0.1:{port}") as info:
        start_server(listen=("127.0.0.1", port))
    assert info.value.errno == errno.EADDRINUSE
    assert request(first, "/healthz").status == 200


def test_stop_is_idempotent(start_server: StartServer) -> None:
    """stop() closes the socket and can be called again, and before start()."""
    server = start_server()
    address = server.address
    server.stop()
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
    never_started = MetricsServer(
        CollectorRegistry(), FakeHealth(), listen=("127.0.0.1", 0), version=VERSION
    )
    never_started.stop()


def test_start_twice_is_an_error(server: MetricsServer) -> None:
    """A server starts once; a second start() is a programming error."""
    with pytest.raises(RuntimeError, match="twice"):
        server.start()


def test_ipv6_listen_address(start_server: StartServer) -> None:
    """An IPv6 host, bracketed or not, listens on IPv6."""
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"cannot bind ::1 here: {exc}")
    server = start_server(listen=("[::1]", 0))
    host, port = server.address
    assert host == "::1"
    conn = http.client.HTTPConnection("::1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_ipv6_wildcard_also_accepts_ipv4(start_server: StartServer) -> None:
    """Listening on :: accepts IPv4 clients too (dual stack), like 0.0.0.0 would."""
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::", 0))
    except OSError as exc:
        pytest.skip(f"cannot bind :: here: {exc}")
    server = start_server(listen=("::", 0))
    port = server.address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


# --- TLS --------------------------------------------------------------------------------


def client_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


@needs_openssl
def test_tls_serves_https(start_server: StartServer, tmp_path: Path) -> None:
    """With a certificate and key the server speaks TLS and serves /metrics over it."""
    cert, key = make_cert(tmp_path, "server")
    server = start_server(tls_cert=cert, tls_key=key)
    reply = request(server, "/metrics", tls=client_context(cert))
    assert reply.status == 200
    assert b"flux_test_jobs 7.0" in reply.body


@needs_openssl
def test_tls_slow_handshake_does_not_block_others(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A client that connects and never starts the handshake does not stall other clients."""
    cert, key = make_cert(tmp_path, "server")
    server = start_server(tls_cert=cert, tls_key=key)
    with socket.create_connection(server.address, timeout=10):
        assert request(server, "/healthz", tls=client_context(cert)).status == 200


@needs_openssl
def test_tls_client_certificates_required(
    start_server: StartServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """With a client CA, clients without a certificate from it are refused, quietly."""
    cert, key = make_cert(tmp_path, "server")
    client_cert, client_key = make_cert(tmp_path, "client")
    stranger_cert, stranger_key = make_cert(tmp_path, "stranger")
    server = start_server(tls_cert=cert, tls_key=key, tls_client_ca=client_cert)

    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(server, "/healthz", tls=client_context(cert))
    stranger = client_context(cert)
    stranger.load_cert_chain(stranger_cert, stranger_key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(server, "/healthz", tls=stranger)

    trusted = client_context(cert)
    trusted.load_cert_chain(client_cert, client_key)
    assert request(server, "/healthz", tls=trusted).status == 200
    assert capfd.readouterr().err == ""


def test_tls_needs_cert_and_key(metrics: Metrics, tmp_path: Path) -> None:
    """A certificate without a key (or a client CA without TLS) is a configuration error."""
    with pytest.raises(ValueError, match="both"):
        MetricsServer(
            metrics.registry, FakeHealth(), listen=("127.0.0.1", 0), version=VERSION,
            tls_cert=tmp_path / "c.pem",
        )  # fmt: skip
    with pytest.raises(ValueError, match="tls_client_ca"):
        MetricsServer(
            metrics.registry, FakeHealth(), listen=("127.0.0.1", 0), version=VERSION,
            tls_client_ca=tmp_path / "ca.pem",
        )  # fmt: skip


# --- basic auth -------------------------------------------------------------------------


@pytest.fixture
def bcrypt_module() -> Any:
    return pytest.importorskip("bcrypt", reason="basic auth tests need the bcrypt package")


@pytest.fixture
def users(bcrypt_module: Any) -> dict[str, str]:
    hashed = bcrypt_module.hashpw(b"s3cret:with colon", bcrypt_module.gensalt(rounds=4))
    return {"prometheus": hashed.decode()}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-credentials"),
        pytest.param(basic("prometheus", "wrong"), id="wrong-password"),
        pytest.param(basic("nobody", "s3cret:with colon"), id="unknown-user"),
        pytest.param({"Authorization": "Bearer abc"}, id="other-scheme"),
        pytest.param({"Authorization": "Basic !!!"}, id="not-base64"),
        pytest.param({"Authorization": "Basic " + base64.b64encode(b"x").decode()}, id="no-colon"),
    ],
)
def test_basic_auth_refuses(
    start_server: StartServer, users: dict[str, str], headers: dict[str, str]
) -> None:
    """Missing, wrong or malformed credentials get 401 with a Basic challenge."""
    server = start_server(basic_auth=users)
    reply = request(server, "/metrics", headers)
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == 'Basic realm="fluxmon"'


def test_basic_auth_guards_every_route_but_healthz(
    start_server: StartServer, users: dict[str, str]
) -> None:
    """Every route but /healthz, unknown paths too, asks for credentials."""
    server = start_server(basic_auth=users)
    for path in ("/metrics", "/readyz", "/", "/nope"):
        assert request(server, path).status == 401, path
        assert request(server, path, method="HEAD").status == 401, path
    assert request(server, "/healthz").status == 200


def test_basic_auth_accepts_valid_credentials(
    start_server: StartServer, users: dict[str, str]
) -> None:
    """Valid credentials (the password may contain a colon) open every route."""
    server = start_server(basic_auth=users)
    credentials = basic("prometheus", "s3cret:with colon")
    assert request(server, "/metrics", credentials).status == 200
    assert request(server, "/readyz", credentials).status == 200
    assert request(server, "/", credentials).status == 200
    assert request(server, "/nope", credentials).status == 404


def test_basic_auth_caches_successful_checks(
    start_server: StartServer,
    users: dict[str, str],
    bcrypt_module: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bcrypt runs once for repeated good credentials, but every time for bad ones."""
    calls: list[bytes] = []
    real_checkpw = bcrypt_module.checkpw

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return bool(real_checkpw(password, hashed))

    monkeypatch.setattr(bcrypt_module, "checkpw", counting_checkpw)
    server = start_server(basic_auth=users)
    good = basic("prometheus", "s3cret:with colon")
    for _ in range(5):
        assert request(server, "/metrics", good).status == 200
    assert len(calls) == 1
    for _ in range(2):
        assert request(server, "/metrics", basic("prometheus", "nope")).status == 401
    assert len(calls) == 3
    assert request(server, "/metrics", good).status == 200
    assert len(calls) == 3


def test_basic_auth_rejects_non_bcrypt_hash(metrics: Metrics, bcrypt_module: Any) -> None:
    """A password hash that is not a bcrypt hash is refused at construction."""
    with pytest.raises(ValueError, match="prometheus"):
        MetricsServer(
            metrics.registry, FakeHealth(), listen=("127.0.0.1", 0), version=VERSION,
            basic_auth={"prometheus": "plaintext"},
        )  # fmt: skip


def test_basic_auth_without_bcrypt_is_a_clear_error(
    metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking for basic auth without bcrypt installed says how to install it from a checkout."""
    monkeypatch.setitem(sys.modules, "bcrypt", None)
    with pytest.raises(RuntimeError, match=r"pip install '\.\[auth\]'.* pip install bcrypt"):
        MetricsServer(
            metrics.registry, FakeHealth(), listen=("127.0.0.1", 0), version=VERSION,
            basic_auth={"prometheus": "$2b$04$" + "a" * 53},
        )  # fmt: skip


def test_empty_basic_auth_means_no_auth(start_server: StartServer) -> None:
    """An empty user table turns auth off rather than locking everyone out."""
    server = start_server(basic_auth={})
    assert request(server, "/metrics").status == 200


# --- limits -----------------------------------------------------------------------------


def refused(registry: CollectorRegistry, reason: str) -> float:
    """fluxmon_http_refused_total for one reason."""
    value = registry.get_sample_value("fluxmon_http_refused_total", {"reason": reason})
    assert value is not None
    return value


def raw(server: MetricsServer, data: bytes, *, close_write: bool = False) -> tuple[bytes, float]:
    """Send bytes on a fresh connection; return all the server sent and the seconds it took."""
    start = time.monotonic()
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - start


def test_refusals_are_counted_from_zero(server: MetricsServer, metrics: Metrics) -> None:
    """Every refusal reason is exposed at 0 from the start, with the open connections gauge."""
    text = request(server, "/metrics").body.decode()
    for reason in REFUSAL_REASONS:
        assert f'fluxmon_http_refused_total{{reason="{reason}"}} 0.0' in text
    assert "fluxmon_http_connections " in text


def test_http09_request_is_refused_at_once(start_server: StartServer, metrics: Metrics) -> None:
    """An HTTP/0.9 request line gets 400 and is closed at once, not held for its headers."""
    server = start_server(header_timeout=5.0)
    received, seconds = raw(server, b"GET /metrics\r\n")
    assert received.startswith(b"HTTP/1.0 400 ")
    assert seconds < 1.0
    assert refused(metrics.registry, "bad_request") == 1


def test_truncated_request_is_closed_at_once(start_server: StartServer, metrics: Metrics) -> None:
    """A head cut short by the client closing is closed without an answer, and counted."""
    server = start_server(header_timeout=5.0)
    received, seconds = raw(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n", close_write=True)
    assert received == b""
    assert seconds < 1.0
    assert refused(metrics.registry, "truncated") == 1


def test_bare_newlines_end_a_head(server: MetricsServer) -> None:
    """A head whose lines end in a bare LF is still a request."""
    received, _ = raw(server, b"GET /healthz HTTP/1.0\nHost: x\n\n")
    assert received.startswith(b"HTTP/1.0 200 ")


def test_large_head_gets_431(start_server: StartServer, metrics: Metrics) -> None:
    """A request head over max_header_bytes gets 431 and is counted; a smaller one is served."""
    server = start_server(max_header_bytes=2048)
    ok = request(server, "/healthz", {"X-Pad": "a" * 1500})
    assert ok.status == 200
    received, _ = raw(server, b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 3000 + b"\r\n\r\n")
    assert received.startswith(b"HTTP/1.0 431 ")
    assert refused(metrics.registry, "header_too_large") == 1


def test_slow_head_is_closed_at_the_deadline(start_server: StartServer, metrics: Metrics) -> None:
    """A client trickling its head is closed header_timeout after connecting, trickle or not."""
    server = start_server(header_timeout=0.5)
    start = time.monotonic()
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        closed_after = None
        for _ in range(40):  # a header line every 0.1 s: each read is quick
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed_after = time.monotonic() - start
                break
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    closed_after = time.monotonic() - start
                    break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
    assert closed_after is not None
    assert 0.4 < closed_after < 1.5
    assert refused(metrics.registry, "header_timeout") == 1


def test_idle_connection_is_closed_at_the_deadline(
    start_server: StartServer, metrics: Metrics
) -> None:
    """A client that connects and sends nothing is closed after header_timeout."""
    server = start_server(header_timeout=0.3)
    received, seconds = raw(server, b"")
    assert received == b""
    assert 0.2 < seconds < 1.5
    assert refused(metrics.registry, "header_timeout") == 1


class BlockingHealth(FakeHealth):
    """A health whose liveness check waits until released: a request that stays busy."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def liveness(self) -> tuple[bool, str]:
        self.entered.release()
        self.release.wait(10)
        return self.live


def test_connections_past_the_cap_get_503_at_once(metrics: Metrics) -> None:
    """With every slot busy serving, a newcomer gets 503 with Retry-After at once, counted."""
    health = BlockingHealth()
    server = MetricsServer(
        metrics.registry, health, listen=("127.0.0.1", 0), version=VERSION, max_connections=2
    )
    server.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(request, server, "/healthz") for _ in range(2)]
            for _ in range(2):
                assert health.entered.acquire(timeout=10)
            start = time.monotonic()
            reply = request(server, "/metrics")
            assert time.monotonic() - start < 1.0
            assert reply.status == 503
            assert reply.headers["Retry-After"] == "1"
            health.release.set()
            assert [f.result().status for f in busy] == [200, 200]
        assert refused(metrics.registry, "max_connections") == 1
        assert request(server, "/metrics").status == 200
    finally:
        health.release.set()
        server.stop()


def test_slow_clients_make_room_for_a_scrape(start_server: StartServer, metrics: Metrics) -> None:
    """At the cap, a newcomer takes the place of the oldest client still sending its head."""
    server = start_server(max_connections=3, header_timeout=10.0)
    slow = [socket.create_connection(server.address, timeout=10) for _ in range(3)]
    try:
        for sock in slow:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        time.sleep(0.2)
        start = time.monotonic()
        assert request(server, "/metrics").status == 200
        assert time.monotonic() - start < 1.0
        oldest = slow[0].recv(65536)
        assert oldest.startswith(b"HTTP/1.0 503 ") or oldest == b""
        assert refused(metrics.registry, "evicted") == 1
    finally:
        for sock in slow:
            sock.close()


# --- reload and TLS rotation ------------------------------------------------------------


def peer_cn(server: MetricsServer, ca: Path) -> str:
    """The common name of the certificate the server presents now."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    with (
        socket.create_connection(server.address, timeout=10) as raw_sock,
        context.wrap_socket(raw_sock) as tls,
    ):
        cert: Any = tls.getpeercert()
    return next(str(value) for rdn in cert["subject"] for key, value in rdn if key == "commonName")


def both_cas(tmp_path: Path, *certs: Path) -> Path:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("".join(c.read_text() for c in certs))
    return bundle


@needs_openssl
def test_rotated_certificate_is_served_without_restart(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Certificate files replaced in place are served by new connections within seconds."""
    live = tmp_path / "live"
    live.mkdir()
    old_cert, old_key = make_cert(tmp_path, "old")
    new_cert, new_key = make_cert(tmp_path, "new")
    shutil.copy(old_cert, live / "tls.crt")
    shutil.copy(old_key, live / "tls.key")
    bundle = both_cas(tmp_path, old_cert, new_cert)
    server = start_server(tls_cert=live / "tls.crt", tls_key=live / "tls.key")
    assert peer_cn(server, bundle) == "old"
    with capture_logs() as logs:
        shutil.copy(new_cert, live / "tls.crt")
        shutil.copy(new_key, live / "tls.key")
        deadline = time.monotonic() + 10
        while peer_cn(server, bundle) != "new" and time.monotonic() < deadline:
            time.sleep(0.2)
    assert peer_cn(server, bundle) == "new"
    assert "http.tls_reloaded" in [entry["event"] for entry in logs]


@needs_openssl
def test_broken_certificate_keeps_the_old_one(start_server: StartServer, tmp_path: Path) -> None:
    """A rotated certificate that does not load is logged as an error; the old one is kept."""
    cert, key = make_cert(tmp_path, "good")
    live_cert = tmp_path / "tls.crt"
    shutil.copy(cert, live_cert)
    server = start_server(tls_cert=live_cert, tls_key=key)
    with capture_logs() as logs:
        live_cert.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
        deadline = time.monotonic() + 10
        while not logs and time.monotonic() < deadline:
            time.sleep(0.1)
    [entry] = logs
    assert entry["event"] == "http.tls_reload_failed"
    assert entry["log_level"] == "error"
    assert f"http.tls_cert: {live_cert}: not a PEM certificate" in entry["problems"]
    assert peer_cn(server, cert) == "good"


@needs_openssl
def test_reload_applies_new_tls_files(start_server: StartServer, tmp_path: Path) -> None:
    """reload() with other TLS files returns no problem and serves them at once."""
    old_cert, old_key = make_cert(tmp_path, "old")
    new_cert, new_key = make_cert(tmp_path, "new")
    server = start_server(tls_cert=old_cert, tls_key=old_key)
    assert server.reload(HttpSettings(tls_cert=new_cert, tls_key=new_key)) == []
    assert peer_cn(server, new_cert) == "new"


@needs_openssl
def test_reload_with_a_problem_changes_nothing(
    start_server: StartServer, tmp_path: Path, users: dict[str, str]
) -> None:
    """reload() with a bad key returns the problem and keeps the certificate and users."""
    cert, key = make_cert(tmp_path, "old")
    other_cert, _ = make_cert(tmp_path, "other")
    server = start_server(tls_cert=cert, tls_key=key, basic_auth=users)
    problems = server.reload(HttpSettings(tls_cert=other_cert, tls_key=key))
    assert problems == [
        f"http.tls_key: {key}: not the private key of the certificate {other_cert}"
        " (valid: path to the PEM private key of tls_cert)"
    ]
    assert peer_cn(server, cert) == "old"
    reply = request(server, "/metrics", tls=client_context(cert))
    assert reply.status == 401


def test_reload_replaces_users(
    start_server: StartServer, users: dict[str, str], bcrypt_module: Any
) -> None:
    """After reload() the new users' passwords open the endpoint and the old ones do not."""
    server = start_server(basic_auth=users)
    old = basic("prometheus", "s3cret:with colon")
    assert request(server, "/metrics", old).status == 200
    hashed = bcrypt_module.hashpw(b"new", bcrypt_module.gensalt(rounds=4)).decode()
    assert server.reload(HttpSettings(basic_auth={"grafana": hashed})) == []
    assert request(server, "/metrics", old).status == 401
    assert request(server, "/metrics", basic("grafana", "new")).status == 200


def test_reload_keeps_known_good_credentials_of_unchanged_users(
    start_server: StartServer,
    users: dict[str, str],
    bcrypt_module: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A user whose hash did not change is not checked with bcrypt again after a reload."""
    calls: list[bytes] = []
    real_checkpw = bcrypt_module.checkpw

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return bool(real_checkpw(password, hashed))

    monkeypatch.setattr(bcrypt_module, "checkpw", counting_checkpw)
    server = start_server(basic_auth=users)
    good = basic("prometheus", "s3cret:with colon")
    assert request(server, "/metrics", good).status == 200
    assert server.reload(HttpSettings(basic_auth=users, max_connections=8)) == []
    assert request(server, "/metrics", good).status == 200
    assert len(calls) == 1


def test_wrong_password_flood_does_not_starve_known_good_scrapes(
    start_server: StartServer,
    users: dict[str, str],
    bcrypt_module: Any,
    monkeypatch: pytest.MonkeyPatch,
    metrics: Metrics,
) -> None:
    """While bcrypt checks a wrong password, more wrong ones get 503 at once; good ones pass."""
    real_checkpw = bcrypt_module.checkpw
    slow = threading.Event()
    in_check = threading.Event()

    def slow_checkpw(password: bytes, hashed: bytes) -> bool:
        if password == b"wrong":
            in_check.set()
            slow.wait(10)
        return bool(real_checkpw(password, hashed))

    monkeypatch.setattr(bcrypt_module, "checkpw", slow_checkpw)
    server = start_server(basic_auth=users)
    good = basic("prometheus", "s3cret:with colon")
    assert request(server, "/metrics", good).status == 200
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(request, server, "/metrics", basic("prometheus", "wrong"))
        assert in_check.wait(10)
        flood = [request(server, "/metrics", basic("prometheus", "wrong")) for _ in range(5)]
        start = time.monotonic()
        assert request(server, "/metrics", good).status == 200
        assert time.monotonic() - start < 1.0
        slow.set()
        assert first.result().status == 401
    assert {reply.status for reply in flood} == {503}
    assert all(reply.headers["Retry-After"] == "1" for reply in flood)
    assert refused(metrics.registry, "auth_busy") == 5
