"""`lineguard augment-preview`: a contact sheet PNG through the real CLI dispatcher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lineguard.cli import main
from lineguard.imageio import read_image
from lineguard_models.synth import SynthConfig, write_dataset

PROFILE = """\
sensor: {sensor}
bit_depth: {bits}
orientation_specific: false
flips: [horizontal]
rotation_max_deg: 3
gain_range: [0.8, 1.2]
blur_sigma_px_range: [0.0, 1.0]
noise_std_max_frac: 0.01
"""


@pytest.mark.parametrize(("channels", "bits"), [(1, 16), (3, 8)])
def test_contact_sheet_keeps_mono_mono(tmp_path: Path, channels: int, bits: int) -> None:
    cfg = SynthConfig(width_px=48, height_px=40, channels=channels, bit_depth=bits,  # type: ignore[arg-type]
                      n_good=3, n_defect_per_class=1)
    write_dataset(tmp_path / "data", cfg)
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE.format(sensor="mono" if channels == 1 else "colour", bits=bits), encoding="utf-8")
    out = tmp_path / "sheet.png"
    rc = main(["augment-preview", "--data", str(tmp_path / "data"), "--profile", str(profile),
               "--out", str(out), "--samples", "3", "--variants", "4", "--cell-px", "64"])
    assert rc == 0
    sheet = read_image(out)
    assert sheet.dtype == np.uint8
    assert sheet.ndim == (2 if channels == 1 else 3)
    assert sheet.shape[:2] == (3 * 64 + 2 * 2, 5 * 64 + 4 * 2)
    # variants differ from the original cell (the profile changes gain, blur, noise)
    first, second = sheet[:64, :64].astype(int), sheet[:64, 66:130].astype(int)
    assert np.abs(first - second).mean() > 0.5


def test_profile_asking_for_jpeg_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_dataset(tmp_path / "data", SynthConfig(width_px=32, height_px=32, n_good=2, n_defect_per_class=1))
    profile = tmp_path / "profile.yaml"
    profile.write_text("sensor: mono\nbit_depth: 8\njpeg_quality: 70\n", encoding="utf-8")
    rc = main(["augment-preview", "--data", str(tmp_path / "data"), "--profile", str(profile),
               "--out", str(tmp_path / "sheet.png")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "camera delivers lossless frames" in err and not (tmp_path / "sheet.png").exists()
