"""Active learning: which of the sink's frames a person labels this shift.

Data flow: sink store (``lineguard.sink.labels.LabelBook.unlabelled``) -> :func:`plan_shift`
-> cheap image embeddings -> :func:`select` -> ``LabelBook.set_selection`` -> the labelling page
shows the selection first, in rank order.

Selection at a fixed budget per shift:

1. **uncertainty band first**: unknown defects and frames whose score sits in the uncertainty
   band are the pool (``informativeness`` >= ``min_informativeness``); only when the pool is
   smaller than the budget are other frames considered;
2. **diversity**: inside the pool a k-center greedy walk in embedding space, each step taking the
   frame farthest from those already chosen, weighted by informativeness, so a burst of
   near-identical frames (a stuck part, a repeated glare) costs one label, not fifty;
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

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
    min_informativeness: float = Field(0.3, ge=0.0, le=1.0,
                                       description="informativeness at or above which a frame is in the pool")
    shift_hours: int = Field(8, ge=1, le=24, description="shift length; shifts start at 00:00 UTC")
    max_candidates: int = Field(5000, ge=10, le=1_000_000, description="newest unlabelled frames considered")
    seed: int = Field(0, ge=0, description="seed of the audit draw")


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


def k_center_greedy(embeddings: npt.NDArray[np.float32], k: int, weights: npt.NDArray[np.float64] | None = None,
                    first: int = 0) -> list[int]:
    """Indices of ``k`` points, each the farthest (x weight) from those already chosen."""
    n = embeddings.shape[0]
    if n == 0 or k <= 0:
        return []
    w = np.ones(n) if weights is None else weights
    chosen = [first]
    dist = np.linalg.norm(embeddings - embeddings[first], axis=1).astype(np.float64)
    dist[first] = -1.0
    while len(chosen) < min(k, n):
        nxt = int(np.argmax(dist * w))
        if dist[nxt] < 0:
            break
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(embeddings - embeddings[nxt], axis=1))
        dist[chosen] = -1.0
    return chosen


def select(candidates: Sequence[QueuedFrame], embeddings: npt.NDArray[np.float32], budget: int,
           cfg: SelectionConfig) -> list[Pick]:
    """The shift's picks in rank order: pool (uncertain, diverse), then fill, then the audit share."""
    n = len(candidates)
    if n == 0 or budget <= 0:
        return []
    budget = min(budget, n)
    n_audit = min(round(cfg.audit_share * budget), budget)
    n_main = budget - n_audit
    info = np.array([c.informativeness for c in candidates], dtype=np.float64)
    in_pool = np.flatnonzero(info >= cfg.min_informativeness)
    picks: list[Pick] = []
    taken: set[int] = set()

    def walk(indices: npt.NDArray[np.int64], k: int, label: str) -> None:
        if k <= 0 or indices.size == 0:
            return
        first = int(np.argmax(info[indices]))  # start from the most informative frame
        order = k_center_greedy(embeddings[indices], k, 0.5 + info[indices], first)
        for j in order:
            i = int(indices[j])
            reason = "unknown_defect" if candidates[i].kind == "unknown_defect" else label
            picks.append(Pick(i, reason))
            taken.add(i)

    walk(in_pool, n_main, "uncertain")
    rest = np.array([i for i in range(n) if i not in taken], dtype=np.int64)
    walk(rest, n_main - len(picks), "diverse")  # the pool was smaller than the budget
    left = np.array([i for i in range(n) if i not in taken], dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)
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
