#!/usr/bin/env python3
"""Where the default anomaly engine spends its time, and the nearest-neighbour search's two forms.

    .venv/bin/python scripts/bench_search.py [--px 288] [--rows 6480] [--runs 200] [--threads 2]

Builds the default scorer (Lite2 stage3 + stage4, no averaging, top-10 score) at ``--px`` square with
a random bank of ``--rows`` rows (the default's bank for 50 images at 288 px: 10 % of 50 x 36 x 36
patches), exports it twice through ``export.export_onnx``:

- ``augmented`` (the product): ``[a, 1] x [[-2 b^T], [|b|^2]]``, one GEMM;
- ``matmul+add`` (before stop 16): ``a x (-2 b^T)`` then a broadcast add of ``|b|^2`` over ``[hw, M]``;
- ``verdict head``: the product graph with a verdict head (``verdict_head.FusedScorer``, a random head: its
  weights do not change the cost), to price the head's pooling and dot product;

checks that the two search forms give the same score and map on one frame, then times them interleaved run by run
in one process (ONNX Runtime CPU, batch 1) and prints p50 / p90 per graph, the load average, and
ONNX Runtime's per-operator profile of the product graph (share of kernel time by operator type).
Read the ratio: the machine may be shared. Recorded in docs/benchmarks/anomaly.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from lineguard_models.anomaly import AnomalyScorer, ScorerSpec
from lineguard_models.backbone import BackboneConfig, load_backbone
from lineguard_models.export import export_onnx
from lineguard_models.verdict_head import FusedScorer


class _MatmulAdd(AnomalyScorer):
    """The search as it was before stop 16: GEMM, then ``|b|^2`` added over the whole product."""

    def distances(self, feats: torch.Tensor) -> torch.Tensor:
        h, w = self.features.grid_hw
        a = feats.flatten(2).transpose(1, 2) - self.bank_centre
        d2 = torch.matmul(a, self.bank_search[:-1].contiguous()) + self.bank_search[-1]
        nearest = d2.amin(dim=2) + a.pow(2).sum(dim=2)
        out: torch.Tensor = nearest.clamp_min(0.0).sqrt().reshape(-1, 1, h, w)
        return out


def _session(path: Path, threads: int, profile: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = profile
    so.profile_file_prefix = str(path.parent / "ort_profile")  # beside the graph, in the temporary folder
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _op_shares(sess: ort.InferenceSession, x: np.ndarray, runs: int) -> dict[str, float]:
    for _ in range(runs):
        sess.run(None, {"image": x})
    profile = Path(sess.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    per_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return {k: round(100.0 * v / total, 1) for k, v in per_op.most_common(8)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--px", type=int, default=288)
    ap.add_argument("--rows", type=int, default=6480)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    stages = ("stage3", "stage4")
    bb = load_backbone(BackboneConfig(kind="efficientnet_lite2", stages=stages))
    spec = ScorerSpec(input_height_px=a.px, input_width_px=a.px, channels=3, max_value=255.0, stages=stages,
                      neighbourhood_cells=1, projection_dim=None, projection_seed=0, blur_sigma_px=4.0,
                      image_score="topk_mean")
    dim = sum(bb.stage_channels[s] for s in stages)
    bank = torch.randn(a.rows, dim, generator=torch.Generator().manual_seed(0))
    x = (np.random.default_rng(0).random((1, 3, a.px, a.px)) * 255).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"augmented": Path(tmp) / "augmented.onnx", "matmul+add": Path(tmp) / "matmul_add.onnx",
                 "verdict head": Path(tmp) / "fused.onnx"}
        scorer = AnomalyScorer(bb, bank, spec).eval()
        export_onnx(scorer, paths["augmented"])
        export_onnx(_MatmulAdd(bb, bank, spec).eval(), paths["matmul+add"])
        d = 2 * dim  # average and generalised mean of each stage
        head = np.random.default_rng(0).normal(size=d).astype(np.float32)
        export_onnx(FusedScorer(scorer, mu=np.zeros(d, np.float32), sd=np.ones(d, np.float32), direction=head,
                                bias=0.0, scale=0.01, clip=(0.0, 8.0)).eval(), paths["verdict head"])
        sess = {k: _session(p, a.threads) for k, p in paths.items()}
        outs = {k: s.run(None, {"image": x}) for k, s in sess.items()}
        score_diff = float(np.abs(outs["augmented"][0] - outs["matmul+add"][0]).max())
        map_diff = float(np.abs(outs["augmented"][1] - outs["matmul+add"][1]).max())
        times: dict[str, list[float]] = {k: [] for k in sess}
        load_before = os.getloadavg()[0]
        for _ in range(20):
            for s in sess.values():
                s.run(None, {"image": x})
        for _ in range(a.runs):
            for k, s in sess.items():
                t0 = time.perf_counter()
                s.run(None, {"image": x})
                times[k].append(1e3 * (time.perf_counter() - t0))
        shares = _op_shares(_session(paths["augmented"], a.threads, profile=True), x, 50)
    print(json.dumps({
        "px": a.px, "bank_rows": a.rows, "dim": dim, "threads": a.threads, "runs": a.runs,
        "load_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "max_abs_diff": {"score": score_diff, "map": map_diff},
        "p50_ms": {k: round(float(np.median(v)), 2) for k, v in times.items()},
        "p90_ms": {k: round(float(np.percentile(v, 90)), 2) for k, v in times.items()},
        "op_share_pct_augmented": shares,
    }, indent=1))


if __name__ == "__main__":
    main()
