"""One recipe setting on one quality-suite split, straight from the product's feature code (no bundle).

Used to find the neighbourhood / stage / resolution / backbone settings of docs/benchmarks/quality.md
("Neighbourhood and stages") before confirming them on the product path (``bench_quality.py``):
quality_sets split (the same 50 fitted goods and test images as the product arm) ->
``lineguard.preprocess.prepare`` (square letterbox of ``--px``) -> ``AnomalyScorer.features`` (the
given stages and neighbourhood) -> greedy-coreset bank -> nearest-neighbour distances -> image AUROC
of the top-k mean for k = 1, 3, 10, 30. One JSON line per run, appended to
``/work/data/quality/probe.jsonl``.

Usage: ``.venv/bin/python scripts/bench_quality_probe.py --set deeppcb --px 384 --stages 3 --cells 1``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_sets as q
from bench_quality_explore import nn_dist

from lineguard.preprocess import InputSpec, prepare
from lineguard_models.anomaly import AnomalyScorer, ScorerSpec
from lineguard_models.backbone import BackboneConfig, load_backbone
from lineguard_models.coreset import greedy_kcenter
from lineguard_models.data import load_image, scan_dataset

BASE = Path("/work/data/quality")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--px", type=int, default=288, help="square letterboxed input side")
    ap.add_argument("--stages", default="3+4", help="stage numbers joined by +")
    ap.add_argument("--cells", type=int, default=1, help="neighbourhood_cells")
    ap.add_argument("--fraction", type=float, default=0.1, help="bank share of every patch (1 = all)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    a = ap.parse_args()
    torch.set_num_threads(2)
    stages = tuple(f"stage{c}" for c in a.stages.split("+"))
    sp = q.make_split(Path(__file__).resolve().parents[2] / "shared" / "datasets", a.set, a.seed)
    folder = q.build_folder(sp, BASE / "folders")
    ds = scan_dataset(folder)
    spec = InputSpec(channels=ds.channels, dtype=ds.dtype, max_value=255, input_width=a.px, input_height=a.px,
                     fit="letterbox")
    bb = load_backbone(BackboneConfig(kind=a.backbone, stages=stages))  # type: ignore[arg-type]
    dim = sum(bb.stage_channels[s] for s in stages)
    sspec = ScorerSpec(input_height_px=a.px, input_width_px=a.px, channels=ds.channels, max_value=255.0,
                       stages=stages, neighbourhood_cells=a.cells, projection_dim=None, projection_seed=0,
                       blur_sigma_px=4.0, image_score="patch_max")
    scorer = AnomalyScorer(bb, torch.zeros(1, dim), sspec).eval()

    def feats(paths: list[Path]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.stack([scorer.features(scorer.normalise(torch.from_numpy(
                prepare(load_image(p, mono_from_rgb=ds.mono_from_rgb), spec)[0]))).flatten(2).transpose(1, 2)[0]
                for p in paths])

    t0 = time.monotonic()
    fit, test = feats(q.fit_goods(sp, folder, a.seed)), feats([sp.root / i.path for i in sp.test])
    labels = np.array([i.label != "good" for i in sp.test])
    rows = fit.reshape(-1, dim)
    bank = rows if a.fraction >= 1 else rows[greedy_kcenter(
        rows, math.ceil(a.fraction * rows.shape[0]), generator=torch.Generator().manual_seed(0))]
    dist = nn_dist(test, bank)
    res: dict[str, object] = {"set": a.set, "seed": a.seed, "px": a.px, "stages": a.stages, "cells": a.cells,
                              "fraction": a.fraction, "backbone": a.backbone, "rows": int(bank.shape[0]),
                              "seconds": round(time.monotonic() - t0)}
    for k in (1, 3, 10, 30):
        s = dist.topk(min(k, dist.shape[1]), 1).values.mean(1).numpy()
        res[f"top{k}"] = round(q.auroc(s[~labels], s[labels]), 4)
    print(json.dumps(res), flush=True)
    with (BASE / "probe.jsonl").open("a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
