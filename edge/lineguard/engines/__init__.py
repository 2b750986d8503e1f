"""Inference engines of a bundle: ONNX Runtime (CPU / CUDA / TensorRT EP) or native TensorRT.

Public API: :class:`BundleRunner` (``from_bundle``, ``infer``, ``warmup``, ``provider``),
:func:`run_golden`, the config models, and :func:`measure_engine` for benchmarks. Back-end modules
(``ort``, ``tensorrt``) are imported only when a config selects them.
"""

from __future__ import annotations

from lineguard.engines.config import (
    CpuProvider,
    CudaProvider,
    EngineConfig,
    OrtEngineConfig,
    TensorrtEngineConfig,
    TensorrtProvider,
)
from lineguard.engines.runner import BundleRunner
from lineguard.engines.selftest import run_golden

__all__ = [
    "BundleRunner",
    "CpuProvider",
    "CudaProvider",
    "EngineConfig",
    "OrtEngineConfig",
    "TensorrtEngineConfig",
    "TensorrtProvider",
    "run_golden",
]
