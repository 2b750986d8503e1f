"""Raw engine latency: ``BundleRunner.infer`` alone, no queues, no PLC, no publisher.

Off the frame path: used by ``scripts/bench_engines.py`` and by ``lineguard bench`` as the
baseline the service's end-to-end latency is compared against. Timing uses the monotonic
``perf_counter_ns`` clock. Must never: count warm-up runs in the statistics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from lineguard.engines.runner import BundleRunner


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 / mean / max of millisecond samples (NaN when there are none)."""
    if not samples_ms:
        nan = float("nan")
        return {"p50": nan, "p90": nan, "p99": nan, "mean": nan, "max": nan}
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()), "max": float(a.max())}


def measure_engine(
    runner: BundleRunner, images: Sequence[npt.NDArray[Any]], n: int, *, warmup: int = 10
) -> dict[str, Any]:
    """Run ``n`` inferences cycling over ``images``; latency statistics in ms and throughput.

    Returns ``{"n", "provider", "throughput_per_s", "total": {p50, p90, p99, mean, max},
    "samples_ms": [per-frame totals in run order], "stages": {stage: {...}}}`` where ``total`` is
    the wall time of ``infer`` per frame and ``stages`` are the runner's own per-stage timings
    (preprocess, anomaly, classifier, ...).
    """
    if not images:
        raise ValueError("measure_engine needs at least one image")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    for i in range(warmup):
        runner.infer(images[i % len(images)])
    totals: list[float] = []
    stages: dict[str, list[float]] = {}
    t_start = time.perf_counter_ns()
    for i in range(n):
        t0 = time.perf_counter_ns()
        out = runner.infer(images[i % len(images)])
        totals.append((time.perf_counter_ns() - t0) / 1e6)
        for stage, ms in out.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
    elapsed_s = (time.perf_counter_ns() - t_start) / 1e9
    return {
        "n": n,
        "provider": runner.provider,
        "throughput_per_s": n / elapsed_s if elapsed_s > 0 else float("inf"),
        "total": percentiles(totals),
        "samples_ms": totals,
        "stages": {k: percentiles(v) for k, v in stages.items()},
    }


def fifo_latencies_ms(service_ms: Sequence[float], period_ms: float) -> list[float]:
    """Latencies of an ideal zero-overhead FIFO server: arrivals every ``period_ms``, service times as given.

    The floor any real service on the same machine shares: an engine stall longer than the arrival
    period queues the parts behind it, so their latency includes the wait. Used by ``lineguard
    bench`` to tell the service's own overhead from queueing that the engine's hiccups cause.
    """
    if period_ms < 0:
        raise ValueError(f"period_ms must be >= 0, got {period_ms}")
    out: list[float] = []
    free_at = 0.0  # when the server finishes the previous part
    for i, s in enumerate(service_ms):
        arrival = i * period_ms
        done = max(arrival, free_at) + s
        out.append(done - arrival)
        free_at = done
    return out


def cpu_jitter(duration_s: float = 5.0, *, kernel_iterations: int = 20_000) -> dict[str, float]:
    """Run a fixed pure-Python arithmetic kernel back to back; how steady is this CPU?

    The kernel touches no memory beyond a few integers, allocates nothing and makes no system call,
    so a slow repetition means the CPU itself was slower (hypervisor time-slicing, a busy sibling
    hyperthread, frequency drops), not our code. ``p99_over_p50`` near 1 is a machine fit for
    millisecond latency targets; a VM that periodically gets a fraction of its vCPU shows several x.
    ``slow_episodes_per_s`` counts runs of repetitions slower than 2x the median.
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    times: list[float] = []
    t_end = time.perf_counter() + duration_s
    while True:
        t0 = time.perf_counter()
        acc = 0
        for i in range(kernel_iterations):
            acc += i * i
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1e3)
        if t1 >= t_end:
            break
    a = np.asarray(times)
    p50, p99 = np.percentile(a, [50, 99])
    slow = a > 2 * p50
    episodes = int(np.count_nonzero(slow[1:] & ~slow[:-1]) + int(slow[0]))
    return {"kernel_p50_ms": float(p50), "kernel_p99_ms": float(p99), "kernel_max_ms": float(a.max()),
            "p99_over_p50": float(p99 / p50), "max_over_p50": float(a.max() / p50),
            "slow_episodes_per_s": episodes / duration_s}
