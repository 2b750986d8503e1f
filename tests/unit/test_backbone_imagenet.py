"""The packaged EfficientNet-Lite0 weights are ImageNet weights, loaded strictly, with the right conventions.

Natural photos shipped with scikit-image must land in their ImageNet class: chelsea (a tabby cat,
classes 281-285), coffee (espresso 967 / cup 968), rocket (missile 657 / projectile 744).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from lineguard.errors import ConfigError
from lineguard_models.backbone import (
    IMAGENET_NORMALISATION,
    BackboneConfig,
    EfficientNetLite0,
    TorchScriptBackbone,
    load_backbone,
)

PHOTOS = {
    "chelsea": ({281, 282, 283, 284, 285}, 1),  # (acceptable classes, must appear within top-k)
    "coffee": ({967, 968}, 1),
    "rocket": ({657, 744}, 1),
    "astronaut": ({414, 422, 450, 465, 543, 560, 573, 610, 834, 841, 869}, 5),  # suit/jersey/..., ambiguous
}


@pytest.fixture(scope="module")
def net() -> EfficientNetLite0:
    return EfficientNetLite0.from_state_dict_file(out_stages=("stage3", "stage4"))


def _photo(name: str, size: int = 224) -> torch.Tensor:
    """Resize the short side to ``size``, centre crop, ImageNet-normalise (the measured convention)."""
    img = getattr(skimage.data, name)()
    h, w = img.shape[:2]
    s = size / min(h, w)
    img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    t = torch.from_numpy(img[y : y + size, x : x + size].astype(np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_NORMALISATION.mean).view(3, 1, 1)
    std = torch.tensor(IMAGENET_NORMALISATION.std).view(3, 1, 1)
    return ((t - mean) / std)[None]


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_natural_photos_get_their_imagenet_class(net: EfficientNetLite0, name: str) -> None:
    classes, top_k = PHOTOS[name]
    with torch.no_grad():
        top = net.classify(_photo(name)).topk(top_k, dim=1).indices[0].tolist()
    assert classes & set(top), f"{name}: top-{top_k} {top} not in {sorted(classes)}"


def test_confident_on_unambiguous_photos(net: EfficientNetLite0) -> None:
    with torch.no_grad():
        probs = net.classify(torch.cat([_photo("chelsea"), _photo("coffee")])).softmax(dim=1)
    assert probs[0, [281, 282, 283, 284, 285]].sum() > 0.8  # cat classes together
    assert probs[1, [967, 968]].sum() > 0.8


def test_stage_shapes_and_strides(net: EfficientNetLite0) -> None:
    with torch.no_grad():
        feats = net(torch.zeros(2, 3, 96, 160))
    assert list(feats) == ["stage3", "stage4"]
    for name, f in feats.items():
        stride = net.stage_strides[name]
        assert tuple(f.shape) == (2, net.stage_channels[name], 96 // stride, 160 // stride)


def test_strict_loading_refuses_a_foreign_state_dict(tmp_path: Path, net: EfficientNetLite0) -> None:
    state = net.state_dict()
    del state["_blocks.3._bn1.running_var"]
    bad = tmp_path / "missing_key.pth"
    torch.save(state, bad)
    with pytest.raises(ConfigError, match="not an EfficientNet-Lite0"):
        EfficientNetLite0.from_state_dict_file(bad)
    state = net.state_dict()
    state["_fc.weight"] = torch.zeros(10, 1280)
    torch.save(state, bad)
    with pytest.raises(ConfigError, match="size mismatch"):
        EfficientNetLite0.from_state_dict_file(bad)


def test_unknown_stage_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        EfficientNetLite0(out_stages=("stage9",))


def test_torchscript_backbone_from_file(tmp_path: Path, net: EfficientNetLite0) -> None:
    traced = torch.jit.trace(net, torch.zeros(1, 3, 64, 64), strict=False)
    module_path = tmp_path / "bb.pt"
    traced.save(str(module_path))
    spec_path = tmp_path / "bb.json"
    spec_path.write_text(
        '{"stages": {"stage3": {"channels": 40, "stride": 8}, "stage4": {"channels": 80, "stride": 16}},'
        ' "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}'
    )
    cfg = BackboneConfig(kind="torchscript", weights_path=module_path, spec_path=spec_path, stages=("stage4",))
    bb = load_backbone(cfg)
    assert isinstance(bb, TorchScriptBackbone)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb(x)["stage4"], net(x)["stage4"])
    assert bb.stage_strides == {"stage3": 8, "stage4": 16}
