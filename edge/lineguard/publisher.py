"""Uncertain-frame publisher: decisions worth a human look -> ZeroMQ PUSH -> collection sink.

Data flow: the inspection thread calls :meth:`UncertainPublisher.offer` (or ``publish``) after each
decision; that call only draws the audit lottery and appends a reference to a bounded queue
(no lock, no thread wake-up). The publisher's own thread polls that queue, encodes the PNG
(:mod:`lineguard.wire`) and sends without blocking.

What it must never do: block or slow the inspection loop (not when the sink is down, not when
the network stalls, not when PNG encoding is slow), or drop anything without counting it. Best
effort by design: the PLC path is the one that never drops; this one drops and counts, by reason
(``queue_full`` in process, ``hwm`` at ZeroMQ's send high-water mark, ``encode_error``,
``send_error``, ``closed`` after shutdown, ``near_reject_budget`` when near rejects exceed their
per-minute budget).

What is sent (:func:`classify`): rechecks and fail-safes (``uncertain``), rejects of an unknown
class (``unknown_defect``), rejects just above the reject threshold (``near_reject``: the likely
false rejects, rate-limited), and an ``audit`` share of the remaining confident verdicts.

"Sent" (``lineguard_publisher_sent_total``) means handed to the local ZeroMQ socket: PUSH/PULL has
no reply, so the edge cannot know whether the sink stored a message or refused it (malformed,
quota, a full or failing disk). The sink's own metrics (``lineguard_sink_stored_total``,
``lineguard_sink_rejected_total{reason}``) and its once-per-episode log say that (docs/metrics.md).

The queue holds references to the frame's image, not copies: sources hand over images they no
longer write to (contracts.Frame), so the inspection thread pays no copy.
"""

from __future__ import annotations

import collections
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import zmq
import zmq.auth
from pydantic import BaseModel, ConfigDict, Field

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.decision import band_width
from lineguard.errors import ConfigError, PublisherError
from lineguard.metrics import EdgeMetrics
from lineguard.wire import MessageKind, WireFormatError, build_header, encode_message

log = logging.getLogger(__name__)


class CurveClientConfig(BaseModel):
    """CurveZMQ key files (made with ``zmq.auth.create_certificates``) for an encrypted, authenticated link."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_public_key_file: Path = Field(description="the sink's public certificate (.key)")
    client_secret_key_file: Path = Field(description="this edge box's secret certificate (.key_secret); "
                                                     "it also holds the client public key")


class PublisherConfig(BaseModel):
    """Config section ``publisher``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="false builds a NullPublisher")
    endpoint: str = Field(default="tcp://127.0.0.1:5560", min_length=6, max_length=256,
                          description="sink endpoint to connect to, e.g. tcp://10.0.0.5:5560")
    sndhwm_msgs: int = Field(default=64, ge=1, le=100_000,
                             description="ZeroMQ send high-water mark in messages (queued while the sink is away)")
    linger_ms: int = Field(default=200, ge=0, le=10_000, description="how long close() may flush pending sends")
    queue_size_msgs: int = Field(default=32, ge=1, le=10_000,
                                 description="in-process queue between the inspection thread and the encoder")
    audit_fraction: float = Field(default=0.0, ge=0.0, le=1.0,
                                  description="share of confident (accept/reject) frames also sent as audit")
    audit_seed: int | None = Field(default=None, description="seed for the audit lottery (tests); none = random")
    include_anomaly_map: bool = Field(default=True, description="send the anomaly map as frame 3 when present")
    poll_ms: float = Field(default=5.0, ge=0.5, le=100.0,
                           description="how often the idle sender thread looks at the queue (latency to the sink)")
    png_compression: int = Field(default=1, ge=0, le=9, description="PNG zlib level: 1 is fast, 9 is small")
    curve: CurveClientConfig | None = Field(default=None, description="CurveZMQ keys; none = plain TCP")
    near_reject_margin_bands: float = Field(
        default=0.5, ge=0.0, le=10.0,
        description="rejected frames whose anomaly score lies less than this many uncertainty-band widths "
        "(upper - lower; 10 % of the reject threshold when the bundle has no band) above the reject threshold are "
        "sent as near_reject: the possible false rejects a label teaches most; 0 = off "
        "(default measured: docs/benchmarks/data-loop.md)")
    near_reject_min_margin_fraction: float = Field(
        default=0.02, ge=0.0, le=1.0,
        description="the near_reject margin is at least this fraction of the reject threshold's magnitude: when "
        "the band collapses (lower close to upper) a margin in band widths would be ~0 exactly when the line "
        "rejects many good parts (measured on casting: docs/benchmarks/data-loop.md); 0 = band widths only")
    near_reject_per_min: int = Field(
        default=30, ge=1, le=100_000,
        description="most near_reject messages per minute (token bucket, monotonic clock); more are counted as "
        "drops with reason near_reject_budget, so a bundle that rejects too much cannot flood the sink")


@dataclass(frozen=True, slots=True)
class _Job:
    decision: Decision
    frame: Frame
    anomaly_map: npt.NDArray[np.floating] | None
    kind: MessageKind
    thresholds: Mapping[str, float] | None


class Publisher(Protocol):
    """What the pipeline sees: UncertainPublisher or NullPublisher."""

    def offer(self, decision: Decision, frame: Frame, anomaly_map: npt.NDArray[np.floating] | None, *,
              thresholds: Mapping[str, float] | None = None) -> MessageKind | None: ...

    def publish(self, decision: Decision, frame: Frame, anomaly_map: npt.NDArray[np.floating] | None,
                kind: MessageKind, *, thresholds: Mapping[str, float] | None = None) -> bool: ...

    def close(self, timeout_s: float = 2.0) -> None: ...


def is_near_reject(decision: Decision, thresholds: Mapping[str, float] | None, margin_bands: float,
                   min_margin_fraction: float = 0.0) -> bool:
    """A reject whose score lies within ``margin_bands`` band widths above the reject threshold (at
    least ``min_margin_fraction`` of ``|upper|``, so a collapsed band still has a margin).

    Such a part is the likeliest false reject; without this kind it reached the sink only through
    the audit lottery, so a label could never teach the bank the good parts the line wrongly
    rejects (docs/benchmarks/data-loop.md). Needs finite ``lower`` and ``upper``; fail-safe
    verdicts and scores at or beyond the margin are not near.
    """
    if margin_bands <= 0.0 or decision.verdict is not Verdict.REJECT or thresholds is None:
        return False
    lower, upper, score = thresholds.get("lower"), thresholds.get("upper"), decision.anomaly_score
    if lower is None or upper is None or not all(math.isfinite(v) for v in (lower, upper, score)):
        return False
    margin = max(margin_bands * band_width(lower, upper), min_margin_fraction * abs(upper))
    return upper <= score < upper + margin


def classify(decision: Decision, thresholds: Mapping[str, float] | None = None,
             near_reject_margin_bands: float = 0.0, near_reject_min_margin_fraction: float = 0.0) -> MessageKind | None:
    """The kind a decision is published as, or None when it is confident (audit lottery aside).

    Order: recheck/fail-safe -> ``uncertain``; unknown defect class -> ``unknown_defect`` (the
    actionable label wins over nearness); a reject just above the reject threshold ->
    ``near_reject`` (only with ``thresholds`` and a positive margin).
    """
    if decision.verdict in (Verdict.RECHECK, Verdict.FAILSAFE):
        return MessageKind.UNCERTAIN
    if decision.defect_class == "unknown":
        return MessageKind.UNKNOWN_DEFECT
    if is_near_reject(decision, thresholds, near_reject_margin_bands, near_reject_min_margin_fraction):
        return MessageKind.NEAR_REJECT
    return None


class TokenBucket:
    """At most ``per_min`` takes per minute on average, bursts up to ``per_min`` (monotonic clock).

    Single caller (the inspection thread): no lock.
    """

    def __init__(self, *, per_min: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate_per_s = per_min / 60.0
        self._capacity = float(per_min)
        self._tokens = float(per_min)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate_per_s)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def _apply_curve(sock: zmq.Socket[bytes], curve: CurveClientConfig) -> None:
    try:
        server_public, _ = zmq.auth.load_certificate(curve.server_public_key_file)
        client_public, client_secret = zmq.auth.load_certificate(curve.client_secret_key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"publisher.curve: cannot load key files ({exc}); create them with "
                          "zmq.auth.create_certificates") from exc
    if client_secret is None:
        raise ConfigError(f"publisher.curve.client_secret_key_file {curve.client_secret_key_file} holds no "
                          "secret key (use the .key_secret file)")
    sock.curve_serverkey = server_public
    sock.curve_publickey = client_public
    sock.curve_secretkey = client_secret


class UncertainPublisher:
    """Bounded queue + one sender thread owning a ZeroMQ PUSH socket."""

    def __init__(self, *, socket: zmq.Socket[bytes], config: PublisherConfig, metrics: EdgeMetrics) -> None:
        self._sock = socket  # used only by the sender thread from here on
        self._cfg = config
        self._m = metrics
        # A deque polled by the sender instead of queue.Queue: Queue.put wakes the sender thread
        # (a futex syscall plus a GIL hand-over), which cost the inspection thread ~25 µs per call
        # on the dev VM; deque.append is atomic and costs ~3 µs. The sender polls every poll_ms.
        self._queue: collections.deque[_Job] = collections.deque()
        self._maxlen = config.queue_size_msgs
        self._rng = random.Random(config.audit_seed)
        self._near_reject_budget = TokenBucket(per_min=config.near_reject_per_min)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lineguard-publisher", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, cfg: PublisherConfig, *, metrics: EdgeMetrics,
                    context: zmq.Context[zmq.Socket[bytes]] | None = None) -> UncertainPublisher:
        """Create and connect the PUSH socket (connect never waits for the sink to be up)."""
        ctx = context or zmq.Context.instance()
        sock = ctx.socket(zmq.PUSH)
        try:
            sock.setsockopt(zmq.SNDHWM, cfg.sndhwm_msgs)
            sock.setsockopt(zmq.LINGER, cfg.linger_ms)
            # Bound the kernel-side buffering too, so "sink stalled" turns into counted hwm drops.
            sock.setsockopt(zmq.SNDBUF, 4 * 1024 * 1024)
            if cfg.curve is not None:
                _apply_curve(sock, cfg.curve)
            sock.connect(cfg.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise ConfigError(f"publisher.endpoint {cfg.endpoint!r}: {exc}") from exc
        except ConfigError:
            sock.close(0)
            raise
        log.info("uncertain-frame publisher -> %s (hwm %d, queue %d, audit %.3f, curve %s)", cfg.endpoint,
                 cfg.sndhwm_msgs, cfg.queue_size_msgs, cfg.audit_fraction, cfg.curve is not None)
        return cls(socket=sock, config=cfg, metrics=metrics)

    # --- inspection thread -------------------------------------------------------------------
    def offer(self, decision: Decision, frame: Frame, anomaly_map: npt.NDArray[np.floating] | None, *,
              thresholds: Mapping[str, float] | None = None) -> MessageKind | None:
        """Publish ``decision`` if it is uncertain, an unknown defect, a near reject within its budget,
        or wins the audit lottery. A near reject over budget is counted (``near_reject_budget``) and
        still takes part in the audit lottery like any confident verdict."""
        kind = classify(decision, thresholds, self._cfg.near_reject_margin_bands,
                        self._cfg.near_reject_min_margin_fraction)
        if kind is MessageKind.NEAR_REJECT and not self._near_reject_budget.take():
            self._m.publisher_drops_total.labels(reason="near_reject_budget").inc()
            kind = None
        if kind is None and self._cfg.audit_fraction > 0.0 and self._rng.random() < self._cfg.audit_fraction:
            kind = MessageKind.AUDIT
        if kind is None:
            return None
        self.publish(decision, frame, anomaly_map, kind, thresholds=thresholds)
        return kind

    def publish(self, decision: Decision, frame: Frame, anomaly_map: npt.NDArray[np.floating] | None,
                kind: MessageKind, *, thresholds: Mapping[str, float] | None = None) -> bool:
        """Queue one message; never blocks. False (and a counted drop) when it cannot be queued."""
        if self._closed.is_set():
            self._m.publisher_drops_total.labels(reason="closed").inc()
            return False
        # One producer (the inspection thread) checks and appends, so the bound holds exactly; a
        # second producer could overshoot it by one message, never block.
        if len(self._queue) >= self._maxlen:
            self._m.publisher_drops_total.labels(reason="queue_full").inc()
            return False
        amap = anomaly_map if self._cfg.include_anomaly_map else None
        self._queue.append(_Job(decision, frame, amap, kind, thresholds))
        return True

    # --- sender thread -----------------------------------------------------------------------
    def _run(self) -> None:
        poll_s = self._cfg.poll_ms / 1000.0
        try:
            while True:
                closing = self._closed.is_set()  # read before draining: nothing queued earlier is lost
                while self._queue:
                    self._m.publisher_queue_depth.set(len(self._queue))
                    self._send(self._queue.popleft())
                self._m.publisher_queue_depth.set(0)
                if closing:
                    break
                self._closed.wait(poll_s)
        finally:
            self._sock.close(self._cfg.linger_ms)

    def _send(self, job: _Job) -> None:
        try:
            header = build_header(decision=job.decision, frame=job.frame, kind=job.kind,
                                  anomaly_map=job.anomaly_map, thresholds=job.thresholds)
            parts = encode_message(header, job.frame.image, job.anomaly_map,
                                   png_compression=self._cfg.png_compression)
        except (WireFormatError, ValueError) as exc:
            log.warning("publisher: frame seq %d not encodable: %s", job.decision.seq, exc)
            self._m.publisher_drops_total.labels(reason="encode_error").inc()
            return
        except Exception:  # the sender thread must outlive any bad frame; the bug is logged with its trace
            log.exception("publisher: unexpected failure encoding frame seq %d", job.decision.seq)
            self._m.publisher_drops_total.labels(reason="encode_error").inc()
            return
        try:
            self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._m.publisher_drops_total.labels(reason="hwm").inc()
            return
        except zmq.ZMQError as exc:
            log.warning("publisher: send failed: %s", exc)
            self._m.publisher_drops_total.labels(reason="send_error").inc()
            return
        self._m.publisher_sent_total.labels(kind=job.kind.value).inc()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop accepting, send what is queued (bounded by LINGER), close the socket. Idempotent.

        Call it after the inspection loop's last publish; later publishes are counted as ``closed``.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(timeout_s)
        if not self._thread.is_alive() and self._queue:
            # Only a publish() racing this close() from another thread gets here; count, never lose.
            self._m.publisher_drops_total.labels(reason="closed").inc(len(self._queue))
            self._queue.clear()
        if self._thread.is_alive():
            raise PublisherError(f"publisher thread still sending after {timeout_s} s ({len(self._queue)} "
                                 "queued); raise the close timeout or lower queue_size_msgs")


class NullPublisher:
    """Same API, sends nothing (publisher disabled); counts nothing because nothing is dropped."""

    def offer(self, decision: Decision, frame: Frame, anomaly_map: npt.NDArray[np.floating] | None, *,
              thresholds: Mapping[str, float] | None = None) -> MessageKind | None:
        return None

    def publish(self, decision: Decision, frame: Frame, anomaly_map: npt.NDArray[np.floating] | None,
                kind: MessageKind, *, thresholds: Mapping[str, float] | None = None) -> bool:
        return False

    def close(self, timeout_s: float = 2.0) -> None:
        return None


def build_publisher(cfg: PublisherConfig, *, metrics: EdgeMetrics) -> Publisher:
    """The composition root's one call: a real publisher, or the null one when disabled."""
    if not cfg.enabled:
        return NullPublisher()
    return UncertainPublisher.from_config(cfg, metrics=metrics)
