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
    "stages": {stage: {...}}}`` where ``total`` is the wall time of ``infer`` per frame and
    ``stages`` are the runner's own per-stage timings (preprocess, anomaly, classifier, ...).
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
        "stages": {k: percentiles(v) for k, v in stages.items()},
    }
