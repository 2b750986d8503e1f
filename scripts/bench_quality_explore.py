"""Fast exploration of anomaly-recipe settings on cached backbone features (seed 0 first).

Data flow: quality_sets split (same 50 fitted goods as the product) -> shared preprocessing
(``lineguard.preprocess.prepare``, the given geometry) -> the product's own patch features
(``AnomalyScorer.features``: stages, 3x3 averaging, upsampling) cached per (set, geometry,
backbone, seed) under ``/work/data/quality/explore`` -> banks (every patch / greedy coreset / fixed
rows / four 90-degree turns) -> nearest-neighbour distances -> image scores (patch max, blurred map
max, top-k mean) -> image AUROC, one JSON per (set, seed, variant).

Only for choosing what to confirm: every default is then confirmed with the product path
(``bench_quality.py``), and the suite tables come from that path only.

Usage: ``.venv/bin/python scripts/bench_quality_explore.py --sets casting --variants full,cs10``
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

from lineguard.preprocess import InputSpec, prepare
from lineguard_models.anomaly import AnomalyScorer, ScorerSpec
from lineguard_models.backbone import BackboneConfig, load_backbone
from lineguard_models.coreset import greedy_kcenter
from lineguard_models.data import load_image, scan_dataset
from lineguard_models.pipeline import input_size_for_side

BASE = Path("/work/data/quality")
ALL_STAGES = ("stage3", "stage4", "stage5")
DIMS = {"efficientnet_lite0": (40, 80, 112), "efficientnet_lite1": (40, 80, 112),
        "efficientnet_lite2": (48, 88, 120)}


def geometry(name: str, w: int, h: int) -> tuple[int, int, str]:
    """'short224' (aspect kept, shorter side 224), 'long224' (old default), 'sq224' (squash)."""
    kind, px = name[:-3], int(name[-3:])
    if kind == "sq":
        return px, px, "stretch"
    return (*input_size_for_side(w, h, px, kind), "letterbox")  # type: ignore[arg-type]


def _cells_tag(cells: int) -> str:
    """File-name part of the neighbourhood averaging (3, the stop-8 recipe, keeps the older names)."""
    return "" if cells == 3 else f"_c{cells}"


def features(sp: q.Split, folder: Path, geom: str, backbone: str, rot: bool,
             cells: int = 3) -> dict[str, torch.Tensor]:
    name = f"{sp.name}_s{sp.seed}_{geom}_{backbone}{_cells_tag(cells)}{'_rot' if rot else ''}.pt"
    path = BASE / "explore" / "feats" / name
    if path.exists():
        return torch.load(path)  # type: ignore[no-any-return]
    ds = scan_dataset(folder)
    fit = q.fit_goods(sp, folder, sp.seed)
    im0 = load_image(fit[0], mono_from_rgb=ds.mono_from_rgb)
    w, h, fit_mode = geometry(geom, im0.shape[1], im0.shape[0])
    spec = InputSpec(channels=ds.channels, dtype=ds.dtype, max_value=255, input_width=w, input_height=h,
                     fit=fit_mode)  # type: ignore[arg-type]
    bb = load_backbone(BackboneConfig(kind=backbone, stages=ALL_STAGES))  # type: ignore[arg-type]
    sspec = ScorerSpec(input_height_px=h, input_width_px=w, channels=ds.channels, max_value=255.0,
                       stages=ALL_STAGES, neighbourhood_cells=cells, projection_dim=None, projection_seed=0,
                       blur_sigma_px=4.0, image_score="patch_max")
    scorer = AnomalyScorer(bb, torch.zeros(1, sum(DIMS[backbone])), sspec).eval()

    def run(paths: list[Path], turns: bool) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for p in paths:
                x = torch.from_numpy(prepare(load_image(p, mono_from_rgb=ds.mono_from_rgb), spec)[0])
                xs = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)] if turns and w == h else [x]
                for xi in xs:
                    out.append(scorer.features(scorer.normalise(xi)).flatten(2).transpose(1, 2)[0].half())
        return torch.stack(out)

    t0 = time.monotonic()
    test = [] if rot else [sp.root / i.path for i in sp.test]
    data = {"fit": run(fit, rot), "test": run(test, False) if test else torch.zeros(0),
            "labels": torch.tensor([i.label != "good" for i in sp.test]), "grid": torch.tensor(scorer.features.grid_hw),
            "hw": torch.tensor([h, w])}
    print(f"{sp.name} {geom} {backbone} rot={rot}: features in {time.monotonic() - t0:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def select(f: torch.Tensor, stages: tuple[str, ...], backbone: str) -> torch.Tensor:
    dims, out, start = DIMS[backbone], [], 0
    for s, d in zip(ALL_STAGES, dims, strict=True):
        if s in stages:
            out.append(f[..., start:start + d])
        start += d
    return torch.cat(out, dim=-1).float()


def nn_dist(test: torch.Tensor, bank: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    centre = bank.mean(0)
    b = bank - centre
    bt, bsq = (-2.0 * b.t()).contiguous(), b.pow(2).sum(1)
    flat = test.reshape(-1, test.shape[-1]) - centre
    out = torch.empty(flat.shape[0])
    for i in range(0, flat.shape[0], chunk):
        a = flat[i:i + chunk]
        out[i:i + chunk] = ((a @ bt + bsq).amin(1) + a.pow(2).sum(1)).clamp_min(0).sqrt()
    return out.reshape(test.shape[0], -1)


def scores(dist: torch.Tensor, grid: tuple[int, int], hw: tuple[int, int]) -> dict[str, np.ndarray]:
    from lineguard_models.anomaly import _gaussian_kernel

    out = {"patch_max": dist.amax(1).numpy()}
    for k in (3, 10):
        out[f"top{k}"] = dist.topk(k, dim=1).values.mean(1).numpy()
    maps = torch.nn.functional.interpolate(dist.reshape(-1, 1, *grid), size=hw, mode="bilinear")
    kern = _gaussian_kernel(4.0)
    r = kern.numel() // 2
    pad, conv = torch.nn.functional.pad, torch.nn.functional.conv2d
    m = conv(pad(maps, (r, r, 0, 0), mode="replicate"), kern.view(1, 1, 1, -1))
    m = conv(pad(m, (0, 0, r, r), mode="replicate"), kern.view(1, 1, -1, 1))
    out["map_max"] = m.flatten(1).amax(1).numpy()
    return out


def bank_for(fit: torch.Tensor, variant: str, seed: int) -> torch.Tensor:
    rows = fit.reshape(-1, fit.shape[-1])
    if variant == "full":
        return rows
    gen = torch.Generator().manual_seed(seed)
    k = int(variant[4:]) if variant.startswith("rows") else math.ceil(int(variant[2:]) / 100 * rows.shape[0])
    return rows[greedy_kcenter(rows, k, generator=gen)]


def evaluate(name: str, seed: int, geom: str, backbone: str, stages: tuple[str, ...], bank: str,
             rot: bool, cells: int = 3) -> dict[str, object]:
    tag = f"{geom}_{backbone}{_cells_tag(cells)}_{'+'.join(s[-1] for s in stages)}_{bank}{'_rot' if rot else ''}"
    out_path = BASE / "explore" / "results" / f"{name}_s{seed}_{tag}.json"
    if out_path.exists():
        return json.loads(out_path.read_text())  # type: ignore[no-any-return]
    sp = q.make_split(Path(__file__).resolve().parents[2] / "shared" / "datasets", name, seed)
    folder = q.build_folder(sp, BASE / "folders")
    data = features(sp, folder, geom, backbone, False, cells)
    fit = features(sp, folder, geom, backbone, True, cells)["fit"] if rot else data["fit"]
    t0 = time.monotonic()
    bank = bank_for(select(fit, stages, backbone), bank, seed)
    t_bank = time.monotonic() - t0
    dist = nn_dist(select(data["test"], stages, backbone), bank)
    labels = data["labels"].numpy()
    grid = tuple(int(v) for v in data["grid"])
    hw = tuple(int(v) for v in data["hw"])
    res: dict[str, object] = {"set": name, "seed": seed, "tag": tag, "bank_rows": int(bank.shape[0]),
                              "dim": int(bank.shape[1]), "input_hw": list(hw), "coreset_s": round(t_bank, 1)}
    for k, s in scores(dist, grid, hw).items():  # type: ignore[arg-type]
        res[f"auroc_{k}"] = round(q.auroc(s[~labels], s[labels]), 4)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res))
    print(json.dumps(res), flush=True)
    return res


def engine_latency(shapes: list[str], runs: int = 100) -> None:
    """p50 of engines with the given shape, 'backbone:stages:WxH:rows' (e.g. 'efficientnet_lite0:3+5:224x224:3920'),
    random bank, exported like a bundle's and run by ONNX Runtime CPU with 2 threads, interleaved. The
    cost of a setting depends on these shapes only, so it is measured without fitting."""
    import onnxruntime as ort

    from lineguard_models.export import export_onnx

    sessions, feeds = [], []
    for shape in shapes:
        kind, st, wh, rows = shape.split(":")
        w, h = map(int, wh.split("x"))
        stages = tuple(f"stage{c}" for c in st.split("+"))
        bb = load_backbone(BackboneConfig(kind=kind, stages=stages))  # type: ignore[arg-type]
        spec = ScorerSpec(input_height_px=h, input_width_px=w, channels=3, max_value=255.0, stages=stages,
                          neighbourhood_cells=3, projection_dim=None, projection_seed=0, blur_sigma_px=4.0,
                          image_score="patch_max")
        dim = sum(bb.stage_channels[s] for s in stages)
        scorer = AnomalyScorer(bb, torch.randn(int(rows), dim), spec).eval()
        path = BASE / "explore" / "engines" / f"{shape.replace(':', '_')}.onnx"
        export_onnx(scorer, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
        sessions.append(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]))
        feeds.append(np.random.default_rng(0).uniform(0, 255, (1, 3, h, w)).astype(np.float32))
    times: list[list[float]] = [[] for _ in shapes]
    import os

    load0 = os.getloadavg()[0]
    for i in range(runs + 5):
        for j, (sess, x) in enumerate(zip(sessions, feeds, strict=True)):
            t0 = time.perf_counter()
            sess.run(["anomaly_score"], {"image": x})
            if i >= 5:
                times[j].append((time.perf_counter() - t0) * 1e3)
    out = BASE / "results" / "latency_shapes.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    for shape, t in zip(shapes, times, strict=True):
        old[shape] = {"p50_ms": round(float(np.median(t)), 2), "p90_ms": round(float(np.percentile(t, 90)), 2),
                      "loadavg_before": load0, "loadavg_after": os.getloadavg()[0], "interleaved_with": shapes}
        print(shape, old[shape], flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(old, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sets", default=",".join(q.SETS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--geoms", default="short224")
    ap.add_argument("--backbones", default="efficientnet_lite0")
    ap.add_argument("--stages", default="3+5")
    ap.add_argument("--banks", default="cs10")
    ap.add_argument("--rot", action="store_true")
    ap.add_argument("--cells", type=int, default=3, help="feature neighbourhood averaging (1 = the default today)")
    ap.add_argument("--latency", default="", help="engine shapes to time instead (see engine_latency)")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per engine with --latency")
    a = ap.parse_args()
    if a.latency:
        torch.set_num_threads(2)
        engine_latency(a.latency.split(","), a.runs)
        return
    torch.set_num_threads(1)  # a shared machine: one thread never spin-waits for a descheduled sibling
    for name in a.sets.split(","):
        for seed in map(int, a.seeds.split(",")):
            for geom in a.geoms.split(","):
                for bb in a.backbones.split(","):
                    for st in a.stages.split(","):
                        for bank in a.banks.split(","):
                            evaluate(name, seed, geom, bb, tuple(f"stage{c}" for c in st.split("+")), bank, a.rot,
                                     a.cells)


if __name__ == "__main__":
    main()
