"""Connection state of the PLC link's writer thread: connect with backoff, seq sync, loss bookkeeping.

Where it sits: inside ``PlcLink`` (``link.py``), used only by its writer thread, between the
Modbus transport and the result handshake. It decides *when* to try connecting (exponential
backoff up to ``reconnect_backoff_max_ms``), continues result numbering after the seq the PLC
holds on the first connect (so a stale acknowledgement can never match a new result), and keeps
what ``PlcLink.health()`` and the status word report about losses (time lost, reconnects, the
``link_recovered`` hold).

Must never: block longer than one transport transaction, or reset the result numbering after
the first successful sync (a reconnect continues where the book is).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lineguard.plc.book import ResultBook
from lineguard.plc.config import PlcConfig
from lineguard.plc.errors import PlcTransactionError
from lineguard.plc.metrics import PlcMetrics
from lineguard.plc.regmap import RegisterMap
from lineguard.plc.transport import ModbusTransport

_MS = 1_000_000


class LinkConnection:
    """Connect / lost / reconnect state of one PLC link (writer thread only)."""

    def __init__(
        self,
        *,
        cfg: PlcConfig,
        transport: ModbusTransport,
        regmap: RegisterMap,
        book: ResultBook,
        metrics: PlcMetrics,
        clock_ns: Callable[[], int],
        fault: Callable[[str], None],
        logger: logging.Logger,
        warn: Callable[..., None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._t = transport
        self._map = regmap
        self._book = book
        self._m = metrics
        self._clock = clock_ns
        self._fault = fault
        self._log = logger
        # (kind, msg, *args): the link's per-episode throttle, so a link lost every second logs a
        # few lines per window, not two per loss
        self._warn = warn or (lambda _kind, msg, *args: logger.warning(msg, *args))
        self.next_connect_ns = 0
        self._backoff_ns = int(cfg.reconnect_backoff_initial_ms * _MS)
        self._ever_connected = False
        self._seq_synced = False
        self.t_lost_ns: int | None = None  # since when the link is down (None while up)
        self.t_last_loss_ns: int | None = None  # when the link was last lost
        self.recovered_until_ns = 0  # status bit link_recovered is held until then
        self.reconnects = 0

    def maybe_connect(self) -> bool:
        """Try to connect when the backoff allows; True when the link has just come up."""
        now = self._clock()
        if now < self.next_connect_ns:
            return False
        try:
            self._t.connect()
            if not self._seq_synced:
                self._sync_seq()
        except PlcTransactionError as exc:
            self._t.close()
            self._m.errors.labels(kind=exc.kind.value).inc()
            if self.t_lost_ns is None:
                self.t_lost_ns = self.t_last_loss_ns = now
                self._log.warning("cannot reach PLC %s (%s); retrying with backoff", self._t.describe, exc)
            self._fault(f"cannot reach PLC: {exc}")
            self.next_connect_ns = self._clock() + self._backoff_ns
            self._backoff_ns = min(self._backoff_ns * 2, int(self.cfg.reconnect_backoff_max_ms * _MS))
            return False
        self._backoff_ns = int(self.cfg.reconnect_backoff_initial_ms * _MS)
        self._m.connected.set(1)
        if self._ever_connected:
            self.reconnects += 1
            self._m.reconnects.inc()
            self.recovered_until_ns = self._clock() + int(self.cfg.reconnected_flag_hold_ms * _MS)
            self._warn(
                "link_back", "PLC link %s re-established after %.0f ms",
                self._t.describe,
                (self._clock() - (self.t_lost_ns or now)) / _MS,
            )
        else:
            self._log.info("PLC link %s connected", self._t.describe)
        self._ever_connected = True
        self.t_lost_ns = None
        return True

    def expedite(self) -> None:
        """Retry now instead of after the backoff (the link is stopping and has results to flush)."""
        self.next_connect_ns = min(self.next_connect_ns, self._clock())
        self._backoff_ns = int(self.cfg.reconnect_backoff_initial_ms * _MS)

    def _sync_seq(self) -> None:
        """Continue numbering after the seq the PLC holds, so a stale ack can never match."""
        addr, count = self._map.seq_field_words()
        try:
            words = self._t.read_registers(addr, count)
        except PlcTransactionError as exc:
            if exc.kind.breaks_connection:
                raise
            self._m.errors.labels(kind=exc.kind.value).inc()
            self._log.warning("cannot read result_seq from the PLC (%s); numbering starts at 1", exc)
        else:
            self._book.set_start_seq(self._map.decode_field(words, self.cfg.registers.result_seq, addr))
        self._seq_synced = True

    def lost(self, exc: PlcTransactionError) -> None:
        """A transaction broke the connection: close, count, and retry at once (then back off)."""
        self._t.close()
        self._m.errors.labels(kind=exc.kind.value).inc()
        self._m.connected.set(0)
        self.t_lost_ns = self.t_last_loss_ns = self._clock()
        self._book.connection_lost()
        self.next_connect_ns = self.t_lost_ns  # first retry at once, then back off
        self._warn("link_lost", "PLC link %s lost (%s): %s", self._t.describe, exc.kind.value, exc)
        self._fault(str(exc))
