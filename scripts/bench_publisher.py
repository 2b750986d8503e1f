"""Benchmark the uncertain-frame publisher and the collection sink (results: docs/benchmarks/publisher.md).

1. Cost on the inspection thread of one ``publish()`` / ``offer()`` call (p50/p99 µs), with a
   real sink process receiving.
2. Sink ingest rate (messages/s) for 300x300 mono frames (and 5 MP with ``--big``), fsync on and off:
   pre-encoded messages are pushed as fast as ZeroMQ takes them; the clock stops when the last one
   is committed in the sink's index.
   After the run the sink is SIGKILLed and the time to recover and reopen its store is measured.
3. Sink down: what happens to a paced stream (sent into ZeroMQ's queue, dropped at the HWM,
   dropped at the in-process queue) and what each publish call costs meanwhile.

Run: ``.venv/bin/python scripts/bench_publisher.py [--n 2000] [--big]``.
"""

from __future__ import annotations

import argparse
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq
from prometheus_client import CollectorRegistry

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.metrics import EdgeMetrics
from lineguard.publisher import PublisherConfig, UncertainPublisher
from lineguard.sink.store import FrameStore
from lineguard.wire import MessageKind, build_header, encode_message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def camera_like(side_h: int, side_w: int, seed: int) -> np.ndarray:
    """A smooth part with sensor noise: compresses like a real image, unlike pure noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side_h, 0:side_w]
    base = 120 + 60 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def pair(image: np.ndarray, seq: int, verdict: Verdict = Verdict.RECHECK) -> tuple[Decision, Frame]:
    t0 = time.monotonic_ns()
    return (Decision(seq=seq, part_id=seq, verdict=verdict, anomaly_score=0.6, bundle_id="bench",
                     camera_id="cam", t_capture_ns=t0, t_decided_ns=t0),
            Frame(seq=seq, part_id=seq, t_capture_ns=t0, image=image, camera_id="cam"))


def start_sink(store: Path, port: int, fsync: bool) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "lineguard.cli", "sink", "--bind", f"tcp://127.0.0.1:{port}",
           "--store", str(store)] + ([] if fsync else ["--no-fsync"])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("sink listening")
    return proc


def stored(store: Path) -> int:
    db = sqlite3.connect(f"file:{store / 'index.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM frames").fetchone()[0])
    finally:
        db.close()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_call_cost(n: int, rate_hz: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        sink = start_sink(Path(tmp), port, fsync=True)
        reg = CollectorRegistry()
        cfg = PublisherConfig(endpoint=f"tcp://127.0.0.1:{port}", audit_fraction=0.02, audit_seed=1)
        pub = UncertainPublisher.from_config(cfg, metrics=EdgeMetrics(reg))
        image = camera_like(300, 300, 0)
        pub_us, offer_us, noop_us = [], [], []
        for i in range(n):
            d, f = pair(image, i)
            t0 = time.perf_counter_ns()
            pub.publish(d, f, None, MessageKind.UNCERTAIN)
            pub_us.append((time.perf_counter_ns() - t0) / 1e3)
            d, f = pair(image, n + i, Verdict.ACCEPT)
            t0 = time.perf_counter_ns()
            pub.offer(d, f, None)
            offer_us.append((time.perf_counter_ns() - t0) / 1e3)
            time.sleep(1.0 / rate_hz)
            # Baseline: an empty timed region right after the same sleep (cold caches, scheduler).
            t0 = time.perf_counter_ns()
            noop_us.append((time.perf_counter_ns() - t0) / 1e3)
        burst_us = []
        for i in range(min(n, 200)):  # back to back, hot caches; the queue may fill (counted drops)
            d, f = pair(image, 10 * n + i)
            t0 = time.perf_counter_ns()
            pub.publish(d, f, None, MessageKind.UNCERTAIN)
            burst_us.append((time.perf_counter_ns() - t0) / 1e3)
        pub.close(timeout_s=30)
        sent = reg.get_sample_value("lineguard_publisher_sent_total", {"kind": "uncertain"})
        drops = sum(reg.get_sample_value("lineguard_publisher_drops_total", {"reason": r}) or 0
                    for r in ("queue_full", "hwm", "encode_error", "send_error"))
        sink.terminate()
        sink.wait(10)
        print(f"| publish() 300x300 mono, sink up, {rate_hz:.0f} Hz | {pct(pub_us, 50):.1f} | "
              f"{pct(pub_us, 99):.1f} | {max(pub_us):.0f} | sent {sent:.0f}, dropped {drops:.0f} |")
        print(f"| offer() of a confident frame (2% audit) | {pct(offer_us, 50):.1f} | {pct(offer_us, 99):.1f} | "
              f"{max(offer_us):.0f} | |")
        print(f"| baseline: empty timed region after the same sleep | {pct(noop_us, 50):.1f} | "
              f"{pct(noop_us, 99):.1f} | {max(noop_us):.0f} | machine noise |")
        print(f"| publish() back to back ({len(burst_us)} calls) | {pct(burst_us, 50):.1f} | "
              f"{pct(burst_us, 99):.1f} | {max(burst_us):.0f} | hot caches |")


def bench_ingest(n: int, shape: tuple[int, int], fsync: bool) -> None:
    msgs = []
    image = camera_like(*shape, 1)
    for i in range(n):
        d, f = pair(image, i)
        header = build_header(decision=d, frame=f, kind=MessageKind.UNCERTAIN, anomaly_map=None)
        msgs.append(encode_message(header, image, None))
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        port = free_port()
        sink = start_sink(store, port, fsync=fsync)
        ctx = zmq.Context.instance()
        tx = ctx.socket(zmq.PUSH)
        tx.connect(f"tcp://127.0.0.1:{port}")
        t0 = time.perf_counter()
        for parts in msgs:
            tx.send_multipart(parts)  # blocking: measures the sink, not our drop policy
        while stored(store) < n:
            time.sleep(0.01)
        dt = time.perf_counter() - t0
        tx.close(0)
        sink.kill()  # SIGKILL, then time how long the store takes to recover and reopen
        sink.wait(10)
        (store / "tmp" / "crash-leftover.png.tmp").write_bytes(b"partial")
        t1 = time.perf_counter()
        FrameStore.open(store, quota_bytes=10**12).close()
        recover_ms = (time.perf_counter() - t1) * 1e3
        size = sum(len(p) for p in msgs[0])
        print(f"| sink ingest {shape[0]}x{shape[1]} mono, fsync {'on' if fsync else 'off'} | {n} msgs "
              f"({size / 1e3:.0f} kB each) | {n / dt:.0f} msgs/s | {n * size / dt / 1e6:.1f} MB/s | "
              f"{recover_ms:.0f} ms |")


def bench_sink_down(n: int, rate_hz: float) -> None:
    reg = CollectorRegistry()
    cfg = PublisherConfig(endpoint=f"tcp://127.0.0.1:{free_port()}", linger_ms=0)
    pub = UncertainPublisher.from_config(cfg, metrics=EdgeMetrics(reg))
    image = camera_like(300, 300, 2)
    calls = []
    for i in range(n):
        d, f = pair(image, i)
        t0 = time.perf_counter_ns()
        pub.publish(d, f, None, MessageKind.UNCERTAIN)
        calls.append((time.perf_counter_ns() - t0) / 1e3)
        time.sleep(1.0 / rate_hz)
    pub.close(timeout_s=10)

    def drops(r: str) -> float:
        return reg.get_sample_value("lineguard_publisher_drops_total", {"reason": r}) or 0.0

    sent = reg.get_sample_value("lineguard_publisher_sent_total", {"kind": "uncertain"}) or 0.0
    print(f"| sink down, {n} frames at {rate_hz:.0f} Hz (hwm {cfg.sndhwm_msgs}, queue {cfg.queue_size_msgs}) "
          f"| queued in ZeroMQ {sent:.0f} | hwm drops {drops('hwm'):.0f} | queue_full drops "
          f"{drops('queue_full'):.0f} | publish() p50 {pct(calls, 50):.1f} µs, p99 {pct(calls, 99):.1f} µs |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="messages per measurement")
    ap.add_argument("--rate-hz", type=float, default=50.0, help="publish pace for the call-cost runs")
    ap.add_argument("--big", action="store_true", help="also measure 5 MP (2448x2048) ingest")
    args = ap.parse_args()
    print("| measurement | p50 µs | p99 µs | max µs | note |\n|---|---|---|---|---|")
    bench_call_cost(args.n, args.rate_hz)
    print("\n| measurement | messages | rate | throughput | reopen after kill -9 |\n|---|---|---|---|---|")
    for fsync in (True, False):
        bench_ingest(args.n, (300, 300), fsync)
    if args.big:
        bench_ingest(60, (2048, 2448), True)
    print()
    bench_sink_down(args.n, args.rate_hz)
    return 0


if __name__ == "__main__":
    sys.exit(main())
