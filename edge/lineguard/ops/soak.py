"""Pass/fail evaluation of a soak test (hil/test_soak.py): latency, memory growth, drops, reconnects.

Not part of the frame path. The soak test samples a running service (its /metrics and its RSS)
every few seconds for hours; this module turns the samples into one verdict per criterion and a
summary a plant engineer can file. Pure: no I/O, no clock; the caller passes the samples.

Memory growth is the least-squares slope of RSS over time after a warm-up share of the run (model
load, first TensorRT allocations and Python's arenas settle first), so one late allocation does not
fail a healthy run and a slow leak does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class SoakLimits(BaseModel):
    """Pass criteria of a soak run (from hil/rig.yaml ``soak:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    duration_s: float = Field(4 * 3600, gt=0, le=7 * 86400, description="how long the soak runs")
    sample_period_s: float = Field(10.0, gt=0, le=600, description="time between two samples")
    latency_p99_max_ms: float = Field(150.0, gt=0, le=60_000, description="p99 end-to-end latency budget")
    memory_growth_max_mb_per_h: float = Field(5.0, ge=0, le=10_000, description="RSS slope after warm-up")
    warmup_fraction: float = Field(0.1, ge=0, lt=0.9, description="share of the run ignored for memory growth")
    memory_min_duration_s: float = Field(
        600.0, ge=0, le=86_400, description="shorter runs (dry runs) do not judge memory growth: a slope over "
        "seconds extrapolates start-up noise to MB/h")
    drop_max_fraction: float = Field(0.0, ge=0, le=1, description="dropped frames / frames allowed")
    failsafe_max: int = Field(0, ge=0, le=1_000_000, description="fail-safe verdicts allowed")
    reconnects_max: int = Field(0, ge=0, le=10_000, description="camera + PLC reconnects allowed")
    min_frames: int = Field(1, ge=1, le=10**9, description="fewer frames means the line did not run")


@dataclass(frozen=True, slots=True)
class SoakSample:
    """Cumulative counters and gauges of the service at one instant (monotonic seconds)."""

    t_s: float
    rss_bytes: int
    frames: float
    drops: float
    failsafe: float
    reconnects: float


@dataclass(frozen=True, slots=True)
class SoakCheck:
    name: str
    passed: bool
    measured: str
    limit: str


@dataclass(frozen=True, slots=True)
class SoakReport:
    checks: tuple[SoakCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def summary(self) -> str:
        lines = [f"SOAK {'PASS' if self.passed else 'FAIL'}"]
        lines += [f"  {'ok  ' if c.passed else 'FAIL'} {c.name:<16} {c.measured:>22}   limit {c.limit}"
                  for c in self.checks]
        return "\n".join(lines)


def rss_slope_mb_per_h(samples: Sequence[SoakSample], warmup_fraction: float) -> float:
    """Least-squares slope of RSS (MB per hour) over the samples after the warm-up share."""
    if len(samples) < 3:
        return 0.0
    t_end = samples[-1].t_s
    t_start = samples[0].t_s + (t_end - samples[0].t_s) * warmup_fraction
    pts = [(s.t_s, s.rss_bytes / 1e6) for s in samples if s.t_s >= t_start]
    if len(pts) < 3:
        return 0.0
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mm = sum(m for _, m in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if var == 0:
        return 0.0
    return sum((t - mt) * (m - mm) for t, m in pts) / var * 3600.0


def evaluate_soak(samples: Sequence[SoakSample], *, latency_p99_ms: float, limits: SoakLimits) -> SoakReport:
    """One check per criterion; ``latency_p99_ms`` is the p99 over the whole run (from the histogram)."""
    if len(samples) < 2:
        return SoakReport((SoakCheck("samples", False, f"{len(samples)} samples", ">= 2"),))
    first, last = samples[0], samples[-1]
    frames = last.frames - first.frames
    drops = last.drops - first.drops
    failsafe = last.failsafe - first.failsafe
    reconnects = last.reconnects - first.reconnects
    slope = rss_slope_mb_per_h(samples, limits.warmup_fraction)
    judged = last.t_s - first.t_s >= limits.memory_min_duration_s
    memory = (SoakCheck("memory growth", slope <= limits.memory_growth_max_mb_per_h, f"{slope:+.2f} MB/h",
                        f"<= {limits.memory_growth_max_mb_per_h:.2f} MB/h") if judged else
              SoakCheck("memory growth", True, "not judged", f"run >= {limits.memory_min_duration_s:.0f} s"))
    drop_frac = drops / frames if frames > 0 else 1.0
    hours = (last.t_s - first.t_s) / 3600
    return SoakReport((
        SoakCheck("frames", frames >= limits.min_frames, f"{frames:.0f} in {hours:.2f} h", f">= {limits.min_frames}"),
        SoakCheck("latency p99", latency_p99_ms <= limits.latency_p99_max_ms, f"{latency_p99_ms:.1f} ms",
                  f"<= {limits.latency_p99_max_ms:.1f} ms"),
        memory,
        SoakCheck("drops", drop_frac <= limits.drop_max_fraction, f"{drops:.0f} ({drop_frac:.3%})",
                  f"<= {limits.drop_max_fraction:.3%}"),
        SoakCheck("fail-safe", failsafe <= limits.failsafe_max, f"{failsafe:.0f}", f"<= {limits.failsafe_max}"),
        SoakCheck("reconnects", reconnects <= limits.reconnects_max, f"{reconnects:.0f}",
                  f"<= {limits.reconnects_max}"),
    ))


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus-style quantile from cumulative ``(upper_bound_s, count)`` buckets, in milliseconds.

    Linear interpolation inside the bucket, like PromQL's histogram_quantile; +Inf returns the
    highest finite bound (the true value is unknown beyond it).
    """
    ordered = sorted(buckets)
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return 0.0
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound * 1000
            width = count - prev_count
            frac = (rank - prev_count) / width if width > 0 else 1.0
            return (prev_bound + (bound - prev_bound) * frac) * 1000
        prev_bound, prev_count = bound, count
    return prev_bound * 1000
