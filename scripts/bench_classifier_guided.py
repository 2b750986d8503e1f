"""Anomaly-guided classifier features on mvtec_bottle, the suite's one end-to-end set (issue 16, stop 18: not adopted).

The anomaly engine says *where* the defect is; does telling the classifier help it say *what* it is? Per seed
0-2: the quality suite's bottle split (10-11 labelled per class train, the other 10-11 test) and that seed's
product bundle (``/work/data/quality/bundles/e2e_auto``, as ``lineguard train`` ships it). Every defect image goes
through the edge's preprocessing and the bundle's anomaly graph (its ``anomaly_map``) and through the frozen
EfficientNet-Lite0 (stages 4-6, pooled by the product's ``PooledFeatures``). Features compared, each with the
product's head fit (``classifier.fit_from_features``: class-balanced logistic, L2 by out-of-fold log-loss; no
copies), held-out accuracy in %:

- ``s56`` the shipped recipe (stage5+6, average and GeM at 224 px), ``s456`` with stage4;
- ``+w<tau>``: beside it, the stage maps averaged with weights softmax(anomaly map / (tau * its std)) (the
  defect's cells dominate); ``+top10``: the mean of the 10 % most anomalous cells; ``+stats`` (and ``stats
  alone``): the map's maximum, mean, spread and the share of cells above 0.6 / 0.8 / 1 x the accept threshold;
- ``crop<px>``: a px x px window of the prepared input around the map's peak, scaled to 224 (alone and beside);
- ``s56@288`` / ``s56@384``: the prepared input scaled to that size; ``s56 native``: the 384 px dataset image;
- ``+res`` (stop 24): each cell's stage feature less its nearest neighbour among the 60 training goods' cells (what
  the part has that no good part has), the mean residual and mean absolute residual over the 10 % of cells farthest
  from the goods, stages 4-6; ``+area``: the share of cells farther from the goods than 99 % of good cells are.

Usage: ``.venv/bin/python scripts/bench_classifier_guided.py`` (about 2 min on 2 cores); the figures are in
docs/classifier.md ("Measured at stop 18").
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_sets as q

from lineguard.bundle import load_bundle
from lineguard.imageio import read_image
from lineguard.preprocess import prepare
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.classifier import ClassifierConfig, fit_from_features
from lineguard_models.classifier_features import FeatureSet
from lineguard_models.classifier_graph import POOL_WIDTH, PooledFeatures

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
BUNDLES = Path("/work/data/quality/bundles/e2e_auto")
OUT = Path("/work/data/quality/classifier/guided_bottle.json")
STAGES = ("stage4", "stage5", "stage6")
Feats = dict[str, npt.NDArray[np.float32]]

VARIANTS: dict[str, list[str]] = {
    "s56 (shipped)": ["stage5_mg", "stage6_mg"],
    "s456": ["stage4_mg", "stage5_mg", "stage6_mg"],
    "s56 +stats": ["stage5_mg", "stage6_mg", "stats"],
    "stats alone": ["stats"],  # stop 23: does the defect's size (the map's spread) name the bottle's breaks?
    "s56 +w0.5": ["stage5_mg", "stage6_mg", "stage5_w0.5", "stage6_w0.5"],
    "s56 +w1": ["stage5_mg", "stage6_mg", "stage5_w1.0", "stage6_w1.0"],
    "s56 +w2": ["stage5_mg", "stage6_mg", "stage5_w2.0", "stage6_w2.0"],
    "w1 alone": ["stage5_w1.0", "stage6_w1.0"],
    "s56 +top10": ["stage5_mg", "stage6_mg", "stage5_top10", "stage6_top10"],
    "crop96": ["stage5_crop96", "stage6_crop96"],
    "s56 +crop96": ["stage5_mg", "stage6_mg", "stage5_crop96", "stage6_crop96"],
    "s56 +crop144": ["stage5_mg", "stage6_mg", "stage5_crop144", "stage6_crop144"],
    "s56@288": ["stage5_mg288", "stage6_mg288"],
    "s456@288": ["stage4_mg288", "stage5_mg288", "stage6_mg288"],
    "s56@384": ["stage5_mg384", "stage6_mg384"],
    "s56 native 384": ["stage5_native", "stage6_native"],
    "s456 native 384": ["stage4_native", "stage5_native", "stage6_native"],
    # stop 24: what differs from the nearest good patch (each cell's feature less its nearest neighbour among the
    # split's 60 training goods' cells, the anomaly bank's view), pooled over the cells that differ most
    "s56 +res": ["stage5_mg", "stage6_mg", "stage4_res", "stage5_res", "stage6_res"],
    "res alone": ["stage4_res", "stage5_res", "stage6_res"],
    "s56 +res +area": ["stage5_mg", "stage6_mg", "stage4_res", "stage5_res", "stage6_res", "area"],
    "area alone": ["area"],
    # stop 24: where on the part the defect is (the anomaly map's peak and weighted centre, their distance from
    # the frame's centre): a break sits on the rim, contamination inside
    "s56 +loc": ["stage5_mg", "stage6_mg", "loc"],
    "loc alone": ["loc"],
    "s56 +loc +stats": ["stage5_mg", "stage6_mg", "loc", "stats"],
}


class Backbone:
    """The product's pooling (``PooledFeatures``: normalisation, average and GeM per stage) on inputs in [0, 1],
    at any size, with the raw stage maps kept for the map-guided variants."""

    def __init__(self) -> None:
        net = EfficientNetLite0.from_state_dict_file(out_stages=STAGES).eval()
        self.pf = PooledFeatures(net, max_value=1.0, pooling="mean_gem")
        self.widths = [net.stage_channels[s] * POOL_WIDTH["mean_gem"] for s in STAGES]

    def pooled(self, unit: torch.Tensor, size: int | None, tag: str, out: Feats) -> dict[str, torch.Tensor]:
        """``unit``: [1, C, H, W] in [0, 1]; the pooled features of every stage as ``<stage>_<tag>``."""
        x = unit * self.pf.get_buffer("in_scale") + self.pf.get_buffer("in_shift")  # mono broadcasts to 3
        if size is not None and size != x.shape[2]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        with torch.no_grad():
            maps: dict[str, torch.Tensor] = self.pf.backbone(x)
            vec = self.pf.pool(maps)[0].numpy()
        for s, part in zip(STAGES, np.split(vec, np.cumsum(self.widths)[:-1]), strict=True):
            out[f"{s}_{tag}"] = part
        return maps


def good_banks(bb: Backbone, sp: q.Split, spec: Any, mono: bool) -> dict[str, torch.Tensor]:
    """Every cell of every stage map of the split's training goods, [cells, C] per stage, and the 99th percentile
    of each good cell's distance to its nearest cell of another good image (``<stage>_q99``)."""
    per: dict[str, list[torch.Tensor]] = {s: [] for s in STAGES}
    for it in sp.train_good:
        im = read_image(DATASETS / "mvtec_bottle" / it.path)
        im = np.ascontiguousarray(im[..., 0]) if mono and im.ndim == 3 else im
        unit = torch.from_numpy(prepare(im, spec)[0]).float() / spec.max_value
        maps = bb.pooled(unit, 224, "bank", {})
        for s in STAGES:
            per[s].append(maps[s][0].flatten(1).T)
    out: dict[str, torch.Tensor] = {}
    for s in STAGES:
        out[s] = torch.cat(per[s])
        half = len(per[s]) // 2  # cells of the first half scored against the second: a good cell's own distance
        d = torch.cdist(torch.cat(per[s][:half]), torch.cat(per[s][half:])).min(1).values
        out[f"{s}_q99"] = torch.quantile(d, 0.99)
    return out


def residual(m: torch.Tensor, bank: torch.Tensor, q99: torch.Tensor) -> tuple[npt.NDArray[np.float32], float]:
    """(the mean residual and mean |residual| over the 10 % of cells farthest from the goods, the share of cells
    beyond the goods' own 99th percentile distance) of one stage map [C, H, W]."""
    cells = m.flatten(1).T
    dist = torch.cdist(cells, bank)
    d, nn_ix = dist.min(1)
    r = cells - bank[nn_ix]
    top = torch.topk(d, max(1, d.numel() // 10)).indices
    return torch.cat([r[top].mean(0), r[top].abs().mean(0)]).numpy(), float((d > q99).float().mean())


def location(a: torch.Tensor) -> npt.NDArray[np.float32]:
    """Where the defect is on an anomaly map [H, W]: the peak's and the weighted centre's position (0-1 across the
    frame) and their distance from the frame's centre."""
    h, w = a.shape
    yy, xx = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    iy, ix = np.unravel_index(int(a.argmax()), (h, w))
    peak = (float(yy[iy, ix]), float(xx[iy, ix]))
    wgt = torch.softmax(((a - a.max()) / (a.std() + 1e-6)).flatten(), 0).view_as(a)
    centre = (float((wgt * yy).sum()), float((wgt * xx).sum()))
    dist = [float(np.hypot(p[0] - 0.5, p[1] - 0.5)) for p in (peak, centre)]
    return np.array([*peak, *centre, *dist], np.float32)


def features(bb: Backbone, seed: int) -> list[tuple[str, str, Feats]]:
    bundle = load_bundle(BUNDLES / f"mvtec_bottle_s{seed}")
    spec = bundle.manifest.input
    mono = bool(bundle.manifest.provenance["dataset"]["mono_from_rgb"])
    sess = ort.InferenceSession(str(bundle.root / "anomaly.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    sp = q.make_split(DATASETS, "mvtec_bottle", seed)
    banks = good_banks(bb, sp, spec, mono)
    rows = []
    for part, items in (("train", sp.calib_defects), ("test", [i for i in sp.test if i.label != "good"])):
        for it in items:
            im = read_image(DATASETS / "mvtec_bottle" / it.path)
            im = np.ascontiguousarray(im[..., 0]) if mono and im.ndim == 3 else im
            x, _ = prepare(im, spec)
            amap = torch.from_numpy(dict(zip(names, sess.run(None, {"image": x}), strict=True))["anomaly_map"])
            unit = torch.from_numpy(x).float() / spec.max_value
            f: Feats = {}
            maps = bb.pooled(unit, 224, "mg", f)
            for px in (288, 384):
                bb.pooled(unit, px, f"mg{px}", f)
            raw = torch.from_numpy(im.astype(np.float32) / 255.0)
            bb.pooled(raw.permute(2, 0, 1)[None] if raw.ndim == 3 else raw[None, None], None, "native", f)
            areas = []
            for s in STAGES:
                f[f"{s}_res"], share = residual(maps[s][0], banks[s], banks[f"{s}_q99"])
                areas.append(share)
            f["area"] = np.log(np.array(areas, np.float32) + 1e-3)
            for s in STAGES:
                m = maps[s][0]
                a = F.interpolate(amap.float(), size=m.shape[1:], mode="bilinear", align_corners=False)[0, 0]
                for tau in (0.5, 1.0, 2.0):
                    w = torch.softmax(((a - a.max()) / (tau * (a.std() + 1e-6))).flatten(), 0).view_as(a)
                    f[f"{s}_w{tau}"] = (m * w).sum((1, 2)).numpy()
                top = torch.topk(a.flatten(), max(1, a.numel() // 10)).indices
                f[f"{s}_top10"] = m.flatten(1)[:, top].mean(1).numpy()
            a = amap[0, 0].float()
            h, w_ = x.shape[2], x.shape[3]
            iy, ix = np.unravel_index(int(a.argmax()), tuple(a.shape))
            cy, cx = (iy + 0.5) * h / a.shape[0], (ix + 0.5) * w_ / a.shape[1]
            for cs in (96, 144):
                y0, x0 = int(min(max(cy - cs / 2, 0), h - cs)), int(min(max(cx - cs / 2, 0), w_ - cs))
                bb.pooled(unit[:, :, y0:y0 + cs, x0:x0 + cs], 224, f"crop{cs}", f)
            f["loc"] = location(a)
            lower = bundle.manifest.thresholds.lower
            stats = [float(a.max()), float(a.mean()), float(a.std())] + [float((a > lower * r).float().mean())
                                                                         for r in (0.6, 0.8, 1.0)]
            f["stats"] = np.log1p(np.maximum(np.array(stats), 0)).astype(np.float32)
            rows.append((part, it.label, f))
    return rows


def held_out_accuracy(rows: Sequence[tuple[str, str, Feats]], keys: Sequence[str], seed: int) -> float:
    """The product's head fit (``fit_from_features``: L2 by out-of-fold log-loss) on the training rows."""
    classes = tuple(sorted({r[1] for r in rows}))

    def xy(part: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        rs = [r for r in rows if r[0] == part]
        return (np.stack([np.concatenate([r[2][k] for k in keys]) for r in rs]).astype(np.float32),
                np.array([classes.index(r[1]) for r in rs]))

    (xtr, ytr), (xte, yte) = xy("train"), xy("test")
    fs = FeatureSet(classes=classes, x=xtr, y=ytr, x_aug=np.zeros((0, xtr.shape[1]), np.float32),
                    aug_source=np.zeros(0, np.int64))
    head, _, _ = fit_from_features(fs, config=ClassifierConfig(), seed=seed)
    return float((head.probs(xte).argmax(1) == yte).mean())


def main() -> int:
    bb = Backbone()
    res: dict[str, Any] = {v: [] for v in VARIANTS}
    for seed in (0, 1, 2):
        rows = features(bb, seed)
        for v, keys in VARIANTS.items():
            res[v].append(round(100 * held_out_accuracy(rows, keys, seed), 1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1))
    for v, accs in res.items():
        print(f"{v:18s} {np.mean(accs):5.1f}  seeds {accs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
