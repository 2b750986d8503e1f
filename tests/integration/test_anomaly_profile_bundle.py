"""``train`` with a camera profile: the anomaly bank sees the profile's variants and the bundle says so.

One tiny synthetic dataset (mono 8 bit, 64 px input, bank 64) is trained once with a profile (bank
variants on); without a profile the fitting inputs must be today's (the good images as they are).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pipeline = pytest.importorskip("lineguard_models.pipeline")

from lineguard.bundle import Bundle  # noqa: E402
from lineguard.preprocess import prepare  # noqa: E402
from lineguard_models.bank_augment import BankAugmentConfig, bank_context, describe  # noqa: E402
from lineguard_models.data import scan_dataset  # noqa: E402
from lineguard_models.ortscore import iter_batches  # noqa: E402
from lineguard_models.synth import SynthConfig, write_dataset  # noqa: E402

PROFILE = """\
sensor: mono
bit_depth: 8
orientation_specific: false
flips: [horizontal]
gain_range: [0.9, 1.1]
noise_std_max_frac: 0.01
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bankaug") / "data"
    write_dataset(root, SynthConfig(n_good=12, width_px=96, height_px=64, n_defect_per_class=4,
                                    defect_classes=("scratch", "pit"), seed=5))
    return root


def _train(data: Path, out: Path, profile: Path | None, messages: list[str]) -> Bundle:
    cfg = pipeline.TrainConfig(
        input_size_px=64, bank_size=64, min_holdout=5, seed=2, golden_good=1, golden_defect=1,
        camera_profile=profile,
        anomaly_bank=BankAugmentConfig(kinds=("orientation", "illumination", "focus"), copies_per_image=2),
    )
    bundle: Bundle = pipeline.train(data, out, cfg, progress=messages.append)
    return bundle


def test_profile_variants_reach_the_bank_and_are_recorded(data: Path, tmp_path: Path) -> None:
    profile = tmp_path / "camera.yaml"
    profile.write_text(PROFILE, encoding="utf-8")
    messages: list[str] = []
    bundle = _train(data, tmp_path / "with", profile, messages)
    prov = bundle.manifest.provenance
    rec = prov["anomaly_bank_augmentation"]
    n = prov["train_images"]
    assert rec["applied"] is True
    assert rec["kinds"] == ["orientation", "illumination"]  # the profile has no focus blur
    assert rec["kinds_not_allowed_by_profile"] == ["focus"]
    assert rec["images_fitted"] == 3 * n and rec["copies_per_image"] == 2
    assert rec["profile"]["flips"] == ["horizontal"] and rec["profile"]["noise_std_max_frac"] == 0.0
    assert f"fit: {3 * n}/{3 * n} tiles" in " ".join(messages)  # the variants were really fitted
    report = bundle.path("report/report.md").read_text(encoding="utf-8")
    assert "anomaly bank augmentation" in report and "orientation, illumination" in report


def test_without_a_profile_the_bank_sees_the_good_images_as_they_are(data: Path) -> None:
    # what train() fits and records when no profile is given (a second training run would cost ~30 s)
    ds = scan_dataset(data)
    cfg = pipeline.TrainConfig(input_size_px=64, min_holdout=5, seed=2)
    train_s, _ = pipeline.split_good(ds, cfg)
    spec = pipeline.make_input_spec(ds, train_s, cfg)
    got = list(iter_batches(ds, train_s, spec, profile=None, bank=cfg.anomaly_bank, seed=cfg.seed))
    # exactly the preprocessed good images, one per image, as before profiles existed
    assert len(got) == len(train_s)
    assert all(np.array_equal(g, prepare(ds.load(s), spec)[0]) for g, s in zip(got, train_s, strict=True))
    rec = describe(None, cfg.anomaly_bank, len(train_s))
    assert rec["applied"] is False and rec["images_fitted"] == len(train_s)
    assert bank_context(rec) == {"anomaly bank augmentation": "none (no camera profile given)"}
