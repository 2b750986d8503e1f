"""The recipes automatic configuration tries on a line (``autoconfig.select``).

:func:`default_candidates`: the product default first, then single changes of the quality suite's
recipe (issue 22) in rising cost; :func:`lean_candidate`: the one cheaper recipe, tried next when the
default's engine is over the line's latency budget. Only knobs :class:`TrainConfig` has are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lineguard.errors import ConfigError
from lineguard_models.pipeline import TrainConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One recipe tried: a name and its changes to the base :class:`TrainConfig`."""

    name: str
    updates: dict[str, Any]
    why: str = ""


_OTHER_BACKBONE: dict[str, tuple[str, str, str]] = {  # base backbone -> (name, backbone, why)
    "efficientnet_lite2": ("lite0", "efficientnet_lite0",
                           "the smaller backbone (EfficientNet-Lite0): a cheaper engine, smooth castings"),
    "efficientnet_lite0": ("lite2", "efficientnet_lite2", "a larger backbone (EfficientNet-Lite2): finer textures"),
}


def candidate_config(base: TrainConfig, cand: Candidate, folds: int) -> TrainConfig:
    """``base`` with ``cand``'s changes and ``folds`` calibration folds (a clear error when invalid)."""
    try:
        return TrainConfig.model_validate({**base.model_dump(), **cand.updates, "calibration_folds": folds})
    except ValidationError as exc:
        raise ConfigError(f"auto candidate {cand.name!r} is not a valid training config: {exc}") from exc


def default_candidates(base: TrainConfig, image_size: tuple[int, int]) -> list[Candidate]:
    """The recipes tried on a line, the product default first, then single changes of the suite's
    recipe (issue 22) in rising cost."""
    out = [Candidate(name="default", updates={}, why="the product default")]
    if base.image_score != "topk_mean":
        out.append(Candidate(name="topk", updates={"image_score": "topk_mean"},
                             why="image score from the few worst patches: one noisy patch alone does not decide"))
    size = base.input_size_px
    if base.neighbourhood_cells == 1:
        # quality suite, seed 0: averaging lost 0.03 on casting and 0.24 on deeppcb, level on the textures
        out.append(Candidate(name="avg3", updates={"neighbourhood_cells": 3},
                             why="features averaged over 3x3 cells (PatchCore's local averaging): noisy textures"))
    if len(base.stages) > 1:
        # deeppcb seed 0: stage3 alone at 384 px 0.934 against 0.799 for the default (docs/benchmarks/quality.md).
        # +64 px, not +96: priced with the final bank (autoprice), Lite2 stage3 at 384 px is 1.56x the
        # default's engine (42 ms against 26.9), at 352 px 1.23x (33 ms), inside the 40 ms budget
        out.append(Candidate(name=f"{base.stages[0]}_{size + 64}px",
                             updates={"stages": base.stages[:1], "input_size_px": size + 64},
                             why="small sharp defects: the shallowest stage alone, more pixels per defect"))
    else:
        out.append(Candidate(name=f"{size + 64}px", updates={"input_size_px": size + 64},
                             why="small defects: more pixels per defect"))
    # the other of Lite0 / Lite2. Quality suite, seed 0, 288 px stage3+4: Lite2 deeppcb 0.861 vs 0.799,
    # elpv_poly 0.861 vs 0.828; Lite0 casting 0.999 vs 0.997, bsdata 0.895 vs 0.888 and a cheaper engine
    other = _OTHER_BACKBONE.get(base.backbone)
    if other is not None:
        out.append(Candidate(name=other[0], updates={"backbone": other[1]}, why=other[2]))
    if base.bank_turns in ("auto", 1):
        # the bank keeps the default's rows (pipeline.anomaly_model_config), so the engine keeps its cost. Stop 13,
        # seeds 0-2, cached Lite2 288 px features, same rows: casting 0.9962 -> 0.9991, 0.9894 -> 0.9935,
        # 0.9833 -> 0.9913 test AUROC; with 4x the rows the engine priced 49-55 ms, over a 40 ms budget
        out.append(Candidate(name="turns4", updates={"bank_turns": 4},
                             why="parts lying in any orientation: every good turned too, the same bank rows"))
    if base.bank_fraction is not None and base.bank_fraction < 0.3:
        out.append(Candidate(name="bank30", updates={"bank_fraction": 0.3, "bank_size": max(base.bank_size, 65536)},
                             why="a larger share of the training patches in the bank"))
    if max(image_size) >= 3 * size:
        out.append(Candidate(name="tiles2x2", updates={"tile_rows": 2, "tile_cols": 2},
                             why="large frames: four tiles keep small defects visible"))
    return out


def lean_candidate(base: TrainConfig, p50_ms: float, budget_ms: float, margin: float = 0.85) -> Candidate:
    """Fewer pixels: tried next when the first candidate's engine is over the latency budget (every other
    candidate costs more).

    The backbone's cost grows with the pixels and the nearest-neighbour search with pixels x bank rows
    (the bank is a share of the training patches, so it shrinks with the pixels too): scaling the
    pixel count by ``r = margin * budget / p50`` brings the engine to at most about ``r * p50``. The
    input side is scaled by ``sqrt(r)``, rounded down to a multiple of 32 (the deepest stride).
    Measured on long frames (bsdata_pitting, 544x224): halving the bank alone left the engine at 40-43
    ms, the backbone is most of it."""
    r = min(1.0, margin * budget_ms / max(p50_ms, 1e-9))
    side = max(32, int(base.input_size_px * math.sqrt(r)) // 32 * 32)
    if side >= base.input_size_px:
        side = max(32, base.input_size_px - 32)
    return Candidate(name=f"lean{side}px", updates={"input_size_px": side},
                     why=f"the default's engine ({p50_ms:.1f} ms p50) is over the {budget_ms:g} ms latency budget: "
                         f"{side} px instead of {base.input_size_px} px")
