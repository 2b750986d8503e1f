"""A small but real bundle for smoke tests, benchmarks and demos without a trained model.

Not part of the frame path. It writes two genuine ONNX graphs (built with ``onnx.helper``, run by
ONNX Runtime like any trained bundle) and a manifest through :func:`lineguard.bundle.write_bundle`,
so hashes, golden images and thresholds are real:

* anomaly: per-pixel ``|x - reference| / max_value``, mean over channels, average-pooled into an
  ``anomaly_map`` [N, 1, H/pool, W/pool]; ``anomaly_score`` [N] = max of the map.
* classifier: softmax over ("bright", "dark") from the strongest pooled positive and negative
  deviation, so a bright blob is "bright", a dark one "dark", and a mixed one is unsure.

Golden scores are computed with numpy (:func:`reference_scores`), independently of ONNX Runtime,
so the golden self-test really compares two implementations. Needs the ``onnx`` package (train /
dev extra), imported only when a bundle is built; the edge runtime never calls this module.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from lineguard.bundle import Bundle, staging_dir, write_bundle
from lineguard.errors import EngineError
from lineguard.preprocess import InputSpec, TileSpec, prepare

CLASSES = ("bright", "dark")
ImageKind = Literal["good", "bright", "dark", "faint"]
_GAIN = 20.0  # softmax sharpness of the synthetic classifier
_OPSET = 17  # ReduceMean/ReduceMax take ``axes`` as an attribute up to opset 17


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise EngineError("building a synthetic bundle needs the 'onnx' package (pip install onnx)") from exc
    return onnx


def _save(graph: Any, path: Path) -> None:
    onnx = _onnx()
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", _OPSET)])
    model.ir_version = 8  # readable by every ONNX Runtime >= 1.14 we might meet on a target
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _common_nodes(spec: InputSpec, reference: float) -> tuple[list[Any], list[Any]]:
    """Nodes computing ``diff = (x - reference) / max_value`` and their constants."""
    h = _onnx().helper
    consts = [
        h.make_tensor("ref", 1, [], [float(reference)]),
        h.make_tensor("inv_max", 1, [], [1.0 / spec.max_value]),
    ]
    nodes = [h.make_node("Sub", ["image", "ref"], ["centred"]), h.make_node("Mul", ["centred", "inv_max"], ["diff"])]
    return nodes, consts


def _pooled(h: Any, src: str, dst: str, pool: int) -> list[Any]:
    return [
        h.make_node("ReduceMean", [src], [f"{dst}_c"], axes=[1], keepdims=1),
        h.make_node("AveragePool", [f"{dst}_c"], [dst], kernel_shape=[pool, pool], strides=[pool, pool]),
    ]


def anomaly_graph(spec: InputSpec, reference: float, pool: int) -> Any:
    h = _onnx().helper
    nodes, consts = _common_nodes(spec, reference)
    nodes += [h.make_node("Abs", ["diff"], ["absdiff"]), *_pooled(h, "absdiff", "anomaly_map", pool)]
    nodes.append(h.make_node("ReduceMax", ["anomaly_map"], ["anomaly_score"], axes=[1, 2, 3], keepdims=0))
    c, ih, iw = spec.channels, spec.input_height, spec.input_width
    return h.make_graph(
        nodes, "lineguard_synthetic_anomaly",
        [h.make_tensor_value_info("image", 1, ["N", c, ih, iw])],
        [h.make_tensor_value_info("anomaly_score", 1, ["N"]),
         h.make_tensor_value_info("anomaly_map", 1, ["N", 1, ih // pool, iw // pool])],
        initializer=consts,
    )


def classifier_graph(spec: InputSpec, reference: float, pool: int) -> Any:
    h = _onnx().helper
    nodes, consts = _common_nodes(spec, reference)
    consts.append(h.make_tensor("gain", 1, [], [_GAIN]))
    nodes += [h.make_node("Relu", ["diff"], ["pos"]), h.make_node("Neg", ["diff"], ["ndiff"]),
              h.make_node("Relu", ["ndiff"], ["neg"])]
    nodes += _pooled(h, "pos", "pos_map", pool) + _pooled(h, "neg", "neg_map", pool)
    nodes += [
        h.make_node("ReduceMax", ["pos_map"], ["pos_max"], axes=[2, 3], keepdims=0),
        h.make_node("ReduceMax", ["neg_map"], ["neg_max"], axes=[2, 3], keepdims=0),
        h.make_node("Concat", ["pos_max", "neg_max"], ["features"], axis=1),
        h.make_node("Mul", ["features", "gain"], ["logits"]),
        h.make_node("Softmax", ["logits"], ["class_probs"], axis=1),
    ]
    return h.make_graph(
        nodes, "lineguard_synthetic_classifier",
        [h.make_tensor_value_info("image", 1, ["N", spec.channels, spec.input_height, spec.input_width])],
        [h.make_tensor_value_info("class_probs", 1, ["N", len(CLASSES)])],
        initializer=consts,
    )


def reference_scores(batch: npt.NDArray[np.float32], spec: InputSpec, reference: float, pool: int) -> npt.NDArray[
    np.float64
]:
    """Per-tile anomaly score of the synthetic graph, computed with numpy (float64)."""
    diff = np.abs(batch.astype(np.float64) - reference) / spec.max_value
    mean_c = diff.mean(axis=1)  # [T, H, W]
    t, hh, ww = mean_c.shape
    cropped = mean_c[:, : hh // pool * pool, : ww // pool * pool]
    pooled = cropped.reshape(t, hh // pool, pool, ww // pool, pool).mean(axis=(2, 4))
    return np.asarray(pooled.max(axis=(1, 2)), dtype=np.float64)


def synthetic_image(
    kind: ImageKind, spec: InputSpec, rng: np.random.Generator, *, reference: float | None = None
) -> npt.NDArray[Any]:
    """A frame the synthetic bundle accepts: flat grey with camera noise, plus a square blob."""
    width = spec.image_width or spec.input_width * spec.tiles.cols
    height = spec.image_height or spec.input_height * spec.tiles.rows
    ref = spec.max_value / 2 if reference is None else reference
    noise = max(1.0, spec.max_value * 0.01)
    shape = (height, width) if spec.channels == 1 else (height, width, 3)
    img = ref + rng.uniform(-noise, noise, size=shape)
    amplitude = {"good": 0.0, "bright": 0.4, "dark": -0.4, "faint": 0.16}[kind] * spec.max_value
    if amplitude:
        side = max(8, min(width, height) // 6)
        y0, x0 = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
        img[y0 : y0 + side, x0 : x0 + side] += amplitude
    dtype = np.dtype(spec.dtype)
    return np.clip(np.rint(img), 0, spec.max_value).astype(dtype)


def _write_png(path: Path, image: npt.NDArray[Any]) -> None:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), bgr):
        raise EngineError(f"cannot write {path}")


def _verdict(score: float, lower: float, upper: float) -> str:
    return "accept" if score < lower else ("reject" if score >= upper else "recheck")


def build_synthetic_bundle(
    out: Path,
    *,
    channels: Literal[1, 3] = 1,
    dtype: Literal["uint8", "uint16"] = "uint8",
    input_size: int = 64,
    tiles: TileSpec | None = None,
    with_classifier: bool = True,
    lower: float = 0.1,
    upper: float = 0.25,
    pool: int = 4,
    seed: int = 0,
    bundle_id: str = "synthetic-1",
    overwrite: bool = False,
) -> Bundle:
    """Write a verified synthetic bundle to ``out`` and return it (loaded through ``load_bundle``)."""
    tiles = tiles or TileSpec()
    max_value = 255 if dtype == "uint8" else 4095
    spec = InputSpec(
        channels=channels, dtype=dtype, max_value=max_value,
        image_width=input_size * tiles.cols, image_height=input_size * tiles.rows,
        input_width=input_size, input_height=input_size, fit="stretch", tiles=tiles,
    )
    reference = max_value / 2
    staging = staging_dir(out)
    _save(anomaly_graph(spec, reference, pool), staging / "anomaly.onnx")
    engines: dict[str, Any] = {"anomaly": {"file": "anomaly.onnx", "input_name": "image",
                                           "outputs": {"score": "anomaly_score", "map": "anomaly_map"}}}
    if with_classifier:
        _save(classifier_graph(spec, reference, pool), staging / "classifier.onnx")
        engines["classifier"] = {"file": "classifier.onnx", "input_name": "image",
                                 "outputs": {"probs": "class_probs"}}
    (staging / "golden").mkdir()
    rng = np.random.default_rng(seed)
    golden = []
    kinds: tuple[ImageKind, ...] = ("good", "good", "bright", "dark", "faint")
    for i, kind in enumerate(kinds):
        image = synthetic_image(kind, spec, rng, reference=reference)
        rel = f"golden/{i:02d}_{kind}.png"
        _write_png(staging / rel, image)
        batch, _ = prepare(image, spec)
        score = float(reference_scores(batch, spec, reference, pool).max())
        verdict = _verdict(score, lower, upper)
        label = "good" if kind == "good" else ("bright" if kind == "faint" else kind)
        expected_class = label if with_classifier and label != "good" and verdict != "accept" else ""
        golden.append({"file": rel, "expected_score": score, "expected_verdict": verdict,
                       "label": label, "expected_class": expected_class})
    manifest: dict[str, Any] = {
        "bundle_id": bundle_id, "product": "synthetic", "recipe": 1,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input": spec.model_dump(mode="json"), "engines": engines,
        "thresholds": {"lower": lower, "upper": upper, "policy": {"kind": "fixed", "source": "synthetic"}},
        "score_tolerance": 1e-4, "golden": golden,
        "provenance": {"generator": "lineguard.engines.synthetic", "seed": seed, "pool": pool},
    }
    if with_classifier:
        manifest["classifier"] = {"classes": list(CLASSES), "min_confidence": dict.fromkeys(CLASSES, 0.6)}
    return write_bundle(staging, manifest, out, overwrite=overwrite)
