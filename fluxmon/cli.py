"""The ``fluxmon`` command: arguments in, the subcommand run, its exit status out.

It parses the arguments, loads the settings, builds what each subcommand needs (the
Flux bindings, the checkpoint directory, the source) and hands them to :mod:`fluxmon.app`;
the exit statuses are defined in :mod:`fluxmon.exitcodes`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from fluxmon import __version__
from fluxmon import exitcodes as ex

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from fluxmon.config import Settings
    from fluxmon.metrics import SelfMetrics

#: Where ``fluxmon demo`` listens unless ``--listen`` says otherwise: its data is made up,
#: so it stays on this host by default.
DEMO_LISTEN: Final = ("127.0.0.1", 10900)


def _listen(text: str) -> tuple[str, int]:
    from fluxmon.config import parse_listen

    try:
        return parse_listen(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


class _Command(NamedTuple):
    """What a subcommand's ``--help`` says besides its arguments."""

    summary: str
    example: str
    exit_codes: tuple[int, ...]


_COMMANDS: Final = {
    "run": _Command(
        "run the daemon against a Flux instance",
        "fluxmon run -c /etc/fluxmon/fluxmon.toml",
        (
            ex.EX_OK,
            ex.EX_USAGE,
            ex.EX_UNAVAILABLE,
            ex.EX_SOFTWARE,
            ex.EX_OSERR,
            ex.EX_IOERR,
            ex.EX_CONFIG,
        ),
    ),
    "record": _Command(
        "write a live instance's events in the replay format",
        "fluxmon record -o incident.jsonl --count 100",
        (ex.EX_OK, ex.EX_USAGE, ex.EX_UNAVAILABLE, ex.EX_CANTCREAT, ex.EX_CONFIG),
    ),
    "demo": _Command(
        "serve metrics of a built-in simulated Flux workload",
        "fluxmon demo --rate 10  # then open http://127.0.0.1:10900/metrics",
        (ex.EX_OK, ex.EX_USAGE, ex.EX_SOFTWARE, ex.EX_OSERR, ex.EX_IOERR, ex.EX_CONFIG),
    ),
    "replay": _Command(
        "feed recorded events through the pipeline and print the final /metrics",
        "fluxmon replay incident.jsonl > metrics.txt 2> records.log",
        (ex.EX_OK, ex.EX_USAGE, ex.EX_DATAERR, ex.EX_NOINPUT, ex.EX_IOERR, ex.EX_CONFIG),
    ),
    "logs": _Command(
        "print fluxmon's own log records of given jobs, record names and times",
        "fluxmon logs --job ƒ2ZMTeo5R --msg job.finished fluxmon.log  # or stdin",
        (ex.EX_OK, ex.EX_NOMATCH, ex.EX_USAGE, ex.EX_NOINPUT),
    ),
    "check-config": _Command(
        "validate a config file, reporting every problem at once",
        "fluxmon check-config /etc/fluxmon/fluxmon.toml",
        (ex.EX_OK, ex.EX_USAGE, ex.EX_CONFIG),
    ),
}


def _add_listen(
    command: argparse.ArgumentParser, default: tuple[str, int] | None, default_text: str
) -> None:
    """Give ``command`` a ``--listen HOST:PORT`` option."""
    command.add_argument(
        "--listen",
        type=_listen,
        default=default,
        metavar="HOST:PORT",
        help=f"where to serve (default: {default_text})",
    )


def parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from fluxmon.config import HttpSettings
    from fluxmon.http import format_address

    raw = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(
        prog="fluxmon",
        description="Prometheus metrics and structured logs from Flux job eventlogs.",
        epilog=ex.describe(ex.EXIT_CODES),
        formatter_class=raw,
    )
    top.add_argument("--version", action="version", version=f"fluxmon {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cmd = {
        name: sub.add_parser(
            name,
            help=spec.summary,
            description=spec.summary[0].upper() + spec.summary[1:] + ".",
            epilog=f"example:\n  {spec.example}\n\n{ex.describe(spec.exit_codes)}",
            formatter_class=raw,
        )
        for name, spec in _COMMANDS.items()
    }
    for name in ("run", "record", "demo", "replay"):
        cmd[name].add_argument("-c", "--config", help="TOML config file (all keys optional)")
    for name in ("run", "record"):
        cmd[name].add_argument(
            "--uri", help="Flux URI (default: flux.uri, $FLUX_URI, local:///run/flux/local)"
        )
    _add_listen(cmd["run"], None, f"http.listen, else {format_address(*HttpSettings().listen)}")
    _add_listen(
        cmd["demo"],
        DEMO_LISTEN,
        f"{format_address(*DEMO_LISTEN)}: the data is made up, so it stays on this host"
        " unless this option says otherwise; http.listen is not used",
    )
    cmd["record"].add_argument(
        "-o", "--output", default="-", help="file to append to (default: stdout)"
    )
    cmd["record"].add_argument("--count", type=int, help="stop after N jobs finish")
    cmd["demo"].add_argument(
        "--rate", type=_positive, default=2.0, help="jobs per second (default 2)"
    )
    cmd["demo"].add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    cmd["replay"].add_argument("files", nargs="+", metavar="FILE", help="replay-format JSON lines")
    cmd["check-config"].add_argument("config", metavar="CONFIG")

    from fluxmon import logquery

    logquery.add_arguments(cmd["logs"])
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = parser().parse_args(argv)
    from fluxmon.config import ConfigError, check_config_main, load_settings

    if args.command == "check-config":
        return check_config_main(args.config, sys.stdout, sys.stderr)
    if args.command == "logs":
        from fluxmon.logquery import main as logs_main

        return logs_main(args, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)
    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return ex.EX_CONFIG
    from fluxmon import app

    if args.command in ("run", "demo"):
        # The daemons answer scrapes from many threads while the source thread applies
        # events: with CPython's default 5 ms switch interval every blocking call of an
        # HTTP thread can wait 5 ms for the GIL behind a busy source thread (a convoy),
        # which made a burst of 1000 scrapes take 6-9 s instead of 3.5 (benchmarks/http_load.py).
        sys.setswitchinterval(app.SWITCH_INTERVAL)
    if args.command == "replay":
        return app.replay(args.files, settings, sys.stdout, sys.stderr)
    if args.command in ("run", "record"):
        return _flux_command(args, settings)
    if args.command == "demo":
        from fluxmon.reload import ConfigFile
        from fluxmon.sources.demo import DemoSource

        source = DemoSource(rate=args.rate, seed=args.seed)
        return app.serve(
            _listening(settings, args.listen),
            source,
            mode="demo",
            log_stream=sys.stdout,
            config_file=ConfigFile(settings, {"http.listen": "--listen"}),
        )
    return ex.EX_USAGE  # pragma: no cover - argparse rejects unknown commands


def _listening(settings: Settings, listen: tuple[str, int] | None) -> Settings:
    """``settings`` with ``listen`` as the HTTP listen address (None: unchanged)."""
    if listen is None:
        return settings
    return dataclasses.replace(settings, http=dataclasses.replace(settings.http, listen=listen))


def _flux_command(args: argparse.Namespace, settings: Settings) -> int:
    """``run`` and ``record``: the commands that need the Flux bindings."""
    from fluxmon import app
    from fluxmon.reload import ConfigFile
    from fluxmon.sources.flux import (
        Checkpoint,
        FluxBindings,
        FluxSource,
        FluxUnavailable,
        resolve_uri,
    )

    try:
        bindings = FluxBindings()
    except FluxUnavailable as err:
        print(f"fluxmon: {err}", file=sys.stderr)
        return ex.EX_UNAVAILABLE
    uri = resolve_uri(args.uri or settings.flux.uri, os.environ)

    # The checkpoint directory: the config's, else systemd's StateDirectory= for us.
    state_dir = settings.state.checkpoint_dir or (
        Path(os.environ["STATE_DIRECTORY"].split(":")[0])
        if os.environ.get("STATE_DIRECTORY")
        else None
    )
    checkpoint = Checkpoint(state_dir) if state_dir is not None and args.command == "run" else None

    def source(
        stats: SelfMetrics,
        log: FilteringBoundLogger,
        after_written: Callable[[Callable[[], None]], None] | None = None,
    ) -> FluxSource:
        flux = FluxSource(
            settings.flux, uri=uri, bindings=bindings, stats=stats, log=log, checkpoint=checkpoint
        )
        if after_written is not None:
            flux.after_written = after_written
        return flux

    def served(parts: app.Parts) -> FluxSource:
        """The daemon's source: its checkpoint carries the metrics, restored here."""
        if checkpoint is not None:
            errors = parts.self_metrics.checkpoint_errors
            checkpoint.on_error = lambda kind: errors.labels(kind).inc()
        flux = source(parts.self_metrics, parts.log, parts.writer.after_written)
        if checkpoint is not None:
            app.restore_metrics(parts, checkpoint.metrics, str(checkpoint.path))
            flux.capture = parts.metrics_state.capture
        return flux

    if args.command == "record":
        if args.output == "-":
            return app.record(source, settings, sys.stdout, sys.stderr, count=args.count)
        try:
            out = open(args.output, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as err:
            print(f"fluxmon: {args.output}: cannot write: {err.strerror or err}", file=sys.stderr)
            return ex.EX_CANTCREAT
        with out:
            return app.record(source, settings, out, sys.stderr, count=args.count)
    options = {"http.listen": "--listen", "flux.uri": "--uri"}
    pinned = {key: opt for key, opt in options.items() if getattr(args, opt[2:]) is not None}
    return app.serve(
        _listening(settings, args.listen),
        served,
        mode="run",
        log_stream=sys.stdout,
        config_file=ConfigFile(settings, pinned),
    )


if __name__ == "__main__":
    sys.exit(main())
