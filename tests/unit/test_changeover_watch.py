"""Rollback window arithmetic and the prepared-bundle cache's retirement rules."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

from lineguard.changeover.config import RollbackConfig
from lineguard.changeover.preload import PreparedCache
from lineguard.changeover.shadow import RollbackWatch, p95
from lineguard.contracts import Decision, Verdict


def _d(verdict: Verdict, *, bundle: str = "new", latency_ms: float = 5.0) -> Decision:
    return Decision(seq=1, part_id=1, verdict=verdict, anomaly_score=0.1, bundle_id=bundle, camera_id="c",
                    t_capture_ns=0, t_decided_ns=int(latency_ms * 1e6), failsafe=verdict == Verdict.FAILSAFE)


def test_p95_of_small_and_large_samples() -> None:
    assert p95([]) != p95([])  # NaN
    assert p95([3.0]) == 3.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0


def test_watch_waits_for_min_parts_then_judges_reject_rate() -> None:
    w = RollbackWatch(cfg=RollbackConfig(watch_parts=100, min_parts=10, reject_rate_max_fraction=0.3), bundle_id="new")
    for _ in range(9):
        w.observe(_d(Verdict.REJECT))
    assert w.breach() is None, "nine parts are not enough to judge"
    w.observe(_d(Verdict.REJECT))
    assert w.breach() == "reject_rate_high"


def test_failsafe_counts_as_reject_and_other_bundles_do_not_count() -> None:
    w = RollbackWatch(cfg=RollbackConfig(watch_parts=20, min_parts=4, reject_rate_max_fraction=0.5), bundle_id="new")
    for _ in range(50):
        w.observe(_d(Verdict.REJECT, bundle="old"))  # in flight at the swap: judged by the old bundle
    assert w.parts == 0
    for v in (Verdict.ACCEPT, Verdict.FAILSAFE, Verdict.FAILSAFE, Verdict.ACCEPT):
        w.observe(_d(v))
    assert w.breach() is None  # 2 of 4 = 0.5, not above
    w.observe(_d(Verdict.FAILSAFE))
    assert w.breach() == "reject_rate_high"


def test_latency_and_low_reject_rate_breaches_and_a_clean_watch_ends() -> None:
    cfg = RollbackConfig(watch_parts=20, min_parts=5, latency_p95_max_ms=50.0, reject_rate_min_fraction=0.0)
    slow = RollbackWatch(cfg=cfg, bundle_id="new")
    for _ in range(5):
        slow.observe(_d(Verdict.ACCEPT, latency_ms=80.0))
    assert slow.breach() == "latency"
    low = RollbackWatch(cfg=RollbackConfig(watch_parts=20, min_parts=5, reject_rate_min_fraction=0.1),
                        bundle_id="new")
    for _ in range(5):
        low.observe(_d(Verdict.ACCEPT))
    assert low.breach() == "reject_rate_low"
    ok = RollbackWatch(cfg=cfg, bundle_id="new")
    for _ in range(25):
        ok.observe(_d(Verdict.ACCEPT))
    assert ok.parts == 20 and ok.done


@dataclass
class _Runner:
    closed: int = 0

    def close(self) -> None:
        self.closed += 1


@dataclass
class _Bundle:
    bundle_id: str


@dataclass
class _Prepared:
    """Stands in for prepared.PreparedBundle: the cache only touches .bundle.bundle_id and .runner.close()."""

    bundle: _Bundle
    runner: _Runner = field(default_factory=_Runner)


def _p(bid: str) -> Any:
    return cast(Any, _Prepared(_Bundle(bid)))


def test_cache_evicts_least_recent_and_closes_only_after_the_grace_period() -> None:
    active: set[str] = set()
    cache = PreparedCache(capacity=2, retire_after_s=0.05, in_use=lambda p: p.bundle.bundle_id in active)
    a, b, c = _p("a"), _p("b"), _p("c")
    for p in (a, b, c):
        cache.put(p)
    assert cache.ids() == ["b", "c"]
    assert cache.close_due() == 0 and a.runner.closed == 0, "a frame may still be running on it"
    time.sleep(0.06)
    assert cache.close_due() == 1 and a.runner.closed == 1


def test_cache_never_closes_what_is_in_use() -> None:
    active = {"b"}
    cache = PreparedCache(capacity=0, retire_after_s=0.0, in_use=lambda p: p.bundle.bundle_id in active)
    b = _p("b")
    cache.put(b)  # capacity 0: released at once, but it is the active bundle
    cache.close_all()
    assert b.runner.closed == 0
    taken = PreparedCache(capacity=1, retire_after_s=0.0, in_use=lambda p: False)
    taken.put(_p("x"))
    assert taken.take("x") is not None and taken.take("x") is None
