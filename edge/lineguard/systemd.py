"""systemd notification (READY, WATCHDOG, STATUS, STOPPING) without a third-party dependency.

Does nothing when the service is not started by systemd (no NOTIFY_SOCKET). The watchdog is fed
only by the inspection loop's liveness check (see service.py), never by a timer thread of its
own: a timer would keep a wedged loop alive in systemd's eyes.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    """Send sd_notify datagrams to ``$NOTIFY_SOCKET`` (abstract or filesystem socket)."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        if self._addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @staticmethod
    def watchdog_interval_s() -> float | None:
        """Half of systemd's WatchdogSec (``$WATCHDOG_USEC``), the recommended ping period."""
        usec = os.environ.get("WATCHDOG_USEC")
        if not usec or (os.environ.get("WATCHDOG_PID") not in (None, str(os.getpid()))):
            return None
        return int(usec) / 2e6

    def notify(self, message: str) -> None:
        if self._sock is None:
            return
        # systemd gone (e.g. during shutdown): notification is advisory, never fatal
        with contextlib.suppress(OSError):
            self._sock.sendto(message.encode(), self._addr)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
