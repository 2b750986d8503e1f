"""Retrain's regression evaluation reads grey images saved as RGB the way training read them.

Real datasets (casting) store a mono camera's frames as 3-channel JPEG/PNG with identical
channels. The training loader treats such a dataset as mono, so the bundle expects mono frames;
``retrain.evaluate`` reads the dataset store's objects and must hand the bundle the same mono
pixels (it used to pass the RGB array and the edge refused it: "frame is RGB but the bundle
expects mono"). One tiny training (64 px, bank 32).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lineguard.contracts import Verdict
from lineguard.imageio import read_image
from lineguard_models.backtest import Judge
from lineguard_models.data import load_image
from lineguard_models.datastore import DatasetStore
from lineguard_models.pipeline import TrainConfig, train
from lineguard_models.retrain import evaluate
from lineguard_models.synth import SynthConfig, write_dataset


def test_evaluate_judges_grey_rgb_files_as_mono(tmp_path: Path) -> None:
    write_dataset(tmp_path / "mono", SynthConfig(n_good=16, n_defect_per_class=6, defect_classes=("scratch",), seed=5))
    for src in sorted((tmp_path / "mono").rglob("*.png")):  # the mono camera's frames saved as colour
        dst = tmp_path / "rgb" / src.relative_to(tmp_path / "mono")
        dst.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dst), cv2.cvtColor(cv2.imread(str(src), cv2.IMREAD_UNCHANGED), cv2.COLOR_GRAY2BGR))
    store = DatasetStore.open(tmp_path / "store")
    store.import_folder(tmp_path / "rgb")
    store.materialize(tmp_path / "train")
    bundle = train(tmp_path / "train", tmp_path / "bundle",
                   TrainConfig(input_size_px=64, bank_size=32, golden_good=1, golden_defect=1), progress=lambda s: None)
    assert bundle.manifest.input.channels == 1
    regression = store.snapshot().select("regression")
    assert read_image(store.path_of(regression[0])).ndim == 3  # the stored object really is RGB

    ev = evaluate(bundle, store, regression)

    judge = Judge(bundle)  # the reference: the same files loaded as the training loader loads them
    verdicts = [(r.label, judge.judge(load_image(store.path_of(r), mono_from_rgb=True))[0].verdict)
                for r in regression]
    judge.close()
    goods = [v for lab, v in verdicts if lab == "good"]
    assert ev.good_images == len(goods) > 0 and ev.class_images == {"scratch": len(verdicts) - len(goods)}
    assert ev.good_rejected == sum(v is Verdict.REJECT for v in goods)
    assert ev.class_caught["scratch"] == sum(v is not Verdict.ACCEPT for lab, v in verdicts if lab != "good")
    assert np.isfinite(ev.false_reject_rate)
