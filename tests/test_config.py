"""Tests for fluxmon.config: defaults, the example file, round trips and error reports."""

from __future__ import annotations

import dataclasses
import io
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from fluxmon.config import (
    BCRYPT_MISSING,
    ConfigError,
    FluxSettings,
    HealthSettings,
    HttpSettings,
    LogSettings,
    MetricsSettings,
    Settings,
    StateSettings,
    check_config_main,
    load_settings,
    parse_listen,
)
from fluxmon.http import MetricsServer
from tests.tls import make_cert, needs_openssl, write_pems

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
HASH = "$2b$12$socuBpmonWRWDtkUkZcgLuKO29LWtoaVYEz70VNWGthGhAV1kUP1y"
SECTIONS: dict[str, type[Any]] = {
    "flux": FluxSettings,
    "http": HttpSettings,
    "log": LogSettings,
    "metrics": MetricsSettings,
    "state": StateSettings,
    "health": HealthSettings,
}
# Keys unset by default: the example shows a sample value for them, not the default.
NO_DEFAULT = {"uri", "tls_cert", "tls_key", "tls_client_ca", "prometheus", "checkpoint_dir"}


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    """Write a config file into tmp_path and return its path."""
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    """Load a file that must be invalid and return its problem lines."""
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.problems


@dataclasses.dataclass(frozen=True)
class InDir:
    """An expected path: this name inside the test's config directory."""

    name: str


# --------------------------------------------------------------------------- defaults


def test_none_gives_defaults() -> None:
    """No config file means every setting at its documented default."""
    settings = load_settings(None)
    assert settings == Settings()
    assert settings.path is None
    assert settings.http.listen == ("0.0.0.0", 10900)
    assert settings.flux == FluxSettings(None, "auto", True, "at-clean", 10000, 1.0, 60.0, 10.0)
    assert settings.metrics.wait_buckets[0] == 1.0
    assert settings.metrics.wait_buckets[-1] == 604800.0
    assert settings.metrics.ratio_buckets == (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1)
    assert settings.metrics.label_cap == 50


def test_default_buckets_are_floats() -> None:
    """Default buckets are stored as floats, like buckets read from a file."""
    metrics = MetricsSettings()
    for buckets in (
        metrics.wait_buckets,
        metrics.runtime_buckets,
        metrics.short_buckets,
        metrics.ratio_buckets,
    ):
        assert all(type(b) is float for b in buckets)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("# only a comment\n", id="comment"),
        pytest.param("[flux]\n[http]\n[http.basic_auth]\n[log]\n[metrics.buckets]\n", id="headers"),
    ],
)
def test_file_without_keys_gives_defaults(tmp_path: Path, text: str) -> None:
    """A file that sets nothing yields the defaults and remembers its path."""
    path = write(tmp_path, text)
    assert load_settings(path) == Settings(path=path)


def test_settings_are_immutable(tmp_path: Path) -> None:
    """Settings and the basic-auth table cannot be changed after loading."""
    text = f'[http]\nallow_plain_basic_auth = true\n[http.basic_auth]\nalice = "{HASH}"\n'
    settings = load_settings(write(tmp_path, text))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.http.listen = ("::", 1)  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.http.basic_auth["bob"] = HASH  # type: ignore[index]


# --------------------------------------------------------------------------- example file


def test_example_loads_to_defaults() -> None:
    """The shipped example loads without problems and, all commented out, means defaults."""
    assert load_settings(EXAMPLE) == Settings(path=EXAMPLE)


def test_example_values_are_the_defaults(tmp_path: Path) -> None:
    """Uncommenting every key of the example that has a default changes nothing."""
    lines = EXAMPLE.read_text().splitlines()
    uncommented = [
        line[1:] if (m := re.match(r"#(\w+) = ", line)) and m[1] not in NO_DEFAULT else line
        for line in lines
    ]
    assert uncommented != lines
    path = write(tmp_path, "\n".join(uncommented))
    assert load_settings(path) == Settings(path=path)


@needs_openssl
def test_example_sample_values_are_valid(tmp_path: Path) -> None:
    """Uncommenting every key of the example, with its TLS files present, loads cleanly."""
    text = EXAMPLE.read_text().replace("/etc/fluxmon/tls/", "")
    write_pems(tmp_path, "fluxmon.crt", "fluxmon.key", "prometheus-ca.crt")
    path = write(tmp_path, re.sub(r"(?m)^#(\w+ = )", r"\1", text))
    settings = load_settings(path)
    assert settings.http.tls_client_ca == tmp_path / "prometheus-ca.crt"
    assert settings.state.checkpoint_dir == Path("/var/lib/fluxmon")
    assert list(settings.http.basic_auth) == ["prometheus"]


def example_keys() -> set[str]:
    """Every dotted key the example file shows, commented or not."""
    keys: set[str] = set()
    table = ""
    for line in EXAMPLE.read_text().splitlines():
        if m := re.fullmatch(r"\[([\w.]+)\]", line):
            table = m[1]
        elif (m := re.match(r"#?(\w+) = ", line)) and table:
            keys.add(f"{table}.{m[1]}")
    return keys


# --------------------------------------------------------------------------- round trips

ROUND_TRIP = [
    pytest.param('[flux]\nuri = "ssh://login1/run/flux/local"', "flux", "uri",
                 "ssh://login1/run/flux/local", id="flux.uri"),
    pytest.param('[flux]\nmode = "journal"', "flux", "mode", "journal", id="flux.mode"),
    pytest.param("[flux]\nexec_events = false", "flux", "exec_events", False,
                 id="flux.exec_events"),
    pytest.param('[flux]\nexec_read = "live"', "flux", "exec_read", "live", id="flux.exec_read"),
    pytest.param("[flux]\nmax_watches = 500", "flux", "max_watches", 500, id="flux.max_watches"),
    pytest.param("[flux]\nreconnect_min = 0.25", "flux", "reconnect_min", 0.25,
                 id="flux.reconnect_min"),
    pytest.param("[flux]\nreconnect_max = 300", "flux", "reconnect_max", 300.0,
                 id="flux.reconnect_max"),
    pytest.param("[flux]\npoll_interval = 2.5", "flux", "poll_interval", 2.5,
                 id="flux.poll_interval"),
    pytest.param('[http]\nlisten = "127.0.0.1:9999"', "http", "listen", ("127.0.0.1", 9999),
                 id="http.listen"),
    pytest.param('[http]\ntls_cert = "c.pem"\ntls_key = "k.pem"', "http", "tls_cert",
                 InDir("c.pem"), id="http.tls_cert"),
    pytest.param('[http]\ntls_cert = "c.pem"\ntls_key = "k.pem"', "http", "tls_key",
                 InDir("k.pem"), id="http.tls_key"),
    pytest.param('[http]\ntls_cert = "c.pem"\ntls_key = "k.pem"\ntls_client_ca = "ca.pem"',
                 "http", "tls_client_ca", InDir("ca.pem"), id="http.tls_client_ca"),
    pytest.param(f'[http]\nallow_plain_basic_auth = true\n[http.basic_auth]\nprometheus = "{HASH}"',
                 "http", "basic_auth", {"prometheus": HASH}, id="http.basic_auth"),
    pytest.param("[http]\nallow_plain_basic_auth = true", "http", "allow_plain_basic_auth", True,
                 id="http.allow_plain_basic_auth"),
    pytest.param("[http]\nmax_connections = 8", "http", "max_connections", 8,
                 id="http.max_connections"),
    pytest.param("[http]\nmax_header_bytes = 4096", "http", "max_header_bytes", 4096,
                 id="http.max_header_bytes"),
    pytest.param("[http]\nheader_timeout = 2", "http", "header_timeout", 2.0,
                 id="http.header_timeout"),
    pytest.param('[log]\nformat = "json"', "log", "format", "json", id="log.format"),
    pytest.param('[log]\nlevel = "debug"', "log", "level", "debug", id="log.level"),
    pytest.param('[log]\nevents = "none"', "log", "events", "none", id="log.events"),
    pytest.param("[log]\nbuffer_records = 100", "log", "buffer_records", 100,
                 id="log.buffer_records"),
    pytest.param('[log]\non_full = "block"', "log", "on_full", "block", id="log.on_full"),
    pytest.param("[health]\nstall_seconds = 2.5", "health", "stall_seconds", 2.5,
                 id="health.stall_seconds"),
    pytest.param("[metrics]\nlabel_cap = 10000", "metrics", "label_cap", 10000,
                 id="metrics.label_cap"),
    pytest.param("[metrics]\nexemplars = false", "metrics", "exemplars", False,
                 id="metrics.exemplars"),
    pytest.param('[metrics]\nqueues = ["batch", "gpu", "batch"]', "metrics", "queues",
                 ("batch", "gpu"), id="metrics.queues"),
    pytest.param('[metrics.declared]\nname = ["site.audit"]', "metrics", "declared_names",
                 ("site.audit",), id="metrics.declared.name"),
    pytest.param('[metrics.declared]\ntype = ["site-quota"]', "metrics", "declared_types",
                 ("site-quota",), id="metrics.declared.type"),
    pytest.param("[metrics.declared]\nreturncode = [2, -6, 255]", "metrics",
                 "declared_returncodes", (2, -6, 255), id="metrics.declared.returncode"),
    pytest.param("[metrics.buckets]\nwait = [1, 2.5, 1e6]", "metrics", "wait_buckets",
                 (1.0, 2.5, 1e6), id="metrics.buckets.wait"),
    pytest.param("[metrics.buckets]\nruntime = [60]", "metrics", "runtime_buckets", (60.0,),
                 id="metrics.buckets.runtime"),
    pytest.param("[metrics.buckets]\nshort = [0.001, 0.002]", "metrics", "short_buckets",
                 (0.001, 0.002), id="metrics.buckets.short"),
    pytest.param("[metrics.buckets]\nratio = [0.5, 1, 2]", "metrics", "ratio_buckets",
                 (0.5, 1.0, 2.0), id="metrics.buckets.ratio"),
    pytest.param('[state]\ncheckpoint_dir = "state"', "state", "checkpoint_dir", InDir("state"),
                 id="state.checkpoint_dir"),
]  # fmt: skip


@needs_openssl
@pytest.mark.parametrize(("text", "section", "name", "expected"), ROUND_TRIP)
def test_round_trip(tmp_path: Path, text: str, section: str, name: str, expected: object) -> None:
    """Each key set to a valid non-default value comes back in its settings field."""
    write_pems(tmp_path, "c.pem", "k.pem", "ca.pem")
    if isinstance(expected, InDir):
        expected = tmp_path / expected.name
    settings = load_settings(write(tmp_path, text + "\n"))
    value = getattr(getattr(settings, section), name)
    assert value == expected
    assert value != getattr(SECTIONS[section](), name)
    assert type(value) is type(expected) or isinstance(expected, dict)


def test_round_trip_covers_every_field() -> None:
    """The round-trip table exercises every field of every settings section."""
    covered = {(p.values[1], p.values[2]) for p in ROUND_TRIP}
    fields = {(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert covered == fields


def test_example_documents_every_key() -> None:
    """The example file shows every key the round-trip table sets, and no other."""
    dotted = {str(p.id) for p in ROUND_TRIP} - {"http.basic_auth"} | {"http.basic_auth.prometheus"}
    assert example_keys() == dotted


@needs_openssl
def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    """Relative paths are resolved against the config file's directory, not the cwd."""
    conf = tmp_path / "etc"
    conf.mkdir()
    write_pems(conf, "c.pem", "k.pem")
    settings = load_settings(write(conf, '[http]\ntls_cert = "c.pem"\ntls_key = "k.pem"\n'))
    assert settings.http.tls_cert == conf / "c.pem"
    assert settings.http.tls_cert.is_absolute()


# --------------------------------------------------------------------------- errors

ERRORS = [
    pytest.param('[http]\nlisen = ":1"', 'http.lisen: unknown key (did you mean \'listen\'?)',
                 id="unknown-key-suggestion"),
    pytest.param("[log]\ncolour = true",
                 "log.colour: unknown key (valid: format, level, events, buffer_records, on_full)",
                 id="unknown-key-valid-list"),
    pytest.param('[flux]\nlisten = ":1"', "flux.listen: unknown key (did you mean 'http.listen'?)",
                 id="key-in-wrong-section"),
    pytest.param("[flux]\nreconect_max = 5",
                 "flux.reconect_max: unknown key (did you mean 'reconnect_max'?)",
                 id="misspelled-reconnect"),
    pytest.param("[metrics.bukets]\nwait = [1]",
                 "metrics.bukets: unknown key (did you mean 'buckets'?)", id="unknown-subtable"),
    pytest.param("[fluxx]\nmode = 'auto'", "fluxx: unknown section (did you mean 'flux'?)",
                 id="unknown-section"),
    pytest.param("listen = ':1'", "listen: unknown key (did you mean 'http.listen'?)",
                 id="top-level-key"),
    pytest.param("flux = 1", "flux: expected a table, got integer 1", id="section-not-table"),
    pytest.param('[flux]\nmax_watches = "10"',
                 'flux.max_watches: expected an integer, got string "10" (valid: an integer >= 1)',
                 id="string-for-int"),
    pytest.param("[flux]\nmax_watches = true",
                 "flux.max_watches: expected an integer, got boolean true"
                 " (valid: an integer >= 1)", id="bool-for-int"),
    pytest.param("[flux]\nmax_watches = 2.0",
                 "flux.max_watches: expected an integer, got float 2.0 (valid: an integer >= 1)",
                 id="float-for-int"),
    pytest.param("[flux]\nmax_watches = 0",
                 "flux.max_watches: 0 is out of range (valid: an integer >= 1)",
                 id="int-below-range"),
    pytest.param('[metrics]\nqueues = ["batch", 3]',
                 'metrics.queues: expected a string, got integer 3 (valid: an array of non-empty'
                 ' strings other than "other", at most 10000)', id="declared-queue-int"),
    pytest.param('[metrics.declared]\ntype = ["other"]',
                 'metrics.declared.type: "other" is the label value of what is past the cap'
                 ' (valid: an array of non-empty strings other than "other", at most 10000)',
                 id="declared-other"),
    pytest.param('[metrics.declared]\nname = "x"',
                 'metrics.declared.name: expected an array, got string "x" (valid: an array of'
                 ' non-empty strings other than "other", at most 10000)', id="declared-not-array"),
    pytest.param("[metrics.declared]\nreturncode = [1, 256]",
                 "metrics.declared.returncode: 256 is out of range (valid: an array of integers"
                 " from -128 to 255)", id="declared-returncode-range"),
    pytest.param('[metrics.declared]\nsevertiy = ["9"]',
                 "metrics.declared.severtiy: unknown key (valid: name, type, returncode)",
                 id="declared-unknown-key"),
    pytest.param("[metrics]\nlabel_cap = 10001",
                 "metrics.label_cap: 10001 is out of range (valid: an integer from 1 to 10000)",
                 id="int-above-range"),
    pytest.param('[flux]\nexec_events = "yes"',
                 'flux.exec_events: expected a boolean, got string "yes" (valid: true, false)',
                 id="string-for-bool"),
    pytest.param("[metrics]\nexemplars = 1",
                 "metrics.exemplars: expected a boolean, got integer 1 (valid: true, false)",
                 id="int-for-bool"),
    pytest.param("[flux]\nreconnect_min = true",
                 "flux.reconnect_min: expected a number, got boolean true"
                 " (valid: a number of seconds > 0)", id="bool-for-float"),
    pytest.param("[flux]\npoll_interval = 0",
                 "flux.poll_interval: 0 is not greater than 0 (valid: a number of seconds > 0)",
                 id="zero-seconds"),
    pytest.param("[flux]\nreconnect_min = nan",
                 "flux.reconnect_min: nan is not finite (valid: a number of seconds > 0)",
                 id="nan-seconds"),
    pytest.param("[flux]\nreconnect_min = 10\nreconnect_max = 5",
                 "flux.reconnect_max: 5.0 is less than reconnect_min 10.0"
                 " (valid: a number >= reconnect_min)", id="reconnect-max-below-min"),
    pytest.param("[flux]\nreconnect_max = 0.5",
                 "flux.reconnect_max: 0.5 is less than reconnect_min 1.0"
                 " (valid: a number >= reconnect_min)", id="reconnect-max-below-default-min"),
    pytest.param('[flux]\nmode = "poll"',
                 'flux.mode: "poll" is not a Flux mode (valid: auto, journal, watch)',
                 id="bad-mode"),
    pytest.param('[log]\nformat = "xml"',
                 'log.format: "xml" is not a log format (valid: logfmt, json)', id="bad-enum"),
    pytest.param('[log]\nlevel = "INFO"',
                 'log.level: "INFO" is not a log level (valid: debug, info, warning, error)',
                 id="enum-is-case-sensitive"),
    pytest.param("[log]\nbuffer_records = 10",
                 "log.buffer_records: 10 is out of range (valid: an integer from 100 to 10000000)",
                 id="buffer-too-small"),
    pytest.param('[log]\non_full = "wait"',
                 'log.on_full: "wait" is not a full-buffer policy (valid: drop, block)',
                 id="bad-on-full"),
    pytest.param("[health]\nstall_seconds = 0",
                 "health.stall_seconds: 0 is not greater than 0 (valid: a number of seconds > 0)",
                 id="stall-zero"),
    pytest.param('[flux]\nuri = "/run/flux/local"',
                 'flux.uri: "/run/flux/local" is not a Flux URI'
                 " (valid: a connector URI such as local:///run/flux/local)", id="bad-uri"),
    pytest.param('[flux]\nuri = ""',
                 "flux.uri: must not be empty"
                 " (valid: a connector URI such as local:///run/flux/local)", id="empty-uri"),
    pytest.param('[http]\nlisten = "10900"',
                 'http.listen: "10900" is not a listen address'
                 " (valid: HOST:PORT, [IPv6]:PORT or :PORT, port 0-65535)", id="bad-listen"),
    pytest.param("[metrics.buckets]\nwait = [1, 1]",
                 "metrics.buckets.wait: must increase strictly (1.0 then 1.0) (valid: a non-empty"
                 " array of finite numbers > 0, strictly increasing)", id="buckets-not-increasing"),
    pytest.param("[metrics.buckets]\nruntime = []",
                 "metrics.buckets.runtime: must not be empty (valid: a non-empty"
                 " array of finite numbers > 0, strictly increasing)", id="buckets-empty"),
    pytest.param("[metrics.buckets]\nshort = [0, 1]",
                 "metrics.buckets.short: 0.0 is not greater than 0 (valid: a non-empty"
                 " array of finite numbers > 0, strictly increasing)", id="buckets-zero"),
    pytest.param("[metrics.buckets]\nratio = [1, inf]",
                 "metrics.buckets.ratio: inf is not finite (valid: a non-empty"
                 " array of finite numbers > 0, strictly increasing)", id="buckets-inf"),
    pytest.param('[metrics.buckets]\nwait = [1, "5"]',
                 'metrics.buckets.wait: expected a number, got string "5" (valid: a non-empty'
                 " array of finite numbers > 0, strictly increasing)", id="buckets-string"),
    pytest.param("[metrics.buckets]\nwait = 5",
                 "metrics.buckets.wait: expected an array of numbers, got integer 5"
                 " (valid: a non-empty array of finite numbers > 0, strictly increasing)",
                 id="buckets-not-array"),
    pytest.param("[metrics]\nbuckets = [1, 2]",
                 "metrics.buckets: expected a table, got array [1, 2]",
                 id="buckets-not-table"),
    pytest.param('[http]\ntls_key = "k.pem"',
                 "http.tls_key: set without tls_cert"
                 " (valid: tls_cert and tls_key together; tls_client_ca needs both)",
                 id="tls-key-without-cert"),
    pytest.param('[http]\ntls_cert = "c.pem"',
                 "http.tls_cert: set without tls_key"
                 " (valid: tls_cert and tls_key together; tls_client_ca needs both)",
                 id="tls-cert-without-key"),
    pytest.param('[http]\ntls_client_ca = "c.pem"',
                 "http.tls_client_ca: set without tls_cert and tls_key"
                 " (valid: tls_cert and tls_key together; tls_client_ca needs both)",
                 id="tls-client-ca-alone"),
    pytest.param('[http]\ntls_cert = "missing.pem"\ntls_key = "k.pem"',
                 "http.tls_cert: {dir}/missing.pem: no such file"
                 " (valid: path to a PEM certificate file)", id="tls-file-missing"),
    pytest.param('[http]\ntls_cert = "."\ntls_key = "k.pem"',
                 "http.tls_cert: {dir}: not a regular file"
                 " (valid: path to a PEM certificate file)", id="tls-file-is-dir"),
    pytest.param('[http.basic_auth]\nalice = "secret"',
                 "http.basic_auth.alice: not a bcrypt hash (valid: $2a$/$2b$/$2y$ hash of 60"
                 " characters, e.g. from htpasswd -nbBC 12 USER)", id="basic-auth-plaintext"),
    pytest.param(f'[http.basic_auth]\nalice = "{HASH[:-1]}"',
                 "http.basic_auth.alice: not a bcrypt hash (valid: $2a$/$2b$/$2y$ hash of 60"
                 " characters, e.g. from htpasswd -nbBC 12 USER)", id="basic-auth-short-hash"),
    pytest.param(f'[http.basic_auth]\n"a:b" = "{HASH}"',
                 "http.basic_auth.a:b: user names must be non-empty and contain no ':'",
                 id="basic-auth-colon-user"),
    pytest.param('[http]\nbasic_auth = "alice"',
                 'http.basic_auth: expected a table, got string "alice"',
                 id="basic-auth-not-table"),
    pytest.param('[http]\ntls_cert = "c.pem"\ntls_key = "k.pem"',
                 "http.tls_cert: {dir}/c.pem: not a PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)"
                 " (valid: path to a PEM certificate file)", id="tls-cert-not-pem"),
    pytest.param(f'[http.basic_auth]\nalice = "{HASH}"',
                 "http.basic_auth: users are set but TLS is not, so passwords would cross the"
                 " network in clear text (valid: set tls_cert and tls_key to serve HTTPS, or"
                 " allow_plain_basic_auth = true when a TLS proxy or a trusted network protects"
                 " the endpoint)", id="basic-auth-over-plain-http"),
    pytest.param("[http]\nallow_plain_basic_auth = 1",
                 "http.allow_plain_basic_auth: expected a boolean, got integer 1"
                 " (valid: true, false)", id="allow-plain-not-bool"),
    pytest.param("[http]\nmax_connections = 0",
                 "http.max_connections: 0 is out of range (valid: an integer from 1 to 10000)",
                 id="max-connections-zero"),
    pytest.param("[http]\nmax_header_bytes = 100",
                 "http.max_header_bytes: 100 is out of range"
                 " (valid: an integer from 1024 to 1048576)", id="max-header-bytes-small"),
    pytest.param("[http]\nheader_timeout = 0",
                 "http.header_timeout: 0 is not greater than 0 (valid: a number of seconds > 0)",
                 id="header-timeout-zero"),
    pytest.param('[state]\ncheckpoint_dir = "c.pem"',
                 "state.checkpoint_dir: {dir}/c.pem: not a directory (valid: path to a directory)",
                 id="checkpoint-dir-is-file"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_error_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    """Each kind of fault gives exactly one line: FILE: section.key: what (valid: ...)."""
    (tmp_path / "c.pem").write_text("PEM\n")
    (tmp_path / "k.pem").write_text("PEM\n")
    path = write(tmp_path, text + "\n")
    assert problems_of(path) == [f"{path}: {expected.replace('{dir}', str(tmp_path))}"]


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    """A file with three faults in different sections yields three lines, in file order."""
    path = write(
        tmp_path,
        '[flux]\nreconect_max = 5\nmode = "auto"\n\n[log]\nformat = "xml"\n\n'
        "[metrics.buckets]\nwait = [1, 1]\n",
    )
    problems = problems_of(path)
    assert problems == [
        f"{path}: flux.reconect_max: unknown key (did you mean 'reconnect_max'?)",
        f'{path}: log.format: "xml" is not a log format (valid: logfmt, json)',
        f"{path}: metrics.buckets.wait: must increase strictly (1.0 then 1.0) (valid: a"
        " non-empty array of finite numbers > 0, strictly increasing)",
    ]


def test_config_error_str_is_the_problem_lines(tmp_path: Path) -> None:
    """str(ConfigError) is its problems joined by newlines."""
    path = write(tmp_path, "[flux]\nmax_watches = 0\npoll_interval = -1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert len(info.value.problems) == 2
    assert str(info.value) == "\n".join(info.value.problems)


def test_invalid_field_does_not_cause_cross_key_errors(tmp_path: Path) -> None:
    """A tls_cert that fails its own check is not reported again as missing for tls_key."""
    (tmp_path / "k.pem").write_text("PEM\n")
    path = write(tmp_path, '[http]\ntls_cert = "nope.pem"\ntls_key = "k.pem"\n')
    assert [p.split(": ")[1] for p in problems_of(path)] == ["http.tls_cert"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '[flux]\nmode = "auto"\nmax_watches = = 3\n',
            r"line 3, column 15: invalid TOML: Invalid value",
            id="bad-value",
        ),
        pytest.param(
            "[flux]\nmode auto\n",
            r"line 2, column 6: invalid TOML: Expected '=' after a key in a key/value pair",
            id="missing-equals",
        ),
        pytest.param(
            "[log]\nlevel = 'info'\nlevel = 'debug'\n",
            r"line 3, column \d+: invalid TOML: Cannot overwrite a value",
            id="duplicate-key",
        ),
        pytest.param(
            "[flux]\nmode =",
            r"line 2 \(end of file\): invalid TOML: Invalid value",
            id="end-of-file",
        ),
    ],
)
def test_toml_syntax_error_names_its_line(tmp_path: Path, text: str, expected: str) -> None:
    """A TOML syntax error is one line that leads with where the parser stopped."""
    path = write(tmp_path, text)
    [problem] = problems_of(path)
    assert re.fullmatch(re.escape(f"{path}: ") + expected, problem), problem


def absent_file(d: Path) -> Path:
    """A path in d where no file exists."""
    return d / "absent.toml"


def latin1_file(d: Path) -> Path:
    """A config file in d that is not UTF-8."""
    path = d / "latin1.toml"
    path.write_bytes(b"\xff")
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(absent_file, "cannot read: No such file or directory", id="missing"),
        pytest.param(lambda d: d, "cannot read: Is a directory", id="directory"),
        pytest.param(latin1_file, "not UTF-8 text (bad byte at offset 0)", id="not-utf8"),
    ],
)
def test_unreadable_file(tmp_path: Path, make: Callable[[Path], Path], expected: str) -> None:
    """A file that cannot be read or decoded is reported in one line naming it."""
    path = make(tmp_path)
    assert problems_of(path) == [f"{path}: {expected}"]


# --------------------------------------------------------------------------- check-config


def test_check_config_main_valid(tmp_path: Path) -> None:
    """A valid file prints one OK line on stdout and returns 0."""
    path = str(write(tmp_path, '[log]\nformat = "json"\n'))
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(path, out, err) == 0
    assert out.getvalue() == f"OK: {path}\n"
    assert err.getvalue() == ""


def test_check_config_main_example() -> None:
    """The shipped example passes check-config."""
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(str(EXAMPLE), out, err) == 0
    assert err.getvalue() == ""


def test_check_config_main_invalid(tmp_path: Path) -> None:
    """An invalid file prints every problem on stderr and returns 78 (EX_CONFIG)."""
    path = str(write(tmp_path, "[flux]\nmax_watches = 0\n[bogus]\n"))
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(path, out, err) == 78
    assert out.getvalue() == ""
    assert err.getvalue().splitlines() == [
        f"{path}: flux.max_watches: 0 is out of range (valid: an integer >= 1)",
        f"{path}: bogus: unknown section (valid: flux, http, log, metrics, state, health)",
    ]


def test_check_config_main_missing_file(tmp_path: Path) -> None:
    """A missing file is a config error too: 78 and one line on stderr."""
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(str(tmp_path / "nope.toml"), out, err) == 78
    assert len(err.getvalue().splitlines()) == 1


# --------------------------------------------------------------------------- parse_listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("127.0.0.1:9100", ("127.0.0.1", 9100), id="ipv4"),
        pytest.param("0.0.0.0:10900", ("0.0.0.0", 10900), id="default"),
        pytest.param(":10900", ("0.0.0.0", 10900), id="empty-host"),
        pytest.param("localhost:8080", ("localhost", 8080), id="hostname"),
        pytest.param("[::1]:10900", ("::1", 10900), id="ipv6-loopback"),
        pytest.param("[::]:80", ("::", 80), id="ipv6-any"),
        pytest.param("[fe80::1%eth0]:1", ("fe80::1%eth0", 1), id="ipv6-scoped"),
        pytest.param("host:0", ("host", 0), id="port-zero"),
        pytest.param("host:65535", ("host", 65535), id="port-max"),
    ],
)
def test_parse_listen_good(text: str, expected: tuple[str, int]) -> None:
    """Valid listen addresses parse to (host, port)."""
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("10900", id="port-only"),
        pytest.param("host", id="host-only"),
        pytest.param("host:", id="no-port"),
        pytest.param("host:65536", id="port-too-big"),
        pytest.param("host:-1", id="negative-port"),
        pytest.param("host:+80", id="plus-port"),
        pytest.param("host: 80", id="space-port"),
        pytest.param("host:http", id="named-port"),
        pytest.param("::1:10900", id="ipv6-unbracketed"),
        pytest.param("[::1:10900", id="ipv6-unclosed"),
        pytest.param("[localhost]:80", id="brackets-not-ipv6"),
        pytest.param("a b:80", id="space-in-host"),
    ],
)
def test_parse_listen_bad(text: str) -> None:
    """Invalid listen addresses raise ValueError with one line naming the valid form."""
    with pytest.raises(ValueError, match=r"valid: HOST:PORT") as info:
        parse_listen(text)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- shared checks


def test_basic_auth_without_bcrypt_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users in basic_auth without bcrypt installed fail check-config, saying how to install it."""
    monkeypatch.setitem(sys.modules, "bcrypt", None)
    text = f'[http]\nallow_plain_basic_auth = true\n[http.basic_auth]\nalice = "{HASH}"\n'
    path = write(tmp_path, text)
    assert problems_of(path) == [f"{path}: http.basic_auth: {BCRYPT_MISSING}"]
    assert "pip install '.[auth]'" in BCRYPT_MISSING


@pytest.mark.parametrize(
    "given",
    [
        pytest.param({"tls_cert"}, id="cert"),
        pytest.param({"tls_key"}, id="key"),
        pytest.param({"tls_client_ca"}, id="client-ca"),
        pytest.param({"tls_cert", "tls_client_ca"}, id="cert-and-client-ca"),
    ],
)
def test_server_refuses_tls_settings_as_the_config_does(tmp_path: Path, given: set[str]) -> None:
    """MetricsServer refuses an incomplete TLS set with the same words as check-config."""
    text = "[http]\n" + "".join(f'{key} = "{key}.pem"\n' for key in sorted(given))
    for key in given:
        (tmp_path / f"{key}.pem").write_text("")
    expected = [line.split(": http.", 1)[1] for line in problems_of(write(tmp_path, text))]

    def path(key: str) -> Path | None:
        return tmp_path / f"{key}.pem" if key in given else None

    with pytest.raises(ValueError, match="set without") as info:
        MetricsServer(
            CollectorRegistry(),
            _Healthy(),
            listen=("127.0.0.1", 0),
            version="0",
            tls_cert=path("tls_cert"),
            tls_key=path("tls_key"),
            tls_client_ca=path("tls_client_ca"),
        )
    assert str(info.value).splitlines() == expected


class _Healthy:
    """A Health that is always live and ready."""

    def liveness(self) -> tuple[bool, str]:
        return True, ""

    def readiness(self) -> tuple[bool, str]:
        return True, ""


# --------------------------------------------------------------------------- TLS files


def tls_config(tmp_path: Path, cert: str, key: str, ca: str = "") -> Path:
    """A config naming these TLS files in tmp_path."""
    text = f'[http]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    if ca:
        text += f'tls_client_ca = "{ca}"\n'
    return write(tmp_path, text)


@needs_openssl
def test_check_config_non_pem_certificate_is_78_naming_the_file(tmp_path: Path) -> None:
    """check-config loads the certificate: one that is not PEM exits 78 with the file named."""
    write_pems(tmp_path, "c.pem", "k.pem")
    (tmp_path / "c.pem").write_bytes(b"\x30\x82\x01\x0a not PEM")
    path = str(tls_config(tmp_path, "c.pem", "k.pem"))
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(path, out, err) == 78
    assert err.getvalue().splitlines() == [
        f"{path}: http.tls_cert: {tmp_path}/c.pem: not a PEM certificate"
        " (NO_CERTIFICATE_OR_CRL_FOUND) (valid: path to a PEM certificate file)"
    ]


@needs_openssl
def test_key_that_is_not_pem_is_named(tmp_path: Path) -> None:
    """A private key file that holds no PEM key is reported on tls_key, naming it."""
    write_pems(tmp_path, "c.pem", "k.pem")
    (tmp_path / "k.pem").write_text("not a key\n")
    [problem] = problems_of(tls_config(tmp_path, "c.pem", "k.pem"))
    assert problem.startswith(f"{tmp_path}/config.toml: http.tls_key: {tmp_path}/k.pem: not a PEM")
    assert problem.endswith("(valid: path to the PEM private key of tls_cert)")


@needs_openssl
def test_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    """A valid key that is not the certificate's is refused: the pair is checked."""
    write_pems(tmp_path, "c.pem", "k.pem")
    make_cert(tmp_path, "other")
    path = tls_config(tmp_path, "c.pem", "other.key")
    assert problems_of(path) == [
        f"{path}: http.tls_key: {tmp_path}/other.key: not the private key of the certificate"
        f" {tmp_path}/c.pem (valid: path to the PEM private key of tls_cert)"
    ]


@needs_openssl
def test_encrypted_key_is_refused_without_prompting(tmp_path: Path) -> None:
    """An encrypted key is a config error saying why, never a passphrase prompt."""
    write_pems(tmp_path, "c.pem", "k.pem")
    subprocess.run(
        ["openssl", "pkey", "-in", str(tmp_path / "k.pem"), "-aes256", "-passout", "pass:x",
         "-out", str(tmp_path / "enc.pem")],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    [problem] = problems_of(tls_config(tmp_path, "c.pem", "enc.pem"))
    assert f"http.tls_key: {tmp_path}/enc.pem: encrypted" in problem
    assert "openssl pkey -in KEY -out NEW" in problem


@needs_openssl
def test_client_ca_that_is_not_pem_is_named(tmp_path: Path) -> None:
    """A client CA file without a PEM certificate is reported on tls_client_ca."""
    write_pems(tmp_path, "c.pem", "k.pem")
    (tmp_path / "ca.pem").write_text("PEM\n")
    path = tls_config(tmp_path, "c.pem", "k.pem", "ca.pem")
    assert problems_of(path) == [
        f"{path}: http.tls_client_ca: {tmp_path}/ca.pem: not a PEM CA certificate"
        " (NO_CERTIFICATE_OR_CRL_FOUND) (valid: path to a PEM CA file)"
    ]


@needs_openssl
def test_basic_auth_with_tls_needs_no_opt_in(tmp_path: Path) -> None:
    """Basic auth over HTTPS loads without allow_plain_basic_auth."""
    write_pems(tmp_path, "c.pem", "k.pem")
    text = f'[http]\ntls_cert = "c.pem"\ntls_key = "k.pem"\n[http.basic_auth]\nalice = "{HASH}"\n'
    assert list(load_settings(write(tmp_path, text)).http.basic_auth) == ["alice"]
