"""The defect classifier in a new bundle: the training pipeline's glue around ``classifier``.

Where it sits: called by ``pipeline.train`` after the anomaly engine is exported; above both
``classifier`` (training, export) and ``shared`` (the shared backbone pass, which needs the
classifier's graph), so neither of those imports the other's caller. Writes ``classifier.onnx``
into the bundle staging folder and returns its manifest fields.

On a tiled input spec the edge feeds the classifier the tile with the highest anomaly score
(``BundleRunner._classifier_input``), so the classifier is trained on exactly that tile of every
labelled defect image, chosen by the exported anomaly engine in ONNX Runtime (``top_tiles``), with
the spec of one tile; its graph reads the image (a tile's shared map is not offered).

Must never: train when a defect class has fewer than ``MIN_IMAGES_PER_CLASS`` images, write a
shared classifier whose class probabilities differ from the image path (``shared`` checks it), or
train a tiled line's classifier on other tiles than the edge will feed it.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.preprocess import InputSpec, TileSpec, prepare, tile_regions
from lineguard_models.anomaly import AnomalyScorer
from lineguard_models.augment import CameraProfile
from lineguard_models.backbone import EfficientNetLite0, LiteVariant
from lineguard_models.classifier import ClassifierConfig, defect_images, too_few_defects, train_classifier
from lineguard_models.classifier_curve import curve_sentence
from lineguard_models.classifier_graph import ClassifierGraph, PooledFeatures, classifier_resize, export_classifier_onnx
from lineguard_models.classifier_head import SoftmaxHead
from lineguard_models.classifier_select import PREPROCESS_MS, consider_finetuning, line_candidates, select_and_fit
from lineguard_models.data import Dataset
from lineguard_models.ortscore import OrtScorer, engine_p50_ms
from lineguard_models.shared import export_for_bundle, may_share
from lineguard_models.views import IDENTITY, ViewAveraged, Views

ONNX_FILE = "classifier.onnx"
VIEWS_ONNX_FILE = "classifier_views.onnx"
LATENCY_RUNS = 20  # timed runs of the line's anomaly engine for the per-line choice's latency filter


def _anomaly_p50_ms(frame: Any, spec: InputSpec, anomaly_onnx: Path | None) -> float | None:
    """The line's anomaly engine, p50 ms on this CPU (2 threads) on one of its defect images (``frame``); None
    without the exported engine (the choice then assumes the default engine's cost)."""
    if anomaly_onnx is None:
        return None
    return engine_p50_ms(anomaly_onnx, prepare(frame, spec)[0], LATENCY_RUNS)


def export_priced_graph(stages: Sequence[str], path: Path, *, spec: InputSpec, config: ClassifierConfig,
                        n_classes: int, variant: LiteVariant = "efficientnet_lite0", views: Views = IDENTITY) -> Path:
    """The image-path classifier graph of one stage set as a bundle exports it (the backbone to its deepest
    stage, the configured pooling and input size) with a head of zeros for ``n_classes``: its weights do not
    change the cost, so it prices a candidate before any head is fitted. ``views``: averaged over those
    orientation views (the ``classifier_views`` engine of a views twin)."""
    feats = PooledFeatures(EfficientNetLite0.from_state_dict_file(out_stages=stages, variant=variant),
                           max_value=spec.max_value, pooling=config.pooling,
                           resize_to=classifier_resize(spec, config.input_px))
    d = feats.out_dim
    head = SoftmaxHead(mu=np.zeros(d, np.float32), sd=np.ones(d, np.float32),
                       weight=np.zeros((d, n_classes), np.float32), bias=np.zeros(n_classes, np.float32))
    return export_classifier_onnx(ViewAveraged(ClassifierGraph(feats, head), views).eval(), path, spec=spec)


def classifier_prices(stage_sets: Sequence[tuple[str, ...]], *, spec: InputSpec, config: ClassifierConfig,
                      frame: Any, n_classes: int, runs: int = LATENCY_RUNS,
                      views: Views = IDENTITY) -> dict[str, float]:
    """p50 ms of each stage set's classifier graph (:func:`export_priced_graph`, averaged over ``views``) on this
    CPU, run in ONNX Runtime (2 threads) on ``frame`` prepared with ``spec``: the per-line choice's latency filter
    then prices what this machine really runs."""
    batch = prepare(frame, spec)[0][:1]
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lineguard-clf-price-") as tmp:
        for i, stages in enumerate(stage_sets):
            path = export_priced_graph(stages, Path(tmp) / f"price_{i}.onnx", spec=spec, config=config,
                                       n_classes=n_classes, views=views)
            out["+".join(stages)] = engine_p50_ms(path, batch, runs, output="class_probs")
    return out


def one_tile_spec(spec: InputSpec, size: tuple[int, int] | None) -> InputSpec:
    """The untiled spec of one of ``spec``'s tiles (the classifier's input on a tiled line), of ``size`` (w, h)
    where the frame size is fixed, else of any size."""
    return InputSpec.model_validate({**spec.model_dump(), "tiles": TileSpec().model_dump(),
                                     "image_width": size[0] if size else None,
                                     "image_height": size[1] if size else None})


def classifier_reserve_ms(dataset: Dataset, spec: InputSpec, config: ClassifierConfig | None = None,
                          runs: int = LATENCY_RUNS) -> tuple[float, dict[str, float]]:
    """What automatic configuration keeps of a flagged part's latency budget for the classifier, measured on
    this CPU before any anomaly candidate is priced: the edge's preprocessing (``PREPROCESS_MS``) plus the
    costliest graph the per-line choice may pick (every candidate stage set, :func:`classifier_prices`, on one
    of the line's defect images; on a tiled line one tile of it). (0, {}) where ``lineguard train`` will train
    no classifier (``too_few_defects``). Returns (reserve ms, the prices by stage set)."""
    if too_few_defects({c: len(dataset.defects(c)) for c in dataset.defect_classes}):
        return 0.0, {}
    config = config or ClassifierConfig()
    frame = dataset.load(dataset.defects(dataset.defect_classes[0])[0])
    if spec.tiles.count != 1:  # the edge classifies one tile: price the graph on a tile and its untiled spec
        x0, y0, tw, th = tile_regions(frame.shape[1], frame.shape[0], spec.tiles)[0]
        frame = np.ascontiguousarray(frame[y0 : y0 + th, x0 : x0 + tw])
        spec = one_tile_spec(spec, None)
    stage_sets = sorted({c.stages for c in line_candidates(config.stages, 1, config.pooling, free_views=True)}
                        if config.selects_per_line else {tuple(config.stages)})
    prices = {k: round(v, 2) for k, v in classifier_prices(stage_sets, spec=spec, config=config, frame=frame,
                                                            n_classes=len(dataset.defect_classes), runs=runs).items()}
    return PREPROCESS_MS + max(prices.values()), prices


def top_tiles(images: dict[str, list[Any]], spec: InputSpec, anomaly_onnx: Path
              ) -> tuple[dict[str, list[Any]], InputSpec, dict[str, Any]]:
    """Each image's tile with the highest anomaly score of ``anomaly_onnx`` (what the edge classifies), the
    untiled spec of one tile, and a report section (the tiling and how often each tile was chosen)."""
    scorer = OrtScorer(anomaly_onnx, spec)
    out: dict[str, list[Any]] = {}
    counts = np.zeros(spec.tiles.count, np.int64)
    size: tuple[int, int] | None = None
    for cls, ims in images.items():
        crops = []
        for im in ims:
            top = int(np.argmax(scorer.tile_scores(im)))  # the edge's rule (runner: top = argmax of the scores)
            x0, y0, tw, th = tile_regions(im.shape[1], im.shape[0], spec.tiles)[top]
            crops.append(np.ascontiguousarray(im[y0 : y0 + th, x0 : x0 + tw]))
            counts[top] += 1
            size = (tw, th)
        out[cls] = crops
    assert size is not None  # too_few_defects refused an empty set before
    tile_spec = one_tile_spec(spec, size if spec.image_width is not None else None)  # fixed frame: fixed tile
    report = {"rows": spec.tiles.rows, "cols": spec.tiles.cols, "overlap_px": spec.tiles.overlap_px,
              "trained_on": "each image's tile with the highest anomaly score (the tile the edge classifies)",
              "chosen_per_tile": counts.tolist()}
    return out, tile_spec, report


def classifier_for_bundle(
    dataset: Dataset, spec: InputSpec, staging: Path, *, seed: int, progress: Callable[[str], None],
    profile: CameraProfile | None = None, anomaly: AnomalyScorer | None = None,
    anomaly_onnx: Path | None = None, config: ClassifierConfig | None = None,
) -> dict[str, Any] | None:
    """Called by ``lineguard train``: train when every defect folder has enough images.

    Writes ``classifier.onnx`` (and, fine-tuned, ``classifier_views.onnx``) into the bundle staging folder
    and returns the manifest fields ``{"engine": EngineSpec dict, "classifier": ClassifierSpec dict,
    "report": cv report, "anomaly_outputs": extra anomaly output roles, "views_engine": EngineSpec dict or
    None}``, or None (with the reason sent to ``progress``)
    when there is nothing to train. Given the fitted ``anomaly`` scorer and its exported
    ``anomaly_onnx``, the classifier shares its backbone pass where that applies
    (``lineguard_models.shared``): ``anomaly_onnx`` is then re-exported with the ``shared_features``
    output (scores checked unchanged) and the classifier graph takes that map.
    """
    counts = {c: len(dataset.defects(c)) for c in dataset.defect_classes}
    if why := too_few_defects(counts):
        progress(f"defect classifier skipped: {why}")
        return None
    tiled = spec.tiles.count != 1
    if tiled and anomaly_onnx is None:
        progress("defect classifier skipped: a tiled line's classifier is trained on the tile the anomaly engine "
                 "scores highest, and no exported anomaly engine was given")
        return None
    progress(f"defect classifier: {len(counts)} classes, {sum(counts.values())} images")
    config = config or ClassifierConfig()
    if not tiled and anomaly is not None and config.input_px is not None and may_share(anomaly, config):
        config = config.model_copy(update={"input_px": None})  # the shared stage map sets the size
    images = defect_images(dataset)
    frame = next(iter(images.values()))[0]  # prices the line's anomaly engine
    clf_spec, tiles_report = spec, None
    if tiled:
        assert anomaly_onnx is not None
        images, clf_spec, tiles_report = top_tiles(images, spec, anomaly_onnx)
        progress(f"classifier: trained on each image's top-scoring tile of {spec.tiles.rows}x{spec.tiles.cols} "
                 f"(chosen per tile: {tiles_report['chosen_per_tile']})")
    selector = tuner = None
    if config.selects_per_line:  # the latency filter: the line's anomaly engine and the candidates' graphs, here
        price = functools.partial(classifier_prices, spec=clf_spec, config=config,
                                  frame=next(iter(images.values()))[0], n_classes=len(counts))
        anomaly_ms = _anomaly_p50_ms(frame, spec, anomaly_onnx)
        selector = functools.partial(select_and_fit, anomaly_p50_ms=anomaly_ms, classifier_price=price)
        # the fine-tuned graph pools by the average and never shares the backbone pass: priced as such
        tuned_price = functools.partial(price, [tuple(config.stages)],
                                        config=config.model_copy(update={"pooling": "mean"}))
        tuner = functools.partial(consider_finetuning, anomaly_p50_ms=anomaly_ms, price=tuned_price)
    clf = train_classifier(images, spec=clf_spec, profile=profile, seed=seed, config=config,
                           progress=lambda msg, frac: progress(f"{msg}: {frac * 100:.0f}%"),
                           selector=selector, tuner=tuner)  # per-line choice (issue 16) when config.select
    sel = clf.cv_report.get("selection")
    if sel:
        progress(f"classifier recipe chosen per line: {sel['chosen']} ({sel['reason']})")
    progress(f"classifier: CV accuracy {clf.cv_report['accuracy']:.3f}, min_confidence {clf.min_confidence}")
    if curve := clf.cv_report.get("learning_curve"):
        progress(f"classifier: {curve_sentence(curve)}")
    engine, anomaly_outputs, shared_report = export_for_bundle(
        clf, staging / ONNX_FILE, config=config, anomaly=anomaly, anomaly_onnx=anomaly_onnx,
        check_images=[im for v in images.values() for im in v[:2]], progress=progress, line_spec=spec)
    report = {**clf.cv_report, "shared_backbone": shared_report}
    if tiles_report is not None:
        report["tiles"] = tiles_report
    views = clf.export_views_onnx(staging / VIEWS_ONNX_FILE)  # fine-tuned or a views twin: only when unsure
    if views is not None:
        progress(f"classifier: every orientation view averaged where the single view's top probability is below "
                 f"{clf.views_below:g} ({VIEWS_ONNX_FILE})")
    return {"engine": engine.model_dump(exclude_defaults=True), "classifier": clf.classifier_spec().model_dump(),
            "report": report, "anomaly_outputs": anomaly_outputs,
            "views_engine": views.model_dump(exclude_defaults=True) if views is not None else None}
