"""Sink server with real peers on loopback: publisher -> PULL -> store, hostile input, CurveZMQ, metrics."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.metrics import EdgeMetrics
from lineguard.publisher import CurveClientConfig, PublisherConfig, UncertainPublisher
from lineguard.sink.config import CurveServerConfig, SinkConfig
from lineguard.sink.server import SinkServer
from lineguard.sink.store import verify_store
from lineguard.wire import MessageKind, build_header, encode_message


def make_pair(seq: int, image: np.ndarray | None = None) -> tuple[Decision, Frame]:
    img = image if image is not None else np.random.default_rng(seq).integers(0, 255, (30, 40), dtype=np.uint8)
    t0 = time.monotonic_ns()
    frame = Frame(seq=seq, part_id=seq, t_capture_ns=t0, image=img, camera_id="cam-a")
    decision = Decision(seq=seq, part_id=seq, verdict=Verdict.RECHECK, anomaly_score=0.5, bundle_id="b1",
                        camera_id="cam-a", t_capture_ns=t0, t_decided_ns=t0)
    return decision, frame


def wire_parts(seq: int) -> list[bytes]:
    decision, frame = make_pair(seq)
    header = build_header(decision=decision, frame=frame, kind=MessageKind.AUDIT, anomaly_map=None)
    return encode_message(header, frame.image, None)


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
                            if s.labels else "")
            out[key] = s.value
    return out


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    c: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def run_sink(ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Callable[[SinkConfig], SinkServer]]:
    started: list[tuple[SinkServer, threading.Thread]] = []

    def start(cfg: SinkConfig) -> SinkServer:
        server = SinkServer.from_config(cfg, context=ctx)
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        started.append((server, t))
        return server

    yield start
    for server, t in started:
        server.stop()
        t.join(5)
        server.close()


def push(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 1000)
    s.connect(endpoint)
    return s


def test_publisher_to_sink_end_to_end_with_metrics(wait_for: Callable[..., None],
        ctx: zmq.Context[zmq.Socket[bytes]], run_sink: Callable[[SinkConfig], SinkServer], tmp_path: Path
) -> None:
    sink = run_sink(SinkConfig(bind="tcp://127.0.0.1:*", store_dir=tmp_path, metrics_port=0, fsync=False))
    pub = UncertainPublisher.from_config(PublisherConfig(endpoint=sink.endpoint, queue_size_msgs=100),
                                         metrics=EdgeMetrics(CollectorRegistry()), context=ctx)
    pairs = [make_pair(i) for i in range(20)]
    for decision, frame in pairs:
        pub.publish(decision, frame, np.ones((3, 4), np.float32), MessageKind.UNCERTAIN)
    pub.close()
    wait_for(lambda: sink.stats.stored == 20)
    stored = {json.loads(f.header_json)["seq"]: f for f in sink.store.frames()}
    assert sorted(stored) == list(range(20))
    assert verify_store(tmp_path) == []
    assert sink.metrics_server is not None
    m = scrape(sink.metrics_server.port)
    assert m["lineguard_sink_stored_total{kind=uncertain}"] == 20
    assert m["lineguard_sink_received_total"] == 20
    assert m["lineguard_sink_store_frames"] == 20
    assert m["lineguard_sink_store_bytes"] == sink.store.total_bytes > 0


def test_hostile_messages_are_rejected_counted_and_survived(wait_for: Callable[..., None],
        ctx: zmq.Context[zmq.Socket[bytes]], run_sink: Callable[[SinkConfig], SinkServer], tmp_path: Path
) -> None:
    cfg = SinkConfig(bind="tcp://127.0.0.1:*", store_dir=tmp_path, metrics_port=0, fsync=False,
                     max_message_bytes=256 * 1024)
    sink = run_sink(cfg)
    tx = push(ctx, sink.endpoint)
    good = wire_parts(1)
    hostile = [
        [b"hello"],
        [b"XXXX", *good[1:]],
        [good[0], b"{]", good[2]],
        [good[0], json.dumps({"kind": "audit"}).encode(), good[2]],
        [good[0], good[1], good[2][:50]],
        [good[0], good[1], good[2], b"unexpected map"],
        [good[0], good[1], b"x" * (300 * 1024)],  # over max_message_bytes, under ZeroMQ's hard cut
        [b"LGv9", *good[1:]],
    ]
    for parts in hostile:
        tx.send_multipart(parts)
    tx.send_multipart(good)
    tx.send_multipart(good)  # a repeat: stored once
    # received is counted before decoding; wait until every message has its outcome.
    wait_for(lambda: sink.stats.stored + sink.stats.duplicates + sink.stats.rejected == len(hostile) + 2)
    assert sink.stats.received == len(hostile) + 2
    assert sink.stats.stored == 1 and sink.stats.duplicates == 1 and sink.stats.rejected == len(hostile)
    assert sink.metrics_server is not None
    m = scrape(sink.metrics_server.port)
    for reason in ("bad_frame_count", "bad_magic", "bad_json", "bad_header", "image_decode", "oversize",
                   "unsupported_version"):
        assert m[f"lineguard_sink_rejected_total{{reason={reason}}}"] >= 1, reason
    assert m["lineguard_sink_rejected_total{reason=bad_frame_count}"] == 2
    assert m["lineguard_sink_duplicates_total"] == 1
    tx.send_multipart(wire_parts(2))  # still alive and storing
    wait_for(lambda: sink.stats.stored == 2)
    tx.close()


def test_curve_authenticates_known_edge_boxes_only(wait_for: Callable[..., None],
        ctx: zmq.Context[zmq.Socket[bytes]], run_sink: Callable[[SinkConfig], SinkServer], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    _, server_secret = zmq.auth.create_certificates(keys, "sink")
    edge_public, edge_secret = zmq.auth.create_certificates(keys, "edge")
    _, stranger_secret = zmq.auth.create_certificates(keys, "stranger")
    (allowed / "edge.key").write_bytes(Path(edge_public).read_bytes())
    curve = CurveServerConfig(server_secret_key_file=Path(server_secret), authorized_clients_dir=allowed)
    sink = run_sink(SinkConfig(bind="tcp://127.0.0.1:*", store_dir=tmp_path / "store", fsync=False, curve=curve))

    def publisher(secret: str) -> UncertainPublisher:
        cfg = PublisherConfig(endpoint=sink.endpoint, curve=CurveClientConfig(
            server_public_key_file=keys / "sink.key", client_secret_key_file=Path(secret)))
        return UncertainPublisher.from_config(cfg, metrics=EdgeMetrics(CollectorRegistry()), context=ctx)

    stranger = publisher(stranger_secret)
    stranger.publish(*make_pair(99), None, MessageKind.UNCERTAIN)
    edge = publisher(edge_secret)
    edge.publish(*make_pair(1), None, MessageKind.UNCERTAIN)
    wait_for(lambda: sink.stats.stored >= 1)
    time.sleep(0.3)  # give the stranger's message every chance to arrive (it must not)
    edge.close()
    stranger.close()
    assert [json.loads(f.header_json)["seq"] for f in sink.store.frames()] == [1]
    # A plain-text peer cannot talk to a Curve server either.
    plain = push(ctx, sink.endpoint)
    # ZeroMQ may already know the handshake cannot succeed (Again); either way nothing arrives.
    with contextlib.suppress(zmq.Again):
        plain.send_multipart(wire_parts(5), flags=zmq.NOBLOCK)
    time.sleep(0.3)
    assert sink.stats.received == 1
    plain.close(0)


def test_curve_key_file_errors_are_config_errors(tmp_path: Path) -> None:
    from lineguard.errors import ConfigError

    cfg = PublisherConfig(endpoint="tcp://127.0.0.1:1", curve=CurveClientConfig(
        server_public_key_file=tmp_path / "none.key", client_secret_key_file=tmp_path / "none.key_secret"))
    with pytest.raises(ConfigError, match="key files"):
        UncertainPublisher.from_config(cfg, metrics=EdgeMetrics(CollectorRegistry()))
