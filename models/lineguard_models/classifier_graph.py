"""The classifier's exported torch graph: raw image -> pooled backbone stage features -> class
probabilities, and its ONNX export.

Sits below ``classifier`` (training, cross-validation) and ``shared`` (the shared-backbone variant,
which feeds the anomaly engine's stage map into the same pooling). Must never: fit anything; the head's
standardisation is folded into one linear layer so serving cannot drift from training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lineguard.preprocess import InputSpec
from lineguard_models.backbone import Backbone
from lineguard_models.classifier_head import SoftmaxHead

Pooling = Literal["mean", "mean_gem"]
POOL_WIDTH: dict[str, int] = {"mean": 1, "mean_gem": 2}  # features per stage channel
GEM_P = 3.0
INPUT_NAME = "image"
PROBS_OUTPUT = "class_probs"


def gem(x: Tensor, p: float = GEM_P) -> Tensor:
    """Generalised mean over the spatial axes of the positive part, ``mean(max(x, eps)^p)^(1/p)``
    [N, C]. Stage outputs of EfficientNet are linear (no activation after the projection), so the
    clamp keeps the responses, not their sign; p = 3 (Radenovic et al.), between average (1) and max."""
    return x.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class PooledFeatures(nn.Module):
    """Raw image batch -> concatenated pooled stage features [N, D].

    ``pooling="mean"``: the global average of each stage map; ``"mean_gem"``: per stage its average
    and its generalised mean (:func:`gem`) side by side ([mean_s, gem_s] for each stage in order). The
    average dilutes a small defect over the whole part; the generalised mean leans towards the
    strongest responses, where the defect is (quality suite, 10-40 labelled per class: mvtec_bottle
    75.0 -> 80.2 %, X-SDD 96.1 -> 96.7 %, DeepPCB crops 88.5 -> 89.3 %, NEU-DET level;
    docs/benchmarks/quality-classifier.md)."""

    def __init__(self, backbone: Backbone, *, max_value: float, pooling: Pooling = "mean",
                 resize_to: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.pooling = pooling
        # (height, width) the backbone sees: the frame is scaled inside the graph (bilinear), so the
        # training side and the exported graph take the same input and do the same arithmetic
        self.resize_to = resize_to
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        norm = backbone.input_normalisation
        mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
        std = torch.tensor(norm.std).view(1, 3, 1, 1)
        # raw -> [0, 1] -> normalised in one multiply-add; a mono input broadcasts to 3 channels
        self.register_buffer("in_scale", 1.0 / (max_value * std))
        self.register_buffer("in_shift", -mean / std)
        self.stages = tuple(backbone.out_stages)
        self.out_dim = sum(backbone.stage_channels[s] for s in self.stages) * POOL_WIDTH[pooling]

    def forward(self, image: Tensor) -> Tensor:
        scale, shift = self.get_buffer("in_scale"), self.get_buffer("in_shift")
        x = image * scale + shift
        if self.resize_to is not None:
            x = F.interpolate(x, size=self.resize_to, mode="bilinear", align_corners=False)
        return self.pool(self.backbone(x))

    def pool(self, feats: dict[str, Tensor]) -> Tensor:
        """Stage maps -> pooled feature vector [N, D]; the one pooling of both graph inputs
        (image, or the anomaly engine's shared stage map: ``shared.StageMapGraph``)."""
        if self.pooling == "mean":
            return torch.cat([feats[s].mean(dim=(2, 3)) for s in self.stages], dim=1)
        return torch.cat([torch.cat([feats[s].mean(dim=(2, 3)), gem(feats[s])], dim=1) for s in self.stages], dim=1)


def classifier_resize(spec: InputSpec, input_px: int | None) -> tuple[int, int] | None:
    """(height, width) the classifier's backbone sees for frames of ``spec``: scaled down so the shorter
    side is ``input_px``, aspect kept; None when the frame is not larger (never scaled up) or
    ``input_px`` is None."""
    h, w = spec.input_height, spec.input_width
    if input_px is None or min(h, w) <= input_px:
        return None
    f = input_px / min(h, w)
    return max(1, round(h * f)), max(1, round(w * f))


class ClassifierGraph(nn.Module):
    """The exported graph: raw image [N, C, H, W] -> class probabilities [N, K]."""

    def __init__(self, features: PooledFeatures, head: SoftmaxHead) -> None:
        super().__init__()
        self.features = features
        # standardisation folded into the linear layer: (x - mu) / sd @ W + b == x @ W' + b'
        w = head.weight / head.sd[:, None]
        b = head.bias - (head.mu / head.sd) @ head.weight
        self.linear = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(w.T, dtype=torch.float32))
            self.linear.bias.copy_(torch.as_tensor(b, dtype=torch.float32))

    def forward(self, image: Tensor) -> Tensor:
        return F.softmax(self.linear(self.features(image)), dim=1)




def export_classifier_onnx(
    graph: nn.Module, path: Path, *, spec: InputSpec, opset: int = 17,
    input_name: str = INPUT_NAME, example: Tensor | None = None,
) -> Path:
    """Export ``graph`` with input ``image`` [N, C, H, W] and output ``class_probs`` [N, K].

    A shared-backbone graph (:class:`StageMapGraph`) passes its own ``input_name`` and an
    ``example`` stage map instead of the image.
    """
    import warnings

    import onnx

    from lineguard.errors import EngineError

    path.parent.mkdir(parents=True, exist_ok=True)
    if example is None:
        example = torch.full((1, spec.channels, spec.input_height, spec.input_width), spec.max_value / 2.0)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            torch.onnx.export(  # TorchScript exporter: no onnxscript needed (same as the anomaly export)
                graph.eval(), (example,), str(path), input_names=[input_name], output_names=[PROBS_OUTPUT],
                dynamic_axes={input_name: {0: "batch"}, PROBS_OUTPUT: {0: "batch"}},
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        onnx.checker.check_model(str(path))
    except Exception as exc:  # the exporter raises many unrelated types; one clear error for callers
        raise EngineError(f"classifier ONNX export to {path} failed: {exc}") from exc
    return path
