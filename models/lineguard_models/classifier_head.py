"""The classifier's head and its cross-validation helpers (numpy/scipy only, no torch).

Data flow: pooled backbone features [N, D] (``lineguard_models.classifier``) -> standardise ->
class-balanced multinomial logistic regression (:func:`fit_head`) -> class probabilities;
stratified folds, per-class ``min_confidence`` from out-of-fold probabilities, and the CV report.
Must never: let a class's size decide its weight in the loss (every class weighs the same), or
return a threshold below chance (1/K) or above the configured cap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class SoftmaxHead:
    """Standardisation + multinomial logistic regression, fitted on features (numpy arrays)."""

    mu: npt.NDArray[np.float32]
    sd: npt.NDArray[np.float32]
    weight: npt.NDArray[np.float32]  # [D, K]
    bias: npt.NDArray[np.float32]  # [K]

    def probs(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        logits = ((x - self.mu) / self.sd) @ self.weight + self.bias
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        probs: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return probs


def fit_head(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], n_classes: int, *, l2: float, max_iter: int = 200
) -> SoftmaxHead:
    """Class-balanced multinomial logistic regression (L-BFGS on the exact gradient, deterministic).

    scipy rather than torch.optim: the problem is tiny, and torch's optimizers pull in the dynamo
    compiler on first use (seconds of import on a 2-core box).
    """
    from scipy.optimize import minimize

    mu = x.mean(axis=0).astype(np.float32)
    sd = (x.std(axis=0) + 1e-6).astype(np.float32)
    xs = ((x - mu) / sd).astype(np.float64)
    n, d = xs.shape
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    # balanced: every class weighs the same in the loss, however many images it has
    w_row = (len(y) / (n_classes * np.maximum(counts, 1.0)))[y]
    w_row = w_row / w_row.sum()
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0

    def loss_grad(theta: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        weight, bias = theta[: d * n_classes].reshape(d, n_classes), theta[d * n_classes :]
        z = xs @ weight + bias
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -float((w_row * (logp * onehot).sum(axis=1)).sum()) + l2 * float((weight**2).sum())
        g_z = (np.exp(logp) - onehot) * w_row[:, None]
        g_w = xs.T @ g_z + 2.0 * l2 * weight
        return loss, np.concatenate([g_w.ravel(), g_z.sum(axis=0)])

    theta0 = np.zeros(d * n_classes + n_classes)
    res = minimize(loss_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    weight = res.x[: d * n_classes].reshape(d, n_classes).astype(np.float32)
    return SoftmaxHead(mu=mu, sd=sd, weight=weight, bias=res.x[d * n_classes :].astype(np.float32))



def stratified_folds(y: npt.NDArray[np.int64], n_folds: int, seed: int) -> npt.NDArray[np.int64]:
    """Fold number of every sample; each class is spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = np.arange(len(idx)) % n_folds
    return fold


def cv_folds(y: npt.NDArray[np.int64], n_max: int, seed: int) -> npt.NDArray[np.int64]:
    """Stratified folds for cross-validation: ``n_max``, or fewer where the smallest class has fewer images."""
    return stratified_folds(y, min(n_max, int(np.bincount(y).min())), seed)


def confidence_thresholds(
    oof: npt.NDArray[np.float32], y: npt.NDArray[np.int64], classes: Sequence[str], *, quantile: float, cap: float
) -> dict[str, float]:
    """Per class: low quantile of the out-of-fold probability its own images get for it.

    Floored at 1/K (below that the max probability always passes: the class has no useful threshold)
    and capped so a class the head is very sure about still reports borderline examples as known.
    """
    k = len(classes)
    out = {}
    for i, name in enumerate(classes):
        q = float(np.quantile(oof[y == i, i], quantile))
        out[name] = min(cap, max(1.0 / k, q))
    return out


def cv_summary(
    oof: npt.NDArray[np.float32], y: npt.NDArray[np.int64], classes: Sequence[str], thresholds: Mapping[str, float]
) -> dict[str, Any]:
    """Accuracy, per-class recall, confusion and how often a known defect would read 'unknown'."""
    pred = oof.argmax(axis=1)
    conf = oof.max(axis=1)
    unknown = conf < np.array([thresholds[classes[p]] for p in pred])
    k = len(classes)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (y, pred), 1)
    per_class = {}
    for i, name in enumerate(classes):
        mask = y == i
        per_class[name] = {
            "n_images": int(mask.sum()),
            "recall": round(float((pred[mask] == i).mean()), 4),
            "min_confidence": thresholds[name],
            "unknown_rate": round(float(unknown[mask].mean()), 4),
        }
    recalls = [v["recall"] for v in per_class.values()]
    return {
        "accuracy": round(float((pred == y).mean()), 4),
        "balanced_accuracy": round(float(np.mean(recalls)), 4),
        "accuracy_known_only": round(float((pred[~unknown] == y[~unknown]).mean()), 4) if (~unknown).any() else None,
        "unknown_rate": round(float(unknown.mean()), 4),
        "per_class": per_class,
        "confusion": {"rows_true_cols_pred": list(classes), "counts": confusion.tolist()},
    }
