"""Shadow mode and the rollback watch: judging a bundle on live frames without trusting it yet.

Where it sits: beside the inspection loop, after the active bundle's decision. The service hands
each (decision, frame) to :meth:`ShadowRunner.offer`, which only does ``put_nowait`` into a small
bounded queue ("drop_newest" when full, every drop counted): the candidate judges the same frame
on its own low-priority thread with few ONNX Runtime threads, and its verdict goes nowhere but
into an agreement report. :class:`RollbackWatch` counts the verdicts of a freshly promoted bundle
and says when its reject rate or latency has left the configured window.

Must never: delay or change the active bundle's verdict, write to the PLC, or block in ``offer``
/ ``observe`` (both run on the inspection thread: O(1), no locks held across I/O).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lineguard.bundle import Bundle, load_bundle
from lineguard.changeover.config import RollbackConfig, ShadowConfig
from lineguard.changeover.metrics import ChangeoverMetrics
from lineguard.contracts import Decision, Frame, Verdict
from lineguard.decision import DecisionPolicy, decide
from lineguard.engines import BundleRunner, run_golden
from lineguard.engines.config import OrtEngineConfig, TensorrtEngineConfig
from lineguard.errors import BundleError, LineGuardError

log = logging.getLogger(__name__)
_REJECTING = (Verdict.REJECT, Verdict.FAILSAFE)


def build_shadow_runner(bundle: Bundle, engine_cfg: OrtEngineConfig | TensorrtEngineConfig, cfg: ShadowConfig) -> (
    BundleRunner
):
    """The candidate's engines with few threads (it shares the CPU with the active bundle), self-tested."""
    if isinstance(engine_cfg, OrtEngineConfig):
        engine_cfg = engine_cfg.model_copy(update={"intra_op_threads": cfg.intra_op_threads, "inter_op_threads": 1})
    runner = BundleRunner.from_bundle(bundle, engine_cfg)
    try:
        runner.warmup()
        failures = run_golden(runner, bundle)
        if failures:
            raise BundleError(
                f"shadow candidate {bundle.bundle_id} failed its golden self-test: " + "; ".join(failures)
            )
    except BaseException:
        runner.close()
        raise
    return runner


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowReport:
    """Agreement of the candidate with the active bundle so far (JSON-ready via :meth:`to_json`)."""

    candidate_id: str
    state: str  # preparing, running, stopped, or "failed: <why>"
    judged: int
    dropped: int
    agreed: int
    score_close: int
    errors: int
    confusion: dict[str, int] = field(default_factory=dict)  # "active->candidate" verdict pairs
    candidate_p95_ms: float = float("nan")

    @property
    def agreement(self) -> float:
        return self.agreed / self.judged if self.judged else float("nan")

    def to_json(self) -> dict[str, object]:
        p95 = None if math.isnan(self.candidate_p95_ms) else round(self.candidate_p95_ms, 3)
        agreement = None if not self.judged else round(self.agreement, 5)
        return {
            "candidate_id": self.candidate_id, "state": self.state, "judged": self.judged,
            "dropped": self.dropped, "agreed": self.agreed, "agreement": agreement,
            "score_close": self.score_close, "errors": self.errors, "confusion": dict(self.confusion),
            "candidate_p95_ms": p95,
        }


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


class ShadowRunner:
    """A candidate bundle judging copies of live frames on its own thread.

    The engines are built, warmed up and self-tested on that same low-priority thread, so even
    preparing the candidate takes CPU only when the line leaves some.
    """

    LATENCY_RING = 2048

    def __init__(
        self, *, bundle: Bundle, engine_cfg: OrtEngineConfig | TensorrtEngineConfig, cfg: ShadowConfig,
        metrics: ChangeoverMetrics,
    ) -> None:
        self.bundle = bundle
        self._engine_cfg = engine_cfg
        self._runner: BundleRunner | None = None
        self._state = "preparing"
        self._policy = DecisionPolicy.from_manifest(bundle.manifest)
        self._cfg = cfg
        self._metrics = metrics
        self._q: queue.Queue[tuple[Decision, Frame]] = queue.Queue(maxsize=cfg.queue_size_frames)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shadow", daemon=True)
        self._judged = self._dropped = self._agreed = self._close = self._errors = 0
        self._confusion: dict[str, int] = {}
        self._lat_ms: list[float] = []
        self._tol = cfg.score_tolerance_fraction * max(abs(bundle.manifest.thresholds.upper), 1e-12)

    @classmethod
    def from_path(
        cls, path: Path, *, engine_cfg: OrtEngineConfig | TensorrtEngineConfig, cfg: ShadowConfig,
        metrics: ChangeoverMetrics,
    ) -> ShadowRunner:
        return cls(bundle=load_bundle(path), engine_cfg=engine_cfg, cfg=cfg, metrics=metrics)

    def start(self) -> ShadowRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self._runner is not None:
            self._runner.close()
        if self._state in ("preparing", "running"):
            self._state = "stopped"

    def offer(self, decision: Decision, frame: Frame) -> None:
        """Inspection thread: hand over a judged frame, or count a drop; never waits."""
        if decision.failsafe or self._runner is None:
            return  # nothing to compare against, or the candidate is not ready yet
        try:
            self._q.put_nowait((decision, frame))
        except queue.Full:
            self._dropped += 1
            self._metrics.shadow_drops_total.inc()

    def _loop(self) -> None:
        self._lower_priority()
        try:
            runner = build_shadow_runner(self.bundle, self._engine_cfg, self._cfg)
        except LineGuardError as exc:
            self._state = f"failed: {exc}"
            log.error("shadow candidate %s cannot run: %s", self.bundle.bundle_id, exc)
            return
        self._runner, self._state = runner, "running"
        while not self._stop.is_set():
            try:
                active, frame = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            t0 = time.perf_counter_ns()
            try:
                out = runner.infer(frame.image)
                mine = decide(out, frame, self._policy, t_decided_ns=time.monotonic_ns())
            except LineGuardError as exc:
                self._errors += 1
                log.warning("shadow candidate %s cannot judge part %d: %s", self.bundle.bundle_id, frame.part_id, exc)
                continue
            self._tally(active, mine, (time.perf_counter_ns() - t0) / 1e6)

    def _tally(self, active: Decision, mine: Decision, ms: float) -> None:
        self._judged += 1
        self._agreed += int(active.verdict == mine.verdict)
        self._close += int(abs(active.anomaly_score - mine.anomaly_score) <= self._tol)
        key = f"{active.verdict.label}->{mine.verdict.label}"
        self._confusion[key] = self._confusion.get(key, 0) + 1
        if len(self._lat_ms) >= self.LATENCY_RING:
            del self._lat_ms[: self.LATENCY_RING // 2]
        self._lat_ms.append(ms)
        self._metrics.shadow_frames_total.inc()
        self._metrics.shadow_agreement.set(self._agreed / self._judged)

    def _lower_priority(self) -> None:
        try:
            # Linux: PRIO_PROCESS with a thread id renices only this thread
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._cfg.nice)
        except (OSError, AttributeError) as exc:
            log.warning("shadow thread keeps default priority (%s)", exc)

    def report(self) -> ShadowReport:
        return ShadowReport(
            candidate_id=self.bundle.bundle_id, state=self._state, judged=self._judged,
            dropped=self._dropped, agreed=self._agreed, score_close=self._close, errors=self._errors,
            confusion=dict(self._confusion), candidate_p95_ms=p95(list(self._lat_ms)),
        )


class RollbackWatch:
    """Verdicts of a freshly promoted bundle against the configured window."""

    def __init__(self, *, cfg: RollbackConfig, bundle_id: str) -> None:
        self.cfg = cfg
        self.bundle_id = bundle_id
        self._n = 0
        self._rejects = 0
        self._lat_ms: list[float] = []

    def observe(self, d: Decision) -> None:
        """Inspection thread; O(1). Parts of other bundles (in flight at the swap) do not count."""
        if d.bundle_id != self.bundle_id or self._n >= self.cfg.watch_parts:
            return
        self._n += 1
        self._rejects += int(d.verdict in _REJECTING or d.failsafe)
        self._lat_ms.append(d.latency_ms)

    @property
    def parts(self) -> int:
        return self._n

    @property
    def done(self) -> bool:
        """The whole watch passed: the promotion stands."""
        return self._n >= self.cfg.watch_parts and self.breach() is None

    def breach(self) -> str | None:
        """The reason to roll back (a ROLLBACK_REASONS value), or None while inside the window."""
        n = self._n
        if n < self.cfg.min_parts:
            return None
        rate = self._rejects / n
        if rate > self.cfg.reject_rate_max_fraction:
            return "reject_rate_high"
        if rate < self.cfg.reject_rate_min_fraction:
            return "reject_rate_low"
        if p95(self._lat_ms[:n]) > self.cfg.latency_p95_max_ms:
            return "latency"
        return None

    def summary(self) -> dict[str, object]:
        n = self._n
        return {
            "bundle_id": self.bundle_id, "parts": n, "watch_parts": self.cfg.watch_parts,
            "reject_rate": round(self._rejects / n, 5) if n else None,
            "latency_p95_ms": round(p95(self._lat_ms[:n]), 3) if n else None,
        }
