"""Collection sink server: ZeroMQ PULL -> validate (lineguard.wire) -> FrameStore, with metrics.

Data flow: edge publishers (PUSH, connect) -> this socket (PULL, bind) -> :func:`decode_message`
-> :meth:`FrameStore.store_batch`. One thread owns the socket and the store; messages that arrive
together are stored in one transaction to amortise fsync.

What it must never do: crash or stop receiving because of what a peer sent or because its disk
is full. Every message ends as stored, duplicate, or rejected with a counted reason. Store faults
(``store_error``: a write or commit failed; ``quota_full``: nothing left to evict) are logged once
per fault episode (one WARNING, one INFO when frames are stored again), not once per batch.
A single ZeroMQ frame larger than twice ``max_message_bytes`` is cut by ZeroMQ itself (MAXMSGSIZE)
before it is read into memory; ZeroMQ then drops that peer's connection, which this process cannot
count (documented in docs/sink.md).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import zmq
import zmq.auth
from prometheus_client import CollectorRegistry
from zmq.auth.thread import ThreadAuthenticator

from lineguard.episode import FaultEpisode
from lineguard.errors import ConfigError, PublisherError
from lineguard.metrics import MetricsServer, SinkMetrics, start_metrics_server
from lineguard.sink.config import CurveServerConfig, SinkConfig
from lineguard.sink.store import BatchResult, FrameStore
from lineguard.wire import WireFormatError, WireLimits, WireMessage, decode_message

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SinkStats:
    """Totals since start, for logs and the CLI's exit summary."""

    received: int
    stored: int
    duplicates: int
    rejected: int


def _curve_server(ctx: zmq.Context[zmq.Socket[bytes]], sock: zmq.Socket[bytes],
                  curve: CurveServerConfig) -> ThreadAuthenticator:
    try:
        public, secret = zmq.auth.load_certificate(curve.server_secret_key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"sink curve: cannot load {curve.server_secret_key_file} ({exc})") from exc
    if secret is None:
        raise ConfigError(f"sink curve: {curve.server_secret_key_file} holds no secret key (.key_secret)")
    if not curve.authorized_clients_dir.is_dir():
        raise ConfigError(f"sink curve: authorized_clients_dir {curve.authorized_clients_dir} is not a folder")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    # Only clients whose public certificate is in the folder may connect.
    auth.configure_curve(domain="*", location=str(curve.authorized_clients_dir))
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    return auth


class SinkServer:
    """The sink's receive loop; :meth:`serve_forever` runs until :meth:`stop`."""

    def __init__(self, *, config: SinkConfig, socket: zmq.Socket[bytes], store: FrameStore,
                 metrics: SinkMetrics, auth: ThreadAuthenticator | None,
                 metrics_server: MetricsServer | None) -> None:
        self._cfg = config
        self._sock = socket
        self.store = store
        self._m = metrics
        self._auth = auth
        self.metrics_server = metrics_server
        self._limits = WireLimits(max_message_bytes=config.max_message_bytes, max_pixels=config.max_pixels)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=config.decode_threads, thread_name_prefix="sink-decode")
        self._counts = {"received": 0, "stored": 0, "duplicates": 0, "rejected": 0}
        self._store_fault = FaultEpisode(log, f"sink store {store.root}")
        self._refused_in_fault = 0
        self.endpoint = str(socket.getsockopt_string(zmq.LAST_ENDPOINT))
        self._m.store_bytes.set(store.total_bytes)
        self._m.store_frames.set(store.count())
        try:
            quota, free = store.effective_quota()
            self._m.quota_bytes.set(quota)
            self._m.disk_free_bytes.set(free)
        except OSError:  # the first batch reports it as a store_error
            pass
        self._m.recovered_orphans_total.inc(store.recovery.orphan_files_removed + store.recovery.temp_files_removed)

    @classmethod
    def from_config(cls, cfg: SinkConfig, *, registry: CollectorRegistry | None = None,
                    context: zmq.Context[zmq.Socket[bytes]] | None = None) -> SinkServer:
        """Open the store (recovering it), bind the PULL socket, start auth and metrics as configured."""
        store = FrameStore.open(cfg.store_dir, quota_bytes=cfg.quota_bytes, fsync=cfg.fsync,
                                min_free_bytes=cfg.min_free_bytes)
        ctx = context or zmq.Context.instance()
        sock = ctx.socket(zmq.PULL)
        auth = None
        try:
            sock.setsockopt(zmq.RCVHWM, cfg.rcvhwm_msgs)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, 2 * cfg.max_message_bytes)
            if cfg.curve is not None:
                auth = _curve_server(ctx, sock, cfg.curve)
            sock.bind(cfg.bind)
        except zmq.ZMQError as exc:
            sock.close(0)
            store.close()
            if auth is not None:
                auth.stop()
            raise ConfigError(f"sink bind {cfg.bind!r}: {exc}") from exc
        reg = registry or CollectorRegistry()
        metrics = SinkMetrics(reg)
        server = (start_metrics_server(reg, cfg.metrics_host, cfg.metrics_port)
                  if cfg.metrics_port is not None else None)
        sink = cls(config=cfg, socket=sock, store=store, metrics=metrics, auth=auth, metrics_server=server)
        log.info("sink listening on %s, store %s (%d frames, %.1f MB, quota %.1f MB, %.1f MB kept free)%s",
                 sink.endpoint, cfg.store_dir, store.count(), store.total_bytes / 1e6, cfg.quota_bytes / 1e6,
                 cfg.min_free_bytes / 1e6,
                 f", metrics on :{server.port}" if server else "")
        return sink

    @property
    def stats(self) -> SinkStats:
        return SinkStats(**self._counts)

    def stop(self) -> None:
        """Ask the loop to finish (thread-safe, also from a signal handler)."""
        self._stop.set()

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(self._cfg.poll_timeout_ms):
                continue
            self._handle_batch(self._receive_batch())

    def _receive_batch(self) -> list[WireMessage]:
        raw: list[list[bytes]] = []
        for _ in range(self._cfg.batch_max_msgs):
            try:
                raw.append(self._sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        self._counts["received"] += len(raw)
        self._m.received_total.inc(len(raw))
        # PNG decoding releases the GIL, so a small pool verifies a batch on several cores.
        outcomes = list(self._pool.map(self._decode, raw))
        batch = []
        for outcome in outcomes:
            if isinstance(outcome, WireMessage):
                batch.append(outcome)
            else:
                self._reject(*outcome)
        return batch

    def _decode(self, parts: list[bytes]) -> WireMessage | tuple[str, str]:
        try:
            return decode_message(parts, limits=self._limits)
        except WireFormatError as exc:
            return exc.reason, str(exc)
        except Exception as exc:  # a peer must never crash the sink; the bug is logged with its trace
            log.exception("sink: unexpected failure decoding a message")
            return "internal", repr(exc)

    def _reject(self, reason: str, detail: str, n: int = 1) -> None:
        self._counts["rejected"] += n
        self._m.rejected_total.labels(reason=reason).inc(n)
        log.warning("sink: rejected %d message(s): %s", n, detail[:300])

    def _handle_batch(self, batch: list[WireMessage]) -> None:
        if not batch:
            return
        t0 = time.monotonic()
        try:
            result = self.store.store_batch(batch)
        except PublisherError as exc:
            self._refuse_for_fault("store_error", str(exc), len(batch))
            return
        except Exception as exc:  # keep receiving; the bug is logged with its trace and counted
            log.exception("sink: unexpected failure storing a batch")
            self._reject("internal", repr(exc), len(batch))
            return
        self._m.write_latency.observe(time.monotonic() - t0)
        self._account(result)

    def _account(self, r: BatchResult) -> None:
        for kind in r.stored_kinds:
            self._m.stored_total.labels(kind=kind).inc()
        self._counts["stored"] += len(r.stored_kinds)
        self._counts["duplicates"] += r.duplicates
        self._m.duplicates_total.inc(r.duplicates)
        if r.quota_refused:
            limit = "the disk's free space minus min_free_bytes" if r.disk_bound else "the configured quota"
            self._refuse_for_fault("quota_full", f"store at {r.quota_bytes / 1e6:.1f} MB ({limit}) and only "
                                   "labelled frames left to evict", r.quota_refused)
        if r.store_errors:
            self._refuse_for_fault("store_error", f"file write failed: {r.first_error}", r.store_errors)
        if r.stored_kinds and not (r.quota_refused or r.store_errors) and self._store_fault.active:
            self._store_fault.recover(f"{self._refused_in_fault} frames refused during the fault")
            self._refused_in_fault = 0
            self._m.store_fault.set(0)
        self._m.evicted_total.inc(r.evicted)
        self._m.store_bytes.set(self.store.total_bytes)
        self._m.store_frames.set(self.store.count())
        self._m.quota_bytes.set(r.quota_bytes)
        self._m.disk_free_bytes.set(r.free_bytes)

    def _refuse_for_fault(self, reason: str, detail: str, n: int) -> None:
        """Count frames the store could not take; log the first of an episode only (a full disk
        would otherwise log every batch)."""
        self._counts["rejected"] += n
        self._m.rejected_total.labels(reason=reason).inc(n)
        if self._store_fault.fail(f"{reason}: {detail[:300]}", "frames are refused and counted in "
                                  f"lineguard_sink_rejected_total{{reason=\"{reason}\"}} until one is stored again"):
            self._refused_in_fault = 0
            self._m.store_fault.set(1)
        self._refused_in_fault += n

    def close(self) -> None:
        """Close socket, authenticator, metrics endpoint and store, in reverse order of opening."""
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self._sock.close(0)
        self._pool.shutdown(wait=True)
        if self._auth is not None:
            self._auth.stop()
        self.store.close()
