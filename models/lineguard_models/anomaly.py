"""Anomaly model trained on good images only (PatchCore-style), as one exportable torch module.

Data flow: engine input batch from ``lineguard.preprocess.prepare`` ([N, C, H, W] float32, raw
camera units) -> :class:`AnomalyScorer` (scale by max_value, mono -> RGB, backbone normalisation,
backbone stages, 3x3 neighbourhood averaging, upsample to the finest stage grid, optional fixed
random projection, nearest-neighbour distance to the memory bank, anomaly map, image score) ->
``anomaly_score`` [N] and ``anomaly_map`` [N, 1, H, W] (plus, in a bundle whose classifier shares the
backbone pass, the raw map of the deepest stage: :meth:`AnomalyScorer.forward_with_stage`).
:func:`fit_anomaly_model` builds the memory bank from good images, streaming batch by batch with
bounded memory (``coreset.py``). ``AnomalyScorer.forward`` (or ``forward_with_stage``) is exactly
the graph ``export.export_onnx`` writes, so serving cannot drift from training.

Must never: see defect images during fitting, guess the pixel range (``max_value`` is part of the
spec), or keep features of every training image in memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from lineguard.errors import ImageError
from lineguard_models.backbone import Backbone, BackboneConfig, load_backbone
from lineguard_models.coreset import StreamingCoreset, final_rows

log = logging.getLogger(__name__)
ImageScore = Literal["patch_max", "map_max", "topk_mean"]


class AnomalyModelConfig(BaseModel):
    """Hyper-parameters of the anomaly model. Defaults are the benchmarked ones (docs/benchmarks/anomaly.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_height_px: int = Field(224, ge=32, le=2048, description="engine input height (per tile), px")
    input_width_px: int = Field(224, ge=32, le=2048, description="engine input width (per tile), px")
    backbone: BackboneConfig = Field(default_factory=lambda: BackboneConfig(), description="feature backbone")
    neighbourhood_cells: int = Field(
        1, ge=1, le=7, description="odd side of the local averaging window on each stage's feature grid (1 = none)"
    )
    projection_dim: int | None = Field(
        None, ge=8, le=1024, description="fixed random projection of patch features (None = keep all dims)"
    )
    bank_size: int = Field(
        16384, ge=16, le=1_000_000,
        description="memory bank rows after coreset selection (with bank_fraction: the most rows)",
    )
    bank_fraction: float | None = Field(
        0.1, gt=0.0, le=1.0, description="bank = this share of every training patch, by greedy coreset, at most "
        "bank_size rows (1.0 = every patch; None = always bank_size rows)",
    )
    buffer_rows: int = Field(
        262144, ge=64, le=1_000_000, description="feature rows buffered before each coreset reduction. Large "
        "enough that 50 images at 320 px (80,000 stage3 patches) or 544x224 long frames reduce once: a second "
        "reduction to bank_size first cost 6x the fold fits' time in a 320 px final training (a second greedy "
        "pass over 65,536 rows); peak memory about this x (feature dim + 128) floats, ~300 MB",
    )
    patches_per_image: int | None = Field(
        None, ge=1, le=1_000_000, description="random patches kept per training image (None = all)"
    )
    bank_turns: Literal[1, 2, 4] = Field(
        1, description="copies of each training input in the bank: 1 as is, 2 + 180 deg, 4 = the four 90 deg "
        "turns (parts lying in any orientation; a non-square input gets 180 deg only)",
    )
    blur_sigma_px: float = Field(4.0, ge=0.0, le=64.0, description="gaussian blur of the anomaly map, input px")
    image_score: ImageScore = Field(
        "topk_mean", description="image score: mean of the score_top_k largest patch distances (topk_mean), max "
        "raw patch distance (patch_max), or max of the blurred map (map_max)",
    )
    score_top_k: int = Field(10, ge=1, le=4096, description="patches averaged by image_score=topk_mean")
    batch_size: int = Field(8, ge=1, le=256, description="images per forward pass while fitting")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of every random choice in fitting")

    @model_validator(mode="after")
    def verify_neighbourhood(self) -> AnomalyModelConfig:
        if self.neighbourhood_cells % 2 == 0:
            raise ValueError("neighbourhood_cells must be odd so the window is centred")
        if self.buffer_rows < self.bank_size:
            raise ValueError("buffer_rows must be >= bank_size")
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class ScorerSpec:
    """Everything besides weights and bank that fixes the scoring graph (goes into the bundle)."""

    input_height_px: int
    input_width_px: int
    channels: Literal[1, 3]
    max_value: float
    stages: tuple[str, ...]
    neighbourhood_cells: int
    projection_dim: int | None
    projection_seed: int
    blur_sigma_px: float
    image_score: ImageScore
    score_top_k: int = 1  # used by image_score="topk_mean" only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gaussian_kernel(sigma_px: float) -> Tensor:
    radius = max(1, int(4.0 * sigma_px + 0.5))  # 4 sigma, as scipy's default truncate
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma_px) ** 2)
    return k / k.sum()


class PatchFeatures(nn.Module):
    """Backbone stages -> locally averaged, grid-aligned, optionally projected patch features [N, D, h, w]."""

    def __init__(self, backbone: Backbone, spec: ScorerSpec) -> None:
        super().__init__()
        self.backbone = backbone
        self.stages = spec.stages
        self.k = spec.neighbourhood_cells
        finest = min(backbone.stage_strides[s] for s in spec.stages)
        # decided from static strides, not tensor shapes, so the exported graph has no traced branches
        self.resample = {s: backbone.stage_strides[s] != finest for s in spec.stages}
        finest_stage = next(s for s in spec.stages if backbone.stage_strides[s] == finest)
        with torch.no_grad():  # one probe pass: the grid size depends on the backbone's padding rules
            probe = backbone(torch.zeros(1, 3, spec.input_height_px, spec.input_width_px))[finest_stage]
        self.grid_hw: tuple[int, int] = (int(probe.shape[-2]), int(probe.shape[-1]))
        full_dim = sum(backbone.stage_channels[s] for s in spec.stages)
        self.out_dim = spec.projection_dim or full_dim
        proj = None
        if spec.projection_dim is not None:
            gen = torch.Generator().manual_seed(spec.projection_seed)
            proj = torch.randn(full_dim, spec.projection_dim, generator=gen) / spec.projection_dim**0.5
        self.projection: Tensor | None
        self.register_buffer("projection", proj)

    def forward(self, x: Tensor) -> Tensor:
        return self.combine(self.backbone(x))

    def combine(self, feats: dict[str, Tensor]) -> Tensor:
        """Backbone stage maps -> patch features (split from ``forward`` so a stage map can be reused)."""
        parts = []
        for name in self.stages:
            f = feats[name]
            if self.k > 1:
                # neighbourhood averaging widens each patch's receptive field (PatchCore's local aggregation)
                f = F.avg_pool2d(f, self.k, stride=1, padding=self.k // 2, count_include_pad=False)
            if self.resample[name]:
                f = F.interpolate(f, size=self.grid_hw, mode="bilinear", align_corners=False)
            parts.append(f)
        out = torch.cat(parts, dim=1)
        if self.projection is not None:
            out = torch.einsum("ndhw,dp->nphw", out, self.projection)
        return out


class AnomalyScorer(nn.Module):
    """Raw image batch [N, C, H, W] -> (anomaly_score [N], anomaly_map [N, 1, H, W]).

    This forward is exactly what is exported to ONNX. The map has the input resolution; the
    score is the maximum raw patch distance (``patch_max``), the map's maximum (``map_max``) or the mean of
    the ``score_top_k`` largest patch distances (``topk_mean``).
    """

    in_scale: Tensor
    in_shift: Tensor
    bank: Tensor
    bank_centre: Tensor
    bank_search: Tensor
    blur: Tensor

    def __init__(self, backbone: Backbone, bank: Tensor, spec: ScorerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.features = PatchFeatures(backbone, spec)
        if bank.ndim != 2 or bank.shape[1] != self.features.out_dim:
            raise ValueError(f"bank shape {tuple(bank.shape)} does not match feature dim {self.features.out_dim}")
        norm = backbone.input_normalisation
        mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
        std = torch.tensor(norm.std).view(1, 3, 1, 1)
        # raw -> [0, 1] -> normalised, folded into one multiply-add; a mono input broadcasts to 3 channels
        self.register_buffer("in_scale", 1.0 / (spec.max_value * std))
        self.register_buffer("in_shift", -mean / std)
        self.register_buffer("bank", bank.detach().clone())
        # distances are translation invariant: centring on the bank mean shrinks ||a||^2 and ||b||^2,
        # so the matmul form below loses far less float32 precision on small (normal) distances
        centre = bank.detach().mean(dim=0)
        centred = bank.detach() - centre
        self.register_buffer("bank_centre", centre)
        # ||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2. [a, 1] x [[-2 b^T], [||b||^2]] gives the last two terms
        # in one GEMM: ||b||^2 rides in the accumulation instead of a separate broadcast add over the
        # [hw, M] product (13 % of the search on the default engine, docs/anomaly-model.md)
        search = torch.cat([-2.0 * centred.t(), centred.pow(2).sum(dim=1)[None]])
        self.register_buffer("bank_search", search.contiguous())
        kernel = _gaussian_kernel(spec.blur_sigma_px) if spec.blur_sigma_px > 0 else torch.ones(1)
        self.register_buffer("blur", kernel)
        self._blur_taps = int(kernel.numel())

    @property
    def bank_rows(self) -> int:
        return int(self.bank.shape[0])

    def normalise(self, image: Tensor) -> Tensor:
        out: Tensor = image * self.in_scale + self.in_shift
        return out

    def patch_scores(self, image: Tensor) -> Tensor:
        """Nearest-neighbour distance of every patch to the bank, [N, 1, h, w]."""
        return self.distances(self.features(self.normalise(image)))

    def distances(self, feats: Tensor) -> Tensor:
        """Patch features [N, D, h, w] -> nearest-neighbour distance to the bank [N, 1, h, w].

        Split from :meth:`patch_scores` so a benchmark can score cached features against many banks.
        """
        h, w = self.features.grid_hw
        a = feats.flatten(2).transpose(1, 2) - self.bank_centre  # [N, hw, D]
        ones = torch.ones_like(a[..., :1])
        d2 = torch.matmul(torch.cat([a, ones], dim=2), self.bank_search)  # [N, hw, M] without ||a||^2
        nearest = d2.amin(dim=2) + a.pow(2).sum(dim=2)  # ||a||^2 added after the min: it is constant per row
        dist: Tensor = nearest.clamp_min(0.0).sqrt().reshape(-1, 1, h, w)
        return dist

    def _blur(self, m: Tensor) -> Tensor:
        k = self._blur_taps
        if k == 1:
            return m
        r = k // 2
        m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="replicate"), self.blur.view(1, 1, 1, k))
        return F.conv2d(F.pad(m, (0, 0, r, r), mode="replicate"), self.blur.view(1, 1, k, 1))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.score_patches(self.patch_scores(image))

    def forward_with_stage(self, image: Tensor, stage: str) -> tuple[Tensor, Tensor, Tensor]:
        """``forward`` plus the backbone's raw ``stage`` map [N, C, h, w], computed in the same pass.

        The shared-backbone export (``export.export_onnx(shared_stage=...)``): the defect
        classifier continues from this map instead of running the backbone again on the image.
        """
        if stage not in self.features.stages:
            raise ValueError(f"stage {stage!r} is not computed by this scorer (stages {self.features.stages})")
        feats = self.features.backbone(self.normalise(image))
        score, amap = self.score_patches(self.distances(self.features.combine(feats)))
        return score, amap, feats[stage]

    def score_patches(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """Patch distances [N, 1, h, w] -> (image score [N], blurred map [N, 1, H, W])."""
        size = (self.spec.input_height_px, self.spec.input_width_px)
        amap = self._blur(F.interpolate(patches, size=size, mode="bilinear", align_corners=False))
        if self.spec.image_score == "map_max":
            return amap.flatten(1).amax(dim=1), amap
        flat = patches.flatten(1)
        if self.spec.image_score == "topk_mean":  # one bright patch alone (noise, dust) no longer decides
            k = min(self.spec.score_top_k, flat.shape[1])
            return flat.topk(k, dim=1).values.mean(dim=1), amap
        return flat.amax(dim=1), amap


@dataclass(frozen=True, slots=True, kw_only=True)
class FitProgress:
    """One progress report from :func:`fit_anomaly_model`."""

    images_seen: int
    images_total: int | None
    feature_rows_seen: int
    reductions: int
    elapsed_s: float


ProgressFn = Callable[[FitProgress], None]


def _as_batch(batch: npt.NDArray[Any] | Tensor, spec: ScorerSpec) -> Tensor:
    t = torch.as_tensor(np.asarray(batch, dtype=np.float32)) if not isinstance(batch, Tensor) else batch.float()
    want = (spec.channels, spec.input_height_px, spec.input_width_px)
    if t.ndim != 4 or tuple(t.shape[1:]) != want:
        raise ImageError(
            f"training batch has shape {tuple(t.shape)}, expected [N, {want[0]}, {want[1]}, {want[2]}] "
            "(run lineguard.preprocess.prepare with the model's input spec first)"
        )
    return t


def turns_used(turns: int, height: int, width: int) -> int:
    """Copies of each input the bank gets: a non-square input turns by 180 deg only (see :func:`turned`)."""
    return turns if turns == 1 or height == width else min(turns, 2)


def _turns_used(x: Tensor, turns: int) -> int:
    return turns_used(turns, x.shape[-2], x.shape[-1])


def turned(x: Tensor, turns: int) -> Tensor:
    """[N, C, H, W] -> the batch followed by its turned copies: ``turns`` = 2 adds 180 deg, 4 adds 90, 180
    and 270 deg. A non-square input cannot turn by 90 deg inside a fixed (H, W): it gets 180 deg only."""
    used = _turns_used(x, turns)
    if used == 1:
        return x
    ks = (2,) if used == 2 else (1, 2, 3)
    return torch.cat([x, *(torch.rot90(x, k, dims=(2, 3)) for k in ks)])


def placeholder_scorer(config: AnomalyModelConfig, *, channels: Literal[1, 3], max_value: float,
                       backbone: Backbone | None = None) -> AnomalyScorer:
    """The scorer ``config`` builds, with a one-row placeholder bank: its feature path fits the bank
    (:func:`fit_anomaly_model`), and ``with_bank`` of it is the exported graph (``autoprice`` times
    one with a stand-in bank of the planned rows, :func:`planned_bank_rows`)."""
    spec = ScorerSpec(
        input_height_px=config.input_height_px, input_width_px=config.input_width_px, channels=channels,
        max_value=float(max_value), stages=config.backbone.stages,
        neighbourhood_cells=config.neighbourhood_cells, projection_dim=config.projection_dim,
        projection_seed=config.seed, blur_sigma_px=config.blur_sigma_px, image_score=config.image_score,
        score_top_k=config.score_top_k,
    )
    bb = backbone if backbone is not None else load_backbone(config.backbone)
    dim = config.projection_dim or sum(bb.stage_channels[s] for s in spec.stages)
    return AnomalyScorer(bb.eval(), torch.zeros(1, dim), spec).eval()


def planned_bank_rows(config: AnomalyModelConfig, grid_hw: tuple[int, int], inputs: int) -> int:
    """Rows of the bank :func:`fit_anomaly_model` keeps from ``inputs`` engine inputs (images x tiles)
    on a ``grid_hw`` patch grid: the coreset's rule (``coreset.final_rows``) on every patch it sees."""
    per_input = grid_hw[0] * grid_hw[1]
    if config.patches_per_image is not None:
        per_input = min(per_input, config.patches_per_image)
    turns = turns_used(config.bank_turns, config.input_height_px, config.input_width_px)
    return final_rows(config.bank_size, config.bank_fraction, inputs * turns * per_input)


def fit_anomaly_model(
    batches: Iterable[npt.NDArray[Any] | Tensor],
    *,
    config: AnomalyModelConfig,
    channels: Literal[1, 3],
    max_value: float,
    backbone: Backbone | None = None,
    images_total: int | None = None,
    progress: ProgressFn | None = None,
) -> AnomalyScorer:
    """Fit the memory bank on good images and return the ready scorer.

    ``batches`` yields [N, C, H, W] float32 arrays in raw camera units (``preprocess.prepare``
    output, tiles as batch elements) with C = ``channels`` and (H, W) = the config's input size.
    Progress goes to ``progress`` (if given) and to the module logger after every batch.
    """
    torch.manual_seed(config.seed)
    scorer = placeholder_scorer(config, channels=channels, max_value=max_value, backbone=backbone)
    spec = scorer.spec
    coreset = StreamingCoreset(bank_size=config.bank_size, buffer_rows=config.buffer_rows, seed=config.seed,
                               fraction=config.bank_fraction)
    gen = torch.Generator().manual_seed(config.seed + 1)
    seen, t0 = 0, time.monotonic()
    with torch.inference_mode():
        for batch in batches:
            x = turned(_as_batch(batch, spec), config.bank_turns)
            feats = scorer.features(scorer.normalise(x))  # [N, D, h, w]
            for rows in feats.flatten(2).transpose(1, 2):  # per image: [hw, D]
                if config.patches_per_image is not None and config.patches_per_image < rows.shape[0]:
                    rows = rows[torch.randperm(rows.shape[0], generator=gen)[: config.patches_per_image]]
                coreset.add(rows)
            seen += x.shape[0] // _turns_used(x, config.bank_turns)
            report = FitProgress(
                images_seen=seen, images_total=images_total, feature_rows_seen=coreset.rows_seen,
                reductions=coreset.reductions, elapsed_s=time.monotonic() - t0,
            )
            log.info("anomaly fit: %d/%s images, %d feature rows, %d coreset reductions, %.1f s",
                     seen, images_total or "?", report.feature_rows_seen, report.reductions, report.elapsed_s)
            if progress is not None:
                progress(report)
        bank = coreset.bank()
    log.info("anomaly fit done: bank %d x %d from %d images in %.1f s",
             bank.shape[0], bank.shape[1], seen, time.monotonic() - t0)
    return AnomalyScorer(scorer.features.backbone, bank, spec).eval()


def batched(images: Iterable[npt.NDArray[Any]], batch_size: int) -> Iterable[npt.NDArray[np.float32]]:
    """Group single [C, H, W] (or [1, C, H, W]) inputs into [N, C, H, W] float32 batches."""
    buf: list[npt.NDArray[np.float32]] = []
    for im in images:
        arr = np.asarray(im, dtype=np.float32)
        buf.extend(arr if arr.ndim == 4 else [arr])
        if len(buf) >= batch_size:
            yield np.stack(buf[:batch_size])
            buf = buf[batch_size:]
    if buf:
        yield np.stack(buf)


def score_batches(
    scorer: AnomalyScorer, batches: Iterable[npt.NDArray[Any] | Tensor]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Torch scoring of many batches -> (scores [N], maps [N, 1, H, W]) as numpy."""
    scores, maps = [], []
    with torch.inference_mode():
        for batch in batches:
            s, m = scorer(_as_batch(batch, scorer.spec))
            scores.append(s.numpy())
            maps.append(m.numpy())
    return np.concatenate(scores), np.concatenate(maps)
