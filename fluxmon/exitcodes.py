"""fluxmon's exit statuses: the one definition the commands, their ``--help`` and the README use.

Usage errors are argparse's 2; the others are the standard library's ``os.EX_*``
(sysexits.h).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

EX_OK: Final = os.EX_OK
EX_NOMATCH: Final = 1  # grep's "no line selected" (logs)
EX_USAGE: Final = 2  # what argparse exits with, rather than sysexits' 64
EX_DATAERR: Final = os.EX_DATAERR
EX_NOINPUT: Final = os.EX_NOINPUT
EX_UNAVAILABLE: Final = os.EX_UNAVAILABLE
EX_SOFTWARE: Final = os.EX_SOFTWARE
EX_OSERR: Final = os.EX_OSERR
EX_CANTCREAT: Final = os.EX_CANTCREAT
EX_IOERR: Final = os.EX_IOERR
EX_CONFIG: Final = os.EX_CONFIG

#: Every exit status fluxmon uses and what it means; the README's "Exit codes" line matches.
EXIT_CODES: Final[Mapping[int, str]] = MappingProxyType(
    {
        EX_OK: "ok",
        EX_NOMATCH: "no record matched (logs)",
        EX_USAGE: "usage",
        EX_DATAERR: "some input was refused (replay)",
        EX_NOINPUT: "an input file cannot be read (replay, logs)",
        EX_UNAVAILABLE: "Flux unavailable",
        EX_SOFTWARE: "internal error",
        EX_OSERR: "cannot listen",
        EX_CANTCREAT: "cannot write the output file (record)",
        EX_IOERR: "cannot write the log (stdout closed, a broken pipe, a full disk)",
        EX_CONFIG: "configuration error",
    }
)


def describe(codes: Iterable[int]) -> str:
    """An ``exit status:`` block for a ``--help`` epilog, one code and its meaning a line."""
    lines = (f"  {code:<3} {EXIT_CODES[code]}" for code in sorted(codes))
    return "exit status:\n" + "\n".join(lines)
