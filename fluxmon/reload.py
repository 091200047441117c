"""SIGHUP: read the config file again and apply what can change while fluxmon runs.

:class:`Reloader` reads the file, rejects it whole when it has a problem (every problem
logged, the running settings kept), names each changed key that is read at start only in a
``config.reload_refused`` record, and applies the rest: log level, format and events, the
HTTP endpoint's basic-auth users and TLS files, label caps, declared label values and
exemplars.
:class:`ReloadThread` runs it off the signal handler, which only queues a request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from structlog.typing import FilteringBoundLogger

from fluxmon.config import ConfigError, Settings, load_settings, setting_keys
from fluxmon.logs import LogOptions

#: Keys a reload applies while fluxmon runs; every other key is read at start only.
LIVE: Final = frozenset(
    {
        "http.basic_auth",
        "http.tls_cert",
        "http.tls_key",
        "http.tls_client_ca",
        "http.allow_plain_basic_auth",
        "http.max_connections",
        "http.max_header_bytes",
        "http.header_timeout",
        "log.format",
        "log.level",
        "log.events",
        "metrics.label_cap",
        "metrics.exemplars",
        "metrics.queues",
        "metrics.declared.name",
        "metrics.declared.type",
        "metrics.declared.returncode",
    }
)
#: Why the keys read at start only cannot change while fluxmon runs, by key or prefix.
AT_START: Final = (
    ("flux.", "the event source connects and follows jobs with it from the start"),
    ("http.listen", "the listening socket is bound at start"),
    ("metrics.buckets.", "a histogram keeps its bucket bounds for life"),
    ("state.checkpoint_dir", "the checkpoint is read at start and written where it was read"),
    ("log.buffer_records", "the log buffer is made at start"),
    ("log.on_full", "the log writer's policy is set when it starts"),
    ("health.stall_seconds", "the liveness bound is set when the pipeline is built"),
)
#: TLS keys whose files are compared by content, so a certificate rotated in place counts.
TLS_FILES: Final = ("http.tls_cert", "http.tls_key", "http.tls_client_ca")


def value(settings: Settings, key: str) -> object:
    """The value of a dotted config key (``log.level``) in ``settings``."""
    section, name = setting_keys()[key]
    return getattr(getattr(settings, section), name)


def refusal(key: str, pinned: Mapping[str, str]) -> str | None:
    """Why a change of ``key`` is not applied by a reload, or None when it is."""
    if key in pinned:
        return f"{pinned[key]} on the command line sets it, so the file's value is not used"
    if key in LIVE:
        return None
    why = next((why for prefix, why in AT_START if key.startswith(prefix)), "it is read at start")
    return f"{why}; restart fluxmon to apply it"


def tls_digests(settings: Settings) -> dict[str, str | None]:
    """A hash of the content of each TLS file (None: unset or unreadable), by key."""
    digests: dict[str, str | None] = {}
    for key in TLS_FILES:
        path = value(settings, key)
        try:
            digest = hashlib.sha256(path.read_bytes()) if isinstance(path, Path) else None
        except OSError:
            digest = None
        digests[key] = digest.hexdigest() if digest else None
    return digests


def changed_keys(
    old: Settings, new: Settings, old_files: Mapping[str, str | None] | None = None
) -> list[str]:
    """The config keys whose values differ, in the file's order.

    With ``old_files`` (:func:`tls_digests` of ``old`` when it was read), a TLS file
    whose content differs now counts too, even under the same path.
    """
    new_files = tls_digests(new) if old_files is not None else {}
    return [
        key
        for key in setting_keys()
        if value(old, key) != value(new, key)
        or (old_files is not None and key in TLS_FILES and old_files[key] != new_files[key])
    ]


def _taking(base: Settings, keys: list[str], source: Settings) -> Settings:
    """``base`` with the values of ``keys`` taken from ``source``."""
    sections: dict[str, dict[str, object]] = {}
    for key in keys:
        section, name = setting_keys()[key]
        sections.setdefault(section, {})[name] = value(source, key)
    return dataclasses.replace(
        base,
        **{
            section: dataclasses.replace(getattr(base, section), **fields)
            for section, fields in sections.items()
        },
    )


@dataclass(frozen=True)
class ConfigFile:
    """What a reload reads, and which keys the command line sets.

    ``settings`` are the file's at start (``path`` None: no file), before the command
    line's overrides; ``pinned`` maps each key an option sets to that option.
    """

    settings: Settings
    pinned: Mapping[str, str] = field(default_factory=dict)


class Reloader:
    """Reads the config file again and applies it whole, or not at all."""

    def __init__(
        self,
        config: ConfigFile,
        apply: Callable[[Settings], list[str]],
        options: LogOptions,
        log: FilteringBoundLogger,
    ) -> None:
        """Reload ``config`` through ``apply``, which returns the problems, ``[]`` if none.

        ``apply`` applies settings whole or not at all, all but the log's level and
        format, which are set here in ``options`` after the records of the reload.
        """
        self.settings = config.settings
        self._files = tls_digests(config.settings)
        self._pinned = config.pinned
        self._apply = apply
        self._options = options
        self._log = log

    def reload(self) -> bool:
        """Read the file and apply it; log what happened; True if it was applied."""
        path = self.settings.path
        if path is None:
            self._log.info(
                "config.reload_skipped", reason="no config file (-c) was given: nothing to read"
            )
            return False
        try:
            new = load_settings(path)
        except ConfigError as error:
            self._log.error("config.reload_failed", config=str(path), problems=str(error))
            return False
        files = tls_digests(new)  # before the server reads them: a change later is seen next time
        changed = changed_keys(self.settings, new, self._files)
        refused = {key: why for key in changed if (why := refusal(key, self._pinned))}
        applied = [key for key in changed if key not in refused]
        settings = _taking(self.settings, applied, new)
        problems = self._apply(settings)
        if problems:
            self._log.error("config.reload_failed", config=str(path), problems="\n".join(problems))
            return False
        for key, why in refused.items():
            self._log.warning("config.reload_refused", config=str(path), key=key, reason=why)
        # Written before the new level applies, so raising it still shows this record.
        self._log.info("config.reloaded", config=str(path), changed=",".join(applied))
        self._options.set(settings.log.format, settings.log.level)
        self.settings, self._files = settings, files
        return True


class ReloadThread:
    """Runs ``work`` on its own thread for each :meth:`request`, the SIGHUP handler.

    Requests that arrive while ``work`` runs are served by one more run.
    """

    def __init__(self, work: Callable[[], object], log: FilteringBoundLogger) -> None:
        self._work = work
        self._log = log
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fluxmon-reload", daemon=True)

    def request(self, *_: object) -> None:
        """Ask for a run; safe in a signal handler (a SimpleQueue put is reentrant)."""
        self._requests.put(True)

    def start(self) -> None:
        """Start serving requests."""
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the run under way, if any, and end the thread."""
        self._requests.put(False)
        self._thread.join(timeout)

    def _run(self) -> None:
        while self._requests.get() and self._drain():
            try:
                self._work()
            except Exception as error:
                self._log.exception(
                    "config.reload_failed", problems=f"{type(error).__name__}: {error}"
                )

    def _drain(self) -> bool:
        """Take the requests queued so far (one run serves them all); False if one is stop."""
        while True:
            try:
                if not self._requests.get_nowait():
                    return False
            except queue.Empty:
                return True
