"""Load and validate fluxmon's TOML configuration file.

The file is checked against one table, ``_SECTIONS``: every TOML key maps to the dataclass
field it fills and the function that checks and converts its value. Every problem in a file is
collected and raised at once as a :class:`ConfigError`, one line per problem in the form
``FILE: section.key: what is wrong (valid: ...)``.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, TextIO, TypeAlias, get_args

from fluxmon.exitcodes import EX_CONFIG, EX_OK

FluxMode = Literal["auto", "journal", "watch"]
ExecRead = Literal["at-clean", "live"]
LogFormat = Literal["logfmt", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogEvents = Literal["all", "none"]
LogOnFull = Literal["drop", "block"]


class ConfigError(Exception):
    """Every problem found in a configuration file, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems: list[str] = list(problems)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class FluxSettings:
    """How to reach the Flux instance and follow its jobs."""

    uri: str | None = None
    mode: FluxMode = "auto"
    exec_events: bool = True
    exec_read: ExecRead = "at-clean"
    max_watches: int = 10000
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    poll_interval: float = 10.0


@dataclass(frozen=True)
class HttpSettings:
    """Where and how the metrics endpoint is served."""

    listen: tuple[str, int] = ("0.0.0.0", 10900)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    basic_auth: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    allow_plain_basic_auth: bool = False
    max_connections: int = 64
    max_header_bytes: int = 16384
    header_timeout: float = 5.0


@dataclass(frozen=True)
class LogSettings:
    """The structured log on stdout."""

    format: LogFormat = "logfmt"
    level: LogLevel = "info"
    events: LogEvents = "all"
    buffer_records: int = 10000
    on_full: LogOnFull = "drop"


@dataclass(frozen=True)
class HealthSettings:
    """When the daemon calls itself stuck (``/healthz``, the systemd watchdog)."""

    stall_seconds: float = 10.0


@dataclass(frozen=True)
class MetricsSettings:
    """Histogram buckets, label cardinality caps and exemplars."""

    wait_buckets: tuple[float, ...] = (
        1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
        28800.0, 43200.0, 86400.0, 172800.0, 345600.0, 604800.0,
    )  # fmt: skip
    runtime_buckets: tuple[float, ...] = (
        1.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
        43200.0, 86400.0, 172800.0, 259200.0, 604800.0, 1209600.0,
    )  # fmt: skip
    short_buckets: tuple[float, ...] = (
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
    )  # fmt: skip
    ratio_buckets: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1)
    label_cap: int = 50
    exemplars: bool = True
    #: Label values the operator declares: they keep their own series, outside the cap.
    queues: tuple[str, ...] = ()
    declared_names: tuple[str, ...] = ()
    declared_types: tuple[str, ...] = ()
    declared_returncodes: tuple[int, ...] = ()


@dataclass(frozen=True)
class StateSettings:
    """Where the daemon keeps state across restarts."""

    checkpoint_dir: Path | None = None


@dataclass(frozen=True)
class Settings:
    """The whole configuration; every section defaults when absent."""

    flux: FluxSettings = field(default_factory=FluxSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    state: StateSettings = field(default_factory=StateSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    path: Path | None = None


# --------------------------------------------------------------------------- listen

_LISTEN_VALID = "HOST:PORT, [IPv6]:PORT or :PORT, port 0-65535"
_LISTEN_RE = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]\s]*)):(?P<port>[0-9]{1,5})")


def parse_listen(text: str) -> tuple[str, int]:
    """Parse "HOST:PORT", "[IPv6]:PORT" or ":PORT" into (host, port); "" means 0.0.0.0."""
    m = _LISTEN_RE.fullmatch(text)
    port = int(m["port"]) if m else -1
    if m is None or port > 65535:
        raise ValueError(f"invalid listen address {json.dumps(text)} (valid: {_LISTEN_VALID})")
    if m["v6"] is None:
        return (m["host"] or "0.0.0.0", port)
    try:
        ipaddress.IPv6Address(m["v6"])
    except ValueError:
        raise ValueError(
            f"invalid IPv6 address in listen address {json.dumps(text)} (valid: {_LISTEN_VALID})"
        ) from None
    return (m["v6"], port)


# --------------------------------------------------------------------------- value checks


class _Invalid(Exception):
    """A value failed its check; the message says what is wrong, without the key."""


_Convert = Callable[[object, Path], Any]
"""Check a TOML value and convert it; the Path is the config file's directory."""


def _show(value: object) -> str:
    """Render a TOML value the way it would be written in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{...}"
    return str(value)


def _kind(value: object) -> str:
    """Name the TOML type of a value."""
    kinds: list[tuple[type, str]] = [
        (bool, "boolean"), (int, "integer"), (float, "float"),
        (str, "string"), (list, "array"), (dict, "table"),
    ]  # fmt: skip
    return next((name for t, name in kinds if isinstance(value, t)), "date/time")


def _wrong_type(expected: str, value: object) -> _Invalid:
    """Build the error for a value of the wrong TOML type."""
    return _Invalid(f"expected {expected}, got {_kind(value)} {_show(value)}")


def _as_str(value: object) -> str:
    """Return a non-empty string value."""
    if not isinstance(value, str):
        raise _wrong_type("a string", value)
    if not value:
        raise _Invalid("must not be empty")
    return value


def _as_bool(value: object, _base: Path) -> bool:
    """Return a TOML boolean (true/false, not a string or number)."""
    if not isinstance(value, bool):
        raise _wrong_type("a boolean", value)
    return value


def _as_number(value: object) -> float:
    """Return a finite TOML integer or float as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type("a number", value)
    if not math.isfinite(value):
        raise _Invalid(f"{_show(value)} is not finite")
    return float(value)


def _int_range(lo: int, hi: int | None = None) -> _Convert:
    """Check for a TOML integer in lo..hi (no upper bound when hi is None)."""

    def convert(value: object, _base: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type("an integer", value)
        if value < lo or (hi is not None and value > hi):
            raise _Invalid(f"{value} is out of range")
        return value

    return convert


def _positive_seconds(value: object, _base: Path) -> float:
    """Return a number of seconds greater than zero."""
    seconds = _as_number(value)
    if seconds <= 0:
        raise _Invalid(f"{_show(value)} is not greater than 0")
    return seconds


def _choice(what: str, literal: object) -> tuple[_Convert, str]:
    """Check for one of the strings of a Literal type; return the check and its valid list."""
    valid: tuple[str, ...] = get_args(literal)

    def convert(value: object, _base: Path) -> str:
        text = _as_str(value)
        if text not in valid:
            raise _Invalid(f"{_show(text)} is not {what}")
        return text

    return convert, ", ".join(valid)


def _buckets(value: object, _base: Path) -> tuple[float, ...]:
    """Return histogram bucket bounds: non-empty, finite, > 0 and strictly increasing."""
    if not isinstance(value, list):
        raise _wrong_type("an array of numbers", value)
    if not value:
        raise _Invalid("must not be empty")
    bounds = tuple(_as_number(v) for v in value)
    if bounds[0] <= 0:
        raise _Invalid(f"{bounds[0]} is not greater than 0")
    for prev, cur in pairwise(bounds):
        if cur <= prev:
            raise _Invalid(f"must increase strictly ({prev} then {cur})")
    return bounds


#: Most values a declared list may hold.
MAX_DECLARED: Final = 10000
#: The label value of what is past the cap: declaring it would hide the overflow.
_OVERFLOW_LABEL: Final = "other"


def _declared_list(value: object) -> list[object]:
    """An array of at most MAX_DECLARED values."""
    if not isinstance(value, list):
        raise _wrong_type("an array", value)
    if len(value) > MAX_DECLARED:
        raise _Invalid(f"{len(value)} values, more than {MAX_DECLARED}")
    return value


def _label_values(value: object, _base: Path) -> tuple[str, ...]:
    """Return declared label values: an array of non-empty strings, none of them "other"."""
    texts = []
    for item in _declared_list(value):
        text = _as_str(item)
        if text == _OVERFLOW_LABEL:
            raise _Invalid(f'"{_OVERFLOW_LABEL}" is the label value of what is past the cap')
        texts.append(text)
    return tuple(dict.fromkeys(texts))


def _returncodes(value: object, _base: Path) -> tuple[int, ...]:
    """Return declared return codes: an array of integers from -128 to 255."""
    codes = []
    for item in _declared_list(value):
        if isinstance(item, bool) or not isinstance(item, int):
            raise _wrong_type("an integer", item)
        if not -128 <= item <= 255:
            raise _Invalid(f"{item} is out of range")
        codes.append(item)
    return tuple(dict.fromkeys(codes))


def _flux_uri(value: object, _base: Path) -> str:
    """Return a Flux connector URI such as local:///run/flux/local."""
    uri = _as_str(value)
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*://\S*", uri):
        raise _Invalid(f"{_show(uri)} is not a Flux URI")
    return uri


def _listen(value: object, _base: Path) -> tuple[str, int]:
    """Return (host, port) from a "HOST:PORT" string."""
    try:
        return parse_listen(_as_str(value))
    except ValueError:
        raise _Invalid(f"{_show(value)} is not a listen address") from None


def _existing_file(value: object, base: Path) -> Path:
    """Return a path (relative to the config file's directory) to an existing file."""
    path = base / _as_str(value)
    if not path.exists():
        raise _Invalid(f"{path}: no such file")
    if not path.is_file():
        raise _Invalid(f"{path}: not a regular file")
    return path


def _directory(value: object, base: Path) -> Path:
    """Return a directory path (relative to the config file's directory); it may not exist yet."""
    path = base / _as_str(value)
    if path.exists() and not path.is_dir():
        raise _Invalid(f"{path}: not a directory")
    return path


_BCRYPT_RE = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")

#: What to do when basic auth is configured but the bcrypt package is missing.
BCRYPT_MISSING: Final = (
    "basic auth needs the bcrypt package, which is not installed"
    " (install it into fluxmon's Python: pip install '.[auth]' from fluxmon's checkout,"
    " or pip install bcrypt)"
)


def is_bcrypt_hash(text: str) -> bool:
    """Whether ``text`` is a bcrypt password hash ($2a$/$2b$/$2y$, cost 4-31, 60 characters)."""
    return _BCRYPT_RE.fullmatch(text) is not None


def bcrypt_installed() -> bool:
    """Whether the bcrypt package (the ``auth`` extra) can be imported."""
    try:
        import bcrypt  # noqa: F401 - only its presence is checked
    except ImportError:
        return False
    return True


def _bcrypt_hash(value: object, _base: Path) -> str:
    """Return a bcrypt password hash ($2a$/$2b$/$2y$, 60 characters)."""
    text = _as_str(value)
    if not is_bcrypt_hash(text):
        raise _Invalid("not a bcrypt hash")
    return text


def _basic_auth_user(name: str) -> None:
    """Check an HTTP basic-auth user name."""
    if not name or ":" in name:
        raise _Invalid("user names must be non-empty and contain no ':'")


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class _Key:
    """One TOML key: the dataclass field it fills, its check, and what is valid."""

    field: str
    convert: _Convert
    valid: str


@dataclass(frozen=True)
class _MapOf:
    """A TOML table of free-form keys (e.g. user names), each value checked the same way."""

    field: str
    check_key: Callable[[str], None]
    convert: _Convert
    valid: str


_Node: TypeAlias = _Key | _MapOf | Mapping[str, "_Node"]

_Check = Callable[[Any, frozenset[str], frozenset[str]], Iterator[tuple[str, str]]]
"""A cross-key check: (section settings, fields set in the file, fields that failed)."""


@dataclass(frozen=True)
class _Section:
    """One top-level TOML table and the settings dataclass it builds."""

    build: Callable[..., Any]
    keys: Mapping[str, _Node]
    checks: tuple[_Check, ...] = ()


def _check_reconnect(
    flux: FluxSettings, _given: frozenset[str], failed: frozenset[str]
) -> Iterator[tuple[str, str]]:
    """reconnect_max must not be below reconnect_min."""
    if not failed & {"reconnect_min", "reconnect_max"} and flux.reconnect_max < flux.reconnect_min:
        yield (
            "reconnect_max",
            f"{flux.reconnect_max} is less than reconnect_min {flux.reconnect_min}"
            " (valid: a number >= reconnect_min)",
        )


def tls_problems(given: Collection[str]) -> Iterator[tuple[str, str]]:
    """``(key, what is wrong)`` for each TLS key of ``given`` set without the keys it needs.

    tls_cert and tls_key go together; tls_client_ca needs both.
    """
    needs = {
        "tls_cert": ["tls_key"],
        "tls_key": ["tls_cert"],
        "tls_client_ca": ["tls_cert", "tls_key"],
    }
    for key, required in needs.items():
        absent = [name for name in required if name not in given]
        if key in given and absent:
            yield (
                key,
                f"set without {' and '.join(absent)}"
                " (valid: tls_cert and tls_key together; tls_client_ca needs both)",
            )


def _check_tls(
    http: HttpSettings, given: frozenset[str], failed: frozenset[str]
) -> Iterator[tuple[str, str]]:
    """tls_cert and tls_key go together, tls_client_ca needs both, and all of them load."""
    incomplete = list(tls_problems(given))
    yield from incomplete
    if incomplete or failed & {"tls_cert", "tls_key", "tls_client_ca"}:
        return
    if http.tls_cert is not None and http.tls_key is not None:
        try:
            load_tls_context(http.tls_cert, http.tls_key, http.tls_client_ca)
        except TlsError as e:
            yield from e.problems


class TlsError(Exception):
    """TLS files that cannot be loaded: ``(key, what is wrong)`` for each, keys as in [http]."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(f"{key}: {what}" for key, what in problems))
        self.problems: list[tuple[str, str]] = list(problems)


class _Encrypted(Exception):
    """Raised by the password callback: the private key asks for a passphrase."""


def _no_passphrase() -> bytes:
    raise _Encrypted


def _tls_file_problem(path: Path, error: OSError, what: str) -> str:
    """Say why a TLS file did not load: unreadable, or not the PEM it should be."""
    if not isinstance(error, ssl.SSLError):
        return f"{path}: cannot read: {error.strerror or error}"
    return f"{path}: not {what} ({error.reason or error.args[-1]})"


def load_tls_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A TLS server context from PEM files, with the certificate and key checked as a pair.

    Raises :class:`TlsError` naming each file that is unreadable, not PEM, an encrypted
    key, or a key that is not the certificate's.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    problems: list[tuple[str, str]] = []
    try:  # the certificate alone first, so that a bad one is named as such
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=cert)
    except OSError as e:
        problems.append(
            ("tls_cert", _tls_file_problem(cert, e, "a PEM certificate") + f" (valid: {_CERT})")
        )
    else:
        try:
            context.load_cert_chain(certfile=cert, keyfile=key, password=_no_passphrase)
        except _Encrypted:
            problems.append(
                ("tls_key", f"{key}: encrypted, and fluxmon cannot ask for its passphrase"
                 f" (valid: {_KEY}, unencrypted: openssl pkey -in KEY -out NEW)")
            )  # fmt: skip
        except ssl.SSLError as e:
            if e.reason == "KEY_VALUES_MISMATCH":
                what = f"{key}: not the private key of the certificate {cert}"
            else:
                what = _tls_file_problem(key, e, "a PEM private key")
            problems.append(("tls_key", f"{what} (valid: {_KEY})"))
        except OSError as e:
            problems.append(("tls_key", f"{_tls_file_problem(key, e, '')} (valid: {_KEY})"))
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except OSError as e:
            problems.append(
                ("tls_client_ca",
                 _tls_file_problem(client_ca, e, "a PEM CA certificate") + f" (valid: {_CA})")
            )  # fmt: skip
        context.verify_mode = ssl.CERT_REQUIRED
    if problems:
        raise TlsError(problems)
    return context


def _check_plain_auth(
    http: HttpSettings, _given: frozenset[str], _failed: frozenset[str]
) -> Iterator[tuple[str, str]]:
    """Basic auth without TLS sends passwords in clear text: only when the file says so."""
    if http.basic_auth and http.tls_cert is None and not http.allow_plain_basic_auth:
        yield (
            "basic_auth",
            "users are set but TLS is not, so passwords would cross the network in clear text"
            " (valid: set tls_cert and tls_key to serve HTTPS, or allow_plain_basic_auth = true"
            " when a TLS proxy or a trusted network protects the endpoint)",
        )


def _check_bcrypt(
    http: HttpSettings, _given: frozenset[str], _failed: frozenset[str]
) -> Iterator[tuple[str, str]]:
    """Users in basic_auth need the bcrypt package to check their passwords."""
    if http.basic_auth and not bcrypt_installed():
        yield ("basic_auth", BCRYPT_MISSING)


_SECONDS = "a number of seconds > 0"
_CERT = "path to a PEM certificate file"
_KEY = "path to the PEM private key of tls_cert"
_CA = "path to a PEM CA file"
_LABELS = f'an array of non-empty strings other than "other", at most {MAX_DECLARED}'
_BUCKETS = "a non-empty array of finite numbers > 0, strictly increasing"

_SECTIONS: Mapping[str, _Section] = {
    "flux": _Section(
        FluxSettings,
        {
            "uri": _Key("uri", _flux_uri, "a connector URI such as local:///run/flux/local"),
            "mode": _Key("mode", *_choice("a Flux mode", FluxMode)),
            "exec_events": _Key("exec_events", _as_bool, "true, false"),
            "exec_read": _Key("exec_read", *_choice("an exec read mode", ExecRead)),
            "max_watches": _Key("max_watches", _int_range(1), "an integer >= 1"),
            "reconnect_min": _Key("reconnect_min", _positive_seconds, _SECONDS),
            "reconnect_max": _Key("reconnect_max", _positive_seconds, _SECONDS),
            "poll_interval": _Key("poll_interval", _positive_seconds, _SECONDS),
        },
        (_check_reconnect,),
    ),
    "http": _Section(
        HttpSettings,
        {
            "listen": _Key("listen", _listen, _LISTEN_VALID),
            "tls_cert": _Key("tls_cert", _existing_file, _CERT),
            "tls_key": _Key("tls_key", _existing_file, _KEY),
            "tls_client_ca": _Key("tls_client_ca", _existing_file, _CA),
            "basic_auth": _MapOf(
                "basic_auth",
                _basic_auth_user,
                _bcrypt_hash,
                "$2a$/$2b$/$2y$ hash of 60 characters, e.g. from htpasswd -nbBC 12 USER",
            ),
            "allow_plain_basic_auth": _Key("allow_plain_basic_auth", _as_bool, "true, false"),
            "max_connections": _Key(
                "max_connections", _int_range(1, 10000), "an integer from 1 to 10000"
            ),
            "max_header_bytes": _Key(
                "max_header_bytes", _int_range(1024, 1048576), "an integer from 1024 to 1048576"
            ),
            "header_timeout": _Key("header_timeout", _positive_seconds, _SECONDS),
        },
        (_check_tls, _check_bcrypt, _check_plain_auth),
    ),
    "log": _Section(
        LogSettings,
        {
            "format": _Key("format", *_choice("a log format", LogFormat)),
            "level": _Key("level", *_choice("a log level", LogLevel)),
            "events": _Key("events", *_choice("a log events setting", LogEvents)),
            "buffer_records": _Key(
                "buffer_records", _int_range(100, 10_000_000), "an integer from 100 to 10000000"
            ),
            "on_full": _Key("on_full", *_choice("a full-buffer policy", LogOnFull)),
        },
    ),
    "metrics": _Section(
        MetricsSettings,
        {
            "label_cap": _Key("label_cap", _int_range(1, 10000), "an integer from 1 to 10000"),
            "exemplars": _Key("exemplars", _as_bool, "true, false"),
            "queues": _Key("queues", _label_values, _LABELS),
            "declared": {
                "name": _Key("declared_names", _label_values, _LABELS),
                "type": _Key("declared_types", _label_values, _LABELS),
                "returncode": _Key(
                    "declared_returncodes", _returncodes, "an array of integers from -128 to 255"
                ),
            },
            "buckets": {
                "wait": _Key("wait_buckets", _buckets, _BUCKETS),
                "runtime": _Key("runtime_buckets", _buckets, _BUCKETS),
                "short": _Key("short_buckets", _buckets, _BUCKETS),
                "ratio": _Key("ratio_buckets", _buckets, _BUCKETS),
            },
        },
    ),
    "state": _Section(
        StateSettings,
        {"checkpoint_dir": _Key("checkpoint_dir", _directory, "path to a directory")},
    ),
    "health": _Section(
        HealthSettings,
        {"stall_seconds": _Key("stall_seconds", _positive_seconds, _SECONDS)},
    ),
}


def _all_paths() -> dict[str, list[str]]:
    """Map each key's last name to every dotted path where it is valid."""
    paths: dict[str, list[str]] = {}

    def add(prefix: str, keys: Mapping[str, _Node]) -> None:
        for name, node in keys.items():
            paths.setdefault(name, []).append(prefix + name)
            if isinstance(node, Mapping):
                add(f"{prefix}{name}.", node)

    for name, section in _SECTIONS.items():
        paths.setdefault(name, []).append(name)
        add(f"{name}.", section.keys)
    return paths


_ALL_PATHS = _all_paths()


def _unknown(name: str, choices: Mapping[str, object]) -> str:
    """Suggest the closest valid name, or a path elsewhere, or list the valid names."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    if close:
        return f"(did you mean '{close[0]}'?)"
    elsewhere = _ALL_PATHS.get(name)
    if elsewhere:
        return f"(did you mean '{elsewhere[0]}'?)"
    return f"(valid: {', '.join(choices)})"


# --------------------------------------------------------------------------- loading


@dataclass
class _Walk:
    """What reading one section collects: field values, fields set, problems."""

    base: Path
    values: dict[str, Any] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def table(self, keys: Mapping[str, _Node], raw: object, where: str) -> None:
        """Check every key of a TOML table against its schema."""
        if not isinstance(raw, dict):
            self.problems.append((where, f"expected a table, got {_kind(raw)} {_show(raw)}"))
            return
        for name, value in raw.items():
            dotted = f"{where}.{name}"
            node = keys.get(name)
            if node is None:
                self.problems.append((dotted, f"unknown key {_unknown(name, keys)}"))
            elif isinstance(node, _Key):
                self.key(node, value, dotted)
            elif isinstance(node, _MapOf):
                self.map_of(node, value, dotted)
            else:
                self.table(node, value, dotted)

    def key(self, node: _Key, value: object, where: str) -> None:
        """Check one value and record it under its field."""
        self.given.add(node.field)
        try:
            self.values[node.field] = node.convert(value, self.base)
        except _Invalid as e:
            self.problems.append((where, f"{e} (valid: {node.valid})"))

    def map_of(self, node: _MapOf, raw: object, where: str) -> None:
        """Check a free-form table, entry by entry."""
        self.given.add(node.field)
        if not isinstance(raw, dict):
            self.problems.append((where, f"expected a table, got {_kind(raw)} {_show(raw)}"))
            return
        result: dict[str, Any] = {}
        before = len(self.problems)
        for name, value in raw.items():
            try:
                node.check_key(name)
            except _Invalid as e:
                self.problems.append((f"{where}.{name}", str(e)))
                continue
            try:
                result[name] = node.convert(value, self.base)
            except _Invalid as e:
                self.problems.append((f"{where}.{name}", f"{e} (valid: {node.valid})"))
        if len(self.problems) == before:
            self.values[node.field] = MappingProxyType(result)


def _read_toml(path: Path, name: str) -> dict[str, Any]:
    """Read and parse a TOML file, or raise ConfigError with one line saying why not."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError([f"{name}: cannot read: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{name}: not UTF-8 text (bad byte at offset {e.start})"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{name}: {_toml_error(str(e), text)}"]) from None


_TOML_WHERE_RE = re.compile(
    r"(?P<what>.*?)\s*\(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)"
)


def _toml_error(message: str, text: str) -> str:
    """Move tomllib's "(at line L, column C)" suffix to the front of its message."""
    m = _TOML_WHERE_RE.fullmatch(message)
    if m is None:
        return f"invalid TOML: {message}"
    last = len(text.splitlines()) or 1
    where = f"line {m['line']}, column {m['col']}" if m["line"] else f"line {last} (end of file)"
    return f"{where}: invalid TOML: {m['what']}"


def _section(
    name: str, section: _Section, raw: object, base: Path
) -> tuple[Any, list[tuple[str, str]]]:
    """Build one section's settings; return them with the problems found."""
    walk = _Walk(base)
    walk.table(section.keys, raw, name)
    settings = section.build(**walk.values)
    given = frozenset(walk.given)
    failed = given - walk.values.keys()
    for check in section.checks:
        walk.problems.extend(
            (f"{name}.{key}", what) for key, what in check(settings, given, failed)
        )
    return settings, walk.problems


def load_settings(path: str | os.PathLike[str] | None) -> Settings:
    """Load settings from a TOML file (None gives the defaults); raise ConfigError on problems."""
    if path is None:
        return Settings()
    name = os.fspath(path)
    file = Path(path)
    doc = _read_toml(file, name)
    problems: list[tuple[str, str]] = []
    built: dict[str, Any] = {}
    for key, raw in doc.items():
        if key not in _SECTIONS:
            what = "section" if isinstance(raw, dict) else "key"
            problems.append((key, f"unknown {what} {_unknown(key, _SECTIONS)}"))
            continue
        built[key], found = _section(key, _SECTIONS[key], raw, file.absolute().parent)
        problems.extend(found)
    if problems:
        raise ConfigError([f"{name}: {where}: {what}" for where, what in problems])
    return Settings(**built, path=file)


def check_config_main(path: str, out: TextIO, err: TextIO) -> int:
    """Validate a config file for `fluxmon check-config`: 0 if valid, else 78 (EX_CONFIG)."""
    try:
        load_settings(path)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=err)
        return EX_CONFIG
    print(f"OK: {path}", file=out)
    return EX_OK


def setting_keys() -> dict[str, tuple[str, str]]:
    """Every key a config file can set, dotted (``metrics.buckets.wait``): its (section, field).

    ``getattr(getattr(settings, section), field)`` is the key's value in a :class:`Settings`.
    """
    keys: dict[str, tuple[str, str]] = {}

    def add(section: str, prefix: str, nodes: Mapping[str, _Node]) -> None:
        for name, node in nodes.items():
            if isinstance(node, _Key | _MapOf):
                keys[prefix + name] = (section, node.field)
            else:
                add(section, f"{prefix}{name}.", node)

    for name, section in _SECTIONS.items():
        add(name, f"{name}.", section.keys)
    return keys
