"""``lineguard bench``: raw engine vs the whole service, in one run on the same machine.

1. raw engine: ``BundleRunner.infer`` alone (ONNX Runtime), p50/p99 and throughput;
2. service latency: frames offered at a fixed share of the raw throughput (a line that keeps up),
   latency from "frame available" (``Frame.t_capture_ns``) to "verdict handed to the PLC link";
3. service throughput: a burst of frames that fits the queue, judged back to back;
4. memory: resident set size after warm-up and after ``--memory-frames`` more frames;
5. CPU time per part (the whole process, every thread: engine pool, inspection, drift statistics,
   hand-offs) of the raw engine and of the burst, from after the service's start to after its stop:
   unlike the rates above it hardly depends on what else the machine runs, so it shows the
   service's own cost on a shared CPU;
6. context for the tail: the CPU's own steadiness (a fixed pure-Python kernel, ``cpu_jitter``) and
   the queueing floor: the latencies an ideal zero-overhead FIFO would give with the raw engine's
   measured per-frame times at the offered rate (``fifo_latencies_ms``). An engine stall longer than
   the arrival period delays the parts queued behind it in any service; the gap between the service
   and this floor is the service's own cost.

Frames are decoded up front and served from memory by :class:`MemorySource`, so disk and PNG
decoding do not blur the numbers. The PLC link is the null link here: the Modbus round trip has its
own benchmark (scripts/bench_plc.py). Results print as a table and optionally as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy.typing as npt
from prometheus_client import CollectorRegistry

from lineguard.bundle import load_bundle
from lineguard.config import BundleSection, LineConfig, MetricsSection, ServiceSection
from lineguard.contracts import Frame
from lineguard.engines import BundleRunner, OrtEngineConfig
from lineguard.engines.bench import cpu_jitter, fifo_latencies_ms, measure_engine, percentiles
from lineguard.errors import LineGuardError
from lineguard.imageio import list_images, read_image
from lineguard.publisher import PublisherConfig
from lineguard.service import InspectionService
from lineguard.sources import BaseSource, SyntheticSourceConfig

HELP = "benchmark the engines and the service end to end"


class MemorySource(BaseSource):
    """Serves preloaded images, paced (``rate_per_s``) or as fast as asked, ``count`` frames."""

    def __init__(self, images: list[npt.NDArray[Any]], *, count: int, rate_per_s: float | None) -> None:
        super().__init__(camera_id="bench")
        self._images, self._count = images, count
        self._period_ns = int(1e9 / rate_per_s) if rate_per_s else 0
        self._next_ns = 0

    def open(self) -> None:
        self._next_ns = time.monotonic_ns()

    def read(self, timeout_s: float) -> Frame | None:
        if self._seq >= self._count:
            self._finished = True
            return None
        if self._period_ns:
            wait_ns = self._next_ns - time.monotonic_ns()
            if wait_ns > timeout_s * 1e9:
                time.sleep(timeout_s)
                return None
            if wait_ns > 0:
                time.sleep(wait_ns / 1e9)
            self._next_ns += self._period_ns
        return self._emit(self._images[self._seq % len(self._images)], t_capture_ns=time.monotonic_ns())

    def close(self) -> None:
        return None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, help="bundle to benchmark")
    p.add_argument("--images", type=Path, help="image folder (default: the bundle's golden images)")
    p.add_argument("--frames", type=int, default=300, help="frames per measurement")
    p.add_argument("--load", type=float, default=0.5,
                   help="offered rate as a share of raw engine throughput (a line whose cycle leaves headroom)")
    p.add_argument("--memory-frames", type=int, default=0, help="frames for the RSS growth check (e.g. 20000)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    p.add_argument("--spin", action="store_true",
                   help="ONNX Runtime workers busy-wait (spin_wait true; the service default is false)")
    p.add_argument("--jitter-s", type=float, default=5.0,
                   help="seconds of the CPU steadiness probe before the measurements (0: skip)")
    p.add_argument("--json", type=Path, help="also write the results here")


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _service(bundle_dir: Path, images: list[npt.NDArray[Any]], *, count: int, rate: float | None,
             queue: int, threads: int, spin: bool = False) -> InspectionService:
    cfg = LineConfig(
        bundle=BundleSection(path=bundle_dir),
        source=SyntheticSourceConfig(type="synthetic"),  # replaced by the in-memory source below
        engine=OrtEngineConfig(intra_op_threads=threads, spin_wait=spin),
        publisher=PublisherConfig(enabled=False),
        metrics=MetricsSection(enabled=False),
        service=ServiceSection(queue_size_frames=queue),
    )
    service = InspectionService.from_config(cfg, registry=CollectorRegistry())
    service.source = MemorySource(images, count=count, rate_per_s=rate)
    return service


def _cpu_s() -> float:
    """CPU seconds of this process so far, all threads (user + system)."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _run_service(service: InspectionService, timeout_s: float) -> tuple[float, float]:
    """Run until every part is judged; (wall seconds, process CPU seconds) from after start() (warm-up
    and golden self-test done) to after stop() (work handed to other threads, such as drift, included)."""
    service.start()
    t0, cpu0 = time.monotonic(), _cpu_s()
    try:
        while not service.finished():
            if time.monotonic() - t0 > timeout_s:
                raise LineGuardError("benchmark run did not finish in time")
            time.sleep(0.01)
    finally:
        service.stop()
    return time.monotonic() - t0, _cpu_s() - cpu0


def bench(bundle_dir: Path, images: list[npt.NDArray[Any]], *, frames: int, load: float, memory_frames: int,
          threads: int, spin: bool = False, jitter_s: float = 0.0) -> dict[str, Any]:
    bundle = load_bundle(bundle_dir)
    jitter = cpu_jitter(jitter_s) if jitter_s > 0 else None
    with BundleRunner.from_bundle(bundle, OrtEngineConfig(intra_op_threads=threads, spin_wait=spin)) as runner:
        # as long in wall time as the paced service run, so both see the machine's periodic stalls alike
        n_raw = max(frames, round(frames / max(load, 1e-3)))
        cpu0 = _cpu_s()
        raw = measure_engine(runner, images, n_raw)
        raw_cpu_ms = (_cpu_s() - cpu0) * 1e3 / n_raw  # its few warm-up runs included: a slight overestimate
    rate = raw["throughput_per_s"] * load
    svc = _service(bundle_dir, images, count=frames, rate=rate, queue=8, threads=threads, spin=spin)
    _run_service(svc, timeout_s=frames / rate * 3 + 60)
    e2e = percentiles(svc.stats.e2e_ms)
    burst = _service(bundle_dir, images, count=frames, rate=None, queue=frames + 8, threads=threads, spin=spin)
    _, burst_cpu_s = _run_service(burst, timeout_s=frames / raw["throughput_per_s"] * 3 + 60)
    result: dict[str, Any] = {
        "bundle_id": bundle.bundle_id,
        "input": f"{bundle.manifest.input.input_width}x{bundle.manifest.input.input_height}",
        "tiles": bundle.manifest.input.tiles.count,
        "provider": raw["provider"],
        "raw_engine_ms": raw["total"],
        "queueing_floor_ms": percentiles(fifo_latencies_ms(raw["samples_ms"], 1e3 / rate)),
        "raw_throughput_per_s": raw["throughput_per_s"],
        "offered_rate_per_s": rate,
        "service_e2e_ms": e2e,
        "service_failsafe": svc.stats.failsafe,
        "service_throughput_per_s": burst.stats.decisions_per_s,
        "burst_failsafe": burst.stats.failsafe,
        "raw_cpu_ms_per_part": raw_cpu_ms,
        "burst_cpu_ms_per_part": burst_cpu_s * 1e3 / max(burst.stats.decided, 1),
    }
    if jitter is not None:
        result["cpu_jitter"] = jitter
    if memory_frames:
        mem = _service(bundle_dir, images, count=memory_frames + 500, rate=None, queue=4, threads=threads, spin=spin)
        mem.source = _RssProbe(images, count=memory_frames + 500, probe_at=500, service=mem)
        _run_service(mem, timeout_s=memory_frames / raw["throughput_per_s"] * 4 + 120)
        probe = mem.source
        assert isinstance(probe, _RssProbe)
        result["memory"] = {"frames": memory_frames, "rss_after_warmup_mb": probe.rss_start,
                            "rss_end_mb": _rss_mb(), "growth_mb": _rss_mb() - probe.rss_start,
                            "failsafe": mem.stats.failsafe}
    return result


class _RssProbe(MemorySource):
    """Blocking source (waits for queue room, like a triggered camera) that notes RSS once warm."""

    def __init__(self, images: list[npt.NDArray[Any]], *, count: int, probe_at: int,
                 service: InspectionService) -> None:
        super().__init__(images, count=count, rate_per_s=None)
        self.probe_at, self.rss_start = probe_at, float("nan")
        self._service = service

    def read(self, timeout_s: float) -> Frame | None:
        if self._seq == self.probe_at:
            self.rss_start = _rss_mb()
        depth, capacity = self._service.queue_depth()
        if depth >= capacity:  # back-pressure like a triggered camera: no frame while the queue is full
            time.sleep(0.0005)
            return None
        return super().read(timeout_s)


def _load_images(args: argparse.Namespace) -> list[npt.NDArray[Any]]:
    if args.images:
        paths = list_images(args.images)[:64]
    else:
        b = load_bundle(args.bundle)
        paths = [b.path(g.file) for g in b.manifest.golden]
    if not paths:
        raise LineGuardError("no images to benchmark with (give --images DIR)")
    return [read_image(p) for p in paths]


def run(args: argparse.Namespace) -> int:
    images = _load_images(args)
    r = bench(args.bundle, images, frames=args.frames, load=args.load, memory_frames=args.memory_frames,
              threads=args.threads, spin=args.spin, jitter_s=args.jitter_s)
    raw, e2e = r["raw_engine_ms"], r["service_e2e_ms"]
    if "cpu_jitter" in r:
        j = r["cpu_jitter"]
        print(f"cpu steadiness  kernel p50 {j['kernel_p50_ms']:.2f} ms  p99 x{j['p99_over_p50']:.1f}  "
              f"max x{j['max_over_p50']:.1f}  slow episodes {j['slow_episodes_per_s']:.1f}/s "
              f"(a steady CPU: p99 x1.0-1.3, no episodes)")
    print(f"bundle {r['bundle_id']}  input {r['input']} x{r['tiles']} tile(s)  provider {r['provider']}")
    print(f"raw engine      p50 {raw['p50']:7.2f} ms  p99 {raw['p99']:7.2f} ms  {r['raw_throughput_per_s']:7.1f} /s")
    print(f"service e2e     p50 {e2e['p50']:7.2f} ms  p99 {e2e['p99']:7.2f} ms  at {r['offered_rate_per_s']:.1f} /s "
          f"offered (fail-safe {r['service_failsafe']})")
    q = r["queueing_floor_ms"]
    print(f"queueing floor  p50 {q['p50']:7.2f} ms  p99 {q['p99']:7.2f} ms  (ideal zero-overhead FIFO, raw engine "
          f"times at the offered rate; service p99 is x{e2e['p99'] / q['p99']:.2f} of it)")
    print(f"service burst   {r['service_throughput_per_s']:7.1f} parts/s  "
          f"({100 * r['service_throughput_per_s'] / r['raw_throughput_per_s']:.0f} % of raw)")
    print(f"cpu per part    raw engine {r['raw_cpu_ms_per_part']:.2f} ms, service burst "
          f"{r['burst_cpu_ms_per_part']:.2f} ms ({100 * r['raw_cpu_ms_per_part'] / r['burst_cpu_ms_per_part']:.0f} % "
          f"of the service's CPU is the engine; all threads, little affected by other load)")
    print(f"targets: p50 +{e2e['p50'] - raw['p50']:.2f} ms (<= 2 ms), p99 x{e2e['p99'] / raw['p99']:.2f} (<= 1.5)")
    if "memory" in r:
        m = r["memory"]
        print(f"memory          RSS {m['rss_after_warmup_mb']:.1f} -> {m['rss_end_mb']:.1f} MB over "
              f"{m['frames']} frames: {m['growth_mb']:+.2f} MB (target < 5 MB)")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2, default=float))
    return 0

