"""Uncertain-frame publisher against real ZeroMQ PULL peers on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.metrics import EdgeMetrics
from lineguard.publisher import NullPublisher, PublisherConfig, UncertainPublisher, build_publisher
from lineguard.wire import MessageKind, decode_message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_pair(image: np.ndarray, seq: int = 1, *, verdict: Verdict = Verdict.RECHECK,
              defect_class: str = "") -> tuple[Decision, Frame]:
    t0 = time.monotonic_ns()
    frame = Frame(seq=seq, part_id=seq + 1000, t_capture_ns=t0, image=image, camera_id="cam-a")
    decision = Decision(seq=seq, part_id=seq + 1000, verdict=verdict, anomaly_score=0.6, bundle_id="b1",
                        camera_id="cam-a", t_capture_ns=t0, t_decided_ns=t0 + 1000, defect_class=defect_class)
    return decision, frame


def counter(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    c: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield c
    c.destroy(linger=0)


def pull(ctx: zmq.Context[zmq.Socket[bytes]], port: int) -> zmq.Socket[bytes]:
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 3000)
    s.bind(f"tcp://127.0.0.1:{port}")
    return s


def test_published_frames_arrive_lossless_with_their_metadata(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    port = free_port()
    rx = pull(ctx, port)
    reg = CollectorRegistry()
    pub = UncertainPublisher.from_config(PublisherConfig(endpoint=f"tcp://127.0.0.1:{port}"),
                                         metrics=EdgeMetrics(reg), context=ctx)
    image = np.random.default_rng(1).integers(0, 4095, (64, 80), dtype=np.uint16)
    amap = np.linspace(0, 2, 16 * 20, dtype=np.float32).reshape(16, 20)
    decision, frame = make_pair(image, 5)
    assert pub.publish(decision, frame, amap, MessageKind.UNCERTAIN, thresholds={"upper": 0.8})
    msg = decode_message(rx.recv_multipart())
    pub.close()
    rx.close()
    assert msg.image is not None
    np.testing.assert_array_equal(msg.image, image)
    assert msg.anomaly_map is not None and msg.anomaly_map.shape == (16, 20)
    assert (msg.header.seq, msg.header.kind, msg.header.thresholds) == (5, "uncertain", {"upper": 0.8})
    assert counter(reg, "lineguard_publisher_sent_total", kind="uncertain") == 1


def test_offer_sends_uncertain_unknown_and_an_audit_share(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    port = free_port()
    rx = pull(ctx, port)
    reg = CollectorRegistry()
    cfg = PublisherConfig(endpoint=f"tcp://127.0.0.1:{port}", audit_fraction=0.25, audit_seed=3,
                          queue_size_msgs=1000, sndhwm_msgs=1000)
    pub = UncertainPublisher.from_config(cfg, metrics=EdgeMetrics(reg), context=ctx)
    image = np.zeros((8, 8), np.uint8)
    assert pub.offer(*make_pair(image, 1, verdict=Verdict.RECHECK), None) is MessageKind.UNCERTAIN
    assert pub.offer(*make_pair(image, 2, verdict=Verdict.REJECT, defect_class="unknown"), None) is (
        MessageKind.UNKNOWN_DEFECT)
    kinds = [pub.offer(*make_pair(image, 10 + i, verdict=Verdict.ACCEPT), None) for i in range(400)]
    audits = sum(k is MessageKind.AUDIT for k in kinds)
    assert set(kinds) == {None, MessageKind.AUDIT}
    assert 60 <= audits <= 140  # 25% of 400 = 100, binomial sd ~ 8.7
    received = [decode_message(rx.recv_multipart()).header.kind for _ in range(audits + 2)]
    pub.close()
    rx.close()
    assert received.count("audit") == audits and received[:2] == ["uncertain", "unknown_defect"]


def test_sink_down_never_blocks_and_every_drop_is_counted(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    port = free_port()  # nothing listens here yet
    reg = CollectorRegistry()
    cfg = PublisherConfig(endpoint=f"tcp://127.0.0.1:{port}", sndhwm_msgs=10, queue_size_msgs=8,
                          linger_ms=0)
    pub = UncertainPublisher.from_config(cfg, metrics=EdgeMetrics(reg), context=ctx)
    small = np.random.default_rng(2).integers(0, 255, (32, 32), dtype=np.uint8)
    big = np.random.default_rng(2).integers(0, 255, (300, 300), dtype=np.uint8)
    worst = 0.0
    start = time.perf_counter()
    # Paced like a line (the encoder keeps up, so ZeroMQ's HWM is what fills), then a burst
    # faster than PNG encoding (so the in-process queue is what fills).
    plan = [(small, 0.002)] * 100 + [(big, 0.0)] * 300
    for i, (image, pause) in enumerate(plan):
        t0 = time.perf_counter()
        pub.publish(*make_pair(image, i), None, MessageKind.UNCERTAIN)
        worst = max(worst, time.perf_counter() - t0)
        time.sleep(pause)
    elapsed = time.perf_counter() - start
    time.sleep(0.3)  # let the sender thread empty its queue into ZeroMQ (or drop at the HWM)
    sent = counter(reg, "lineguard_publisher_sent_total", kind="uncertain")
    hwm = counter(reg, "lineguard_publisher_drops_total", reason="hwm")
    queue_full = counter(reg, "lineguard_publisher_drops_total", reason="queue_full")
    # The loop never waited on ZeroMQ or PNG.
    assert worst < 0.05 and elapsed < 100 * 0.002 + 1.0, (elapsed, worst)
    assert sent + hwm + queue_full == len(plan)
    assert hwm >= 50 and queue_full >= 200, (sent, hwm, queue_full)
    assert 1 <= sent <= 40  # ZeroMQ queues up to about the HWM for a peer that is not there yet
    # The sink comes up: what ZeroMQ held is delivered, so a short sink restart loses nothing sent.
    rx = pull(ctx, port)
    got = [decode_message(rx.recv_multipart()) for _ in range(int(sent))]
    assert len(got) == sent
    pub.close()
    pub.publish(*make_pair(small, 9999), None, MessageKind.UNCERTAIN)
    assert counter(reg, "lineguard_publisher_drops_total", reason="closed") == 1
    rx.close()


def test_slow_encoding_stays_off_the_inspection_thread(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    port = free_port()
    rx = pull(ctx, port)
    reg = CollectorRegistry()
    cfg = PublisherConfig(endpoint=f"tcp://127.0.0.1:{port}", queue_size_msgs=2, png_compression=9)
    pub = UncertainPublisher.from_config(cfg, metrics=EdgeMetrics(reg), context=ctx)
    big = np.random.default_rng(3).integers(0, 65535, (1500, 1500), dtype=np.uint16)  # ~100 ms per PNG
    calls = []
    for i in range(20):
        t0 = time.perf_counter()
        pub.publish(*make_pair(big, i), None, MessageKind.UNCERTAIN)
        calls.append(time.perf_counter() - t0)
    assert max(calls) < 0.05, calls
    assert counter(reg, "lineguard_publisher_drops_total", reason="queue_full") >= 10
    pub.close(timeout_s=10)
    sent = counter(reg, "lineguard_publisher_sent_total", kind="uncertain")
    assert sent + counter(reg, "lineguard_publisher_drops_total", reason="queue_full") == 20
    for _ in range(int(sent)):
        decode_message(rx.recv_multipart(), decode_images=False)
    rx.close()


def test_encode_errors_are_counted_not_raised(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    reg = CollectorRegistry()
    pub = UncertainPublisher.from_config(PublisherConfig(endpoint=f"tcp://127.0.0.1:{free_port()}"),
                                         metrics=EdgeMetrics(reg), context=ctx)
    decision, frame = make_pair(np.zeros((4, 4), np.float32))  # not a camera pixel type
    assert pub.publish(decision, frame, None, MessageKind.UNCERTAIN)
    ok_decision, ok_frame = make_pair(np.zeros((4, 4), np.uint8))
    # A caller bug (thresholds that are not a mapping) must not kill the sender thread either.
    assert pub.publish(ok_decision, ok_frame, None, MessageKind.UNCERTAIN, thresholds=[1.0])  # type: ignore[arg-type]
    assert pub.publish(ok_decision, ok_frame, None, MessageKind.UNCERTAIN)
    pub.close()
    assert counter(reg, "lineguard_publisher_drops_total", reason="encode_error") == 2
    assert counter(reg, "lineguard_publisher_sent_total", kind="uncertain") == 1


def test_disabled_publisher_is_the_null_one() -> None:
    pub = build_publisher(PublisherConfig(enabled=False), metrics=EdgeMetrics(CollectorRegistry()))
    assert isinstance(pub, NullPublisher)
    decision, frame = make_pair(np.zeros((4, 4), np.uint8))
    assert pub.offer(decision, frame, None) is None
    assert pub.publish(decision, frame, None, MessageKind.UNCERTAIN) is False
    pub.close()
