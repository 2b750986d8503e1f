"""Backtest: replay stored production frames through a candidate bundle before it reaches the line.

Data flow: sink store (frames the line published, with the verdict the line gave, and labels from
``lineguard label``) -> :class:`Judge` (the candidate's engines in ONNX Runtime, through the
edge's own ``BundleRunner`` and ``decide``: the exact code the line runs) -> :func:`backtest`
-> :class:`BacktestReport`: verdict transitions, and, for labelled frames, escapes (defects the
candidate accepts) and false rejects (good parts it rejects), old vs new.

The sink holds every uncertain frame but only a random ``audit_fraction`` of confident ones, so
raw counts over-represent the band. With the publisher's audit fraction, each audit frame stands
for ``1 / audit_fraction`` parts and the report extrapolates rejects and escapes per 10,000 parts.

Also home of :func:`collect_stream`, which plays images through a bundle and stores what the
publisher would have sent, the same way (benchmarks and tests use it as "a line with a sink").

Must never: write to the sink's frames (it reads them), or train anything.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lineguard.bundle import Bundle, load_bundle
from lineguard.contracts import Decision, Frame, Verdict
from lineguard.decision import DecisionPolicy, decide
from lineguard.engines import BundleRunner, OrtEngineConfig
from lineguard.imageio import read_image
from lineguard.publisher import classify
from lineguard.sink.labels import GOOD, LabelBook
from lineguard.sink.store import FrameStore
from lineguard.wire import MessageKind, build_header, decode_message, encode_message

PER_PARTS = 10_000


class Judge:
    """A bundle's engines + decision policy, as the line runs them."""

    def __init__(self, bundle: Bundle, *, with_map: bool = False) -> None:
        self.bundle = bundle
        self.runner = BundleRunner.from_bundle(bundle, OrtEngineConfig(), with_map=with_map)
        self.policy = DecisionPolicy.from_manifest(bundle.manifest)
        self._seq = 0

    @classmethod
    def from_dir(cls, path: str | Path, *, with_map: bool = False) -> Judge:
        return cls(load_bundle(path), with_map=with_map)

    def judge(self, image: npt.NDArray[Any], *, part_id: int = 0,
              source_ref: str = "") -> tuple[Decision, Frame, npt.NDArray[np.float32] | None]:
        self._seq += 1
        frame = Frame(seq=self._seq, part_id=part_id, t_capture_ns=time.monotonic_ns(), image=image,
                      camera_id="backtest", source_ref=source_ref)
        out = self.runner.infer(image)
        return decide(out, frame, self.policy, t_decided_ns=time.monotonic_ns()), frame, out.anomaly_map

    @property
    def thresholds(self) -> dict[str, float]:
        return {"lower": self.policy.lower, "upper": self.policy.upper}

    def close(self) -> None:
        self.runner.close()


def store_decision(store: FrameStore, decision: Decision, frame: Frame, anomaly_map: npt.NDArray[Any] | None,
                   kind: MessageKind, thresholds: Mapping[str, float]) -> str:
    """Store one frame as the publisher would have sent it (same wire encoding); returns its id."""
    header = build_header(decision=decision, frame=frame, kind=kind, anomaly_map=anomaly_map, thresholds=thresholds)
    store.store_batch([decode_message(encode_message(header, frame.image, anomaly_map), decode_images=False)])
    return str(header.message_id)


def collect_stream(judge: Judge, images: Iterable[tuple[npt.NDArray[Any], str]], sink_root: str | Path, *,
                   audit_fraction: float = 0.05, seed: int = 0, near_reject_margin_bands: float = 0.0,
                   near_reject_min_margin_fraction: float = 0.0, every_as: MessageKind | None = None,
                   quota_bytes: int = 2**40) -> list[tuple[str, Decision, MessageKind | None]]:
    """Judge each (image, source_ref) and store what the publisher would send; returns
    (source_ref, decision, kind or None) per image in order.

    ``near_reject_margin_bands`` and ``near_reject_min_margin_fraction`` are the publisher's
    settings of those names (margin 0 = no near_reject kind); its per-minute budget is not
    applied: a replay has no line clock. ``every_as``: store every frame as this kind instead (e.g.
    ``AUDIT`` for parts drawn at random from the line, which are a sample of it whatever their verdict)."""
    rng = np.random.default_rng(seed)
    store = FrameStore.open(sink_root, quota_bytes=quota_bytes, fsync=False)
    out: list[tuple[str, Decision, MessageKind | None]] = []
    try:
        for i, (image, ref) in enumerate(images):
            d, frame, amap = judge.judge(image, part_id=i, source_ref=ref)
            kind = every_as or classify(d, judge.thresholds, near_reject_margin_bands, near_reject_min_margin_fraction)
            if kind is None and audit_fraction > 0 and rng.random() < audit_fraction:
                kind = MessageKind.AUDIT
            if kind is not None:
                store_decision(store, d, frame, amap, kind, judge.thresholds)
            out.append((ref, d, kind))
    finally:
        store.close()
    return out


@dataclass(frozen=True, slots=True)
class Tally:
    """Weighted counts over replayed frames (weights: audit frames stand for more parts)."""

    parts: float = 0.0
    rejects: float = 0.0
    rechecks: float = 0.0
    escapes: float = 0.0  # labelled defects accepted
    false_rejects: float = 0.0  # labelled good rejected


@dataclass(frozen=True, slots=True)
class BacktestReport:
    candidate: str
    frames: int
    labelled: int
    audit_fraction: float | None
    transitions: Mapping[str, int]  # "old->new" verdict counts, unweighted
    old: Tally
    new: Tally
    per_class_escapes: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)  # class: (n, old, new)

    def per_parts(self, t: Tally, attr: str) -> float | None:
        if self.audit_fraction is None or t.parts <= 0:
            return None
        return PER_PARTS * float(getattr(t, attr)) / t.parts

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"candidate": self.candidate, "frames": self.frames, "labelled": self.labelled,
                             "audit_fraction": self.audit_fraction, "transitions": dict(self.transitions),
                             "old": _tally(self.old), "new": _tally(self.new),
                             "per_class_escapes": dict(self.per_class_escapes)}
        for attr in ("rejects", "escapes", "false_rejects"):
            d[f"{attr}_per_{PER_PARTS}_parts"] = {"old": self.per_parts(self.old, attr),
                                                  "new": self.per_parts(self.new, attr)}
        return d

    def to_markdown(self) -> str:
        lines = [f"# Backtest of {self.candidate}", "",
                 f"{self.frames} stored frames replayed, {self.labelled} of them labelled.", ""]
        if self.audit_fraction is None:
            lines += ["No audit fraction given: counts below are over stored frames, which over-represent "
                      "the uncertainty band; they are not a per-part forecast.", ""]
        lines += ["| | line (old) | candidate (new) | change |", "|---|---|---|---|"]
        for attr, title in (("rejects", "rejects"), ("rechecks", "rechecks"), ("escapes", "escapes (labelled)"),
                            ("false_rejects", "false rejects (labelled)")):
            o, n = getattr(self.old, attr), getattr(self.new, attr)
            lines.append(f"| {title} | {o:.1f} | {n:.1f} | {n - o:+.1f} |")
            po, pn = self.per_parts(self.old, attr), self.per_parts(self.new, attr)
            if po is not None and pn is not None:
                lines.append(f"| {title} per {PER_PARTS} parts | {po:.1f} | {pn:.1f} | {pn - po:+.1f} |")
        lines += ["", "Verdict transitions (old -> new): " + ", ".join(
            f"{k}: {v}" for k, v in sorted(self.transitions.items())), ""]
        for cls, (n, o, nw) in sorted(self.per_class_escapes.items()):
            lines.append(f"- class {cls}: {n} labelled, escapes {o} -> {nw}")
        return "\n".join(lines) + "\n"


def _tally(t: Tally) -> dict[str, float]:
    return {"parts": t.parts, "rejects": t.rejects, "rechecks": t.rechecks, "escapes": t.escapes,
            "false_rejects": t.false_rejects}


def _add(t: dict[str, float], verdict: str, label: str | None, w: float) -> None:
    t["parts"] += w
    t["rejects"] += w * (verdict == "reject")
    t["rechecks"] += w * (verdict == "recheck")
    if label is not None:
        t["escapes"] += w * (label != GOOD and verdict == "accept")
        t["false_rejects"] += w * (label == GOOD and verdict == "reject")


def backtest(candidate: str | Path, sink_root: str | Path, *, audit_fraction: float | None = None) -> BacktestReport:
    """Replay every stored frame through ``candidate``; old verdicts are those the line gave."""
    if audit_fraction is not None and not 0.0 < audit_fraction <= 1.0:
        raise ValueError(f"audit_fraction must be in (0, 1], got {audit_fraction}")
    judge = Judge.from_dir(candidate)
    book = LabelBook.open(sink_root)
    old: dict[str, float] = dict.fromkeys(("parts", "rejects", "rechecks", "escapes", "false_rejects"), 0.0)
    new = dict(old)
    transitions: Counter[str] = Counter()
    per_class: dict[str, list[int]] = {}
    frames = labelled = 0
    try:
        for f in book.queue(limit=10**9, include_labelled=True):
            d, _, _ = judge.judge(read_image(f.image_path))
            w = 1.0 / audit_fraction if (audit_fraction and f.kind == MessageKind.AUDIT.value) else 1.0
            _add(old, f.verdict, f.label, w)
            _add(new, d.verdict.label, f.label, w)
            transitions[f"{f.verdict}->{d.verdict.label}"] += 1
            frames += 1
            if f.label is not None:
                labelled += 1
                if f.label != GOOD:
                    c = per_class.setdefault(f.label, [0, 0, 0])
                    c[0] += 1
                    c[1] += f.verdict == "accept"
                    c[2] += d.verdict is Verdict.ACCEPT
    finally:
        book.close()
        judge.close()
    return BacktestReport(candidate=judge.bundle.bundle_id, frames=frames, labelled=labelled,
                          audit_fraction=audit_fraction, transitions=dict(transitions), old=Tally(**old),
                          new=Tally(**new), per_class_escapes={k: (v[0], v[1], v[2]) for k, v in per_class.items()})


def read_images(paths: Iterable[Path]) -> Iterable[tuple[npt.NDArray[Any], str]]:
    for p in paths:
        yield read_image(p), str(p)
