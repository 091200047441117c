"""The real Flux source; its ``bindings`` module is the only one that imports ``flux``.

Journal mode (``journal``, the default): one ``job-manager.events-journal`` streaming
RPC gives every main-eventlog event of every job, history first, then a sentinel, then
live events. Watch mode (``watch``, the fallback where the journal answers EPERM or
ENOSYS, or when configured): jobs are discovered by polling ``job-list`` and each
one's main eventlog is watched. In both modes a job that reaches ``alloc`` gets a
watch on its ``guest.exec.eventlog``, and its ``clean`` is held back until that watch
ends (``delivery``).

Each connection runs one Flux reactor on the source thread (``source``), with a
:class:`~fluxmon.sources.flux.connection.Connection` that the mode and the delivery
share. Callbacks never raise (an escaping exception would stop the reactor): each is
wrapped, and a failure is logged. A repeating timer checks the stop flag,
releases overdue held cleans and, in watch mode, polls job-list. The checkpoint is
saved after each live batch, through the log writer (``FluxSource.after_written``),
once that batch's records are written.

Reconnects: the tracker outlives a connection. On reconnect (journal mode) a job
whose delivered main-event timestamps the history goes on from gets the rest delivered
as live (it happened while fluxmon was away); one whose history contradicts them (a
broker that rolled back) is rewound; jobs not remembered are split by the newest
``submit`` delivered (``journal.split_history``); tracked jobs the new history does
not mention are forgotten (purged, or the instance restarted). A checkpoint saves
per-job delivered counts so that a restart of fluxmon splits history the same way
(``checkpoint``).
"""

from fluxmon.sources.flux.bindings import Bindings, FluxBindings, FluxUnavailable
from fluxmon.sources.flux.checkpoint import CHECKPOINT_FILE, Checkpoint
from fluxmon.sources.flux.connection import errno_name
from fluxmon.sources.flux.delivery import HOLD_SECONDS
from fluxmon.sources.flux.source import SYSTEM_URI, FluxSource, resolve_uri

__all__ = [
    "CHECKPOINT_FILE",
    "HOLD_SECONDS",
    "SYSTEM_URI",
    "Bindings",
    "Checkpoint",
    "FluxBindings",
    "FluxSource",
    "FluxUnavailable",
    "errno_name",
    "resolve_uri",
]
