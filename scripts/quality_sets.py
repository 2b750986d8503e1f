"""The quality suite's data: per (set, seed) splits of ../shared/datasets and their training folders.

Data flow: ``<dataset>/manifest.csv`` -> :func:`make_split` (seeded: goods for the training folder,
defects that calibrate, the test images no model saw) -> :func:`build_folder` (a symlink tree under
``/work/data/quality/folders``, outside the repository) -> ``lineguard_models.pipeline.train`` (the
product arm) or the comparator / exploration harness, which take the *same* 50 fitted goods
(:func:`fit_goods`, the product's own ``split_good``). Shared by ``bench_quality.py`` and
``bench_quality_explore.py`` so every arm sees one split.

Must never: put a test image into a training folder, or copy a dataset into the repository.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lineguard_models.pipeline import TrainConfig

SETS = ("mvtec_bottle", "mpdd_metal_plate", "casting", "deeppcb", "elpv_mono", "elpv_poly", "bsdata_pitting")
FIT_GOOD = 50
HELD_GOOD = 10  # good images the product holds out for calibration (holdout_fraction = 10 / 60)
DEFECTS_PER_CLASS = 20
TEST_GOOD_CAP = 100
TEST_DEFECT_CAP = 100


@dataclass(frozen=True)
class Item:
    path: str  # relative to the dataset root
    label: str  # "good" or the defect class
    mask: str  # relative mask path or ""


@dataclass
class Split:
    name: str
    seed: int
    root: Path
    train_good: list[Item] = field(default_factory=list)  # FIT_GOOD + HELD_GOOD: the product splits them
    calib_defects: list[Item] = field(default_factory=list)
    test: list[Item] = field(default_factory=list)


def read_manifest(root: Path) -> list[Item]:
    with (root / "manifest.csv").open(encoding="utf-8") as f:
        return [Item(r["path"], "good" if r["is_good"] == "1" else r["label"], r["mask"] or "")
                for r in csv.DictReader(f)]


def make_split(datasets: Path, name: str, seed: int) -> Split:
    """Seeded split: 60 goods for the training folder, <= 20 defects per class calibrating (at most
    half of a small class, so some remain to test), the rest capped at 100 good + 100 defect to test."""
    root = datasets / name
    items = read_manifest(root)
    rng = np.random.default_rng([seed, 22])
    goods = [items[i] for i in rng.permutation(len(items)) if items[i].label == "good"]
    sp = Split(name, seed, root, train_good=goods[: FIT_GOOD + HELD_GOOD])
    test_defects: list[Item] = []
    for cls in sorted({i.label for i in items} - {"good"}):
        members = [i for i in items if i.label == cls]
        members = [members[j] for j in rng.permutation(len(members))]
        k = min(DEFECTS_PER_CLASS, len(members) // 2)
        sp.calib_defects += members[:k]
        test_defects += members[k:]
    test_defects = [test_defects[j] for j in rng.permutation(len(test_defects))][:TEST_DEFECT_CAP]
    sp.test = goods[FIT_GOOD + HELD_GOOD:][:TEST_GOOD_CAP] + test_defects
    return sp


def link_name(item: Item) -> str:
    return item.path.replace("/", "__")


def build_folder(sp: Split, base: Path) -> Path:
    """Training folder ``<base>/<set>/seed<k>/{good,<class>}/`` of symlinks (idempotent)."""
    folder = base / sp.name / f"seed{sp.seed}"
    for it in sp.train_good + sp.calib_defects:
        dst = folder / it.label / link_name(it)
        if not dst.is_symlink():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to((sp.root / it.path).resolve())
    return folder


def split_config(seed: int) -> TrainConfig:
    """The TrainConfig fields that decide the product's good split: 10 of the 60 held out, 50 fitted."""
    return TrainConfig(seed=seed, holdout_fraction=0.16, min_holdout=HELD_GOOD, max_good=FIT_GOOD)


def fit_goods(sp: Split, folder: Path, seed: int) -> list[Path]:
    """The goods the product fits on this folder (its own ``split_good``), as dataset paths."""
    from lineguard_models.data import scan_dataset
    from lineguard_models.pipeline import split_good

    ds = scan_dataset(folder)
    train, _ = split_good(ds, split_config(seed))
    by_name = {link_name(i): sp.root / i.path for i in sp.train_good}
    return [by_name[Path(s.rel).name] for s in train]


def auroc(good: np.ndarray, bad: np.ndarray) -> float:
    """Image AUROC by the rank-sum (Mann-Whitney) formula, ties counted half."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([good, bad]))
    n_g, n_b = len(good), len(bad)
    return float((ranks[n_g:].sum() - n_b * (n_b + 1) / 2) / (n_g * n_b))
