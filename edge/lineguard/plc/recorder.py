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
