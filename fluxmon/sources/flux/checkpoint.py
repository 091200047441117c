"""The checkpoint: the newest event timestamps delivered, kept on disk across restarts."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Final

from structlog.typing import FilteringBoundLogger

CHECKPOINT_FILE: Final = "fluxmon.checkpoint.json"


class Checkpoint:
    """The newest main and exec event timestamps delivered, in ``CHECKPOINT_FILE``.

    With it, events that happen while fluxmon is down (restart, upgrade) are counted
    and logged once when it comes back, instead of being taken for history.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / CHECKPOINT_FILE
        self._written: tuple[float, float] | None = None
        self._warned = False

    def load(self, log: FilteringBoundLogger) -> tuple[float, float]:
        """(since, exec_since) from the file; (0, 0) when absent or unreadable (logged)."""
        try:
            data = json.loads(self.path.read_text())
            since, exec_since = float(data["since"]), float(data.get("exec_since", 0.0))
            if not (math.isfinite(since) and math.isfinite(exec_since)):
                raise ValueError("not finite")
        except FileNotFoundError:
            return 0.0, 0.0
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("checkpoint.unreadable", path=str(self.path), error=str(err))
            return 0.0, 0.0
        self._written = (since, exec_since)
        return since, exec_since

    def save(self, since: float, exec_since: float, log: FilteringBoundLogger) -> None:
        """Write atomically (temporary file, then rename), only when it changed."""
        if since <= 0 or self._written == (since, exec_since):
            return
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"since": since, "exec_since": exec_since}) + "\n")
            os.replace(tmp, self.path)
        except OSError as err:
            if not self._warned:
                self._warned = True
                log.warning("checkpoint.unwritable", path=str(self.path), error=str(err))
            return
        self._written = (since, exec_since)
