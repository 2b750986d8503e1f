"""Benchmark the shared backbone pass: anomaly + classifier latency per part, shared vs separate.

For each input spec (the demo line's 320x240 mono frames -> 224x160 engine input; a casting-like
300x300 mono part -> 224x224) two bundles with the same weights are built with the project's own
export code: *separate* (the classifier graph reads the image and runs the whole backbone) and
*shared* (the anomaly graph also outputs its stage4 map ``shared_features``; the classifier graph
continues from it). Both run through the edge's ``BundleRunner`` on ONNX Runtime CPU with the
edge's session options (2 intra-op threads, no spinning), interleaved frame by frame so machine
load hits both alike. Thresholds are set so that every part is *flagged* (score >= accept
threshold: anomaly + classifier, the reject path) or every part is *accepted* (anomaly only).

Latency does not depend on trained weights: the memory bank is random (default bank size and
dimensions) and the head random; the backbone is the shipped ImageNet EfficientNet-Lite0.
Prints a markdown table; the numbers go into docs/benchmarks/classifier.md by hand.

    .venv/bin/python scripts/bench_shared_backbone.py [--frames 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from lineguard.bundle import Bundle, staging_dir, write_bundle
from lineguard.engines import BundleRunner, OrtEngineConfig
from lineguard.preprocess import InputSpec
from lineguard_models.anomaly import AnomalyScorer, ScorerSpec
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.classifier import (
    ClassifierGraph,
    PooledFeatures,
    export_classifier_onnx,
)
from lineguard_models.classifier_head import SoftmaxHead
from lineguard_models.export import SHARED_OUTPUT, export_onnx
from lineguard_models.shared import StageMapGraph

ANOMALY_STAGES = ("stage3", "stage4")
CLASSIFIER_STAGES = ("stage5", "stage6", "stage7")  # the default when measured; the default is now stage5+6
N_CLASSES = 6


@dataclass(frozen=True)
class Case:
    name: str
    image_wh: tuple[int, int]
    input_wh: tuple[int, int]


CASES = (Case("demo line (320x240 mono)", (320, 240), (224, 160)),
         Case("casting-like (300x300 mono)", (300, 300), (224, 224)))


def _graphs(spec: InputSpec) -> tuple[AnomalyScorer, ClassifierGraph]:
    h, w = spec.input_height, spec.input_width
    sspec = ScorerSpec(input_height_px=h, input_width_px=w, channels=1, max_value=float(spec.max_value),
                       stages=ANOMALY_STAGES, neighbourhood_cells=3, projection_dim=None, projection_seed=0,
                       blur_sigma_px=4.0, image_score="map_max")
    gen = torch.Generator().manual_seed(0)
    scorer = AnomalyScorer(EfficientNetLite0.from_state_dict_file(out_stages=ANOMALY_STAGES),
                           torch.randn(1000, 40 + 80, generator=gen), sspec).eval()  # default bank: 1000 rows
    feats = PooledFeatures(EfficientNetLite0.from_state_dict_file(out_stages=CLASSIFIER_STAGES),
                           max_value=spec.max_value)
    rng = np.random.default_rng(0)
    head = SoftmaxHead(mu=np.zeros(feats.out_dim, np.float32), sd=np.ones(feats.out_dim, np.float32),
                       weight=(0.01 * rng.normal(size=(feats.out_dim, N_CLASSES))).astype(np.float32),
                       bias=np.zeros(N_CLASSES, np.float32))
    return scorer, ClassifierGraph(feats, head).eval()


def _bundle(out: Path, spec: InputSpec, scorer: AnomalyScorer, graph: ClassifierGraph, *, shared: bool,
            lower: float) -> Bundle:
    staging = staging_dir(out)
    anomaly_outputs = {"score": "anomaly_score", "map": "anomaly_map"}
    if shared:
        export_onnx(scorer, staging / "anomaly.onnx", shared_stage="stage4")
        with torch.no_grad():
            chw = tuple(int(d) for d in scorer.forward_with_stage(
                torch.zeros(1, 1, spec.input_height, spec.input_width), "stage4")[2].shape[1:])
        export_classifier_onnx(StageMapGraph(graph, "stage4").eval(), staging / "classifier.onnx", spec=spec,
                               input_name=SHARED_OUTPUT, example=torch.zeros(1, *chw))
        anomaly_outputs["features"] = SHARED_OUTPUT
        clf_engine: dict[str, Any] = {"file": "classifier.onnx", "input_name": SHARED_OUTPUT,
                                      "outputs": {"probs": "class_probs"},
                                      "input_source": f"anomaly:{SHARED_OUTPUT}", "input_chw": list(chw)}
    else:
        export_onnx(scorer, staging / "anomaly.onnx")
        export_classifier_onnx(graph, staging / "classifier.onnx", spec=spec)
        clf_engine = {"file": "classifier.onnx", "outputs": {"probs": "class_probs"}}
    classes = [f"c{i}" for i in range(N_CLASSES)]
    manifest = {
        "bundle_id": f"bench-{'shared' if shared else 'separate'}", "product": "bench",
        "created_utc": "2026-01-01T00:00:00Z", "input": spec.model_dump(mode="json"),
        "engines": {"anomaly": {"file": "anomaly.onnx", "outputs": anomaly_outputs}, "classifier": clf_engine},
        "thresholds": {"lower": lower, "upper": lower},
        "classifier": {"classes": classes, "min_confidence": dict.fromkeys(classes, 0.5)},
    }
    return write_bundle(staging, manifest, out)


def _stats(ms: list[float]) -> tuple[float, float, float]:
    a = np.asarray(ms)
    return float(np.median(a)), float(np.percentile(a, 95)), float(a.mean())


def measure_case(case: Case, frames: int, tmp: Path) -> dict[str, Any]:
    w, h = case.input_wh
    spec = InputSpec(channels=1, dtype="uint8", max_value=255, input_width=w, input_height=h,
                     image_width=case.image_wh[0], image_height=case.image_wh[1])
    scorer, graph = _graphs(spec)
    cfg = OrtEngineConfig(intra_op_threads=2)
    runners: dict[str, BundleRunner] = {}
    for shared in (False, True):
        for flagged in (True, False):
            name = f"{'shared' if shared else 'separate'}/{'flagged' if flagged else 'accepted'}"
            # every score is >= 0: lower 0 flags every part; an unreachable lower accepts every part
            b = _bundle(tmp / f"{name.replace('/', '_')}_{w}x{h}", spec, scorer, graph, shared=shared,
                        lower=0.0 if flagged else 1e30)
            runners[name] = BundleRunner.from_bundle(b, cfg)
    rng = np.random.default_rng(0)
    frame: npt.NDArray[np.uint8] = rng.integers(0, 256, (case.image_wh[1], case.image_wh[0]), dtype=np.uint8)
    probs = {k: r.infer(frame).class_probs for k, r in runners.items() if k.endswith("flagged")}
    diff = float(np.max(np.abs(probs["shared/flagged"] - probs["separate/flagged"])))  # type: ignore[operator]
    for r in runners.values():
        r.warmup(5)
    samples: dict[str, dict[str, list[float]]] = {k: {"inference": [], "anomaly": [], "classifier": []}
                                                  for k in runners}
    order = list(runners)
    for i in range(frames):
        for k in order if i % 2 == 0 else order[::-1]:
            t = runners[k].infer(frame).timings_ms
            for stage in samples[k]:
                samples[k][stage].append(t[stage])
    for r in runners.values():
        r.close()
    with torch.no_grad():
        chw = tuple(scorer.forward_with_stage(torch.zeros(1, 1, h, w), "stage4")[2].shape[1:])
    return {"case": case, "samples": samples, "probs_diff": diff, "chw": chw,
            "map_bytes": int(np.prod(chw)) * 4}


def render(results: list[dict[str, Any]], frames: int, load: tuple[tuple[float, ...], tuple[float, ...]],
           elapsed_s: float) -> str:
    lines = [f"ONNX Runtime {__import__('onnxruntime').__version__} CPU, edge session options (intra_op_threads=2, "
             f"no spinning), batch 1 (untiled), {frames} frames per variant interleaved; load average "
             f"{load[0][0]:.1f} before, {load[1][0]:.1f} after ({elapsed_s:.0f} s).", "",
             "| spec | stage4 map | path | anomaly ms (p50 / p95) | classifier ms (p50 / p95) | "
             "flagged part: anomaly + classifier ms (p50 / p95) | accepted part ms (p50 / p95) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        c, chw = r["case"], r["chw"]
        for path in ("separate", "shared"):
            f, a = r["samples"][f"{path}/flagged"], r["samples"][f"{path}/accepted"]
            fa, fc, ft = _stats(f["anomaly"]), _stats(f["classifier"]), _stats(f["inference"])
            acc = _stats(a["inference"])
            spec = f"{c.name} -> {c.input_wh[0]}x{c.input_wh[1]}"
            lines.append(f"| {spec} | {list(chw)}, {r['map_bytes'] / 1024:.0f} KiB | {path} | {fa[0]:.1f} / "
                         f"{fa[1]:.1f} | {fc[0]:.1f} / {fc[1]:.1f} | **{ft[0]:.1f}** / {ft[1]:.1f} | "
                         f"{acc[0]:.1f} / {acc[1]:.1f} |")
    lines += ["", "Per part at a flagged share (mean ms, accepted and flagged parts mixed):", "",
              "| spec | path | 2 % flagged | 10 % flagged | 30 % flagged | flagged part p50 ratio shared/separate |",
              "|---|---|---|---|---|---|"]
    for r in results:
        sep_f = _stats(r["samples"]["separate/flagged"]["inference"])
        for path in ("separate", "shared"):
            fl = _stats(r["samples"][f"{path}/flagged"]["inference"])
            ac = _stats(r["samples"][f"{path}/accepted"]["inference"])
            mix = [ac[2] * (1 - s) + fl[2] * s for s in (0.02, 0.10, 0.30)]
            ratio = f"{fl[0] / sep_f[0]:.2f}" if path == "shared" else "1"
            lines.append(f"| {r['case'].name} | {path} | " + " | ".join(f"{v:.1f}" for v in mix) + f" | {ratio} |")
    lines += ["", "class_probs shared vs separate on the same frame (max abs difference): "
              + ", ".join(f"{r['case'].name}: {r['probs_diff']:.1e}" for r in results) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300, help="frames per variant (4 variants per spec, interleaved)")
    p.add_argument("--cases", nargs="*", type=int, default=[0, 1], help="which specs (0 = demo, 1 = casting-like)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    load0, t0 = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure_case(CASES[i], args.frames, Path(tmp)) for i in args.cases]
    print(render(results, args.frames, (load0, os.getloadavg()), time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
