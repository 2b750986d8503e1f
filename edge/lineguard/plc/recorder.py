"""Flight recorder: a ring buffer of the last PLC transactions, dumped to the log on a fault.

Filled by the transport on every request; read only when something went wrong, so it must
stay cheap (one small tuple per transaction, no formatting on the hot path).
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Transaction:
    """One Modbus request as seen by LineGuard."""

    t_ns: int  # monotonic start
    op: str  # "write_regs", "write_coils", "read_regs", "connect"
    address: int
    values: tuple[int, ...]
    latency_us: float
    error: str  # "" when it succeeded, else the PlcErrorKind value


class FlightRecorder:
    """Bounded ring (drop-oldest by design: only the recent past explains a fault)."""

    def __init__(self, *, capacity: int) -> None:
        self._ring: collections.deque[Transaction] = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, tx: Transaction) -> None:
        with self._lock:
            self._ring.append(tx)

    def snapshot(self) -> list[Transaction]:
        with self._lock:
            return list(self._ring)

    def dump(self, logger: logging.Logger, reason: str) -> None:
        """Write the ring to the log, oldest first, relative times in ms."""
        txs = self.snapshot()
        if not txs:
            logger.warning("PLC fault (%s); flight recorder is empty", reason)
            return
        t_end = txs[-1].t_ns
        lines = [
            f"  {(tx.t_ns - t_end) / 1e6:+9.2f} ms {tx.op:<11} @{tx.address:<5} {list(tx.values)!s:<40} "
            f"{tx.latency_us:8.0f} us {tx.error or 'ok'}"
            for tx in txs
        ]
        logger.warning("PLC fault (%s); last %d transactions:\n%s", reason, len(txs), "\n".join(lines))


class Throttle:
    """At most ``burst`` log lines per kind of per-part message in each window; the rest are counted
    and reported in one line when the window ends. A window that had to suppress doubles the next
    one (10 s, 20 s, 40 s ... up to ``max_window_ns``), so a fault hitting every part for an hour
    writes a few dozen lines, not one per part; a quiet window resets it."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 3,
        window_ns: int = 10_000_000_000,
        max_window_ns: int = 600_000_000_000,
    ) -> None:
        self._log = logger
        self._burst = burst
        self._window_ns = window_ns
        self._max_ns = max_window_ns
        self._windows: dict[str, list[int]] = {}  # kind -> [window start, length, lines, suppressed]

    def warning(self, now_ns: int, kind: str, msg: str, *args: object) -> None:
        w = self._windows.get(kind)
        if w is None or now_ns - w[0] >= w[1]:
            length = self._window_ns
            if w is not None and w[3] and now_ns - w[0] < 2 * w[1]:
                length = min(2 * w[1], self._max_ns)  # still busy: back off further
            self._report(kind)
            w = self._windows[kind] = [now_ns, length, 0, 0]
        if w[2] < self._burst:
            w[2] += 1
            self._log.warning(msg, *args)
        else:
            w[3] += 1

    def flush(self) -> None:
        for kind in list(self._windows):
            self._report(kind)
        self._windows.clear()

    def _report(self, kind: str) -> None:
        w = self._windows.get(kind)
        if w is not None and w[3]:
            self._log.warning("... and %d more '%s' messages (suppressed, see metrics)", w[3], kind)
            w[3] = 0


class FaultEpisodes:
    """Fault episodes of the PLC link: an episode starts at the first fault (connection lost or
    refused, overflow, refused result, unacknowledged result) and ends when the link has been
    healthy again (connected, every result acknowledged) for ``quiet_ns`` with no new fault.

    One flight-recorder dump and one count per episode, one summary line at its end.
    """

    def __init__(self, *, recorder: FlightRecorder, logger: logging.Logger, quiet_ns: int) -> None:
        self._rec = recorder
        self._log = logger
        self._quiet_ns = quiet_ns
        self._t_start: int | None = None
        self._t_last_fault = 0
        self._counts: dict[str, int] = {}
        self.count = 0

    @property
    def active(self) -> bool:
        return self._t_start is not None

    def fault(self, now_ns: int, reason: str) -> bool:
        """Record a fault; True when it opened a new episode (then the recorder was dumped)."""
        self._t_last_fault = now_ns
        if self._t_start is not None:
            return False
        self._t_start = now_ns
        self._counts = {}
        self.count += 1
        self._rec.dump(self._log, f"fault episode {self.count}: {reason}")
        return True

    def note(self, what: str, n: int = 1) -> None:
        """Count a per-part consequence (overflow, missed deadline, ...) for the episode's summary."""
        if self._t_start is not None and n:
            self._counts[what] = self._counts.get(what, 0) + n

    def healthy(self, now_ns: int) -> bool:
        """The link is healthy now; True when that ended the open episode (summary logged)."""
        if self._t_start is None or now_ns - self._t_last_fault < self._quiet_ns:
            return False
        self.end(now_ns, "link healthy again")
        return True

    def end(self, now_ns: int, why: str) -> None:
        if self._t_start is None:
            return
        detail = ", ".join(f"{k} {v}" for k, v in sorted(self._counts.items())) or "no part affected"
        self._log.warning(
            "PLC fault episode %d over (%s) after %.1f s: %s", self.count, why, (now_ns - self._t_start) / 1e9, detail
        )
        self._t_start = None
