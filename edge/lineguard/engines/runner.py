"""BundleRunner: one verified bundle's engines behind ``infer(image) -> EngineOutput``.

Data flow: ``Frame.image`` -> :func:`lineguard.preprocess.prepare` (tiles, letterbox; the spec
comes from the bundle) -> anomaly engine on all tiles -> image score = max over tiles ->
classifier on the highest-scoring tile (its image, or -- shared backbone pass, manifest
``input_source: anomaly:<output>`` -- that tile's stage map from the anomaly engine, so the
backbone runs once) -> where the bundle has a ``classifier_views`` engine and the classifier's top
probability is below ``classifier.views_below``, that tile again through the views engine (the
same model averaged over its orientation views; its probabilities replace the first) -> optional
stitched anomaly map -> ``EngineOutput`` (with per-stage timings) -> decision.

Used from one inference thread; a hot swap builds a new runner, warms it up, self-tests it and
then replaces the reference, so a frame is never scored by two bundles. Must never: return a
non-finite score (that is an :class:`EngineError`, which the service turns into a fail-safe
verdict), or accept outputs whose shapes do not match the contract.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from lineguard.bundle import VIEWS_ROLE, Bundle
from lineguard.contracts import EngineOutput
from lineguard.engines.base import Engine, build_engine
from lineguard.engines.config import OrtEngineConfig, TensorrtEngineConfig
from lineguard.errors import BundleError, EngineError
from lineguard.preprocess import prepare, stitch_map

log = logging.getLogger(__name__)


def _ms(t0: int, t1: int) -> float:
    return (t1 - t0) / 1e6


def _classifier_feed(bundle: Bundle) -> tuple[str | None, tuple[int, int, int] | None]:
    """(anomaly output role feeding the classifier, its C, h, w), or (None, None) when the image does."""
    m = bundle.manifest
    spec = m.engines.get("classifier")
    if spec is None or spec.source_output is None:
        return None, None
    # the manifest's validator (bundle.verify_input_sources) guarantees the anomaly engine names it
    role = next(r for r, name in m.engines["anomaly"].outputs.items() if name == spec.source_output)
    return role, spec.input_chw


class BundleRunner:
    """The engines of one bundle; build with :meth:`from_bundle`."""

    def __init__(
        self, *, bundle: Bundle, anomaly: Engine, classifier: Engine | None, with_map: bool,
        views: Engine | None = None,
    ) -> None:
        self._bundle = bundle
        self._anomaly = anomaly
        self._classifier = classifier
        self._views = views  # run only below views_below (image-fed: the manifest's validator says so)
        self._with_map = with_map
        self._tiles = bundle.manifest.input.tiles.count
        clf = bundle.manifest.classifier
        self._n_classes = len(clf.classes) if clf else 0
        self._views_below = clf.views_below if clf and clf.views_below is not None else 0.0
        # parts scored below the accept threshold are accepted whatever the classifier says:
        # skip the classifier and the map stitching for them (most parts on a real line)
        self._lower = bundle.manifest.thresholds.lower
        self._feed_role, self._feed_chw = _classifier_feed(bundle) if classifier is not None else (None, None)

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        engine_cfg: OrtEngineConfig | TensorrtEngineConfig,
        *,
        with_map: bool = False,
    ) -> BundleRunner:
        """Build the bundle's engines with ``engine_cfg`` (anomaly always, classifier when present).

        ``with_map`` asks for the stitched anomaly map in image pixels (for the publisher); the
        bundle must then name a 'map' output. Class probabilities and the map are computed only for
        parts scored at or above the accept threshold: an accepted part needs neither.
        """
        m = bundle.manifest
        if with_map and "map" not in m.engines["anomaly"].outputs:
            raise BundleError(f"bundle {m.bundle_id}: an anomaly map was requested but the engine has no 'map' output")
        anomaly = build_engine(bundle, "anomaly", engine_cfg, batch=m.input.tiles.count)
        classifier = views = None
        if m.classifier is not None:
            try:
                # the classifier sees only the tile with the highest anomaly score: batch 1
                classifier = build_engine(bundle, "classifier", engine_cfg, batch=1)
                if VIEWS_ROLE in m.engines:
                    views = build_engine(bundle, VIEWS_ROLE, engine_cfg, batch=1)
            except BaseException:
                anomaly.close()
                if classifier is not None:
                    classifier.close()
                raise
        log.info("bundle %s ready on %s (classifier: %s%s)", m.bundle_id, anomaly.provider,
                 classifier.provider if classifier else "none",
                 f"; its views below p={m.classifier.views_below:g}" if views and m.classifier else "")
        return cls(bundle=bundle, anomaly=anomaly, classifier=classifier, with_map=with_map, views=views)

    @property
    def bundle(self) -> Bundle:
        return self._bundle

    @property
    def provider(self) -> str:
        """What really runs the anomaly engine (e.g. 'CPUExecutionProvider')."""
        return self._anomaly.provider

    def infer(self, image: npt.NDArray[Any]) -> EngineOutput:
        """Score one frame. Raises :class:`ImageError` (frame does not match the spec) or :class:`EngineError`."""
        return self._infer(image, flagged=False)

    def _infer(self, image: npt.NDArray[Any], *, flagged: bool) -> EngineOutput:
        """``flagged``: take the flagged part's whole path (classifier, its views engine, map) whatever the
        scores say -- warm-up's pad-value frame scores below the accept threshold."""
        t0 = time.perf_counter_ns()
        batch, placements = prepare(image, self._bundle.manifest.input)
        t1 = time.perf_counter_ns()
        out = self._anomaly.run(batch)
        scores = self._scores(out)
        top = int(np.argmax(scores))
        t2 = time.perf_counter_ns()
        suspect = flagged or bool(scores[top] >= self._lower)
        probs = None
        if self._classifier is not None and suspect:
            probs = self._class_probs(self._classifier, self._classifier_input(batch, out, top))
            if self._views is not None and (flagged or float(probs.max()) < self._views_below):
                probs = self._class_probs(self._views, batch[top : top + 1])
        t3 = time.perf_counter_ns()
        amap = None
        if self._with_map and suspect:
            amap = stitch_map(self._maps(out), placements, image.shape[1], image.shape[0])
        t4 = time.perf_counter_ns()
        timings = {
            "preprocess": _ms(t0, t1),
            "anomaly": _ms(t1, t2),
            "classifier": _ms(t2, t3),
            "inference": _ms(t1, t3),
            "stitch": _ms(t3, t4),
            "total": _ms(t0, t4),
        }
        return EngineOutput(anomaly_score=float(scores[top]), anomaly_map=amap, class_probs=probs, timings_ms=timings)

    def _scores(self, out: dict[str, npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
        raw = out["score"]
        if raw.size != self._tiles or raw.ndim > 2:
            raise EngineError(f"anomaly 'score' output has shape {raw.shape}, expected [{self._tiles}] (one per tile)")
        scores = raw.reshape(-1).astype(np.float64)
        if not np.all(np.isfinite(scores)):
            raise EngineError(f"anomaly engine produced non-finite scores {scores.tolist()}")
        return scores

    def _maps(self, out: dict[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
        maps = out["map"]
        if maps.ndim != 4 or maps.shape[0] != self._tiles or maps.shape[1] != 1:
            raise EngineError(f"anomaly 'map' output has shape {maps.shape}, expected [{self._tiles}, 1, h, w]")
        return maps.astype(np.float32, copy=False)

    def _classifier_input(
        self, batch: npt.NDArray[np.float32], out: dict[str, npt.NDArray[Any]], top: int
    ) -> npt.NDArray[np.float32]:
        """The top tile's image, or its shared stage map from the anomaly engine's outputs."""
        if self._feed_role is None:
            return batch[top : top + 1]
        feats = out[self._feed_role]
        if feats.ndim != 4 or feats.shape[0] != self._tiles or tuple(feats.shape[1:]) != self._feed_chw:
            raise EngineError(f"anomaly {self._feed_role!r} output has shape {feats.shape}, expected "
                              f"[{self._tiles}, {', '.join(map(str, self._feed_chw or ()))}] (the classifier's input)")
        return np.ascontiguousarray(feats[top : top + 1], dtype=np.float32)

    def _class_probs(self, engine: Engine, tile: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        probs = engine.run(tile)["probs"]
        if probs.shape != (1, self._n_classes):
            raise EngineError(f"{engine.role} 'probs' output has shape {probs.shape}, expected [1, {self._n_classes}]")
        return np.ascontiguousarray(probs[0], dtype=np.float32)

    def warmup(self, runs: int = 3) -> None:
        """Run a few frames through every engine before the line sees this runner.

        Why: the first ONNX Runtime run allocates its memory arena and picks kernels, the first
        TensorRT run loads kernels and autotunes, and CUDA initialises lazily; together that can
        take hundreds of milliseconds, far beyond a cycle time. Paying it here keeps the first real
        part from missing its deadline. Uses a pad-value frame of the spec's geometry, so it needs
        no image from the camera, and sends it down a flagged part's whole path (classifier, views
        engine, map) whatever it scores.
        """
        spec = self._bundle.manifest.input
        width = spec.image_width or spec.input_width * spec.tiles.cols
        height = spec.image_height or spec.input_height * spec.tiles.rows
        shape = (height, width) if spec.channels == 1 else (height, width, 3)
        frame = np.full(shape, spec.pad_value, dtype=np.dtype(spec.dtype))
        t0 = time.perf_counter_ns()
        for _ in range(runs):
            self._infer(frame, flagged=True)
        elapsed = _ms(t0, time.perf_counter_ns())
        log.info("bundle %s warmed up: %d runs in %.1f ms", self._bundle.bundle_id, runs, elapsed)

    def close(self) -> None:
        """Release the engines. Idempotent."""
        self._anomaly.close()
        if self._classifier is not None:
            self._classifier.close()
        if self._views is not None:
            self._views.close()

    def __enter__(self) -> BundleRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
