"""Camera profile and augmentation: only physical kinds, pixel format kept, bounds honoured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from lineguard.errors import ConfigError, ImageError
from lineguard.preprocess import InputSpec
from lineguard_models.augment import NOT_PHYSICAL, CameraProfile, augment, augment_copies

RICH = {
    "sensor": "mono",
    "bit_depth": 12,
    "orientation_specific": False,
    "flips": ["horizontal", "vertical"],
    "rotate_90": True,
    "rotation_max_deg": 5.0,
    "gain_range": [0.8, 1.2],
    "gradient_max_frac": 0.2,
    "blur_sigma_px_range": [0.0, 1.5],
    "noise_std_max_frac": 0.02,
    "gamma_range": [0.8, 1.25],
    "contrast_range": [0.8, 1.2],
    "brightness_max_frac": 0.05,
}


def _texture(h: int, w: int, full: int, dtype: type, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.8, (h, w, channels)) if channels == 3 else rng.uniform(0.2, 0.8, (h, w))
    return (base * full).astype(dtype)


@pytest.mark.parametrize("kind", ["perspective", "jpeg_quality", "colour_jitter", "hue", "elastic"])
def test_non_physical_kind_is_refused_with_its_reason(kind: str) -> None:
    with pytest.raises(ValidationError) as info:
        CameraProfile.model_validate({**RICH, kind: 0.3})
    assert NOT_PHYSICAL[kind][:40] in str(info.value)


def test_colour_shift_on_mono_sensor_is_refused() -> None:
    with pytest.raises(ValidationError, match="mono sensor has no colour"):
        CameraProfile.model_validate({**RICH, "white_balance_max_frac": 0.05})
    # the same request on a colour sensor is physical (lamp colour) and accepted
    colour = CameraProfile.model_validate({**RICH, "sensor": "colour", "white_balance_max_frac": 0.05})
    assert colour.channels == 3


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"orientation_specific": True}, "orientation_specific profile cannot allow flips"),
        ({"gain_range": [1.3, 0.9]}, "gain_range: low 1.3 is above high 0.9"),
        ({"bit_depth": 20}, "less than or equal to 16"),
        ({"noise_std_max_frac": 0.5}, "less than or equal to 0.05"),
        ({"flips": ["horizontal", "horizontal"]}, "flips listed twice"),
        ({"exposure": 2}, "Extra inputs are not permitted"),
    ],
)
def test_impossible_profiles_are_refused(patch: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CameraProfile.model_validate({**RICH, **patch})


def test_yaml_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text("sensor: mono\nbit_depth: 8\nrotation_max_deg: 40\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"rotation_max_deg \(line 3\)"):
        CameraProfile.from_yaml(path)


@pytest.mark.parametrize(
    ("dtype", "bits", "channels"), [(np.uint8, 8, 1), (np.uint16, 12, 1), (np.uint16, 16, 3), (np.uint8, 8, 3)]
)
def test_augment_keeps_pixel_format_and_full_scale(dtype: type, bits: int, channels: int) -> None:
    sensor = "mono" if channels == 1 else "colour"
    extra = {"white_balance_max_frac": 0.1} if channels == 3 else {}
    profile = CameraProfile.model_validate({**RICH, "sensor": sensor, "bit_depth": bits, **extra})
    image = _texture(40, 40, profile.max_value, dtype, channels)
    rng = np.random.default_rng(0)
    outs = [augment(image, profile, rng) for _ in range(10)]
    for out in outs:
        assert out.dtype == image.dtype and out.shape == image.shape
        assert int(out.max()) <= profile.max_value
    assert any(not np.array_equal(o, image) for o in outs)


def test_identity_profile_changes_nothing() -> None:
    profile = CameraProfile(sensor="mono", bit_depth=8)
    image = _texture(24, 32, 255, np.uint8)
    assert np.array_equal(augment(image, profile, np.random.default_rng(0)), image)


def test_orientation_specific_profile_never_moves_structure() -> None:
    # a bright bar on the left must stay on the left when flips/rotations are not allowed
    profile = CameraProfile(sensor="mono", bit_depth=8, gain_range=(0.8, 1.2), noise_std_max_frac=0.01)
    image = np.full((32, 32), 40, np.uint8)
    image[:, :4] = 220
    rng = np.random.default_rng(3)
    for _ in range(20):
        out = augment(image, profile, rng).astype(float)
        assert out[:, :4].mean() > out[:, 8:].mean() + 80


def test_rotate_90_moves_structure_sometimes_and_keeps_values_in_range() -> None:
    profile = CameraProfile(sensor="mono", bit_depth=8, orientation_specific=False, rotate_90=True)
    image = np.full((32, 32), 40, np.uint8)
    image[:, :4] = 220
    rng = np.random.default_rng(0)
    moved = sum(augment(image, profile, rng)[:, :4].mean() < 100 for _ in range(20))
    assert 5 <= moved <= 19  # three of four orientations move the bar off the left edge


def test_rotate_90_on_a_non_square_frame_keeps_its_shape() -> None:
    # the camera's frame never changes shape: only the half turn is a view it can produce
    profile = CameraProfile(sensor="mono", bit_depth=8, orientation_specific=False, rotate_90=True)
    image = np.full((24, 40), 40, np.uint8)
    image[:, :4] = 220
    rng = np.random.default_rng(0)
    outs = [augment(image, profile, rng) for _ in range(20)]
    assert all(o.shape == image.shape for o in outs)
    assert 3 <= sum(o[:, -4:].mean() > 100 for o in outs) <= 17  # half turns put the bar on the right


def test_gain_is_bounded_by_the_profile() -> None:
    profile = CameraProfile(sensor="mono", bit_depth=8, gain_range=(0.9, 1.1))
    image = np.full((16, 16), 100, np.uint8)
    rng = np.random.default_rng(0)
    levels = [float(augment(image, profile, rng).mean()) for _ in range(50)]
    assert 89.5 <= min(levels) < 95 and 105 < max(levels) <= 110.5


def test_wrong_camera_is_refused() -> None:
    mono = CameraProfile(sensor="mono", bit_depth=8)
    with pytest.raises(ImageError, match="3 channel"):
        augment(np.zeros((8, 8, 3), np.uint8), mono, np.random.default_rng(0))
    with pytest.raises(ImageError, match="above the 8-bit full scale"):
        augment(np.full((8, 8), 4000, np.uint16), mono, np.random.default_rng(0))
    spec = InputSpec(channels=3, dtype="uint8", max_value=255, input_width=32, input_height=32)
    with pytest.raises(ConfigError, match="says mono"):
        mono.verify_matches(spec)


def test_conservative_profile_matches_its_spec() -> None:
    spec = InputSpec(channels=1, dtype="uint16", max_value=4095, input_width=32, input_height=32)
    profile = CameraProfile.conservative_for(spec)
    profile.verify_matches(spec)
    assert profile.bit_depth == 12 and profile.orientation_specific and not profile.flips
    copies = augment_copies([_texture(16, 16, 4095, np.uint16)], profile, np.random.default_rng(0))
    assert len(copies) == 1 and len(copies[0]) == profile.copies_per_image
