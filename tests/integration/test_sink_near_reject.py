"""near_reject frames from a real publisher into a real sink on loopback: stored, counted, queued for labelling."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.metrics import EdgeMetrics
from lineguard.publisher import PublisherConfig, UncertainPublisher
from lineguard.sink.config import SinkConfig
from lineguard.sink.labels import LabelBook
from lineguard.sink.server import SinkServer
from lineguard.wire import MessageKind

THRESHOLDS = {"lower": 2.0, "upper": 4.0}


def make_pair(seq: int, score: float, verdict: Verdict = Verdict.REJECT) -> tuple[Decision, Frame]:
    img = np.random.default_rng(seq).integers(0, 255, (30, 40), dtype=np.uint8)
    t0 = time.monotonic_ns()
    frame = Frame(seq=seq, part_id=seq, t_capture_ns=t0, image=img, camera_id="cam-a")
    decision = Decision(seq=seq, part_id=seq, verdict=verdict, anomaly_score=score, bundle_id="b1",
                        camera_id="cam-a", t_capture_ns=t0, t_decided_ns=t0)
    return decision, frame


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[SinkServer, zmq.Context[zmq.Socket[bytes]]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    server = SinkServer.from_config(SinkConfig(bind="tcp://127.0.0.1:*", store_dir=tmp_path, metrics_port=0,
                                               fsync=False), context=ctx)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server, ctx
    server.stop()
    t.join(5)
    server.close()
    ctx.destroy(linger=0)


def test_near_rejects_reach_the_sink_within_their_budget(wait_for: Callable[..., None],
        sink: tuple[SinkServer, zmq.Context[zmq.Socket[bytes]]], tmp_path: Path) -> None:
    server, ctx = sink
    reg = CollectorRegistry()
    cfg = PublisherConfig(endpoint=server.endpoint, near_reject_margin_bands=0.5, near_reject_per_min=3,
                          audit_fraction=0.0, queue_size_msgs=100)
    pub = UncertainPublisher.from_config(cfg, metrics=EdgeMetrics(reg), context=ctx)
    kinds = [pub.offer(*make_pair(1, 4.2), None, thresholds=THRESHOLDS),   # 0.1 band widths above upper
             pub.offer(*make_pair(2, 9.0), None, thresholds=THRESHOLDS),   # a clear reject: not sent
             pub.offer(*make_pair(3, 3.0, Verdict.RECHECK), None, thresholds=THRESHOLDS)]
    kinds += [pub.offer(*make_pair(10 + i, 4.5), None, thresholds=THRESHOLDS) for i in range(4)]
    pub.close()
    # the budget (3 per minute, all of it available at start) takes the first three near rejects
    assert kinds == [MessageKind.NEAR_REJECT, None, MessageKind.UNCERTAIN,
                     MessageKind.NEAR_REJECT, MessageKind.NEAR_REJECT, None, None]
    assert reg.get_sample_value("lineguard_publisher_drops_total", {"reason": "near_reject_budget"}) == 2
    assert reg.get_sample_value("lineguard_publisher_sent_total", {"kind": "near_reject"}) == 3
    wait_for(lambda: server.stats.stored == 4)
    assert server.stats.rejected == 0
    by_seq = {json.loads(f.header_json)["seq"]: f.kind for f in server.store.frames()}
    assert by_seq == {1: "near_reject", 3: "uncertain", 10: "near_reject", 11: "near_reject"}
    assert server.metrics_server is not None
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_server.port}/metrics", timeout=5).read().decode()
    assert 'lineguard_sink_stored_total{kind="near_reject"} 3.0' in text
    book = LabelBook.open(tmp_path)
    try:
        queued = {f.kind: f for f in book.unlabelled()}
    finally:
        book.close()
    near = queued["near_reject"]
    assert (near.verdict, near.lower, near.upper) == ("reject", 2.0, 4.0)
    assert near.informativeness > 0.1  # close to the reject threshold: ranked like a band edge
