"""A candidate's engine priced before its folds run (``autoconfig.select``).

The engine's cost does not depend on what the bank holds, only on its shape: the backbone at the
input size, then the nearest-neighbour search of every patch against the bank's rows. The rows the
real bank will have are known before fitting (the coreset keeps ``bank_fraction`` of every patch
seen, at most ``bank_size``; ``coreset.StreamingCoreset.final_rows``), so the candidate's real graph,
exported with a stand-in bank of those rows, runs exactly as fast as its bundle's will. Pricing every
candidate this way costs an export and a few timed runs (seconds), where finding out in the first
fold cost that fold's whole fit: on 704x288 frames (bsdata_pitting) the default's folds spent 290 s
of the 600 s budget before its 89 ms engine showed it could not be chosen.

Must never: differ from the real engine in anything but the bank's values (same graph, same rows),
or leave files behind.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lineguard.preprocess import InputSpec, prepare
from lineguard_models.autocandidates import Candidate, candidate_config, default_candidates, lean_candidate
from lineguard_models.data import Dataset
from lineguard_models.ortscore import Progress, engine_p50_ms
from lineguard_models.pipeline import TrainConfig, anomaly_model_config, make_input_spec, split_good

LEAN_MARGIN = 0.85  # a lean side must price within this share of the latency budget (timing jitter)


def bank_rows(cfg: TrainConfig, spec: InputSpec, grid_hw: tuple[int, int], n_fit: int) -> int:
    """Rows of the bank that fitting ``n_fit`` images with ``cfg`` will keep (``anomaly.planned_bank_rows``)."""
    from lineguard_models.anomaly import planned_bank_rows

    return planned_bank_rows(anomaly_model_config(cfg, spec), grid_hw, n_fit * spec.tiles.count)


def price_engine_ms(cfg: TrainConfig, spec: InputSpec, n_fit: int, batch: npt.NDArray[np.float32],
                    runs: int, *, keep: Path | None = None) -> tuple[float, int]:
    """(engine p50 ms at 2 CPU threads, bank rows) of the graph ``cfg`` would export after fitting
    ``n_fit`` images; ``batch`` is one prepared frame ([tiles, C, H, W], ``preprocess.prepare``).
    ``keep``: also write the priced graph there (tests compare it with a real bundle's)."""
    import torch

    from lineguard_models.anomaly import AnomalyScorer, placeholder_scorer
    from lineguard_models.export import export_onnx

    probe = placeholder_scorer(anomaly_model_config(cfg, spec), channels=spec.channels, max_value=spec.max_value)
    rows = bank_rows(cfg, spec, probe.features.grid_hw, n_fit)
    stand_in = torch.randn(rows, probe.features.out_dim, generator=torch.Generator().manual_seed(0))
    scorer = AnomalyScorer(probe.features.backbone, stand_in, probe.spec).eval()
    with tempfile.TemporaryDirectory(prefix="lineguard-price-") as tmp:
        path = export_onnx(scorer, keep if keep is not None else Path(tmp) / "priced.onnx")
        return engine_p50_ms(path, batch, runs), rows


def largest_side(price: Callable[[int], float], start: int, ceiling: int, limit_ms: float, steps: int = 4) -> int:
    """The largest input side (``start`` moved in steps of 32 px, at most ``steps`` of them, below
    ``ceiling``) whose ``price`` is within ``limit_ms``; ``start`` itself when no step helps."""
    side = start
    while side > 32 and steps > 0 and price(side) > limit_ms:
        side, steps = side - 32, steps - 1
    while side + 32 < ceiling and steps > 0 and price(side + 32) <= limit_ms:
        side, steps = side + 32, steps - 1
    return side


def rebased_candidates(base: TrainConfig, image_size: tuple[int, int], side: int, default_ms: float,
                       budget_ms: float) -> list[Candidate]:
    """The default candidate list on a base of ``side`` px (the default's engine is over the budget): the
    default first (it will be skipped), then ``lean<side>px`` and every other candidate at that side."""
    lean_base = base.model_copy(update={"input_size_px": side})
    others = default_candidates(lean_base, image_size)[1:]
    why = (f"the default's engine ({default_ms:.1f} ms p50) is over the {budget_ms:g} ms latency budget: {side} px, "
           f"the largest side priced within {LEAN_MARGIN:g} x the budget")
    return [Candidate(name="default", updates={}, why="the product default"),
            Candidate(name=f"lean{side}px", updates={"input_size_px": side}, why=why),
            *(Candidate(name=c.name, updates={"input_size_px": side, **c.updates}, why=f"{c.why} (at {side} px)")
              for c in others)]


def price_candidates(ds: Dataset, base: TrainConfig, candidates: Sequence[Candidate], *, folds: int,
                     budget_ms: float, runs: int, progress: Progress, image_size: tuple[int, int] | None = None
                     ) -> tuple[list[Candidate], dict[str, tuple[float, int]]]:
    """Every candidate's engine priced before any fold runs: (the candidate list to run, name -> (p50 ms,
    bank rows)).

    With ``image_size`` (``candidates`` is the default list): when the default's engine is over the latency
    budget, the list is rebased on the largest input side priced within ``LEAN_MARGIN`` x the
    budget (:func:`largest_side`, :func:`rebased_candidates`), so every recipe is tried at a size the
    line can run. Otherwise, when no candidate is within the budget, lean candidates (fewer pixels,
    ``autocandidates.lean_candidate``) are inserted after the first, each priced, until one is (three
    at most)."""
    cands, prices = list(candidates), dict[str, tuple[float, int]]()

    def price(c: Candidate) -> float:
        if c.name not in prices:
            cfg = candidate_config(base, c, folds)
            train_s = split_good(ds, cfg)[0]
            spec = make_input_spec(ds, train_s, cfg)
            prices[c.name] = price_engine_ms(cfg, spec, len(train_s), prepare(ds.load(train_s[0]), spec)[0], runs)
            progress(f"auto: {c.name}: engine priced at {prices[c.name][0]:.1f} ms p50 ({prices[c.name][1]} bank rows)")
        return prices[c.name][0]

    first = price(cands[0])
    if image_size is not None and first > budget_ms:
        start = int(lean_candidate(base, first, budget_ms).updates["input_size_px"])
        side = largest_side(lambda px: price(Candidate(name=f"lean{px}px", updates={"input_size_px": px})), start,
                            base.input_size_px, LEAN_MARGIN * budget_ms)
        cands = rebased_candidates(base, image_size, side, first, budget_ms)
    for c in cands[1:]:
        price(c)
    prev, at = cands[0], 1
    while not any(prices[c.name][0] <= budget_ms for c in cands) and at <= 3:
        lean = lean_candidate(candidate_config(base, prev, folds), prices[prev.name][0], budget_ms)
        if lean.name in prices:
            break
        prev = Candidate(name=lean.name, updates={**cands[0].updates, **lean.updates}, why=lean.why)
        price(prev)
        cands.insert(at, prev)
        at += 1
    return cands, prices
