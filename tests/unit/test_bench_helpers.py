"""Benchmark helpers: the ideal-FIFO queueing floor and the CPU steadiness probe (pure)."""

from __future__ import annotations

import pytest

from lineguard.engines.bench import cpu_jitter, fifo_latencies_ms


def test_fifo_floor_queues_the_parts_behind_a_stall() -> None:
    # arrivals every 10 ms; the second part stalls the engine for 30 ms
    assert fifo_latencies_ms([5.0, 30.0, 5.0, 5.0, 5.0], 10.0) == [5.0, 30.0, 25.0, 20.0, 15.0]


def test_fifo_floor_without_queueing_is_the_service_time() -> None:
    times = [3.0, 4.0, 2.5]
    assert fifo_latencies_ms(times, 10.0) == times


def test_fifo_floor_burst_is_cumulative() -> None:
    assert fifo_latencies_ms([2.0, 2.0, 2.0], 0.0) == [2.0, 4.0, 6.0]


def test_fifo_floor_rejects_negative_period() -> None:
    with pytest.raises(ValueError, match="period_ms"):
        fifo_latencies_ms([1.0], -1.0)


def test_cpu_jitter_reports_ratios_of_its_own_samples() -> None:
    j = cpu_jitter(0.2, kernel_iterations=2000)
    assert 0 < j["kernel_p50_ms"] <= j["kernel_p99_ms"] <= j["kernel_max_ms"]
    assert j["p99_over_p50"] == pytest.approx(j["kernel_p99_ms"] / j["kernel_p50_ms"])
    assert j["max_over_p50"] >= j["p99_over_p50"] >= 1.0
    assert j["slow_episodes_per_s"] >= 0
    with pytest.raises(ValueError, match="duration_s"):
        cpu_jitter(0)
