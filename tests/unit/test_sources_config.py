"""Source config models (discriminated union on ``type``) and the back-end registry."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from lineguard.errors import SourceError
from lineguard.sources import (
    REGISTRY,
    GenICamSourceConfig,
    ReplaySourceConfig,
    Source,
    SourceConfig,
    SyntheticSourceConfig,
    build_source,
    source_class,
)

ADAPTER: TypeAdapter[SourceConfig] = TypeAdapter(SourceConfig)


def test_type_key_picks_the_schema() -> None:
    assert isinstance(ADAPTER.validate_python({"type": "synthetic"}), SyntheticSourceConfig)
    assert isinstance(ADAPTER.validate_python({"type": "replay", "paths": ["a"]}), ReplaySourceConfig)
    cfg = ADAPTER.validate_python({"type": "genicam", "cti_path": "x.cti", "exposure_us": 500})
    assert isinstance(cfg, GenICamSourceConfig) and cfg.exposure_us == 500


@pytest.mark.parametrize(
    "data",
    [
        {"type": "replay", "paths": ["a"], "exposure_us": 100},  # a camera key under replay
        {"type": "synthetic", "widht": 100},  # typo
        {"type": "genicam"},  # cti_path missing
        {"type": "webcam"},  # unknown back-end
        {"type": "synthetic", "defect_rate": 1.5},
        {"type": "synthetic", "width": 0},
        {"type": "replay", "paths": []},
        {"type": "genicam", "cti_path": "x", "fetch_timeout_ms": 0},
        {"type": "genicam", "cti_path": "x", "camera_id": "has space"},
    ],
)
def test_bad_configs_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ADAPTER.validate_python(data)


def test_cross_field_checks() -> None:
    with pytest.raises(ValidationError, match="reconnect_max_ms"):
        GenICamSourceConfig(type="genicam", cti_path="x", reconnect_initial_ms=5000, reconnect_max_ms=1000)
    with pytest.raises(ValidationError, match="stall_reconnect_ms"):
        GenICamSourceConfig(type="genicam", cti_path="x", trigger="hardware", stall_reconnect_ms=1000)


def test_configs_are_frozen() -> None:
    cfg = SyntheticSourceConfig(type="synthetic")
    with pytest.raises(ValidationError):
        cfg.width = 10  # type: ignore[misc]


def test_every_field_has_a_description() -> None:
    for model in (GenICamSourceConfig, ReplaySourceConfig, SyntheticSourceConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"


def test_registry_builds_each_light_backend(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4), np.uint8))
    for data in ({"type": "synthetic", "num_frames": 1}, {"type": "replay", "paths": [str(tmp_path)]}):
        src = build_source(ADAPTER.validate_python(data))
        assert isinstance(src, Source)
        with src:
            assert src.read(1.0) is not None


def test_registry_knows_the_three_types_and_refuses_others() -> None:
    assert set(REGISTRY) == {"genicam", "replay", "synthetic"}
    with pytest.raises(SourceError, match="unknown source type"):
        source_class("webcam")


def test_genicam_without_harvesters_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    # sys.modules[name] = None makes ``import name`` raise ModuleNotFoundError, as on a box
    # without the package; the genicam module must be re-imported to see it.
    monkeypatch.delitem(sys.modules, "lineguard.sources.genicam", raising=False)
    monkeypatch.setitem(sys.modules, "harvesters.core", None)
    with pytest.raises(SourceError, match="harvesters"):
        source_class("genicam")


def test_genicam_from_config_checks_the_producer_file(tmp_path: Path) -> None:
    cfg = GenICamSourceConfig(type="genicam", cti_path=str(tmp_path / "missing.cti"))
    with pytest.raises(SourceError, match="not found"):
        build_source(cfg)
