"""Classifier features as the training side holds them: originals, orientation views, augmented copies.

Data flow: defect images by class -> ``build_features`` (an :class:`ExtractFn`, normally
``classifier.FeatureExtractor``: shared preprocessing -> frozen backbone -> pooled features) ->
:class:`FeatureSet` -> cross-validation and the head fit (``classifier.fit_from_features``,
``classifier_select``). Below ``classifier`` and ``classifier_select``.

Must never: let an augmented copy or another view of an image train the fold that holds the image
out (:meth:`FeatureSet.training_rows` keeps only the held-in images' own copies).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from lineguard_models.classifier_head import SoftmaxHead
from lineguard_models.views import IDENTITY, Views

Image = npt.NDArray[Any]
ProgressFn = Callable[[str, float], None]  # (stage message, fraction done in [0, 1])
AugmentFn = Callable[[Image, np.random.Generator], Image]


class ExtractFn(Protocol):
    """Features [N, D] of raw images seen in one orientation view (``FeatureExtractor``)."""

    def __call__(self, images: Sequence[Image], view: str = "identity") -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True, slots=True)
class FeatureSet:
    """Features of the original images, of their other orientation views and of their augmented copies.

    ``x_views[i, v]`` is image i in the v-th non-identity view; with ``average_views`` a prediction
    for image i is the mean of the class probabilities of all its views (what the exported graph does).
    """

    classes: tuple[str, ...]
    x: npt.NDArray[np.float32]  # [N, D] originals as seen (identity view)
    y: npt.NDArray[np.int64]  # [N]
    x_aug: npt.NDArray[np.float32]  # [M, D] augmented copies
    aug_source: npt.NDArray[np.int64]  # [M] index into x of each copy's original
    x_views: npt.NDArray[np.float32] | None = None  # [N, V - 1, D] other orientation views
    average_views: bool = False

    def training_rows(self, originals: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Rows for fitting on ``originals``: those images, their views and only *their* augmented copies."""
        keep = np.isin(self.aug_source, originals)
        xs, ys = [self.x[originals], self.x_aug[keep]], [self.y[originals], self.y[self.aug_source[keep]]]
        if self.x_views is not None and self.x_views.shape[1]:
            xs.append(self.x_views[originals].reshape(-1, self.x.shape[1]))
            ys.append(np.repeat(self.y[originals], self.x_views.shape[1]))
        return np.concatenate(xs), np.concatenate(ys)

    def probs(self, head: SoftmaxHead, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Class probabilities of originals ``rows`` as the exported graph computes them."""
        p = head.probs(self.x[rows])
        if self.average_views and self.x_views is not None and self.x_views.shape[1]:
            n_views = self.x_views.shape[1] + 1
            for v in range(n_views - 1):
                p = p + head.probs(self.x_views[rows, v])
            p = (p / np.float32(n_views)).astype(np.float32)
        return p


def build_features(
    images_by_class: Mapping[str, Sequence[Image]], extract: ExtractFn,
    *, augment_fn: AugmentFn | None, copies: int, seed: int, progress: ProgressFn | None = None,
    views: Views = IDENTITY, average_views: bool = False,
) -> FeatureSet:
    """Extract features of every image in every view and of ``copies`` augmented variants of each."""
    classes = tuple(sorted(images_by_class))
    images = [im for c in classes for im in images_by_class[c]]
    y = np.array([i for i, c in enumerate(classes) for _ in images_by_class[c]], np.int64)
    rng = np.random.default_rng(seed)
    chunks: list[npt.NDArray[np.float32]] = []
    aug_chunks: list[npt.NDArray[np.float32]] = []
    view_chunks: list[npt.NDArray[np.float32]] = []
    sources: list[int] = []
    step = 32
    for s in range(0, len(images), step):
        part = images[s : s + step]
        chunks.append(extract(part))
        if len(views) > 1:
            view_chunks.append(np.stack([extract(part, v) for v in views.names[1:]], axis=1))
        if augment_fn is not None and copies > 0:
            variants = [augment_fn(im, rng) for im in part for _ in range(copies)]
            aug_chunks.append(extract(variants))
            sources.extend(s + i for i in range(len(part)) for _ in range(copies))
        if progress is not None:
            progress("classifier features", min(1.0, (s + len(part)) / len(images)))
    dim = chunks[0].shape[1]
    x_aug = np.concatenate(aug_chunks) if aug_chunks else np.zeros((0, dim), np.float32)
    return FeatureSet(classes=classes, x=np.concatenate(chunks), y=y, x_aug=x_aug,
                      aug_source=np.array(sources, np.int64),
                      x_views=np.concatenate(view_chunks) if view_chunks else None,
                      average_views=average_views and len(views) > 1)
