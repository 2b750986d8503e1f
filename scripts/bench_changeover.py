"""Benchmark the changeover: request -> new bundle judging parts, part latency and RSS during a swap.

    .venv/bin/python scripts/bench_changeover.py [--swaps 6] [--rate 100] [--bundles A B]

The real service runs with the PLC simulator on loopback and a replay source at ``--rate`` parts/s.
Swaps alternate between two signed bundles through the simulator's recipe-request register, once
with the target prepared in memory (``preload_bundles: 2``, engines built, warmed up and
self-tested when the service started) and once cold (``preload_bundles: 0``: signature, hashes,
engine build, warm-up and golden self-test at the request). Measured per swap:

* request -> first verdict by the new bundle (monotonic clock; the request is the simulator's
  register write, so the PLC link's poll period and the supervision tick are included),
* part latency (frame available -> verdict) during the swap window vs steady state,
* fail-safe verdicts (any is a defect),
* process RSS sampled every 5 ms.

Also times the cold path's steps outside the service and ``install`` with engines prepared.
``--bundles`` takes two bundle directories (e.g. trained ones); they are copied, given recipes 1/2
and signed with a throwaway key. Without it two synthetic bundles (``--input-size``) are built.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from lineguard.bundle import load_bundle
from lineguard.changeover.config import ChangeoverConfig, RollbackConfig
from lineguard.changeover.signing import SignatureVerifier, public_key_text, sign_bundle
from lineguard.changeover.store import BundleStore
from lineguard.changeover.testing import make_bundle, rewrite_manifest
from lineguard.commands.install_bundle import prepare_engines
from lineguard.config import BundleSection, LineConfig, MetricsSection, ServiceSection
from lineguard.contracts import Decision, Frame
from lineguard.engines import BundleRunner, run_golden
from lineguard.engines.config import OrtEngineConfig
from lineguard.engines.synthetic import synthetic_image
from lineguard.plc.config import PlcConfig, TcpTransportConfig
from lineguard.plc.sim import PlcSimulator
from lineguard.publisher import PublisherConfig
from lineguard.service import InspectionService
from lineguard.sources import ReplaySourceConfig


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Sampler(threading.Thread):
    """RSS every 5 ms, with monotonic timestamps."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[int, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.samples.append((time.monotonic_ns(), rss_mb()))

    def peak(self, t0: int, t1: int) -> float:
        return max((mb for t, mb in self.samples if t0 <= t <= t1), default=float("nan"))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def make_pair(work: Path, key: Ed25519PrivateKey, args: argparse.Namespace) -> list[Path]:
    out = []
    for i, bid in enumerate(("bench-a", "bench-b"), start=1):
        dst = work / "src" / bid
        if args.bundles:
            shutil.copytree(args.bundles[i - 1], dst)
            rewrite_manifest(dst, lambda d, b=bid, r=i: d.update(bundle_id=b, recipe=r), rehash=False)
            (dst / "manifest.sig").unlink(missing_ok=True)
            sign_bundle(dst, key)
        else:
            make_bundle(dst, bundle_id=bid, recipe=i, key=key, input_size=args.input_size)
        out.append(dst)
    return out


def write_frames(work: Path, bundle_dir: Path, n: int) -> Path:
    spec = load_bundle(bundle_dir).manifest.input
    rng = np.random.default_rng(0)
    frames = work / "frames"
    frames.mkdir()
    for i in range(n):
        cv2.imwrite(str(frames / f"{i:05d}.png"), synthetic_image(("good", "bright", "dark")[i % 3], spec, rng))
    return frames


def time_cold_steps(path: Path, verifier: SignatureVerifier) -> dict[str, float]:
    """The cold path's steps, each timed alone (ms)."""
    t = [time.perf_counter()]
    verifier.verify(path)
    t.append(time.perf_counter())
    bundle = load_bundle(path)
    t.append(time.perf_counter())
    runner = BundleRunner.from_bundle(bundle, OrtEngineConfig())
    t.append(time.perf_counter())
    runner.warmup()
    t.append(time.perf_counter())
    failures = run_golden(runner, bundle)
    t.append(time.perf_counter())
    runner.close()
    assert not failures, failures
    names = ("signature", "hashes", "engine_build", "warmup", "golden")
    return {n: (b - a) * 1000 for n, a, b in zip(names, t, t[1:], strict=False)}


def run_mode(work: Path, key: Ed25519PrivateKey, frames: Path, preload: int, args: argparse.Namespace) -> dict[
    str, Any
]:
    sim = PlcSimulator().start()
    store_dir = work / "store"
    cfg = LineConfig(
        bundle=BundleSection(path=store_dir / "bundles" / "bench-a"),
        source=ReplaySourceConfig(type="replay", paths=(str(frames),), rate_parts_per_s=args.rate, loop=True),
        plc=PlcConfig(transport=TcpTransportConfig(host=sim.host, port=sim.port), deadline_ms=500.0,
                      result_buffer_size=64),
        publisher=PublisherConfig(enabled=False), metrics=MetricsSection(enabled=False),
        service=ServiceSection(queue_size_frames=args.queue),
        changeover=ChangeoverConfig(store_dir=store_dir, trusted_keys=[public_key_text(key)],
                                    preload_bundles=preload, rollback=RollbackConfig(enabled=False)),
    )
    rss_before_service = rss_mb()
    service = InspectionService.from_config(cfg, registry=CollectorRegistry())
    assert service.changeover is not None
    seen: list[tuple[int, float, str, bool]] = []  # (t_decided_ns, latency_ms, bundle_id, failsafe)
    original = service.changeover.observe

    def tap(d: Decision, frame: Frame) -> None:  # instrumentation: the controller's own hook, plus a record
        seen.append((d.t_decided_ns, d.latency_ms, d.bundle_id, d.failsafe))
        original(d, frame)

    service.changeover.observe = tap  # type: ignore[method-assign]
    sampler = Sampler()
    sampler.start()
    stop = threading.Event()
    t_start = time.monotonic_ns()
    service.start()
    rss_started = rss_mb()
    sup = threading.Thread(target=service.run_forever, args=(stop,), daemon=True)
    sup.start()
    time.sleep(args.settle_s)
    swaps: list[dict[str, Any]] = []
    windows: list[tuple[int, int]] = []
    for i in range(args.swaps):
        target_recipe, target = (2, "bench-b") if i % 2 == 0 else (1, "bench-a")
        t_req = time.monotonic_ns()
        sim.set_recipe_request(target_recipe)
        t_first = None
        deadline = time.monotonic() + 60
        while t_first is None and time.monotonic() < deadline:
            t_first = next((t for t, _, b, fs in reversed(seen) if b == target and not fs and t >= t_req), None)
            time.sleep(0.001)
        assert t_first is not None, "the new bundle never judged a part"
        windows.append((t_req, t_first + int(0.2e9)))
        swaps.append({"request_to_first_part_ms": (t_first - t_req) / 1e6,
                      "rss_peak_mb": sampler.peak(t_req, t_first + int(0.5e9))})
        time.sleep(args.gap_s)
    stop.set()
    sup.join(5)
    service.stop()
    sampler.stop.set()
    sampler.join()
    sim.stop()
    in_swap = [lat for t, lat, _, _ in seen if any(a <= t <= b for a, b in windows)]
    steady = [lat for t, lat, _, _ in seen if t > t_start + int(args.settle_s * 0.5e9)
              and not any(a - int(0.5e9) <= t <= b + int(0.5e9) for a, b in windows)]
    firsts = [s["request_to_first_part_ms"] for s in swaps]
    return {
        "mode": "preloaded" if preload else "cold", "swaps": len(swaps), "parts": len(seen),
        "failsafe": sum(1 for *_, fs in seen if fs),
        "first_part_ms": {"median": statistics.median(firsts), "max": max(firsts),
                          "all": [round(x, 1) for x in firsts]},
        "latency_steady_ms": {"p50": pct(steady, 0.5), "p99": pct(steady, 0.99), "max": max(steady, default=0)},
        "latency_swap_ms": {"p50": pct(in_swap, 0.5), "p99": pct(in_swap, 0.99), "max": max(in_swap, default=0)},
        "rss_mb": {"before_service": rss_before_service, "service_started": rss_started,
                   "peak_during_swaps": max(s["rss_peak_mb"] for s in swaps), "after": rss_mb()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--swaps", type=int, default=6, help="swaps per mode (alternating A/B)")
    p.add_argument("--rate", type=float, default=100.0, help="replay rate, parts/s")
    p.add_argument("--queue", type=int, default=8, help="inspection queue size (frames)")
    p.add_argument("--input-size", type=int, default=224, help="synthetic bundle input size (px)")
    p.add_argument("--bundles", nargs=2, type=Path, help="two bundle directories to swap between")
    p.add_argument("--settle-s", type=float, default=2.0, help="steady state before the first swap")
    p.add_argument("--gap-s", type=float, default=1.5, help="time between swaps")
    p.add_argument("--mode", choices=("both", "preloaded", "cold"), default="both",
                   help="one mode per process gives clean RSS numbers")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-changeover-"))
    try:
        key = Ed25519PrivateKey.generate()
        verifier = SignatureVerifier.from_texts([public_key_text(key)], allow_unsigned=False)
        srcs = make_pair(work, key, args)
        store = BundleStore.open(work / "store")
        t0 = time.perf_counter()
        for src in srcs:
            store.install(src, verifier=verifier, prepare=prepare_engines(OrtEngineConfig()))
        install_ms = (time.perf_counter() - t0) * 1000 / len(srcs)
        steps = [time_cold_steps(store.get(b).path, verifier) for b in ("bench-a", "bench-b") for _ in range(3)]
        frames = write_frames(work, srcs[0], 300)
        what = [str(b) for b in args.bundles] if args.bundles else f"synthetic {args.input_size}px"
        print(f"bundles: {what}")
        print(f"install (verify, copy, fsync, verify copy, build+warm-up+golden): {install_ms:.0f} ms per bundle")
        print("cold-path steps, median of 6 (ms): " + ", ".join(
            f"{k} {statistics.median(s[k] for s in steps):.1f}" for k in steps[0]))
        for preload in {"both": (2, 0), "preloaded": (2,), "cold": (0,)}[args.mode]:
            r = run_mode(work, key, frames, preload, args)
            print(f"\n[{r['mode']}] {r['swaps']} swaps at {args.rate:g} parts/s, {r['parts']} parts, "
                  f"fail-safe {r['failsafe']}")
            print(f"  request -> first part of new bundle: median {r['first_part_ms']['median']:.1f} ms, "
                  f"max {r['first_part_ms']['max']:.1f} ms {r['first_part_ms']['all']}")
            for k in ("latency_steady_ms", "latency_swap_ms"):
                v = r[k]
                print(f"  {k}: p50 {v['p50']:.2f} p99 {v['p99']:.2f} max {v['max']:.2f}")
            m = r["rss_mb"]
            print(f"  RSS MB: before service {m['before_service']:.0f}, started {m['service_started']:.0f}, "
                  f"peak in swaps {m['peak_during_swaps']:.0f}, after stop {m['after']:.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
