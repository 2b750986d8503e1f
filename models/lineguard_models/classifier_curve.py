"""The classifier's learning curve: how many labelled images per class a line would need (issue 16).

Data flow: the chosen candidate's :class:`FeatureSet`, its L2 and its folds -> out-of-fold accuracy with
every fold's training images thinned to a share of each class (several draws per share; the held-out
images stay the same) -> (training images per class, accuracy) points -> a power law of the error,
``error(n) = a * n^-b``, fitted in log-log space -> the accuracy the shipped head (trained on every image)
should reach, at twice the images, and how many images per class each accuracy target would need.

A line engineer with 10 labelled images per class reads from this whether labelling more is worth it
(the curve still falls) or not (it is flat: the classes need other images, not more of the same). It
is an estimate from the line's own images: it is checked against held-out images in
``scripts/bench_classifier_curve.py`` (docs/classifier.md, "Learning curve").

Must never: let a held-out image, its copies or views train its own fold (``FeatureSet.training_rows``
keeps only the held-in images' own), or report a number the points cannot support (a flat or rising
curve gives no extrapolation; no out-of-fold error gives none either).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from lineguard_models.classifier_features import FeatureSet
from lineguard_models.classifier_head import cv_folds, fit_head

SHARES = (0.4, 0.6, 0.8)  # of each class's training images in a fold; 1.0 is the plain cross-validation
DRAWS = 2  # random thinnings per share
TARGETS = (0.9, 0.95, 0.99)
MIN_SLOPE = 0.05  # a flatter error curve is reported as flat: no extrapolation
MAX_SLOPE = 1.5  # steeper than this from 3-4 noisy points is not believed
MAX_NEEDED = 1000  # per class; beyond it the report says "more than"


def _thinned(train: npt.NDArray[np.int64], y: npt.NDArray[np.int64], share: float,
             rng: np.random.Generator) -> npt.NDArray[np.int64]:
    keep = []
    for c in np.unique(y[train]):
        rows = train[y[train] == c]
        keep.append(rng.choice(rows, max(2, round(share * len(rows))), replace=False))
    return np.sort(np.concatenate(keep))


def curve_points(fs: FeatureSet, folds: npt.NDArray[np.int64], *, l2: float, max_iter: int, seed: int,
                 oof_accuracy: float, shares: Sequence[float] = SHARES, draws: int = DRAWS
                 ) -> list[tuple[float, float]]:
    """(mean training images per class in a fold, out-of-fold accuracy) for each share, then the full folds."""
    rng = np.random.default_rng([seed, 23])
    k = len(fs.classes)
    per_class_full = float(np.mean([np.bincount(fs.y[folds != f], minlength=k).mean()
                                    for f in np.unique(folds)]))
    points = []
    for share in shares:
        right, total, sizes = 0, 0, []
        for _ in range(draws):
            for f in np.unique(folds):
                train = _thinned(np.flatnonzero(folds != f), fs.y, share, rng)
                sizes.append(len(train) / k)
                x, y = fs.training_rows(train)
                test = np.flatnonzero(folds == f)
                pred = fs.probs(fit_head(x, y, k, l2=l2, max_iter=max_iter), test).argmax(axis=1)
                right += int((pred == fs.y[test]).sum())
                total += len(test)
        points.append((float(np.mean(sizes)), right / total))
    points.append((per_class_full, float(oof_accuracy)))
    return points


def fit_power_law(points: Sequence[tuple[float, float]], n_images: int) -> tuple[float, float] | None:
    """(a, b) of ``error = a * n^-b`` by least squares on log error against log n; None where the curve
    is flat or rising (b < MIN_SLOPE) or there is no error to fit (every point right)."""
    n = np.array([p[0] for p in points])
    err = np.array([1.0 - p[1] for p in points])
    if err.max() <= 0.0 or np.ptp(np.log(n)) < 1e-9:  # nothing to fit, or every point at one size
        return None
    err = np.maximum(err, 0.5 / max(1, n_images))  # one image in two sets: the resolution of the points
    slope = np.polyfit(np.log(n), np.log(err), 1)[0]
    b = float(-slope)
    if b < MIN_SLOPE:
        return None
    b = min(b, MAX_SLOPE)
    # refit the level with the slope held, so a clipped slope still passes through the points' centre
    a = float(np.exp(np.mean(np.log(err) + b * np.log(n))))
    return a, b


def accuracy_at(fit: tuple[float, float], n_per_class: float) -> float:
    a, b = fit
    return float(max(0.0, 1.0 - a * n_per_class ** -b))


def needed_per_class(fit: tuple[float, float], target: float) -> int | None:
    """Images per class at which the fitted curve reaches ``target``; None beyond :data:`MAX_NEEDED`."""
    a, b = fit
    n = (a / (1.0 - target)) ** (1.0 / b)
    return int(np.ceil(n)) if n <= MAX_NEEDED else None


def learning_curve(fs: FeatureSet, folds: npt.NDArray[np.int64], *, l2: float, max_iter: int, seed: int,
                   oof_accuracy: float, targets: Sequence[float] = TARGETS, shares: Sequence[float] = SHARES,
                   draws: int = DRAWS) -> dict[str, Any]:
    """The report entry ``classifier.learning_curve`` (docs/bundle-format.md)."""
    k = len(fs.classes)
    per_class = float(len(fs.y) / k)
    points = curve_points(fs, folds, l2=l2, max_iter=max_iter, seed=seed, oof_accuracy=oof_accuracy,
                          shares=shares, draws=draws)
    fit = fit_power_law(points, len(fs.y))
    out: dict[str, Any] = {
        "points": [[round(n, 2), round(acc, 4)] for n, acc in points],
        "images_per_class": round(per_class, 2),
        "reading": f"the frozen head out of fold, {'its views averaged' if fs.average_views else 'through one view'}; "
                   "every fold's training images thinned",
    }
    if fit is None:  # flat or rising; or no out-of-fold error at any size (nothing to forecast either way)
        errorless = all(acc >= 1.0 for _, acc in points)
        out.update(fit=None, flat=not errorless, errorless=errorless, accuracy_now=None, accuracy_at_twice=None,
                   needed_per_class={f"{t:g}": None for t in targets})
        return out
    out.update(
        fit={"a": round(fit[0], 4), "b": round(fit[1], 4)}, flat=False, errorless=False,
        accuracy_now=round(accuracy_at(fit, per_class), 4),
        accuracy_at_twice=round(accuracy_at(fit, 2 * per_class), 4),
        needed_per_class={f"{t:g}": needed_per_class(fit, t) for t in targets},
    )
    return out


def curve_for(fs: FeatureSet, report: dict[str, Any], *, n_folds: int, max_iter: int, seed: int,
              shares: Sequence[float] = SHARES, draws: int = DRAWS) -> dict[str, Any]:
    """:func:`learning_curve` of a fitted classifier's features and CV report, on the folds its cross-validation
    used (``cv_folds`` with the same count and seed; a views twin read through one view)."""
    cascade = report.get("views_only_when_unsure")
    oof = cascade["accuracy_identity_oof"] if cascade else report["accuracy"]
    return learning_curve(fs, cv_folds(fs.y, n_folds, seed), l2=float(report["l2"]), max_iter=max_iter, seed=seed,
                          oof_accuracy=float(oof), shares=shares, draws=draws)


def curve_sentence(curve: dict[str, Any]) -> str:
    """One line for the training report."""
    n = curve["images_per_class"]
    if curve.get("errorless"):
        return ("Learning curve: every image named right out of fold, even on 40 % of the images; nothing to "
                "forecast (more images guard against defects unlike these).")
    if curve.get("fit") is None:
        return (f"Learning curve: flat from {curve['points'][0][0]:.0f} to {curve['points'][-1][0]:.0f} images "
                f"per class out of fold, so more images of the same kind are unlikely to name more right; "
                f"label the confused classes' hard cases instead.")
    need = ", ".join(f"{float(t):.0%} about {v} per class" if v is not None else f"{float(t):.0%} more than "
                     f"{MAX_NEEDED} per class" for t, v in curve["needed_per_class"].items())
    return (f"Learning curve (out of fold, error ~ n^-{curve['fit']['b']:.2f}): with {n:.0f} images per class "
            f"about {curve['accuracy_now']:.1%} named by the best guess, with {2 * n:.0f} about "
            f"{curve['accuracy_at_twice']:.1%}; to reach {need}.")
