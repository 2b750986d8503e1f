"""ONNX export parity: the exported graph scores real photos exactly like the torch scorer.

Peers: the real exporter and ONNX Runtime (CPU). Images: crops of scikit-image photos and
textures at 128x128, 8-bit RGB and 16-bit mono. Tolerance: scores rtol 1e-4 (plus atol 1e-4);
maps rtol 5e-4 + atol 1e-3 (map values are feature distances of order 1-50; the matmul-form
nearest-neighbour search and different GEMM/conv kernels leave ~1e-4 relative noise on the
smallest distances).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import skimage.data

from lineguard_models.anomaly import AnomalyModelConfig, AnomalyScorer, batched, fit_anomaly_model, score_batches
from lineguard_models.backbone import EfficientNetLite0
from lineguard_models.export import export_backbone_only_onnx, export_onnx

SIZE = 128


def crops(img: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """Random SIZE x SIZE crops as [C, H, W] float32 (raw units kept)."""
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    out = []
    for _ in range(n):
        y, x = int(rng.integers(0, h - SIZE)), int(rng.integers(0, w - SIZE))
        c = img[y : y + SIZE, x : x + SIZE].astype(np.float32)
        out.append(c.transpose(2, 0, 1) if c.ndim == 3 else c[None])
    return out


@pytest.fixture(scope="module")
def backbone() -> EfficientNetLite0:
    return EfficientNetLite0.from_state_dict_file(out_stages=("stage3", "stage4"))


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_parity(scorer: AnomalyScorer, images: list[np.ndarray], onnx_path: Path) -> None:
    export_onnx(scorer, onnx_path)
    sess = session(onnx_path)
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == ["anomaly_score", "anomaly_map"]
    for batch in (np.stack(images[:1]), np.stack(images)):  # batch axis is dynamic
        want_s, want_m = score_batches(scorer, [batch])
        got_s, got_m = sess.run(["anomaly_score", "anomaly_map"], {"image": batch})
        assert got_s.shape == want_s.shape and got_m.shape == want_m.shape
        np.testing.assert_allclose(got_s, want_s, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got_m, want_m, rtol=5e-4, atol=1e-3)
    scores = score_batches(scorer, [np.stack(images)])[0]
    assert np.ptp(scores) > 0.1  # real, varied inputs, not a constant graph


def test_rgb_8bit_parity_on_photos(backbone: EfficientNetLite0, tmp_path: Path) -> None:
    brick = cv2.resize(skimage.data.gravel(), (320, 320))[..., None].repeat(3, axis=2)
    train = crops(skimage.data.coffee(), 6, seed=0) + crops(brick, 6, seed=1)
    cfg = AnomalyModelConfig(input_height_px=SIZE, input_width_px=SIZE, bank_size=128, buffer_rows=512)
    scorer = fit_anomaly_model(batched(train, 6), config=cfg, channels=3, max_value=255, backbone=backbone)
    test = crops(skimage.data.chelsea(), 2, seed=2) + crops(skimage.data.coffee(), 1, seed=3)
    check_parity(scorer, test, tmp_path / "rgb.onnx")
    # the latency baseline graph: same scaling + backbone stages, one output per stage
    outs = session(export_backbone_only_onnx(scorer, tmp_path / "bb.onnx")).run(None, {"image": np.stack(test)})
    assert [o.shape for o in outs] == [(3, 40, 16, 16), (3, 80, 8, 8)]


def test_mono_16bit_parity_with_projection(backbone: EfficientNetLite0, tmp_path: Path) -> None:
    mono16 = skimage.data.camera().astype(np.float32) * 257.0  # full 16-bit range
    cfg = AnomalyModelConfig(input_height_px=SIZE, input_width_px=SIZE, bank_size=96, buffer_rows=400,
                             projection_dim=48, image_score="patch_max")
    scorer = fit_anomaly_model(batched(crops(mono16, 8, seed=4), 4), config=cfg, channels=1,
                               max_value=65535, backbone=backbone)
    check_parity(scorer, crops(mono16, 3, seed=5) + crops(skimage.data.moon().astype(np.float32) * 257, 1, 6),
                 tmp_path / "mono.onnx")
