"""Active-learning selection: band edges first, near-duplicates cost one label, audit share, budget.

Candidates are stored in a real sink store (FrameStore + LabelBook on a temp folder), so the test
also covers the order the labelling page gets.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lineguard.contracts import Decision, Frame, Verdict
from lineguard.sink.labels import LabelBook, QueuedFrame, informativeness
from lineguard.sink.store import FrameStore
from lineguard.wire import MessageKind
from lineguard_models.active import (
    REJECT_SIDE_FIRST,
    SelectionConfig,
    decision_value,
    embed_frames,
    plan_shift,
    rank_distinct,
    select,
    shift_id,
)
from lineguard_models.backtest import store_decision
from lineguard_models.synth import SynthConfig, render_pixels

LOWER, UPPER = 1.0, 2.0
SYN = SynthConfig(width_px=64, height_px=48, seed=5)


def _put(store: FrameStore, image: np.ndarray, score: float, kind: MessageKind, seq: int) -> str:
    verdict = Verdict.RECHECK if LOWER <= score < UPPER else (Verdict.ACCEPT if score < LOWER else Verdict.REJECT)
    frame = Frame(seq=seq, part_id=seq, t_capture_ns=1, image=image, camera_id="cam")
    d = Decision(seq=seq, part_id=seq, verdict=verdict, anomaly_score=score, bundle_id="b1", camera_id="cam",
                 t_capture_ns=1, t_decided_ns=2)
    amap = np.full((6, 8), score, np.float32)
    return store_decision(store, d, frame, amap, kind, {"lower": LOWER, "upper": UPPER})


@pytest.fixture()
def sink(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """20 near-identical uncertain frames (a stuck part), 10 distinct uncertain ones, 10 audit frames."""
    store = FrameStore.open(tmp_path / "sink", quota_bytes=2**30, fsync=False)
    groups: dict[str, str] = {}
    stuck = render_pixels(SYN, "good", 999)
    rng = np.random.default_rng(0)
    for i in range(20):
        img = np.clip(stuck.astype(int) + rng.integers(-1, 2, stuck.shape), 0, 255).astype(np.uint8)
        groups[_put(store, img, 1.5 + 0.001 * i, MessageKind.UNCERTAIN, i)] = "stuck"
    for i in range(10):
        img = render_pixels(SYN, "scratch", i)
        groups[_put(store, img, 1.3 + 0.04 * i, MessageKind.UNCERTAIN, 100 + i)] = "distinct"
    for i in range(10):
        img = render_pixels(SYN, "good", i)
        groups[_put(store, img, 0.2, MessageKind.AUDIT, 200 + i)] = "audit"
    store.close()
    return tmp_path / "sink", groups


def test_informativeness_orders_kinds_and_band_position() -> None:
    mid = informativeness(kind="uncertain", score=1.5, lower=LOWER, upper=UPPER)
    near_reject = informativeness(kind="uncertain", score=1.95, lower=LOWER, upper=UPPER)
    near_accept = informativeness(kind="uncertain", score=1.05, lower=LOWER, upper=UPPER)
    just_rejected = informativeness(kind="uncertain", score=2.05, lower=LOWER, upper=UPPER)
    assert informativeness(kind="unknown_defect", score=0.1, lower=LOWER, upper=UPPER) == 1.0
    # the band's edges (both sides of each threshold) teach more than its middle
    assert near_reject == pytest.approx(near_accept) == pytest.approx(just_rejected)
    assert near_reject > mid > informativeness(kind="uncertain", score=3.5, lower=LOWER, upper=UPPER)
    assert informativeness(kind="audit", score=1.95, lower=LOWER, upper=UPPER) == pytest.approx(near_reject / 2)


def test_near_duplicates_cost_one_label_and_budget_is_kept(sink: tuple[Path, dict[str, str]]) -> None:
    root, groups = sink
    book = LabelBook.open(root)
    cands = book.unlabelled()
    picks = select(cands, embed_frames(cands), 12, SelectionConfig(audit_share=0.0))
    chosen = [groups[cands[p.index].message_id] for p in picks]
    assert len(picks) == 12 and len({p.index for p in picks}) == 12
    # 30 uncertain frames, 20 of them one stuck part: diversity spends <= 2 labels on it
    assert chosen.count("stuck") <= 2, chosen
    assert chosen.count("distinct") == 10
    # the first pick is the frame of highest decision value (here: the score nearest a threshold)
    values = [decision_value(c, SelectionConfig()) for c in cands]
    assert values[picks[0].index] == max(values)
    # random choice at the same budget would spend ~8 of 12 on the stuck part
    book.close()


def test_uncertainty_first_then_audit_share(sink: tuple[Path, dict[str, str]]) -> None:
    root, groups = sink
    book = LabelBook.open(root)
    cands = book.unlabelled()
    picks = select(cands, embed_frames(cands), 10, SelectionConfig(audit_share=0.2, seed=3))
    reasons = [p.reason for p in picks]
    assert reasons.count("audit") == 2 and reasons[-2:] == ["audit", "audit"]
    assert all(groups[cands[p.index].message_id] != "audit" for p in picks if p.reason != "audit")
    assert {p.reason for p in picks[:-2]} <= {"near_reject", "near_accept"}
    book.close()


def test_plan_shift_tops_up_to_the_budget_and_orders_the_queue(sink: tuple[Path, dict[str, str]]) -> None:
    root, _ = sink
    book = LabelBook.open(root)
    now = dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.timezone.utc)
    cfg = SelectionConfig(budget_per_shift=8, audit_share=0.125)
    assert plan_shift(book, cfg, now=now) == ("2024-05-01/s1", 8)
    assert plan_shift(book, cfg, now=now) == ("2024-05-01/s1", 0)  # budget spent
    queue = book.queue(shift="2024-05-01/s1", limit=40)
    assert [q.rank for q in queue[:8]] == list(range(8)) and queue[8].rank is None
    assert queue[7].selected == "audit"
    # next shift: a fresh budget, frames already selected earlier may be selected again only if unlabelled
    assert plan_shift(book, cfg, now=now + dt.timedelta(hours=8))[1] == 8
    assert shift_id(now, 12) == "2024-05-01/s0"
    book.close()


def test_active_module_does_not_import_torch() -> None:
    code = "import sys, lineguard_models.active; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _frame(score: float | None, kind: str = "uncertain") -> QueuedFrame:
    return QueuedFrame(message_id="m", kind=kind, verdict="recheck", anomaly_score=score, lower=LOWER, upper=UPPER,
                       defect_class="", class_confidence=None, bundle_id="b", camera_id="c", received_utc="",
                       image_path=Path("x.png"), map_path=None, map_shape=None, label=None, informativeness=0.0,
                       selected="", rank=None)


def test_decision_value_peaks_at_the_thresholds_not_the_band_middle() -> None:
    def v(score: float | None, kind: str = "uncertain", **kw: float) -> float:
        return decision_value(_frame(score, kind), SelectionConfig(**kw))  # type: ignore[arg-type]

    # at a threshold a label moves it (a good just under the reject threshold, a defect just over
    # the accept threshold); the middle of the band moves neither
    assert v(UPPER) == v(LOWER) == 1.0
    assert v(1.95) > v(1.8) > v(1.5)
    assert v(1.05) > v(1.5)
    # a false reject near the threshold (audit frame above it) is worth as much as a recheck below it
    assert v(2.05, "audit") == pytest.approx(v(1.95))
    assert v(2.05, "audit") > v(3.0, "audit")  # far above: a sure defect teaches nothing
    assert v(0.9, "audit") > v(0.2, "audit")  # just accepted: maybe an escape
    assert v(1.5, "unknown_defect") == 1.0 and v(None, "uncertain") == 0.5
    # the reject-side-first setting: accept side at half weight, rejected frames keep value further out
    assert v(LOWER, accept_side_weight=0.5) == 0.5 and v(UPPER, accept_side_weight=0.5) == 1.0
    assert v(2.2, "audit", reject_side_width_bands=1.0) == pytest.approx(np.exp(-0.2))
    # `lineguard label --reject-side-first`: the accept side is worth nothing, every reject about 1
    assert v(LOWER, **REJECT_SIDE_FIRST) == 0.0 and v(0.9, "audit", **REJECT_SIDE_FIRST) == 0.0
    assert v(3.0, "audit", **REJECT_SIDE_FIRST) > 0.98 and v(UPPER, **REJECT_SIDE_FIRST) == 1.0
    assert v(1.9, **REJECT_SIDE_FIRST) > v(1.6, **REJECT_SIDE_FIRST) > 0.0  # the upper band by closeness


def test_label_cli_selects_reject_side_first_unless_both_sides() -> None:
    import argparse

    from lineguard.commands.label import add_arguments, selection_config

    p = argparse.ArgumentParser()
    add_arguments(p)
    plain = selection_config(p.parse_args(["--store", "s", "--budget", "40"]))
    assert (plain.accept_side_weight, plain.reject_side_width_bands, plain.budget_per_shift) == (0.0, 100.0, 40)
    assert selection_config(p.parse_args(["--store", "s", "--reject-side-first"])) == plain.model_copy(
        update={"budget_per_shift": 50})
    both = selection_config(p.parse_args(["--store", "s", "--both-sides"]))
    assert (both.accept_side_weight, both.reject_side_width_bands) == (1.0, 0.25)  # SelectionConfig's own
    with pytest.raises(SystemExit):
        p.parse_args(["--store", "s", "--both-sides", "--reject-side-first"])


def test_rank_distinct_skips_near_duplicates_in_value_order() -> None:
    emb = np.array([[0.0, 0.0], [0.01, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.02]], np.float32)
    assert rank_distinct([0, 1, 2, 3, 4], emb, 3, 0.1) == [0, 2, 3]
    assert rank_distinct([1, 0, 4, 2, 3], emb, 4, 0.1) == [1, 4, 3]  # only 3 distinct frames
    assert rank_distinct([1, 0, 4], emb, 3, 0.0) == [1, 0, 4]  # no distance: value order only
