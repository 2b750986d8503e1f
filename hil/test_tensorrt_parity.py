"""On the target GPU: TensorRT engines build, are cached, and score like ONNX Runtime on the CPU.

Run on the Jetson / GPU box (needs tensorrt 10, cuda-python, and for the EP test onnxruntime-gpu):

    LINEGUARD_HIL_BUNDLE=/opt/lineguard/bundles/current \\
        python -m pytest hil/test_tensorrt_parity.py -m hil -v -s

Without ``LINEGUARD_HIL_BUNDLE`` a synthetic bundle (real ONNX, needs the ``onnx`` package) is
built in a temporary folder. The checks: native TensorRT FP16 (and FP32, INT8) engines build from
the bundle's ONNX; the engine cache file is keyed by this GPU and reused on the next start; every
golden image scores within ``manifest.score_tolerance`` of ONNX Runtime CPU with the same verdict;
ONNX Runtime's TensorRT execution provider really runs (no silent CPU fallback).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from lineguard.bundle import Bundle, load_bundle
from lineguard.engines import BundleRunner, OrtEngineConfig, TensorrtEngineConfig, run_golden
from lineguard.engines.base import build_engine
from lineguard.engines.config import CpuProvider, CudaProvider, TensorrtProvider
from lineguard.imageio import read_image
from lineguard.preprocess import prepare

pytestmark = pytest.mark.hil

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed on this machine")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    path = os.environ.get("LINEGUARD_HIL_BUNDLE")
    if path:
        return load_bundle(path)
    from lineguard.engines.synthetic import build_synthetic_bundle
    from lineguard.preprocess import TileSpec

    return build_synthetic_bundle(tmp_path_factory.mktemp("hil") / "bundle", tiles=TileSpec(rows=2, cols=2))


@pytest.fixture(scope="module")
def cpu_scores(bundle: Bundle) -> dict[str, float]:
    with BundleRunner.from_bundle(bundle, OrtEngineConfig(providers=[CpuProvider(type="cpu")])) as runner:
        return {g.file: runner.infer(read_image(bundle.path(g.file))).anomaly_score for g in bundle.manifest.golden}


def _report(label: str, runner: BundleRunner, bundle: Bundle, cpu: dict[str, float]) -> float:
    worst = 0.0
    for g in bundle.manifest.golden:
        score = runner.infer(read_image(bundle.path(g.file))).anomaly_score
        rel = abs(score - cpu[g.file]) / max(abs(cpu[g.file]), 1e-12)
        worst = max(worst, rel)
        print(f"{label} {g.file}: cpu {cpu[g.file]:.6g} gpu {score:.6g} rel.diff {rel:.2e}")
    return worst


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_native_engine_builds_caches_and_matches_ort_cpu(
    precision: str, bundle: Bundle, cpu_scores: dict[str, float], tmp_path: Path
) -> None:
    cfg = TensorrtEngineConfig(backend="tensorrt", precision=precision, cache_dir=tmp_path / "cache")  # type: ignore[arg-type]
    t0 = time.monotonic()
    with BundleRunner.from_bundle(bundle, cfg) as runner:
        build_s = time.monotonic() - t0
        assert runner.provider.startswith("TensorRT ") and precision in runner.provider
        runner.warmup()
        assert run_golden(runner, bundle) == []
        worst = _report(precision, runner, bundle, cpu_scores)
    engines = sorted((tmp_path / "cache").glob("*.engine"))
    assert engines, "no engine file was cached"
    assert all(f"trt{trt.__version__}" in e.name and f"-{precision}-" in e.name for e in engines)
    mtimes = [e.stat().st_mtime_ns for e in engines]
    t1 = time.monotonic()
    with BundleRunner.from_bundle(bundle, cfg) as again:
        load_s = time.monotonic() - t1
        assert run_golden(again, bundle) == []
    assert [e.stat().st_mtime_ns for e in engines] == mtimes, "cached engine was rebuilt instead of reused"
    print(f"{precision}: build {build_s:.1f} s, cached load {load_s:.2f} s, worst rel. diff {worst:.2e}")


def test_int8_engine_keeps_every_golden_verdict(bundle: Bundle, cpu_scores: dict[str, float], tmp_path: Path) -> None:
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        pytest.skip("this TensorRT has no implicit INT8 calibration API")
    cfg = TensorrtEngineConfig(backend="tensorrt", precision="int8", cache_dir=tmp_path / "cache")
    with BundleRunner.from_bundle(bundle, cfg) as runner:
        failures = run_golden(runner, bundle)
        _report("int8", runner, bundle, cpu_scores)
    # INT8 may exceed the FP tolerance on scores; it must never change a verdict
    assert not [f for f in failures if "verdict" in f]
    assert list((tmp_path / "cache").glob("*.calib")), "calibration cache not written"


def test_ort_tensorrt_provider_really_runs(bundle: Bundle, cpu_scores: dict[str, float], tmp_path: Path) -> None:
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no TensorRT execution provider")
    providers = [TensorrtProvider(type="tensorrt", trt_engine_cache_path=tmp_path / "ortcache"),
                 CudaProvider(type="cuda"), CpuProvider(type="cpu")]
    with BundleRunner.from_bundle(bundle, OrtEngineConfig(providers=providers)) as runner:
        assert runner.provider == "TensorrtExecutionProvider"
        runner.warmup()
        assert run_golden(runner, bundle) == []
        _report("ort-trt-ep", runner, bundle, cpu_scores)
    assert any((tmp_path / "ortcache").iterdir()), "ORT's TensorRT EP did not write its engine cache"



@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_classifier_engines_match_ort_cpu(precision: str, bundle: Bundle, tmp_path: Path) -> None:
    """Each image-fed classifier engine ('classifier', and 'classifier_views' where the bundle has it: a fine-tuned
    classifier or a views twin) built by TensorRT gives ONNX Runtime CPU's class probabilities on every golden
    image's first tile: the same best class, each probability within 1e-3 (FP32) or 0.02 (FP16). A classifier fed by
    the anomaly engine's stage map is covered through the golden classes (``run_golden``), not here."""
    m = bundle.manifest
    roles = [r for r in ("classifier", "classifier_views") if r in m.engines and m.engines[r].source_output is None]
    if not roles or not m.golden:
        pytest.skip("the bundle has no image-fed classifier engine or no golden image")
    tol = 1e-3 if precision == "fp32" else 0.02
    trt_cfg = TensorrtEngineConfig(backend="tensorrt", precision=precision, cache_dir=tmp_path / "cache")  # type: ignore[arg-type]
    cpu_cfg = OrtEngineConfig(providers=[CpuProvider(type="cpu")])
    for role in roles:
        cpu, gpu = build_engine(bundle, role, cpu_cfg, batch=1), build_engine(bundle, role, trt_cfg, batch=1)
        try:
            for g in m.golden:
                tile = np.ascontiguousarray(prepare(read_image(bundle.path(g.file)), m.input)[0][:1])
                a, b = cpu.run(tile)["probs"][0], gpu.run(tile)["probs"][0]
                print(f"{precision} {role} {g.file}: cpu {np.round(a, 4).tolist()} gpu {np.round(b, 4).tolist()}")
                assert int(np.argmax(a)) == int(np.argmax(b)), (role, g.file)
                np.testing.assert_allclose(b, a, atol=tol)
        finally:
            cpu.close()
            gpu.close()
