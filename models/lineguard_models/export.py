"""ONNX export of the anomaly scoring path (and of the backbone alone, for latency comparison).

Data flow: fitted :class:`~lineguard_models.anomaly.AnomalyScorer` -> one ONNX graph
(input ``image`` [N, C, H, W] float32 in raw camera units; outputs ``anomaly_score`` [N] and
``anomaly_map`` [N, 1, H, W]; with ``shared_stage`` also ``shared_features`` [N, C', h, w], the raw
backbone map the defect classifier continues from when it shares the backbone pass) -> bundle
(written by ``lineguard.bundle``) -> ONNX Runtime on the edge. The batch axis is dynamic so tiles
of one frame run as one batch.

Must never: export anything other than ``AnomalyScorer.forward`` / ``forward_with_stage`` (the
parity tests rely on it), or leave the output names to the exporter's defaults (the edge binds
outputs by name).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import torch
from torch import Tensor, nn

from lineguard.errors import EngineError
from lineguard_models.anomaly import AnomalyScorer
from lineguard_models.backbone import Backbone

if TYPE_CHECKING:
    from lineguard_models.verdict_head import FusedScorer

INPUT_NAME = "image"
SCORE_OUTPUT = "anomaly_score"
MAP_OUTPUT = "anomaly_map"
SHARED_OUTPUT = "shared_features"  # the classifier's input in a shared-backbone bundle


def _export(model: nn.Module, path: Path, example: Tensor, outputs: list[str], opset: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in outputs}}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # the TorchScript-based exporter: no onnxscript needed, TorchScript backbones export too
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=UserWarning)  # constant-folding notes, not errors
            torch.onnx.export(
                model.eval(), (example,), str(path), input_names=[INPUT_NAME], output_names=outputs,
                dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        onnx.checker.check_model(str(path))
    except Exception as exc:  # the exporter raises many unrelated types; one clear error for callers
        raise EngineError(f"ONNX export to {path} failed: {exc}") from exc
    return path


class _WithSharedStage(nn.Module):
    """``AnomalyScorer.forward_with_stage`` as a module: score, map and the raw ``stage`` map."""

    def __init__(self, scorer: AnomalyScorer, stage: str) -> None:
        super().__init__()
        self.scorer = scorer
        self.stage = stage

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.scorer.forward_with_stage(image, self.stage)


def export_onnx(
    scorer: AnomalyScorer | FusedScorer, path: Path, *, input_shape: Sequence[int] | None = None, opset: int = 17,
    shared_stage: str | None = None,
) -> Path:
    """Write the complete scoring graph; ``input_shape`` is [N, C, H, W] of the example (N is dynamic).

    ``input_shape`` defaults to [1, C, H, W] from the scorer's spec; C, H, W must match it.
    ``shared_stage`` adds the output ``shared_features``: that backbone stage's raw map, which the
    pass computes anyway (measured free on the accept path: docs/benchmarks/classifier.md).
    """
    spec = scorer.spec
    shape = tuple(input_shape) if input_shape is not None else (
        1, spec.channels, spec.input_height_px, spec.input_width_px)
    if len(shape) != 4 or shape[1:] != (spec.channels, spec.input_height_px, spec.input_width_px):
        raise EngineError(f"input_shape {shape} does not match the scorer spec "
                          f"[N, {spec.channels}, {spec.input_height_px}, {spec.input_width_px}]")
    # a mid-range example avoids constant-folding surprises with all-zero inputs
    example = torch.full(shape, spec.max_value / 2.0)
    if shared_stage is None:
        return _export(scorer, Path(path), example, [SCORE_OUTPUT, MAP_OUTPUT], opset)
    if not isinstance(scorer, AnomalyScorer):  # a verdict head's graph: the classifier reads the image
        raise EngineError("shared_stage is offered by the plain anomaly scorer only, not with a verdict head")
    if shared_stage not in spec.stages:
        raise EngineError(f"shared_stage {shared_stage!r} is not one of the scorer's stages {spec.stages}")
    return _export(_WithSharedStage(scorer, shared_stage), Path(path), example,
                   [SCORE_OUTPUT, MAP_OUTPUT, SHARED_OUTPUT], opset)


class _BackboneOnly(nn.Module):
    """Normalisation + backbone stages as a graph with one output per stage (latency baseline)."""

    def __init__(self, scorer: AnomalyScorer) -> None:
        super().__init__()
        self.scorer = scorer
        self.stages = scorer.spec.stages

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        feats = self.scorer.features.backbone(self.scorer.normalise(image))
        return tuple(feats[s] for s in self.stages)


class _FullClassifier(nn.Module):
    def __init__(self, backbone: Backbone, scorer: AnomalyScorer) -> None:
        super().__init__()
        self.backbone = backbone
        self.scorer = scorer

    def forward(self, image: Tensor) -> Tensor:
        logits: Tensor = self.backbone.classify(self.scorer.normalise(image))  # type: ignore[operator]
        return logits


def export_backbone_only_onnx(
    scorer: AnomalyScorer, path: Path, *, input_shape: Sequence[int] | None = None,
    opset: int = 17, full_classifier: bool = False,
) -> Path:
    """Export the scorer's input scaling + backbone (the stages it uses) without patch scoring.

    ``full_classifier=True`` exports the whole ImageNet network up to the logits instead (only for
    backbones with ``classify``), the cost of a typical classifier engine.
    """
    spec = scorer.spec
    shape = tuple(input_shape) if input_shape is not None else (
        1, spec.channels, spec.input_height_px, spec.input_width_px)
    example = torch.full(shape, spec.max_value / 2.0)
    backbone = scorer.features.backbone
    if full_classifier:
        if not hasattr(backbone, "classify"):
            raise EngineError(f"{type(backbone).__name__} has no classifier head to export")
        return _export(_FullClassifier(backbone, scorer), Path(path), example, ["logits"], opset)
    return _export(_BackboneOnly(scorer), Path(path), example, [f"feat_{s}" for s in spec.stages], opset)
