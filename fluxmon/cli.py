"""The ``fluxmon`` command: argument parsing and exit codes, nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from fluxmon import __version__

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from fluxmon.config import Settings
    from fluxmon.metrics import SelfMetrics

EX_USAGE: Final = 2
EX_UNAVAILABLE: Final = 69
EX_CONFIG: Final = 78


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


def parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    top = argparse.ArgumentParser(
        prog="fluxmon",
        description="Prometheus metrics and structured logs from Flux job eventlogs.",
    )
    top.add_argument("--version", action="version", version=f"fluxmon {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="the daemon against a Flux instance")
    run.add_argument("-c", "--config", help="TOML config file (all keys optional)")
    run.add_argument(
        "--uri", help="Flux URI (default: flux.uri, $FLUX_URI, local:///run/flux/local)"
    )
    run.add_argument("--listen", type=_listen, help="HOST:PORT (default 0.0.0.0:10900)")

    rec = sub.add_parser("record", help="write a live instance's events in the replay format")
    rec.add_argument("-c", "--config", help="TOML config file (all keys optional)")
    rec.add_argument(
        "--uri", help="Flux URI (default: flux.uri, $FLUX_URI, local:///run/flux/local)"
    )
    rec.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    rec.add_argument("--count", type=int, help="stop after N jobs finish")

    demo = sub.add_parser("demo", help="serve metrics of a built-in simulated Flux workload")
    demo.add_argument("-c", "--config", help="TOML config file (all keys optional)")
    demo.add_argument("--listen", type=_listen, help="HOST:PORT (default 0.0.0.0:10900)")
    demo.add_argument("--rate", type=_positive, default=2.0, help="jobs per second (default 2)")
    demo.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")

    replay = sub.add_parser(
        "replay", help="feed recorded events through the pipeline and print /metrics"
    )
    replay.add_argument("files", nargs="+", metavar="FILE", help="replay-format JSON lines")
    replay.add_argument("-c", "--config", help="TOML config file (all keys optional)")

    from fluxmon import logquery

    logquery.add_arguments(sub.add_parser("logs", help=logquery.HELP))

    check = sub.add_parser("check-config", help="validate a config file (exit 0, or 78)")
    check.add_argument("config", metavar="CONFIG")
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
        return EX_CONFIG
    from fluxmon import app

    if args.command == "replay":
        return app.replay(args.files, settings, sys.stdout, sys.stderr)
    if args.command in ("run", "record"):
        return _flux_command(args, settings)
    if args.listen is not None:
        settings = dataclasses.replace(
            settings, http=dataclasses.replace(settings.http, listen=args.listen)
        )
    if args.command == "demo":
        from fluxmon.sources.demo import DemoSource

        source = DemoSource(rate=args.rate, seed=args.seed)
        return app.serve(settings, source, mode="demo", log_stream=sys.stdout)
    return EX_USAGE  # pragma: no cover - argparse rejects unknown commands


def _flux_command(args: argparse.Namespace, settings: Settings) -> int:
    """``run`` and ``record``: the commands that need the Flux bindings."""
    from fluxmon import app
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
        return EX_UNAVAILABLE
    uri = resolve_uri(args.uri or settings.flux.uri, os.environ)

    # The checkpoint directory: the config's, else systemd's StateDirectory= for us.
    state_dir = settings.state.checkpoint_dir or (
        Path(os.environ["STATE_DIRECTORY"].split(":")[0])
        if os.environ.get("STATE_DIRECTORY")
        else None
    )
    checkpoint = Checkpoint(state_dir) if state_dir is not None and args.command == "run" else None

    def source(stats: SelfMetrics, log: FilteringBoundLogger) -> FluxSource:
        return FluxSource(
            settings.flux,
            uri=uri,
            bindings=bindings,
            stats=stats,
            log=log,
            checkpoint=checkpoint,
        )

    if args.command == "record":
        if args.output == "-":
            return app.record(source, settings, sys.stdout, sys.stderr, count=args.count)
        with open(args.output, "a", encoding="utf-8") as out:
            return app.record(source, settings, out, sys.stderr, count=args.count)
    if args.listen is not None:
        settings = dataclasses.replace(
            settings, http=dataclasses.replace(settings.http, listen=args.listen)
        )
    return app.serve(
        settings,
        lambda parts: source(parts.self_metrics, parts.log),
        mode="run",
        log_stream=sys.stdout,
    )


if __name__ == "__main__":
    sys.exit(main())
