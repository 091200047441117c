"""The ``fluxmon`` command: argument parsing and exit codes, nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Final

from fluxmon import __version__

EX_USAGE: Final = 2
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

    check = sub.add_parser("check-config", help="validate a config file (exit 0, or 78)")
    check.add_argument("config", metavar="CONFIG")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = parser().parse_args(argv)
    from fluxmon.config import ConfigError, check_config_main, load_settings

    if args.command == "check-config":
        return check_config_main(args.config, sys.stdout, sys.stderr)
    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EX_CONFIG
    from fluxmon import app

    if args.command == "replay":
        return app.replay(args.files, settings, sys.stdout, sys.stderr)
    if args.listen is not None:
        settings = dataclasses.replace(
            settings, http=dataclasses.replace(settings.http, listen=args.listen)
        )
    if args.command == "demo":
        from fluxmon.sources.demo import DemoSource

        source = DemoSource(rate=args.rate, seed=args.seed)
        return app.serve(settings, source, mode="demo", log_stream=sys.stdout)
    return EX_USAGE  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
