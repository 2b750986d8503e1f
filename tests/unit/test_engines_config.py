"""Engine config schema, provider resolution, cache keys and tolerance helpers (pure, no GPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnxruntime
import pytest
from pydantic import TypeAdapter, ValidationError

from lineguard.engines.bench import percentiles
from lineguard.engines.config import (
    CpuProvider,
    CudaProvider,
    EngineConfig,
    OrtEngineConfig,
    TensorrtEngineConfig,
    TensorrtProvider,
)
from lineguard.engines.ort import provider_options, resolve_providers
from lineguard.engines.selftest import score_matches
from lineguard.engines.tensorrt import GpuInfo, engine_cache_key, import_cudart, import_tensorrt
from lineguard.errors import EngineError

ADAPTER: TypeAdapter[OrtEngineConfig | TensorrtEngineConfig] = TypeAdapter(EngineConfig)


def test_backend_key_picks_the_schema() -> None:
    ort_cfg = ADAPTER.validate_python({"backend": "onnxruntime", "providers": [{"type": "cuda", "device_id": 1}]})
    assert isinstance(ort_cfg, OrtEngineConfig) and isinstance(ort_cfg.providers[0], CudaProvider)
    trt_cfg = ADAPTER.validate_python({"backend": "tensorrt", "cache_dir": "/tmp/x", "precision": "int8"})
    assert isinstance(trt_cfg, TensorrtEngineConfig) and trt_cfg.precision == "int8"
    with pytest.raises(ValidationError):  # an ORT option under the TensorRT back-end is refused
        ADAPTER.validate_python({"backend": "tensorrt", "cache_dir": "/tmp/x", "providers": []})
    with pytest.raises(ValidationError):
        ADAPTER.validate_python({"backend": "openvino"})


def test_defaults_are_cpu_without_fallback() -> None:
    cfg = OrtEngineConfig()
    assert [p.type for p in cfg.providers] == ["cpu"] and cfg.allow_fallback is False


def test_config_refuses_unknown_keys_duplicates_and_cacheless_trt() -> None:
    with pytest.raises(ValidationError):
        OrtEngineConfig.model_validate({"providers": [{"type": "cpu"}], "thread": 2})
    with pytest.raises(ValidationError, match="once"):
        OrtEngineConfig.model_validate({"providers": [{"type": "cpu"}, {"type": "cpu"}]})
    with pytest.raises(ValidationError, match="trt_engine_cache_path"):
        TensorrtProvider.model_validate({"type": "tensorrt"})
    with pytest.raises(ValidationError):
        OrtEngineConfig.model_validate({"intra_op_threads": -1})


def test_tensorrt_provider_options_carry_cache_fp16_and_profile() -> None:
    spec = TensorrtProvider(type="tensorrt", device_id=1, trt_fp16_enable=True, trt_engine_cache_path=Path("/c"))
    name, opts = provider_options(spec, input_name="image", input_chw=(3, 224, 256), batch=4, onnx_sha256=SHA)
    assert name == "TensorrtExecutionProvider"
    assert opts["device_id"] == "1" and opts["trt_fp16_enable"] == "True"
    assert opts["trt_engine_cache_enable"] == "True"
    # keyed by ORT version and graph hash: ORT itself never invalidates its TensorRT cache
    assert opts["trt_engine_cache_path"] == f"/c/ort{onnxruntime.__version__}-{SHA[:16]}"
    assert opts["trt_profile_min_shapes"] == "image:1x3x224x256"
    assert opts["trt_profile_opt_shapes"] == opts["trt_profile_max_shapes"] == "image:4x3x224x256"
    assert provider_options(CudaProvider(type="cuda", device_id=2), input_name="i", input_chw=(1, 8, 8), batch=1) == (
        "CUDAExecutionProvider", {"device_id": "2"})
    assert provider_options(CpuProvider(type="cpu"), input_name="i", input_chw=(1, 8, 8), batch=1)[0] == (
        "CPUExecutionProvider")


def test_missing_provider_is_an_error_unless_fallback_is_allowed() -> None:
    available = ["CPUExecutionProvider"]
    with pytest.raises(EngineError, match="CUDAExecutionProvider"):
        resolve_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], available, allow_fallback=False)
    assert resolve_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], available, allow_fallback=True) == [
        "CPUExecutionProvider"]
    assert resolve_providers(["TensorrtExecutionProvider"], available, allow_fallback=True) == ["CPUExecutionProvider"]


GPU = GpuInfo(name="NVIDIA Jetson AGX Orin", compute_capability=(8, 7))
SHA = "ab" * 32


def _key(**over: object) -> str:
    args: dict[str, object] = {"gpu": GPU, "trt_version": "10.3.0", "onnx_sha256": SHA, "precision": "fp16",
                               "batch": 4, "input_chw": (1, 256, 256)}
    args.update(over)
    return engine_cache_key(**args)  # type: ignore[arg-type]


def test_cache_key_is_stable_readable_and_a_safe_file_name() -> None:
    key = _key()
    assert key == _key()
    assert key.startswith("nvidia-jetson-agx-orin-sm87-trt10.3.0-fp16-b4-abababababab-") and key.endswith(".engine")
    assert "/" not in key and " " not in key


@pytest.mark.parametrize(
    "change",
    [{"gpu": GpuInfo(name="NVIDIA Jetson AGX Orin", compute_capability=(8, 6))},
     {"gpu": GpuInfo(name="NVIDIA RTX A2000", compute_capability=(8, 7))},
     {"trt_version": "10.4.0"}, {"onnx_sha256": "cd" * 32}, {"precision": "int8"}, {"batch": 2},
     {"input_chw": (3, 256, 256)}],
)
def test_every_engine_relevant_field_changes_the_cache_key(change: dict[str, object]) -> None:
    assert _key(**change) != _key()


def test_cache_key_refuses_a_non_sha256() -> None:
    with pytest.raises(ValueError):
        _key(onnx_sha256="../../etc/passwd")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_missing_tensorrt_fails_with_an_install_hint() -> None:
    with pytest.raises(EngineError, match=r"TensorRT 10.*backend: onnxruntime"):
        import_tensorrt()


@pytest.mark.skipif(importlib.util.find_spec("cuda") is not None, reason="cuda-python is installed here")
def test_missing_cuda_python_fails_with_an_install_hint() -> None:
    with pytest.raises(EngineError, match="cuda-python"):
        import_cudart()


def test_score_tolerance_is_relative_with_a_threshold_floor() -> None:
    assert score_matches(1.0005, 1.0, rel_tol=1e-3, scale=0.5)
    assert not score_matches(1.002, 1.0, rel_tol=1e-3, scale=0.5)
    # near zero the upper threshold sets the scale: 1e-4 off is fine when upper is 0.5
    assert score_matches(1e-4, 0.0, rel_tol=1e-3, scale=0.5)
    assert not score_matches(float("nan"), 0.0, rel_tol=1e-3, scale=0.5)


def test_percentiles() -> None:
    stats = percentiles([float(i) for i in range(1, 101)])
    assert stats["p50"] == pytest.approx(50.5) and stats["p99"] == pytest.approx(99.01)
    assert stats["max"] == 100.0
    assert all(v != v for v in percentiles([]).values())  # NaN when empty
