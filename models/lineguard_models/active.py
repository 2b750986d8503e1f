"""Active learning: which of the sink's frames a person labels this shift.

Data flow: sink store (``lineguard.sink.labels.LabelBook.unlabelled``) -> :func:`plan_shift`
-> cheap image embeddings -> :func:`select` -> ``LabelBook.set_selection`` -> the labelling page
shows the selection first, in rank order.

Selection at a fixed budget per shift:

1. **decision value first**: a label is worth most where it changes what the retrained bundle
   decides (:func:`decision_value`): unknown defects, and frames whose score sits near one of the
   two thresholds -- on either side, so a confident verdict from the publisher's audit share just
   past a threshold (a possible false reject or escape) counts as much as a recheck just inside.
   The middle of a wide uncertainty band moves neither threshold and comes last. (Until 2026-11-27
   the pool was the band middle and a k-center walk on thumbnails spread the budget over the
   whole band; it was no better than random labelling: docs/benchmarks/data-loop.md.)
2. **near-duplicates cost one label**: in value order, a frame closer than ``duplicate_fraction``
   of the median distance between candidates to one already chosen is skipped (a stuck part or
   a repeated glare), and only taken when nothing else is left;
3. **audit share**: a small random share of the budget drawn from all remaining frames, so the
   selection's blind spots are measured (the random share is what makes the model's recall on
   frames it was sure about estimable).

Embeddings are cheap and deterministic: a 16x16 area-downsampled, zero-mean, unit-norm thumbnail
plus the 8x8 downsampled anomaly map. Backbone embeddings can be passed instead
(``select(..., embeddings=...)``).

Must never: import torch (``lineguard label`` imports this module on the sink host, which need not
have the training extra), select a frame twice in one shift, or spend more than the budget.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from lineguard.decision import band_width
from lineguard.imageio import read_image
from lineguard.sink.labels import LabelBook, QueuedFrame

Embedding = npt.NDArray[np.float32]
THUMB_PX = 16
MAP_PX = 8


class SelectionConfig(BaseModel):
    """Labelling budget and selection mix (``lineguard label`` options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_per_shift: int = Field(50, ge=1, le=100_000, description="frames selected for labelling per shift")
    audit_share: float = Field(0.1, ge=0.0, le=0.5, description="share of the budget drawn at random")
    edge_width_bands: float = Field(0.25, gt=0.0, le=10.0,
                                    description="inside the band: distance from the nearest threshold, in band "
                                                "widths, over which a frame's value falls by a factor e")
    reject_side_width_bands: float = Field(0.25, gt=0.0, le=100.0,
                                           description="above the reject threshold: the same distance for "
                                                       "rejected frames (possible false rejects)")
    accept_side_weight: float = Field(1.0, ge=0.0, le=1.0,
                                      description="value of a frame at the accept threshold relative to one at "
                                                  "the reject threshold")
    duplicate_fraction: float = Field(0.15, ge=0.0, le=1.0,
                                      description="frames closer than this fraction of the median distance "
                                                  "between candidates to a chosen frame are near-duplicates")
    shift_hours: int = Field(8, ge=1, le=24, description="shift length; shifts start at 00:00 UTC")
    max_candidates: int = Field(5000, ge=10, le=1_000_000, description="newest unlabelled frames considered")
    seed: int = Field(0, ge=0, description="seed of the audit draw")


# What ``lineguard label`` selects by default (``--both-sides``: this class's own defaults): only the
# reject side counts, and every reject as much as one at the threshold. Casting, 8 % defect stream,
# out-of-fold calibration (K = 3), 40 labels, 16 seeds, against random labelling: 81 % fewer false
# rejects and +23.9 points reject precision at the line's defect share (+5.6 on casting test/, whose
# 63 % defects hide most of it), escapes +1.1 points; both sides alike: level with random or worse.
# On a 50 % defect stream level with random (escapes +3.0). docs/benchmarks/data-loop.md.
REJECT_SIDE_FIRST: dict[str, float] = {"accept_side_weight": 0.0, "reject_side_width_bands": 100.0}


@dataclass(frozen=True, slots=True)
class Pick:
    index: int  # into the candidate list
    reason: str  # 'unknown_defect', 'uncertain', 'diverse', 'audit'


def shift_id(now: dt.datetime, shift_hours: int) -> str:
    """'2024-05-01/s1' for the second shift of that UTC day."""
    utc = now.astimezone(dt.timezone.utc)
    return f"{utc.date().isoformat()}/s{utc.hour // shift_hours}"


def cheap_embedding(image: npt.NDArray[Any], anomaly_map: npt.NDArray[Any] | None) -> Embedding:
    """Thumbnail (and anomaly-map) embedding: near-duplicate frames land close together."""
    grey = image.mean(axis=2) if image.ndim == 3 else image
    thumb = np.asarray(cv2.resize(grey.astype(np.float32), (THUMB_PX, THUMB_PX), interpolation=cv2.INTER_AREA),
                       dtype=np.float32).ravel()
    thumb = (thumb - thumb.mean()) / max(float(np.linalg.norm(thumb - thumb.mean())), 1e-6)
    parts = [thumb]
    if anomaly_map is not None:
        m = np.asarray(cv2.resize(np.nan_to_num(anomaly_map.astype(np.float32)), (MAP_PX, MAP_PX),
                                  interpolation=cv2.INTER_AREA), dtype=np.float32).ravel()
        m = m / max(float(np.linalg.norm(m)), 1e-6)
        parts.append(m)
    else:
        parts.append(np.zeros(MAP_PX * MAP_PX, np.float32))
    return np.concatenate(parts).astype(np.float32)


def decision_value(frame: QueuedFrame, cfg: SelectionConfig) -> float:
    """How likely a label of this frame changes what the retrained bundle decides, in [0, 1].

    The bundle accepts below ``lower`` and rejects at ``upper``; both are set by the extremes of
    its calibration scores (the highest good, the lowest defect), and the memory bank learns from
    good frames it flagged. So labels change decisions at the **edges** of the band, on both
    sides: a good frame just below or above ``upper`` (a recheck or false reject the bank must
    learn) and a defect just above or below ``lower`` (a near escape the accept threshold must
    stop). The middle of a wide band changes neither threshold. Value is 1 at ``upper`` and falls
    with the distance *d* from it (band widths) as ``exp(-d / edge_width_bands)`` inside the band
    and ``exp(-d / reject_side_width_bands)`` above it; the accept side the same from ``lower``,
    times ``accept_side_weight``. Defaults: both sides alike (a reject-side-first setting --
    weight 0.5, width 1.0 above -- was measured worse on casting: docs/benchmarks/data-loop.md).
    Unknown defects are worth 1.
    """
    if frame.kind == "unknown_defect":
        return 1.0
    s, lo, up = frame.anomaly_score, frame.lower, frame.upper
    if s is None or lo is None or up is None or not math.isfinite(s):
        return 0.5  # fail-safe frames carry no score: a label still tells what the part was
    width = band_width(lo, up)
    if s >= up:
        return math.exp(-(s - up) / width / cfg.reject_side_width_bands)
    if s >= (lo + up) / 2:
        return math.exp(-(up - s) / width / cfg.edge_width_bands)
    return cfg.accept_side_weight * math.exp(-abs(s - lo) / width / cfg.edge_width_bands)


def _near_duplicate_scale(embeddings: npt.NDArray[np.float32], rng: np.random.Generator) -> float:
    """Median distance between candidates (a sample of pairs): the unit of 'near'."""
    n = embeddings.shape[0]
    if n < 2:
        return 0.0
    i = rng.integers(0, n, size=min(4096, n * (n - 1)))
    j = rng.integers(0, n, size=i.size)
    keep = i != j
    return float(np.median(np.linalg.norm(embeddings[i[keep]] - embeddings[j[keep]], axis=1))) if keep.any() else 0.0


def rank_distinct(order: Sequence[int], embeddings: npt.NDArray[np.float32], k: int,
                  min_distance: float) -> list[int]:
    """The first ``k`` of ``order`` (best first), skipping any closer than ``min_distance`` to one
    already taken: a burst of near-identical frames costs one label, not fifty."""
    chosen: list[int] = []
    for i in order:
        if len(chosen) >= k:
            break
        if chosen and min_distance > 0 and \
                float(np.min(np.linalg.norm(embeddings[chosen] - embeddings[i], axis=1))) < min_distance:
            continue
        chosen.append(int(i))
    return chosen


def _reason(frame: QueuedFrame) -> str:
    if frame.kind == "unknown_defect":
        return "unknown_defect"
    s, lo, up = frame.anomaly_score, frame.lower, frame.upper
    if s is None or lo is None or up is None:
        return "uncertain"
    return "near_reject" if s >= (lo + up) / 2 else "near_accept"


def select(candidates: Sequence[QueuedFrame], embeddings: npt.NDArray[np.float32], budget: int,
           cfg: SelectionConfig) -> list[Pick]:
    """The shift's picks in rank order: highest decision value first, near-duplicates skipped, then
    the random audit share."""
    n = len(candidates)
    if n == 0 or budget <= 0:
        return []
    budget = min(budget, n)
    n_main = budget - min(round(cfg.audit_share * budget), budget)
    rng = np.random.default_rng(cfg.seed)
    value = np.array([decision_value(c, cfg) for c in candidates], dtype=np.float64)
    order = [int(i) for i in np.argsort(-value, kind="stable")]
    near = cfg.duplicate_fraction * _near_duplicate_scale(embeddings, rng)
    main = rank_distinct(order, embeddings, n_main, near)
    if len(main) < n_main:  # only near-duplicates left: spend the rest on them, best first
        taken = set(main)
        main += [i for i in order if i not in taken][: n_main - len(main)]
    picks = [Pick(i, _reason(candidates[i])) for i in main]
    taken = set(main)
    left = np.array([i for i in range(n) if i not in taken], dtype=np.int64)
    n_audit = budget - len(picks)
    for i in rng.choice(left, size=min(n_audit, left.size), replace=False) if left.size else []:
        picks.append(Pick(int(i), "audit"))
    return picks


def _load_map(frame: QueuedFrame) -> npt.NDArray[np.float16] | None:
    if frame.map_path is None or frame.map_shape is None:
        return None
    return np.fromfile(frame.map_path, dtype="<f2").reshape(frame.map_shape)


def embed_frames(frames: Sequence[QueuedFrame]) -> npt.NDArray[np.float32]:
    """Cheap embeddings of stored frames (reads each image once)."""
    if not frames:
        return np.zeros((0, THUMB_PX * THUMB_PX + MAP_PX * MAP_PX), np.float32)
    return np.stack([cheap_embedding(read_image(f.image_path), _load_map(f)) for f in frames])


def plan_shift(book: LabelBook, cfg: SelectionConfig, *, now: dt.datetime | None = None) -> tuple[str, int]:
    """Top up this shift's selection to the budget; returns (shift id, frames added)."""
    shift = shift_id(now or dt.datetime.now(dt.timezone.utc), cfg.shift_hours)
    left = cfg.budget_per_shift - book.selection_size(shift)
    if left <= 0:
        return shift, 0
    selected = {f.message_id for f in book.queue(shift=shift, limit=1_000_000, include_labelled=True) if f.selected}
    candidates = [f for f in book.unlabelled() if f.message_id not in selected][-cfg.max_candidates:]
    picks = select(candidates, embed_frames(candidates), left, cfg)
    added = book.set_selection(shift, [(candidates[p.index].message_id, p.reason) for p in picks])
    return shift, added
