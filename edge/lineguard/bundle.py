"""Model bundle format: a directory with ``manifest.json``, ONNX engines, golden images, report.

Written by the training toolkit (``lineguard_models``), read by the edge. Loading verifies every
file's sha256 against the manifest, refuses unknown or missing files, and refuses thresholds that
are missing, NaN or inverted; the golden self-test (running the engines) lives with the engines
(``lineguard.engines.selftest``) because it needs a runtime. Installation is atomic: files are
written to a temporary sibling directory, fsynced, then renamed into place.

Must never: load an engine from a bundle that has not been verified, or guess a missing field.
See docs/bundle-format.md.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lineguard.errors import BundleError
from lineguard.fsutil import fsync_path, fsync_tree
from lineguard.fsutil import sha256_file as sha256_file  # re-exported: bundle users hash files too
from lineguard.preprocess import InputSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # detached Ed25519 signature over manifest.json (optional)

_Strict = ConfigDict(extra="forbid", frozen=True)
IMAGE_SOURCE = "image"
ANOMALY_PREFIX = "anomaly:"
VIEWS_ROLE = "classifier_views"  # the classifier averaged over its orientation views, run only when unsure


class EngineSpec(BaseModel):
    """One ONNX graph in the bundle; outputs are bound by name, never by index."""

    model_config = _Strict

    file: str = Field(description="path of the ONNX file, relative to the bundle root")
    input_name: str = Field("image", description="name of the graph input (float32 NCHW)")
    outputs: dict[str, str] = Field(
        description="role -> graph output name, e.g. {'score': 'anomaly_score', 'map': 'anomaly_map'}"
    )
    input_source: str = Field(
        IMAGE_SOURCE, pattern=rf"^({IMAGE_SOURCE}|{ANOMALY_PREFIX}[A-Za-z0-9_.-]+)$",
        description="what feeds the input: 'image' (the preprocessed tiles, raw units) or "
        "'anomaly:<output name>' (that output of the anomaly engine for the top-scoring tile: the shared "
        "backbone pass, docs/bundle-format.md)",
    )
    input_chw: tuple[int, int, int] | None = Field(
        None, description="C, h, w of the input when it is not the image (required then); the image's "
        "come from the input spec",
    )

    @property
    def source_output(self) -> str | None:
        """Name of the anomaly output that feeds this engine, or None when the image does."""
        if self.input_source == IMAGE_SOURCE:
            return None
        return self.input_source.removeprefix(ANOMALY_PREFIX)

    @model_validator(mode="after")
    def verify_input_chw(self) -> EngineSpec:
        if self.source_output is None and self.input_chw is not None:
            raise ValueError("input_chw is only for inputs fed by another engine (the image's come from 'input')")
        if self.source_output is not None and (self.input_chw is None or min(self.input_chw) < 1):
            raise ValueError(f"input_source {self.input_source!r} needs input_chw [C, h, w] with positive sizes")
        return self


class Thresholds(BaseModel):
    """Accept below ``lower``, reject at or above ``upper``, recheck in between."""

    model_config = _Strict

    lower: float = Field(description="anomaly score below which a part is accepted")
    upper: float = Field(description="anomaly score at or above which a part is rejected")
    policy: dict[str, Any] = Field(default_factory=dict, description="how they were chosen")

    @model_validator(mode="after")
    def verify_finite_and_ordered(self) -> Thresholds:
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise ValueError(f"thresholds must be finite numbers, got lower={self.lower} upper={self.upper}")
        if self.lower > self.upper:
            raise ValueError(f"lower threshold {self.lower} is above upper threshold {self.upper}")
        return self


class ClassifierSpec(BaseModel):
    """Defect classifier head: class list, per-class confidence thresholds, unknown routing."""

    model_config = _Strict

    classes: list[str] = Field(min_length=1, description="defect class names, aligned with class_probs")
    min_confidence: dict[str, float] = Field(
        description="per class: below this probability the defect is reported as 'unknown'"
    )
    camera_profile: dict[str, Any] = Field(default_factory=dict, description="augmentation profile used")
    views_below: float | None = Field(
        None, gt=0.0, le=1.0, description="views only where needed: where the 'classifier' engine's top class "
        "probability is below this, the part is classified again by the 'classifier_views' engine (the same "
        "model averaged over its orientation views) and those probabilities are used (docs/classifier.md)",
    )

    @model_validator(mode="after")
    def verify_thresholds(self) -> ClassifierSpec:
        for name in self.classes:
            value = self.min_confidence.get(name)
            if value is None or not (0.0 <= value <= 1.0):
                raise ValueError(f"class {name!r} needs a min_confidence in [0, 1], got {value}")
        return self


class GoldenImage(BaseModel):
    """A self-test image with the scores the bundle must reproduce on the target."""

    model_config = _Strict

    file: str
    expected_score: float
    expected_verdict: Literal["accept", "reject", "recheck"]
    label: str = Field(description="'good' or the defect class of the image")
    expected_class: str = ""


class Manifest(BaseModel):
    """``manifest.json``. Every file of the bundle is listed in ``files`` with its sha256."""

    model_config = _Strict

    schema_version: int = Field(description="bundle format version")
    bundle_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    product: str = Field(min_length=1, max_length=64)
    recipe: int = Field(0, ge=0, le=65535, description="PLC recipe number this bundle serves")
    created_utc: str
    input: InputSpec
    engines: dict[str, EngineSpec] = Field(
        description="role ('anomaly', 'classifier', 'classifier_views') -> engine")
    thresholds: Thresholds
    score_tolerance: float = Field(
        1e-3, gt=0, description="relative tolerance for golden scores across runtimes"
    )
    classifier: ClassifierSpec | None = None
    calibration: dict[str, Any] = Field(default_factory=dict, description="calibration summary")
    golden: list[GoldenImage] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict, description="dataset fingerprint, seed, versions")
    files: dict[str, str] = Field(description="relative path -> sha256 of every other file in the bundle")

    @model_validator(mode="after")
    def verify_references(self) -> Manifest:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} not supported (this build: {SCHEMA_VERSION})")
        if "anomaly" not in self.engines:
            raise ValueError("the bundle has no 'anomaly' engine")
        if self.classifier is not None and "classifier" not in self.engines:
            raise ValueError("classifier section present but no 'classifier' engine")
        verify_views_engine(self)
        verify_input_sources(self)
        referenced = [e.file for e in self.engines.values()] + [g.file for g in self.golden]
        missing = [f for f in referenced if f not in self.files]
        if missing:
            raise ValueError(f"files referenced but not listed with a hash: {missing}")
        return self


def verify_views_engine(m: Manifest) -> None:
    """The 'classifier_views' engine and ``classifier.views_below`` come together, and the views engine
    reads the image (it turns the part itself)."""
    below = m.classifier.views_below if m.classifier is not None else None
    views = m.engines.get(VIEWS_ROLE)
    if below is not None and views is None:
        raise ValueError(f"classifier.views_below is set but the bundle has no {VIEWS_ROLE!r} engine")
    if views is not None and below is None:
        raise ValueError(f"engine {VIEWS_ROLE!r} present but classifier.views_below is not set (when to run it)")
    if views is not None and views.source_output is not None:
        raise ValueError(f"engine {VIEWS_ROLE!r} must read the image, not {views.input_source!r}")


def verify_input_sources(m: Manifest) -> None:
    """An engine fed by the anomaly engine (shared backbone pass) must name an output it really has,
    and the spec must be untiled: the classifier was trained on whole frames, one map per frame."""
    for role, engine in m.engines.items():
        name = engine.source_output
        if name is None:
            continue
        if role == "anomaly":
            raise ValueError("the anomaly engine reads the image; it cannot take input_source "
                             f"{engine.input_source!r}")
        if name not in m.engines["anomaly"].outputs.values():
            raise ValueError(f"engine {role!r} takes input_source {engine.input_source!r} but the anomaly engine "
                             f"names no output {name!r} (outputs: {sorted(m.engines['anomaly'].outputs.values())})")
        if m.input.tiles.count != 1:
            raise ValueError(f"engine {role!r} takes the anomaly output {name!r}, which needs an untiled input "
                             f"spec (this one has {m.input.tiles.rows}x{m.input.tiles.cols} tiles): retrain the "
                             "classifier with share_backbone off")


@dataclass(frozen=True, slots=True)
class Bundle:
    """A verified bundle on disk. Only :func:`load_bundle` makes these."""

    root: Path
    manifest: Manifest

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    def path(self, rel: str) -> Path:
        return self.root / rel


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(manifest)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def read_manifest(root: Path) -> Manifest:
    """Parse and validate ``manifest.json`` without checking file hashes."""
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"bundle {root} does not exist or is not a directory")
    if not path.is_file():
        raise BundleError(f"bundle {root} has no {MANIFEST}: incomplete copy?")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda c: float(c))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from exc
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{path}: invalid manifest: {_format_validation(exc)}") from exc


def load_bundle(root: str | Path) -> Bundle:
    """Read and verify a bundle: manifest schema, thresholds, every file's presence and sha256.

    Files on disk that the manifest does not list are refused too (a tampered bundle may add them).
    """
    root = Path(root)
    manifest = read_manifest(root)
    problems: list[str] = []
    for rel, digest in sorted(manifest.files.items()):
        p = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            problems.append(f"{rel}: path escapes the bundle")
        elif not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{rel}: sha256 mismatch (file changed after the bundle was made)")
    listed = set(manifest.files) | {MANIFEST, SIGNATURE}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in listed:
            problems.append(f"{rel}: not listed in the manifest")
    if problems:
        raise BundleError(f"bundle {root} failed verification: " + "; ".join(problems))
    return Bundle(root=root, manifest=manifest)


def write_bundle(staging: Path, manifest: dict[str, Any], out: Path, *, overwrite: bool = False) -> Bundle:
    """Hash every file in ``staging``, write the manifest, and move it atomically to ``out``.

    ``manifest`` is everything but ``files`` and ``schema_version``, which are filled in here.
    ``staging`` must be on the same filesystem as ``out`` (use :func:`staging_dir`).
    """
    files = {
        p.relative_to(staging).as_posix(): sha256_file(p)
        for p in sorted(staging.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST, SIGNATURE)
    }
    doc = {"schema_version": SCHEMA_VERSION, **manifest, "files": files}
    try:
        Manifest.model_validate(doc)
    except ValidationError as exc:
        raise BundleError(f"refusing to write an invalid bundle: {_format_validation(exc)}") from exc
    text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False)
    (staging / MANIFEST).write_text(text + "\n", encoding="utf-8")
    fsync_tree(staging)
    if out.exists():
        if not overwrite:
            raise BundleError(f"{out} already exists (choose another --out or remove it)")
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, trash)
        os.rename(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(staging, out)
    fsync_path(out.parent)
    return load_bundle(out)


def staging_dir(out: Path) -> Path:
    """A fresh temporary directory beside ``out`` (same filesystem, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
