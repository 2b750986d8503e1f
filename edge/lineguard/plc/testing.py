"""Helpers shared by the PLC tests, the benchmark and the demo: drive a link like the service
does and audit the "exactly one verdict per part" contract against a simulator's records.

Not used by the service itself; never imported on the hot path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from lineguard.contracts import Decision, Verdict
from lineguard.plc.book import PlcOutcome
from lineguard.plc.config import PlcConfig, TcpTransportConfig
from lineguard.plc.link import PlcLink
from lineguard.plc.sim import PlcSimulator


def fast_config(port: int, host: str = "127.0.0.1", **overrides: object) -> PlcConfig:
    """A link config with short periods and backoffs so fault tests finish in seconds."""
    base: dict[str, object] = {
        "transport": TcpTransportConfig(host=host, port=port),
        "deadline_ms": 150,
        "heartbeat_period_ms": 50,
        "timeout_ms": 200,
        "reconnect_backoff_initial_ms": 20,
        "reconnect_backoff_max_ms": 200,
    }
    return PlcConfig.model_validate({**base, **overrides})


def decision(
    part_id: int, verdict: Verdict = Verdict.ACCEPT, *, score: float = 0.25, defect: str = "",
    guess: str = "", confidence: float = float("nan"),
) -> Decision:
    """A Decision as the decision stage would produce it (times are monotonic ns)."""
    now = time.monotonic_ns()
    return Decision(
        seq=part_id,
        part_id=part_id,
        verdict=verdict,
        anomaly_score=score,
        bundle_id="test",
        camera_id="cam0",
        t_capture_ns=now,
        t_decided_ns=now,
        defect_class=defect,
        class_guess=guess,
        class_confidence=confidence,
    )


def feed(link: PlcLink, part_ids: Iterable[int], *, skip: Iterable[int] = (), period_s: float = 0.0) -> None:
    """expect() then submit() each part (except ``skip``: those must hit their deadline)."""
    skipped = set(skip)
    for pid in part_ids:
        link.expect(pid, time.monotonic_ns())
        if pid not in skipped:
            link.submit(decision(pid, Verdict.REJECT if pid % 3 == 0 else Verdict.ACCEPT))
        if period_s:
            time.sleep(period_s)


def settle(link: PlcLink, timeout_s: float) -> bool:
    """Wait until no deadline is pending and no result is queued (all written and acked)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        h = link.health()
        if h.inbox == 0 and h.pending_deadlines == 0 and h.queued_results == 0:
            return True
        time.sleep(0.005)
    return False


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Audit:
    """Each part either reached the PLC with exactly one (seq, verdict) or is a counted fail-safe."""

    parts: int
    written: int
    counted_unwritten: int  # overflow + PLC-refused results + missed deadlines (link down)
    multiple: tuple[int, ...]  # parts that received more than one distinct (seq, verdict): a defect
    strangers: tuple[int, ...]  # part ids the PLC received that were never fed: a defect

    @property
    def ok(self) -> bool:
        return not self.multiple and not self.strangers and self.written + self.counted_unwritten == self.parts


def audit(sim: PlcSimulator, registry: CollectorRegistry, part_ids: Iterable[int]) -> Audit:
    parts = set(part_ids)
    got = sim.verdicts_by_part()
    counted = sum(
        sample(registry, "lineguard_plc_failsafe_verdicts_total", reason=r)
        for r in ("overflow", "plc_rejected", "missed_deadline")
    )
    return Audit(
        parts=len(parts),
        written=len(set(got) & parts),
        counted_unwritten=int(counted),
        multiple=tuple(sorted(p for p, v in got.items() if len(v) > 1)),
        strangers=tuple(sorted(set(got) - parts)),
    )


@dataclass
class Records:
    """A record sink for tests: what the decision log would receive, one (decision, plc) per part."""

    items: list[tuple[Decision, PlcOutcome]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, decision: Decision, plc: PlcOutcome) -> None:
        with self._lock:
            self.items.append((decision, plc))

    def by_part(self) -> dict[int, list[PlcOutcome]]:
        with self._lock:
            out: dict[int, list[PlcOutcome]] = {}
            for d, plc in self.items:
                out.setdefault(d.part_id, []).append(plc)
            return out

    def count(self, plc: PlcOutcome) -> int:
        with self._lock:
            return sum(1 for _, p in self.items if p is plc)


def audit_records(sim: PlcSimulator, records: Records, part_ids: Iterable[int]) -> list[str]:
    """Problems with the "exactly one record per part, and it says what the PLC got" contract:
    every part has one record; written / failsafe_deadline parts are at the PLC exactly once;
    missed_deadline / overflow / plc_rejected / unsent parts never reached it. Empty = all good."""
    parts = set(part_ids)
    got = sim.verdicts_by_part()
    problems: list[str] = []
    by_part = records.by_part()
    for pid in sorted(parts | set(by_part)):
        recs = by_part.get(pid, [])
        if pid not in parts:
            problems.append(f"part {pid}: record for a part never fed")
        elif len(recs) != 1:
            problems.append(f"part {pid}: {len(recs)} records {recs}")
        elif recs[0] in (PlcOutcome.WRITTEN, PlcOutcome.FAILSAFE_DEADLINE) and len(got.get(pid, [])) != 1:
            problems.append(f"part {pid}: {recs[0].value} but the PLC holds {got.get(pid)}")
        elif recs[0] in NEVER_WRITTEN and pid in got:
            problems.append(f"part {pid}: {recs[0].value} but the PLC received {got[pid]}")
    return problems


NEVER_WRITTEN = (PlcOutcome.MISSED_DEADLINE, PlcOutcome.OVERFLOW, PlcOutcome.PLC_REJECTED, PlcOutcome.UNSENT)
