"""Fine-tuning the last backbone stages of the few-shot classifier (training side, torch).

Data flow: prepared engine inputs (``lineguard.preprocess.prepare``, raw units) of the training
images -> orientation views the camera profile allows (flips, 90-degree turns on square inputs) ->
frozen backbone prefix up to ``prefix_stage`` (computed once per view and cached: the expensive
part) -> trainable blocks of the later stages -> global-average-pooled features of the classifier's
stages -> standardise -> linear head -> softmax. The head starts from the frozen-feature logistic
solution; the trainable blocks start from ImageNet. ``train_classifier`` (with
``ClassifierConfig.finetune``) passes every view of every image as its own map and runs
:func:`finetune_cross_validated`: one run per fold for out-of-fold probabilities (views averaged,
as exported), then the final run on everything for the configured epochs. Optionally
(``val_fraction``) an internal validation split of the training images picks the epoch count.

The result is a backbone with updated late-stage weights plus a :class:`SoftmaxHead`, so the
exported graph is exactly the frozen-feature classifier's graph (``ClassifierGraph``): one ONNX
file, input ``image`` in raw units, output ``class_probs``.

Must never: update BatchNorm statistics or weights of the frozen prefix (all BatchNorm layers stay
in eval mode: 32 images per step would make noisy running statistics), or look at data outside
the images it is given.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from lineguard.errors import ConfigError
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.views import Views

__all__ = ["VIEWS_BELOW_GRID", "FinetuneConfig", "FinetuneResult", "LateStages", "Views", "cascade_probs",
           "choose_views_below", "estimated_seconds", "finetune", "finetune_cross_validated",
           "internal_split", "prefix_maps", "seconds_per_step", "view_maps"]

ProgressFn = Callable[[str, float], None]


class FinetuneConfig(BaseModel):
    """Fine-tuning settings; the defaults are the measured choice (4 epochs over every view, backbone
    learning rate 1e-4: picked on images outside the NEU-DET test set, docs/benchmarks/classifier.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_trained_stage: str = Field(
        "stage6", pattern=r"^stage[5-7]$",
        description="first backbone stage whose weights are trained; earlier stages stay frozen",
    )
    epochs: int = Field(
        4, ge=1, le=100, description="epochs; an epoch sees every training map once, with one random view of "
        "each (``train_classifier`` passes every orientation view of every image as its own map)",
    )
    batch_size: int = Field(32, ge=2, le=256, description="images per optimiser step")
    lr_backbone: float = Field(1e-4, gt=0.0, le=0.1, description="peak AdamW learning rate of the trained blocks")
    lr_head: float = Field(1e-3, gt=0.0, le=0.1, description="peak AdamW learning rate of the linear head")
    weight_decay: float = Field(1e-4, ge=0.0, le=0.1, description="AdamW decoupled weight decay")
    label_smoothing: float = Field(0.1, ge=0.0, le=0.5, description="cross-entropy label smoothing")
    val_fraction: float = Field(
        0.0, ge=0.0, le=0.5,
        description="share of each class held out inside training to pick the epoch count (0 = use epochs)",
    )


class LateStages(nn.Module):
    """Cached prefix map -> trainable blocks -> concatenated GAP features of ``stages``."""

    def __init__(self, backbone: EfficientNetLite0, *, stages: Sequence[str], first_trained_stage: str) -> None:
        super().__init__()
        ends = backbone._stage_end  # stage name -> index of its last block
        first = int(first_trained_stage.removeprefix("stage"))
        self.prefix_stage = f"stage{first - 1}"
        self.first_block = ends[self.prefix_stage] + 1
        bad = [s for s in stages if ends[s] < ends[self.prefix_stage]]
        if bad:
            raise ConfigError(f"stages {bad} lie before {self.prefix_stage}; fine-tuning needs stages >= it")
        self.blocks = nn.ModuleList(backbone._blocks[self.first_block : max(ends[s] for s in stages) + 1])
        self.taps = {ends[s] - self.first_block: s for s in stages if ends[s] >= self.first_block}
        self.stages = tuple(stages)
        self.use_prefix = self.prefix_stage in stages

    def forward(self, prefix_map: Tensor) -> Tensor:
        pooled = {self.prefix_stage: prefix_map.mean(dim=(2, 3))} if self.use_prefix else {}
        x = prefix_map
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                pooled[self.taps[i]] = x.mean(dim=(2, 3))
        return torch.cat([pooled[s] for s in self.stages], dim=1)


def prefix_maps(backbone: EfficientNetLite0, normalised: Tensor, *, last_block: int, batch: int = 32) -> Tensor:
    """Frozen stem + blocks[: last_block + 1] of a normalised batch (no gradients, eval mode)."""
    out = []
    with torch.inference_mode():
        for s in range(0, len(normalised), batch):
            x = backbone._stem(normalised[s : s + batch])
            for i in range(last_block + 1):
                x = backbone._blocks[i](x)
            out.append(x)
    return torch.cat(out)


class _Model(nn.Module):
    def __init__(self, late: LateStages, mu: Tensor, sd: Tensor, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.late = late
        self.register_buffer("mu", mu)
        self.register_buffer("sd", sd)
        self.linear = nn.Linear(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            self.linear.weight.copy_(weight.T)
            self.linear.bias.copy_(bias)

    def forward(self, maps: Tensor) -> Tensor:
        logits: Tensor = self.linear((self.late(maps) - self.get_buffer("mu")) / self.get_buffer("sd"))
        return logits


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def train_late_stages(
    model: _Model, maps: Tensor, y: Tensor, *, config: FinetuneConfig, epochs: int, seed: int,
    val: tuple[Tensor, Tensor] | None = None,
) -> list[float]:
    """AdamW + cosine schedule; ``maps`` is [N, V, C, h, w] (one cached map per view). Returns
    the validation log-loss after each epoch (empty without ``val``)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([
        {"params": model.late.parameters(), "lr": config.lr_backbone},
        {"params": model.linear.parameters(), "lr": config.lr_head},
    ], weight_decay=config.weight_decay)
    peaks = [g["lr"] for g in opt.param_groups]
    n, n_views = maps.shape[:2]
    steps_per_epoch = math.ceil(n / config.batch_size)
    total, step, history = epochs * steps_per_epoch, 0, []
    model.eval()  # BatchNorm stays frozen (module doc); dropout-free network, so eval == train otherwise
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        view = torch.randint(n_views, (n,), generator=gen)
        for s in range(0, n, config.batch_size):
            idx = order[s : s + config.batch_size]
            for g, peak in zip(opt.param_groups, peaks, strict=True):
                g["lr"] = peak * _cosine(step, total)
            loss = F.cross_entropy(model(maps[idx, view[idx]]), y[idx], label_smoothing=config.label_smoothing)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            step += 1
        if val is not None:
            with torch.no_grad():
                history.append(float(F.cross_entropy(model(val[0]), val[1])))
    return history


def internal_split(y: npt.NDArray[np.int64], fraction: float, seed: int) -> npt.NDArray[np.bool_]:
    """Boolean mask of the validation images: ``fraction`` of each class (at least 1, never all)."""
    rng = np.random.default_rng(seed + 7919)
    mask = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        mask[idx[: min(len(idx) - 1, max(1, round(fraction * len(idx))))]] = True
    return mask


@dataclass(frozen=True, slots=True)
class FinetuneResult:
    """Fine-tuned backbone (a copy; the input backbone is untouched) and the head's parameters."""

    backbone: EfficientNetLite0
    mu: npt.NDArray[np.float32]
    sd: npt.NDArray[np.float32]
    weight: npt.NDArray[np.float32]  # [D, K]
    bias: npt.NDArray[np.float32]
    epochs: int
    val_log_loss: tuple[float, ...]


HeadParams = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]
FitHeadFn = Callable[[npt.NDArray[np.float32], npt.NDArray[np.int64]], HeadParams]


def finetune(
    backbone: EfficientNetLite0, maps: Tensor, y: npt.NDArray[np.int64], *, stages: Sequence[str],
    fit_head: FitHeadFn, config: FinetuneConfig, seed: int, progress: ProgressFn | None = None,
) -> FinetuneResult:
    """Fine-tune on cached prefix maps [N, V, C, h, w] of the training images' views (view 0 = as seen).

    ``fit_head(features, labels)`` returns the frozen-feature head (mu, sd, weight [D, K], bias) the
    training starts from; it is refitted for the internal split so the validation images never
    shape the starting point of the run that is validated on them.
    """
    torch.manual_seed(seed)
    yt = torch.as_tensor(y, dtype=torch.int64)
    late0 = LateStages(backbone, stages=stages, first_trained_stage=config.first_trained_stage)
    with torch.no_grad():
        frozen = torch.cat([late0(maps[s : s + 64, 0]) for s in range(0, len(maps), 64)]).numpy()

    def fresh(rows: npt.NDArray[np.bool_]) -> _Model:
        mu, sd, w0, b0 = (torch.as_tensor(a, dtype=torch.float32) for a in fit_head(frozen[rows], y[rows]))
        late = LateStages(copy.deepcopy(backbone), stages=stages, first_trained_stage=config.first_trained_stage)
        late.requires_grad_(True)  # the classifier's feature graph freezes the backbone it wraps
        return _Model(late, mu, sd, w0, b0)

    epochs, history = config.epochs, []
    if config.val_fraction > 0:
        is_val = internal_split(y, config.val_fraction, seed)
        v = torch.as_tensor(is_val)
        history = train_late_stages(fresh(~is_val), maps[~v], yt[~v], config=config, epochs=config.epochs,
                                    seed=seed, val=(maps[v, 0], yt[v]))
        epochs = int(np.argmin(history)) + 1
        if progress is not None:
            progress("classifier fine-tuning: epoch count chosen", 0.5)
    model = fresh(np.ones(len(y), bool))
    train_late_stages(model, maps, yt, config=config, epochs=epochs, seed=seed)
    tuned = copy.deepcopy(backbone)
    first = model.late.first_block
    for i, block in enumerate(model.late.blocks):
        tuned._blocks[first + i].load_state_dict(block.state_dict())
    if progress is not None:
        progress("classifier fine-tuning", 1.0)
    return FinetuneResult(
        backbone=tuned.eval(), mu=model.get_buffer("mu").numpy(), sd=model.get_buffer("sd").numpy(),
        weight=model.linear.weight.detach().T.contiguous().numpy(),
        bias=model.linear.bias.detach().numpy(), epochs=epochs, val_log_loss=tuple(history),
    )


def seconds_per_step(backbone: EfficientNetLite0, maps: Tensor, *, stages: Sequence[str], config: FinetuneConfig,
                     n_classes: int, repeats: int = 2) -> float:
    """Seconds of one optimiser step on a batch of ``maps`` [B, C, h, w] (a throwaway copy of the trained blocks
    and a zero head; the fastest of ``repeats`` after one untimed step): what :func:`estimated_seconds` scales."""
    late = LateStages(copy.deepcopy(backbone), stages=stages, first_trained_stage=config.first_trained_stage)
    late.requires_grad_(True)
    with torch.no_grad():
        d = late(maps[:1]).shape[1]
    model = _Model(late, torch.zeros(d), torch.ones(d), torch.zeros(d, n_classes), torch.zeros(n_classes))
    batch = maps[: config.batch_size]
    y = torch.zeros(len(batch), dtype=torch.int64)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    model.eval()  # BatchNorm frozen, as in train_late_stages
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(batch), y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        times.append((time.perf_counter() - t0) * config.batch_size / len(batch))
    return min(times[1:])


def estimated_seconds(n_images: int, n_views: int, folds: int, config: FinetuneConfig, step_s: float) -> float:
    """Seconds of the training steps of :func:`finetune_cross_validated`: one run per fold on the other folds'
    maps and the final run on all of them, ``config.epochs`` each (prediction passes excluded: a few %)."""
    rows_per_fold = n_images * n_views * (folds - 1) / folds
    steps = config.epochs * (folds * math.ceil(rows_per_fold / config.batch_size)
                             + math.ceil(n_images * n_views / config.batch_size))
    return steps * step_s


def view_maps(
    backbone: EfficientNetLite0, prepared: Tensor, views: Views, *, in_scale: Tensor, in_shift: Tensor,
    last_block: int, batch: int = 32, resize_to: tuple[int, int] | None = None,
) -> Tensor:
    """Frozen prefix maps [N, V, C, h, w] of prepared engine inputs (raw units) in every view:
    the view is applied to the raw input, then the graph's own normalisation (``in_scale``,
    ``in_shift``) and scaling (``resize_to``, ``PooledFeatures.resize_to``: the same order as the exported
    graph), then the frozen blocks up to ``last_block`` (``LateStages.first_block - 1``)."""

    def seen(v: str) -> Tensor:
        x = Views.apply(v, prepared) * in_scale + in_shift
        return x if resize_to is None else F.interpolate(x, size=resize_to, mode="bilinear", align_corners=False)

    per_view = [prefix_maps(backbone, seen(v), last_block=last_block, batch=batch) for v in views.names]
    return torch.stack(per_view, dim=1)


def view_averaged_probs(late: LateStages, head: HeadParams, maps: Tensor, batch: int = 128) -> npt.NDArray[np.float32]:
    """Class probabilities of maps [N, V, ...], averaged over the V views (what the exported graph
    with view averaging computes)."""
    mu, sd, w, b = (torch.as_tensor(a, dtype=torch.float32) for a in head)
    out = torch.zeros(len(maps), w.shape[1])
    with torch.no_grad():
        for v in range(maps.shape[1]):
            for s in range(0, len(maps), batch):
                logits = ((late(maps[s : s + batch, v]) - mu) / sd) @ w + b
                out[s : s + batch] += F.softmax(logits, dim=1)
    return (out / maps.shape[1]).numpy().astype(np.float32)


def finetune_cross_validated(
    backbone: EfficientNetLite0, maps: Tensor, y: npt.NDArray[np.int64], *, stages: Sequence[str],
    fit_head: FitHeadFn, config: FinetuneConfig, folds: npt.NDArray[np.int64], seed: int,
    progress: ProgressFn | None = None,
) -> tuple[FinetuneResult, npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Fine-tune on every view of every image (maps [N, V, ...]; an epoch sees each view as its own
    map) and measure it: one run per fold without that fold's images gives out-of-fold class
    probabilities (views averaged, and through the identity view alone), then the final run on everything.

    Returns (final result, out-of-fold probabilities [N, K] views averaged, the same through the identity
    view); the views of a held-out image never train its fold's run, and ``fit_head`` is refitted inside
    each run.
    """
    n, n_views = maps.shape[:2]
    flat_y = np.repeat(y, n_views)
    fold_ids = np.unique(folds)
    oof: npt.NDArray[np.float32] | None = None
    oof_identity: npt.NDArray[np.float32] | None = None
    for i, f in enumerate(fold_ids):
        train = np.flatnonzero(folds != f)
        res = finetune(backbone, maps[train].reshape(-1, 1, *maps.shape[2:]), np.repeat(y[train], n_views),
                       stages=stages, fit_head=fit_head, config=config, seed=seed + i)
        late = LateStages(res.backbone, stages=stages, first_trained_stage=config.first_trained_stage)
        test = np.flatnonzero(folds == f)
        head = (res.mu, res.sd, res.weight, res.bias)
        probs = view_averaged_probs(late, head, maps[test])
        if oof is None or oof_identity is None:
            oof = np.zeros((n, probs.shape[1]), np.float32)
            oof_identity = np.zeros_like(oof)
        oof[test] = probs
        oof_identity[test] = view_averaged_probs(late, head, maps[test][:, :1])
        if progress is not None:
            progress("classifier fine-tuning: cross-validation", (i + 1) / (len(fold_ids) + 1))
    final = finetune(backbone, maps.reshape(-1, 1, *maps.shape[2:]), flat_y, stages=stages, fit_head=fit_head,
                     config=config, seed=seed)
    if progress is not None:
        progress("classifier fine-tuning", 1.0)
    assert oof is not None and oof_identity is not None  # folds is never empty
    return final, oof, oof_identity


# thresholds tried for running the views only where the identity view is unsure (``choose_views_below``).
# None below 0.8: trained with label smoothing 0.1, the model's sure answers sit at 0.9-0.95, and on NEU-DET
# (40/class) a lower threshold chosen out of fold lost up to 1 point on held-out images against the views
# (0.5 at seed 2 of the product path: 97.5 vs 98.5 %), where 0.7-0.8 kept the views' answers with 7-16 % of
# parts through them (docs/classifier.md "Fine-tuning")
VIEWS_BELOW_GRID: tuple[float, ...] = (0.8, 0.9, 0.95, 0.99, 1.0)


def choose_views_below(p_identity: npt.NDArray[np.float32], p_views: npt.NDArray[np.float32],
                       y: npt.NDArray[np.int64], grid: Sequence[float] = VIEWS_BELOW_GRID) -> float:
    """The smallest threshold of ``grid`` at which the cascade (identity view, the views below it) names
    as many out-of-fold images right as the views always do: fewest parts pay the views without losing
    what they add. 1.0 (the last resort) sends every part whose top probability is below 1 through them.

    The out-of-fold images are few (a 3-fold run on 40 per class), so the grid starts at 0.8, not lower
    (``VIEWS_BELOW_GRID``).
    """
    right_views = int((p_views.argmax(1) == y).sum())
    for t in sorted(grid):
        if int((cascade_probs(p_identity, p_views, t).argmax(1) == y).sum()) >= right_views:
            return float(t)
    return 1.0


def cascade_probs(p_identity: npt.NDArray[np.float32], p_views: npt.NDArray[np.float32],
                  views_below: float) -> npt.NDArray[np.float32]:
    """What the edge reports: the identity view's probabilities, the views' where its top one is below
    ``views_below``."""
    unsure = p_identity.max(1) < views_below
    return np.where(unsure[:, None], p_views, p_identity).astype(np.float32)
