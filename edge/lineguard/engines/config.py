"""Config models of the inference engines (the lead nests ``EngineConfig`` in the top-level config).

Sits before the engines in the data flow: config -> ``BundleRunner.from_bundle`` -> engines. The
``backend`` key picks both the implementation (registry in :mod:`lineguard.engines.base`) and the
schema, so an ONNX Runtime option can never be given to the native TensorRT engine by mistake.

Side-effect free: validating a config never imports ONNX Runtime, TensorRT or CUDA and never
touches a cache directory; that happens in the engines' ``from_bundle`` classmethods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_Strict = ConfigDict(extra="forbid", frozen=True)


class CpuProvider(BaseModel):
    """ONNX Runtime's CPU execution provider (always present)."""

    model_config = _Strict

    type: Literal["cpu"] = Field(description="provider kind")


class CudaProvider(BaseModel):
    """ONNX Runtime's CUDA execution provider (needs onnxruntime-gpu and a CUDA runtime)."""

    model_config = _Strict

    type: Literal["cuda"] = Field(description="provider kind")
    device_id: int = Field(0, ge=0, le=63, description="CUDA device ordinal")


class TensorrtProvider(BaseModel):
    """ONNX Runtime's TensorRT execution provider; ORT builds and caches the TensorRT engine."""

    model_config = _Strict

    type: Literal["tensorrt"] = Field(description="provider kind")
    device_id: int = Field(0, ge=0, le=63, description="CUDA device ordinal")
    trt_fp16_enable: bool = Field(True, description="let TensorRT pick FP16 kernels")
    trt_engine_cache_enable: bool = Field(
        True, description="keep built engines on disk; without it every start rebuilds (minutes on a Jetson)"
    )
    trt_engine_cache_path: Path | None = Field(
        None, description="engine cache directory; required when trt_engine_cache_enable is true"
    )
    trt_max_workspace_mb: int = Field(1024, ge=16, le=262144, description="TensorRT builder workspace, MiB")

    @model_validator(mode="after")
    def verify_cache_path(self) -> TensorrtProvider:
        if self.trt_engine_cache_enable and self.trt_engine_cache_path is None:
            raise ValueError("trt_engine_cache_enable needs trt_engine_cache_path (a writable directory)")
        return self


ProviderSpec = Annotated[CpuProvider | CudaProvider | TensorrtProvider, Field(discriminator="type")]

def _cpu_only() -> list[ProviderSpec]:
    return [CpuProvider(type="cpu")]


GraphOptimization = Literal["disable", "basic", "extended", "all"]


class OrtEngineConfig(BaseModel):
    """ONNX Runtime with an ordered list of execution providers (first = preferred)."""

    model_config = _Strict

    backend: Literal["onnxruntime"] = Field("onnxruntime", description="engine implementation")
    providers: list[ProviderSpec] = Field(
        default_factory=_cpu_only,
        min_length=1,
        max_length=3,
        description="execution providers in order of preference, e.g. [tensorrt, cuda, cpu]",
    )
    allow_fallback: bool = Field(
        False,
        description=(
            "when false, a requested provider that is not available is an error instead of ORT's "
            "silent fallback to the CPU (which would miss the line's cycle time without anyone noticing)"
        ),
    )
    intra_op_threads: int = Field(
        0, ge=0, le=256, description="threads inside one operator; 0 = ONNX Runtime's default (all cores)"
    )
    inter_op_threads: int = Field(0, ge=0, le=256, description="threads across operators; 0 = default")
    spin_wait: bool = Field(
        False,
        description="let ONNX Runtime's worker threads busy-wait after each run (ONNX Runtime's own default). "
        "Off here: spinning workers take the cores the acquisition, PLC, drift and publisher threads need, "
        "and an anomaly and a classifier session spin against each other (each graph ~2x slower on 2 "
        "cores). true only with cores to spare for it: measure with `lineguard bench --spin` (docs/engines.md)",
    )
    graph_optimization: GraphOptimization = Field("all", description="ONNX Runtime graph optimisation level")

    @model_validator(mode="after")
    def verify_unique_providers(self) -> OrtEngineConfig:
        kinds = [p.type for p in self.providers]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"each provider may appear once, got {kinds}")
        return self


class TensorrtEngineConfig(BaseModel):
    """Native TensorRT 10: engine built from the bundle's ONNX on the target, cached on disk."""

    model_config = _Strict

    backend: Literal["tensorrt"] = Field(description="engine implementation")
    device_id: int = Field(0, ge=0, le=63, description="CUDA device ordinal")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp16", description="int8 calibrates on the bundle's golden images (and still allows fp16 kernels)"
    )
    cache_dir: Path = Field(description="directory for built engines and INT8 calibration caches")
    workspace_mb: int = Field(1024, ge=16, le=262144, description="builder workspace memory pool, MiB")
    int8_calibration_images_min: int = Field(
        4, ge=1, le=10000, description="refuse INT8 with fewer golden images than this (scales would be guesses)"
    )


EngineConfig = Annotated[OrtEngineConfig | TensorrtEngineConfig, Field(discriminator="backend")]
