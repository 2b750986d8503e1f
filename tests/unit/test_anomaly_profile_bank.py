"""Camera-profile variants for the anomaly bank: only kinds the profile allows, deterministic, recorded."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from lineguard_models.augment import CameraProfile
from lineguard_models.bank_augment import (
    BANK_KINDS,
    BankAugmentConfig,
    allowed_kinds,
    bank_profile,
    bank_variants,
    describe,
)

# everything the camera profile can offer, a colour cast included (which the bank must never use)
RICH: dict[str, Any] = {
    "sensor": "colour", "bit_depth": 8, "orientation_specific": False, "flips": ["horizontal", "vertical"],
    "rotate_90": True, "rotation_max_deg": 5.0, "gain_range": [0.7, 1.3], "gradient_max_frac": 0.2,
    "white_balance_max_frac": 0.2, "blur_sigma_px_range": [0.5, 1.5], "noise_std_max_frac": 0.03,
    "gamma_range": [0.8, 1.25], "contrast_range": [0.8, 1.2], "brightness_max_frac": 0.05,
}


def _image(h: int = 24, w: int = 24, channels: int = 3, dtype: type = np.uint8, full: int = 255) -> np.ndarray:
    rng = np.random.default_rng(7)
    shape = (h, w, channels) if channels == 3 else (h, w)
    return (rng.uniform(0.15, 0.85, shape) * full).astype(dtype)


def _variants(image: np.ndarray, profile: dict[str, Any], kinds: tuple[str, ...], copies: int = 6,
              seed: int = 0, index: int = 0) -> list[np.ndarray]:
    cfg = BankAugmentConfig(kinds=kinds, copies_per_image=copies)  # type: ignore[arg-type]
    return list(bank_variants(image, CameraProfile.model_validate(profile), cfg, seed=seed, index=index))


@pytest.mark.parametrize("kind", ["perspective", "colour_jitter", "jpeg", "white_balance", "cutout"])
def test_kinds_outside_the_bank_set_are_refused(kind: str) -> None:
    with pytest.raises(ValidationError):
        BankAugmentConfig(kinds=(kind,))  # type: ignore[arg-type]


def test_sub_profile_keeps_only_the_chosen_kind_and_never_a_colour_cast() -> None:
    rich = CameraProfile.model_validate(RICH)
    fields = {
        "orientation": {"flips", "rotate_90", "rotation_max_deg"},
        "illumination": {"gain_range", "gradient_max_frac", "gamma_range", "contrast_range", "brightness_max_frac"},
        "focus": {"blur_sigma_px_range"}, "noise": {"noise_std_max_frac"},
    }
    plain = CameraProfile(sensor="colour", bit_depth=8, orientation_specific=False)
    for kind in BANK_KINDS:
        sub = bank_profile(rich, (kind,))
        changed = {f for f in fields["orientation"] | set().union(*fields.values()) | {"white_balance_max_frac"}
                   if getattr(sub, f) != getattr(plain, f)}
        assert changed == fields[kind], kind
    assert bank_profile(rich, BANK_KINDS).white_balance_max_frac == 0.0


def test_orientation_only_moves_pixels_and_respects_an_orientation_specific_profile() -> None:
    image = _image()
    views = _variants(image, {**RICH, "rotation_max_deg": 0.0}, ("orientation",))
    assert len(views) == 7
    for v in views:  # flips and 90-degree steps only rearrange pixels: same multiset of values
        assert v.shape == image.shape and v.dtype == image.dtype
        assert np.array_equal(np.sort(v, axis=None), np.sort(image, axis=None))
    assert any(not np.array_equal(v, image) for v in views[1:])
    fixed = {k: v for k, v in RICH.items() if k not in ("flips", "rotate_90", "rotation_max_deg")}
    fixed["orientation_specific"] = True
    assert allowed_kinds(CameraProfile.model_validate(fixed), ("orientation", "noise")) == ("noise",)
    # only a kind the profile does not allow was asked for: the bank gets the image alone
    assert len(_variants(image, fixed, ("orientation",))) == 1


def test_illumination_changes_no_colour_even_when_the_profile_allows_a_colour_cast() -> None:
    image = _image(32, 32)
    views = _variants(image, RICH, ("illumination",), copies=8)
    assert any(not np.array_equal(v, image) for v in views[1:])
    order = np.argsort(image.astype(np.int32) * 3 + np.arange(3), axis=2)  # ties broken by channel index
    for v in views[1:]:
        # one light field per pixel and monotone response curves: the channel ranking of every pixel is
        # kept (a white-balance or hue shift would reorder channels); rounding may create ties only
        ranked = np.take_along_axis(v.astype(np.int32), order, axis=2)
        assert (np.diff(ranked, axis=2) >= 0).mean() > 0.99


def test_focus_and_noise_keep_geometry_and_level() -> None:
    image = _image(32, 32, channels=1)
    mono = {**RICH, "sensor": "mono", "white_balance_max_frac": 0.0}
    for kind in ("focus", "noise"):
        for v in _variants(image, mono, (kind,))[1:]:
            assert v.shape == image.shape
            assert abs(float(v.mean()) - float(image.mean())) < 2.0  # no light change
            assert not np.array_equal(v, image)
    blurred = _variants(image, mono, ("focus",))[1]
    assert blurred.std() < image.std()  # blur smooths, noise does not


def test_deterministic_per_seed_and_index_shape_and_full_scale_kept() -> None:
    image = _image(20, 28, channels=1, dtype=np.uint16, full=4095)
    mono12 = {**RICH, "sensor": "mono", "bit_depth": 12, "white_balance_max_frac": 0.0}
    a = _variants(image, mono12, BANK_KINDS, seed=3, index=5)
    b = _variants(image, mono12, BANK_KINDS, seed=3, index=5)
    c = _variants(image, mono12, BANK_KINDS, seed=4, index=5)
    d = _variants(image, mono12, BANK_KINDS, seed=3, index=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a[1:], c[1:], strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a[1:], d[1:], strict=True))
    assert np.array_equal(a[0], image)  # the real image always comes first, untouched
    for v in a:  # non-square with rotate_90: turned by 180 degrees at most, so the shape holds
        assert v.shape == image.shape and v.dtype == np.uint16 and int(v.max()) <= 4095


def test_describe_records_what_was_applied() -> None:
    rich = CameraProfile.model_validate(RICH)
    off = describe(None, BankAugmentConfig(), 10)
    assert off["applied"] is False and off["images_fitted"] == 10 and off["kinds"] == []
    on = describe(rich, BankAugmentConfig(kinds=("orientation", "noise"), copies_per_image=3), 10)
    assert on["applied"] is True and on["kinds"] == ["orientation", "noise"] and on["images_fitted"] == 40
    assert on["profile"]["gain_range"] == [1.0, 1.0] and on["profile"]["white_balance_max_frac"] == 0.0
    no_geometry = CameraProfile(sensor="colour", bit_depth=8, gain_range=(0.9, 1.1))
    partial = describe(no_geometry, BankAugmentConfig(kinds=("orientation", "focus")), 10)
    assert partial["applied"] is False and partial["kinds_not_allowed_by_profile"] == ["orientation", "focus"]


def test_one_kind_each_varies_one_kind_per_variant_and_combined_varies_all() -> None:
    image = _image()
    profile = {**RICH, "rotation_max_deg": 0.0}
    kinds = ("orientation", "illumination")
    each = BankAugmentConfig(kinds=kinds, copies_per_image=4)  # type: ignore[arg-type]
    assert each.mode == "one_kind_each"
    got = list(bank_variants(image, CameraProfile.model_validate(profile), each, seed=1, index=0))

    def rearranged(v: np.ndarray) -> bool:  # same pixel values, only moved: placement alone
        return np.array_equal(np.sort(v, axis=None), np.sort(image, axis=None))

    assert [rearranged(v) for v in got[1:]] == [True, False, True, False]
    combined = list(bank_variants(
        image, CameraProfile.model_validate(profile), each.model_copy(update={"mode": "combined"}), seed=1, index=0))
    assert not any(rearranged(v) for v in combined[1:]) and len(combined) == 5
