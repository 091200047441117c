"""The systemd notify protocol (``sd_notify(3)``), with the standard library only.

systemd hands a ``Type=notify`` service the address of a datagram socket in
``$NOTIFY_SOCKET``: an absolute path, or ``@name`` for a Linux abstract socket.
A notification is one datagram of newline-separated ``KEY=value`` assignments
(``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=...``).
Outside systemd there is no socket and every call is a no-op.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Final

#: Environment variables systemd sets for a notify service with ``WatchdogSec=``.
NOTIFY_SOCKET: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC: Final = "WATCHDOG_USEC"
WATCHDOG_PID: Final = "WATCHDOG_PID"


def _socket_address(address: str) -> str | bytes | None:
    """Return the address as ``socket.connect`` wants it, or ``None`` for an unsupported form.

    Abstract names (``@name``) start with a NUL byte; paths must be absolute.
    Other forms (``vsock:``, relative paths) are not supported and disable notification.
    """
    if address.startswith("@") and len(address) > 1:
        return b"\0" + address[1:].encode()
    if address.startswith("/"):
        return address
    return None


def _encode(fields: Mapping[str, str]) -> bytes | None:
    """Encode assignments as one datagram, or ``None`` if a name is invalid.

    A newline inside a value would start a new assignment, so it becomes a space.
    """
    lines = []
    for key, value in fields.items():
        if not key or "=" in key or "\n" in key:
            return None
        lines.append(f"{key}={value.replace(chr(10), ' ')}")
    return ("\n".join(lines) + "\n").encode()


class Notifier:
    """Sends notifications to the service manager, or does nothing when there is none."""

    def __init__(self, address: str | None) -> None:
        """Use ``address`` (a ``$NOTIFY_SOCKET`` value).

        ``None``, an empty string, or an address that is neither an absolute path
        nor ``@abstract`` makes every call a no-op returning ``False``.
        """
        self.address: str | None = address or None
        self._target = _socket_address(address) if address else None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        """Build a notifier from ``$NOTIFY_SOCKET`` in ``environ`` (a no-op one when unset)."""
        return cls(environ.get(NOTIFY_SOCKET) or None)

    @property
    def enabled(self) -> bool:
        """Whether there is a usable notify address."""
        return self._target is not None

    def send(self, **fields: str) -> bool:
        """Send ``fields`` as one datagram; return whether it was sent.

        Never raises: no address, an invalid field name or any ``OSError``
        (socket gone, manager not listening) give ``False``.
        """
        if self._target is None or not fields:
            return False
        payload = _encode(fields)
        if payload is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._target)
                sock.sendall(payload)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        """Tell systemd start-up is complete, with a human-readable status line."""
        return self.send(READY="1", STATUS=status)

    def watchdog(self) -> bool:
        """Ping the watchdog (``WATCHDOG=1``)."""
        return self.send(WATCHDOG="1")

    def stopping(self) -> bool:
        """Tell systemd the service is shutting down."""
        return self.send(STOPPING="1")

    def status(self, text: str) -> bool:
        """Set the status line ``systemctl status`` shows."""
        return self.send(STATUS=text)


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Return the seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or ``None``.

    ``None`` when the watchdog is off, the value is not a positive integer, or
    ``$WATCHDOG_PID`` is set and names another process (as ``sd_watchdog_enabled(3)``).
    """
    usec_text = environ.get(WATCHDOG_USEC, "")
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid_text = environ.get(WATCHDOG_PID)
    if pid_text:
        try:
            if int(pid_text) != pid:
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000
