"""Manifest rules for a classifier fed by the anomaly engine (shared backbone pass), and for the
classifier's views engine (run only below ``views_below``); pure, no graphs.

Old manifests (no ``input_source``) must keep loading unchanged; a manifest whose classifier claims
an anomaly output that is not there, or that shares with a tiled spec, is refused at load. A views
engine without its threshold (or the reverse), or one fed by the anomaly engine, is refused too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lineguard.bundle import EngineSpec, Manifest, read_manifest
from lineguard.engines.base import fed_outputs, input_chw
from lineguard.errors import BundleError


def _doc(*, classifier: dict[str, Any] | None = None, anomaly_outputs: dict[str, str] | None = None,
         tiles: dict[str, int] | None = None) -> dict[str, Any]:
    inp: dict[str, Any] = {"channels": 1, "dtype": "uint8", "max_value": 255, "input_width": 64, "input_height": 48}
    if tiles is not None:
        inp["tiles"] = tiles
    return {
        "schema_version": 1, "bundle_id": "m-1", "product": "p", "created_utc": "2026-01-01T00:00:00Z",
        "input": inp,
        "engines": {"anomaly": {"file": "a.onnx", "outputs": anomaly_outputs or {
                        "score": "anomaly_score", "features": "shared_features"}},
                    "classifier": classifier or {"file": "c.onnx", "outputs": {"probs": "class_probs"}}},
        "thresholds": {"lower": 1.0, "upper": 2.0},
        "classifier": {"classes": ["crack", "pit"], "min_confidence": {"crack": 0.5, "pit": 0.5}},
        "files": {"a.onnx": "0" * 64, "c.onnx": "1" * 64},
    }


SHARED = {"file": "c.onnx", "input_name": "shared_features", "outputs": {"probs": "class_probs"},
          "input_source": "anomaly:shared_features", "input_chw": [80, 3, 4]}


def _load(tmp_path: Path, doc: dict[str, Any]) -> Manifest:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    return read_manifest(tmp_path)


def test_old_manifest_without_input_source_reads_the_image(tmp_path: Path) -> None:
    m = _load(tmp_path, _doc(anomaly_outputs={"score": "anomaly_score"}))
    spec = m.engines["classifier"]
    assert spec.input_source == "image" and spec.source_output is None and spec.input_chw is None
    # and an image-mode engine entry dumps exactly as before (an older edge still reads it)
    assert spec.model_dump(exclude_defaults=True) == {"file": "c.onnx", "outputs": {"probs": "class_probs"}}


def test_shared_manifest_names_the_anomaly_output_and_its_shape(tmp_path: Path) -> None:
    m = _load(tmp_path, _doc(classifier=SHARED))
    spec = m.engines["classifier"]
    assert spec.source_output == "shared_features" and spec.input_chw == (80, 3, 4)


def test_engine_shapes_come_from_the_spec_or_input_chw(tmp_path: Path) -> None:
    from lineguard.bundle import Bundle

    bundle = Bundle(root=tmp_path, manifest=_load(tmp_path, _doc(classifier=SHARED)))
    m = bundle.manifest
    assert input_chw(bundle, m.engines["anomaly"]) == (1, 48, 64)
    assert input_chw(bundle, m.engines["classifier"]) == (80, 3, 4)
    assert fed_outputs(bundle, "anomaly") == {"shared_features": (80, 3, 4)}
    assert fed_outputs(bundle, "classifier") == {}


@pytest.mark.parametrize(("change", "message"), [
    ({"anomaly_outputs": {"score": "anomaly_score"}}, "names no output 'shared_features'"),
    ({"tiles": {"rows": 2, "cols": 1}}, "untiled input spec"),
    ({"classifier": {**SHARED, "input_chw": None}}, "needs input_chw"),
    ({"classifier": {**SHARED, "input_chw": [80, 0, 4]}}, "positive sizes"),
    ({"classifier": {**SHARED, "input_source": "classifier:x"}}, "input_source"),
    ({"classifier": {"file": "c.onnx", "outputs": {"probs": "p"}, "input_chw": [1, 2, 3]}}, "only for inputs fed"),
])
def test_bad_shared_input_is_refused_at_load(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    kwargs: dict[str, Any] = {"classifier": SHARED, **change}
    with pytest.raises(BundleError, match=message):
        _load(tmp_path, _doc(**kwargs))


def test_anomaly_engine_cannot_take_its_own_output(tmp_path: Path) -> None:
    doc = _doc(classifier=SHARED)
    doc["engines"]["anomaly"].update(input_source="anomaly:shared_features", input_chw=[80, 3, 4])
    with pytest.raises(BundleError, match="anomaly engine reads the image"):
        _load(tmp_path, doc)


def test_engine_spec_round_trips_through_json() -> None:
    spec = EngineSpec.model_validate(SHARED)
    again = EngineSpec.model_validate(json.loads(json.dumps(spec.model_dump(exclude_defaults=True))))
    assert again == spec


class _TrtEngineShapes:
    """The three calls of TensorRT's ICudaEngine that the I/O check uses (TensorRT cannot run here)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self._shapes = shapes
        self.num_io_tensors = len(shapes)

    def get_tensor_name(self, i: int) -> str:
        return list(self._shapes)[i]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]


def test_tensorrt_io_check_binds_the_shared_map_by_name_and_shape() -> None:
    from lineguard.engines.tensorrt import _check_engine_io

    anomaly = _TrtEngineShapes({"image": (-1, 1, 48, 64), "anomaly_score": (-1,),
                                "shared_features": (-1, 80, 3, 4)})
    _check_engine_io(anomaly, "image", (1, 48, 64), "a", {"shared_features": (80, 3, 4)})
    with pytest.raises(BundleError, match="input_chw"):
        _check_engine_io(anomaly, "image", (1, 48, 64), "a", {"shared_features": (80, 6, 8)})
    with pytest.raises(BundleError, match="lacks"):
        _check_engine_io(anomaly, "image", (1, 48, 64), "a", {"stage_map": (80, 3, 4)})
    classifier = _TrtEngineShapes({"shared_features": (-1, 80, 3, 4), "class_probs": (-1, 2)})
    _check_engine_io(classifier, "shared_features", (80, 3, 4), "c")
    with pytest.raises(BundleError, match="engine input"):
        _check_engine_io(classifier, "shared_features", (1, 48, 64), "c")


VIEWS = {"file": "v.onnx", "outputs": {"probs": "class_probs"}}


def _with_views(views: dict[str, Any] | None, below: float | None) -> dict[str, Any]:
    doc = _doc(anomaly_outputs={"score": "anomaly_score", "features": "shared_features"})
    if views is not None:
        doc["engines"]["classifier_views"] = views
        doc["files"]["v.onnx"] = "2" * 64
    if below is not None:
        doc["classifier"]["views_below"] = below
    return doc


def test_views_engine_with_its_threshold_loads(tmp_path: Path) -> None:
    m = _load(tmp_path, _with_views(VIEWS, 0.7))
    assert m.classifier is not None and m.classifier.views_below == 0.7
    assert m.engines["classifier_views"].source_output is None
    # a manifest without either still loads as before
    old = _load(tmp_path / "old", _with_views(None, None))
    assert old.classifier is not None and old.classifier.views_below is None and "classifier_views" not in old.engines


@pytest.mark.parametrize(("views", "below", "message"), [
    (None, 0.7, "no 'classifier_views' engine"),
    (VIEWS, None, "views_below is not set"),
    ({**VIEWS, "input_name": "shared_features", "input_source": "anomaly:shared_features", "input_chw": [80, 3, 4]},
     0.7, "must read the image"),
    (VIEWS, 1.5, "less than or equal to 1"),
    (VIEWS, 0.0, "greater than 0"),
], ids=["threshold-without-engine", "engine-without-threshold", "engine-fed-by-anomaly", "above-1", "zero"])
def test_views_engine_rules_are_checked_at_load(tmp_path: Path, views: dict[str, Any] | None, below: float | None,
                                                message: str) -> None:
    with pytest.raises(BundleError, match=message):
        _load(tmp_path, _with_views(views, below))
