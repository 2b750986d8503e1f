"""Soak-test evaluation: a leak, drops, late parts and reconnects each fail their own check."""

from __future__ import annotations

import pytest

from lineguard.ops.soak import SoakLimits, SoakSample, evaluate_soak, histogram_quantile, rss_slope_mb_per_h

LIMITS = SoakLimits(duration_s=3600, latency_p99_max_ms=150, memory_growth_max_mb_per_h=5, drop_max_fraction=0.001,
                    failsafe_max=0, reconnects_max=0)


def run(*, leak_mb_per_h: float = 0.0, drops_per_sample: float = 0.0, reconnect_at: int | None = None,
        warmup_jump_mb: float = 0.0) -> list[SoakSample]:
    out = []
    for i in range(361):  # one hour, 10 s apart
        t = i * 10.0
        rss = 300e6 + leak_mb_per_h * 1e6 * t / 3600 + (warmup_jump_mb * 1e6 if i >= 5 else 0.0)
        out.append(SoakSample(t_s=t, rss_bytes=int(rss), frames=i * 100.0, drops=i * drops_per_sample, failsafe=0.0,
                              reconnects=1.0 if reconnect_at is not None and i >= reconnect_at else 0.0))
    return out


def test_healthy_run_passes_even_with_a_warmup_allocation() -> None:
    report = evaluate_soak(run(warmup_jump_mb=80), latency_p99_ms=42.0, limits=LIMITS)
    assert report.passed, report.summary()
    assert report.summary().startswith("SOAK PASS")


def test_each_fault_fails_its_own_check() -> None:
    cases = {"memory growth": run(leak_mb_per_h=12), "drops": run(drops_per_sample=1.0),
             "reconnects": run(reconnect_at=200)}
    for name, samples in cases.items():
        report = evaluate_soak(samples, latency_p99_ms=42.0, limits=LIMITS)
        failed = {c.name for c in report.checks if not c.passed}
        assert failed == {name}, (name, report.summary())
    late = evaluate_soak(run(), latency_p99_ms=151.0, limits=LIMITS)
    assert {c.name for c in late.checks if not c.passed} == {"latency p99"}


def test_slope_is_measured_in_mb_per_hour() -> None:
    assert rss_slope_mb_per_h(run(leak_mb_per_h=12), 0.1) == pytest.approx(12, rel=1e-6)
    assert rss_slope_mb_per_h(run(), 0.1) == pytest.approx(0, abs=1e-9)


def test_histogram_quantile_matches_promql_interpolation() -> None:
    buckets = [(0.01, 50.0), (0.02, 90.0), (0.05, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(10.0)  # rank 50 at the top of the first bucket
    assert histogram_quantile(0.7, buckets) == pytest.approx(15.0)  # halfway through 10..20 ms
    assert histogram_quantile(0.99, buckets) == pytest.approx(47.0)
    assert histogram_quantile(0.5, []) == 0.0


def test_dry_runs_do_not_judge_memory_growth() -> None:
    short = [SoakSample(t_s=t, rss_bytes=300_000_000 + t * 100_000, frames=t * 10, drops=0, failsafe=0, reconnects=0)
             for t in range(10)]
    report = evaluate_soak(short, latency_p99_ms=10.0, limits=LIMITS)
    mem = next(c for c in report.checks if c.name == "memory growth")
    assert mem.passed and mem.measured == "not judged"
