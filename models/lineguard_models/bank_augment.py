"""Camera-profile variants of the good images that feed the anomaly model's memory bank.

Data flow (training side only): good training image (raw camera units) -> :func:`bank_variants`
-> the image itself plus ``copies_per_image`` physically plausible variants -> shared
preprocessing (``lineguard.preprocess.prepare``) -> ``anomaly.fit_anomaly_model`` -> streaming
coreset (bank size stays ``bank_size`` rows, whatever the number of variants).

Why: a line taught with few good parts has a bank that has seen only those parts' exact
placement and lighting; normal variation the camera will produce later (fixture play, lamp
ageing, slight defocus, sensor noise) then looks anomalous and is rejected. Variants within the
camera profile put that variation into the bank. Only four kinds exist (:data:`BANK_KINDS`), each
a subset of what ``augment.py`` offers for the profile, and a kind is applied only where the
profile allows it (``orientation`` needs flips or rotations in the profile). Colour casts (white
balance) are never used here: colour is itself a defect cue (contamination, rust) that a bank
widened by colour casts would learn to accept.

Must never: use a kind the profile does not allow, produce a perspective/colour/JPEG change
(``augment.py`` has none of them), change the image shape or pixel format, or see a defect image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lineguard_models.augment import CameraProfile, Image, augment, check_image

BankKind = Literal["orientation", "illumination", "focus", "noise"]
BANK_KINDS: tuple[BankKind, ...] = ("orientation", "illumination", "focus", "noise")

# Which profile fields each kind draws from; every other field is neutralised in the kind's
# sub-profile, so a kind cannot leak into another (checked by tests/unit/test_anomaly_profile_*.py).
_FIELDS: dict[BankKind, tuple[str, ...]] = {
    "orientation": ("flips", "rotate_90", "rotation_max_deg"),
    "illumination": ("gain_range", "gradient_max_frac", "gamma_range", "contrast_range", "brightness_max_frac"),
    "focus": ("blur_sigma_px_range",),
    "noise": ("noise_std_max_frac",),
}
_NEUTRAL: dict[str, Any] = {
    "flips": (), "rotate_90": False, "rotation_max_deg": 0.0, "gain_range": (1.0, 1.0), "gradient_max_frac": 0.0,
    "gamma_range": (1.0, 1.0), "contrast_range": (1.0, 1.0), "brightness_max_frac": 0.0,
    "blur_sigma_px_range": (0.0, 0.0), "noise_std_max_frac": 0.0, "white_balance_max_frac": 0.0,
}


class BankAugmentConfig(BaseModel):
    """Which camera-profile kinds extend the anomaly model's good images (used only with a profile).

    Default chosen by measurement (docs/benchmarks/anomaly-profile.md): illumination alone, 4 variants
    per image. It keeps lighting drift inside the profile's range from rejecting good parts (bottle at
    gain 0.85: 100 % -> 2.6-3.8 % false rejects); orientation, focus and noise did not lower false rejects,
    and sharing the copies with them left too few illumination variants to cover the range's ends.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: tuple[BankKind, ...] = Field(
        ("illumination",), max_length=4,
        description="kinds used for the bank, each only where the camera profile allows it: orientation "
        "(flips / 90-degree steps / fixture play), illumination (gain, gradient, gamma, contrast, "
        "black level), focus (blur), noise (sensor noise); () = off",
    )
    copies_per_image: int = Field(
        4, ge=0, le=16, description="variants per good training image added to the bank's input (0 = off)"
    )
    mode: Literal["one_kind_each", "combined"] = Field(
        "one_kind_each", description="one_kind_each: variant j varies only kind j mod len(kinds) (every kind "
        "alone in the bank); combined: every variant varies all kinds at once",
    )

    @field_validator("kinds")
    @classmethod
    def verify_unique(cls, kinds: tuple[BankKind, ...]) -> tuple[BankKind, ...]:
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"kinds listed twice: {kinds}")
        return kinds


def allowed_kinds(profile: CameraProfile, kinds: Sequence[BankKind]) -> tuple[BankKind, ...]:
    """The requested kinds that the profile actually allows (a kind with all-neutral ranges does nothing)."""
    out: list[BankKind] = []
    for kind in kinds:
        if any(getattr(profile, f) != _NEUTRAL[f] for f in _FIELDS[kind]):
            out.append(kind)
    return tuple(out)


def bank_profile(profile: CameraProfile, kinds: Sequence[BankKind]) -> CameraProfile:
    """The profile reduced to ``kinds``: every field of another kind (and white balance) neutral.

    Built through validation, so the result is still a profile the camera could have.
    """
    keep = {f for k in kinds for f in _FIELDS[k]}
    update = {f: v for f, v in _NEUTRAL.items() if f not in keep}
    return CameraProfile.model_validate({**profile.model_dump(), **update})


def bank_variant(image: Image, sub: CameraProfile, rng: np.random.Generator) -> Image:
    """One variant under the reduced profile ``sub`` (from :func:`bank_profile`); same shape and dtype."""
    # augment() applies it in physical order (placement, light, optics, sensor, response)
    return augment(image, sub, rng)


def bank_variants(
    image: Image, profile: CameraProfile, config: BankAugmentConfig, *, seed: int, index: int
) -> Iterator[Image]:
    """The image itself, then ``config.copies_per_image`` variants (none when no kind is allowed).

    Seeded per (seed, index): the same image at the same position gets the same variants,
    whatever the batching or the other images.
    """
    check_image(image, profile)
    yield image
    kinds = allowed_kinds(profile, config.kinds)
    if not kinds or config.copies_per_image == 0:
        return
    groups = [kinds] if config.mode == "combined" else [(k,) for k in kinds]
    subs = [bank_profile(profile, g) for g in groups]
    rng = np.random.default_rng([seed, index, 0x42A])
    for j in range(config.copies_per_image):
        yield bank_variant(image, subs[j % len(subs)], rng)


def describe(profile: CameraProfile | None, config: BankAugmentConfig, n_images: int) -> dict[str, Any]:
    """What was applied, for the bundle's provenance and the training report (JSON-safe)."""
    if profile is None:
        return {"applied": False, "reason": "no camera profile given", "kinds": [], "copies_per_image": 0,
                "images_fitted": n_images}
    kinds = allowed_kinds(profile, config.kinds)
    copies = config.copies_per_image if kinds else 0
    skipped = [k for k in config.kinds if k not in kinds]
    applied = bool(kinds) and copies > 0
    reason = "" if applied else ("copies_per_image is 0" if kinds else "no requested kind is allowed by the profile")
    return {
        "applied": applied, "reason": reason, "kinds": list(kinds), "kinds_requested": list(config.kinds),
        "mode": config.mode,
        "kinds_not_allowed_by_profile": skipped, "copies_per_image": copies,
        "images_fitted": n_images * (1 + copies),
        "profile": bank_profile(profile, kinds).model_dump(mode="json") if kinds else None,
    }


def bank_context(bank_aug: dict[str, Any] | None) -> dict[str, str]:
    """One report line on what the anomaly bank was fitted on (absent for bundles from before it existed)."""
    if bank_aug is None:
        return {}
    if not bank_aug["applied"]:
        return {"anomaly bank augmentation": f"none ({bank_aug['reason']})"}
    return {"anomaly bank augmentation": f"{bank_aug['copies_per_image']} camera-profile variants per good image "
            f"({', '.join(bank_aug['kinds'])}); {bank_aug['images_fitted']} images fitted"}
