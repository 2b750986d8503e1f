"""ONNX Runtime engine: CPU, CUDA or TensorRT execution providers chosen by config.

Data flow: batch [N, C, H, W] float32 (image tiles in raw units, or the anomaly engine's shared
stage map for a classifier that shares the backbone pass) -> ``InferenceSession.run`` -> outputs
bound by the names the bundle's manifest gives for each role.

ONNX Runtime silently falls back to the CPU when a requested provider is missing (library not
installed, CUDA too old). On a line that means a 5 ms GPU model quietly becomes a 150 ms CPU model
and misses every deadline, so here a requested provider that does not really run is an
:class:`EngineError` unless the config says ``allow_fallback: true``. The log always says which
providers really run (``session.get_providers()``), not which were asked for.

Must never: run a graph whose input/output names differ from the manifest, or swallow ORT errors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from lineguard.bundle import Bundle
from lineguard.engines.base import engine_spec, fed_outputs, input_chw
from lineguard.engines.config import (
    CpuProvider,
    CudaProvider,
    OrtEngineConfig,
    ProviderSpec,
    TensorrtProvider,
)
from lineguard.errors import BundleError, EngineError

log = logging.getLogger(__name__)

ORT_NAMES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

_OPT_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def provider_options(
    spec: ProviderSpec, *, input_name: str, input_chw: tuple[int, int, int], batch: int, onnx_sha256: str = ""
) -> tuple[str, dict[str, str]]:
    """(ORT provider name, its options) for one configured provider. Pure; unit-tested.

    The TensorRT EP's cache goes into a subdirectory keyed by the ONNX Runtime version and the
    graph's sha256: ORT does not invalidate its cache when either changes (its docs ask users to
    clear it by hand), so a new bundle or ORT upgrade must never pick up a stale engine.
    """
    if isinstance(spec, CpuProvider):
        return ORT_NAMES["cpu"], {}
    if isinstance(spec, CudaProvider):
        return ORT_NAMES["cuda"], {"device_id": str(spec.device_id)}
    assert isinstance(spec, TensorrtProvider)
    c, h, w = input_chw
    # One explicit profile: batch 1..tile count, tuned for the tile count the line always sends.
    # Without it ORT's TensorRT EP rebuilds the engine whenever it sees a new batch size.

    def shape(n: int) -> str:
        return f"{input_name}:{n}x{c}x{h}x{w}"

    opts = {
        "device_id": str(spec.device_id),
        "trt_fp16_enable": str(spec.trt_fp16_enable),
        "trt_engine_cache_enable": str(spec.trt_engine_cache_enable),
        "trt_max_workspace_size": str(spec.trt_max_workspace_mb * 1024 * 1024),
        "trt_profile_min_shapes": shape(1),
        "trt_profile_opt_shapes": shape(batch),
        "trt_profile_max_shapes": shape(batch),
    }
    if spec.trt_engine_cache_path is not None:
        subdir = f"ort{ort.__version__}-{onnx_sha256[:16] or 'unknown'}"
        opts["trt_engine_cache_path"] = str(spec.trt_engine_cache_path / subdir)
    return ORT_NAMES["tensorrt"], opts


def resolve_providers(
    requested: list[str], available: list[str], *, allow_fallback: bool
) -> list[str]:
    """The requested providers ORT can use, or :class:`EngineError` naming what is missing."""
    missing = [p for p in requested if p not in available]
    if missing and not allow_fallback:
        raise EngineError(
            f"execution provider(s) {missing} requested but this ONNX Runtime ({ort.__version__}) offers only "
            f"{available}: install onnxruntime-gpu / TensorRT on this box, or set allow_fallback: true "
            "to run on what is available (slower)"
        )
    usable = [p for p in requested if p in available]
    if not usable:
        usable = ["CPUExecutionProvider"]
    if missing:
        log.warning("providers %s not available, falling back to %s (allow_fallback is set)", missing, usable)
    return usable


def _session_options(cfg: OrtEngineConfig) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.intra_op_threads
    if not cfg.spin_wait:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.inter_op_num_threads = cfg.inter_op_threads
    so.graph_optimization_level = _OPT_LEVELS[cfg.graph_optimization]
    # Sequential: one small graph per frame; parallel operator scheduling only adds jitter here.
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


def _static_chw(shape: list[Any], where: str) -> tuple[int, int, int]:
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise BundleError(f"{where}: graph input shape {shape} is not [N, C, H, W] with fixed C, H, W")
    return int(shape[1]), int(shape[2]), int(shape[3])


class OrtEngine:
    """One ONNX graph of a bundle in an ONNX Runtime session. Build with :meth:`from_bundle`."""

    def __init__(
        self, *, role: str, session: ort.InferenceSession, input_name: str, outputs: dict[str, str]
    ) -> None:
        self.role = role
        self._session: ort.InferenceSession | None = session
        self._input_name = input_name
        self._roles = list(outputs)
        self._names = [outputs[r] for r in self._roles]
        self._providers: list[str] = list(session.get_providers())

    @classmethod
    def from_bundle(cls, bundle: Bundle, role: str, cfg: OrtEngineConfig, *, batch: int) -> OrtEngine:
        """Create the session for ``role``: check provider availability, names and input geometry."""
        spec = engine_spec(bundle, role)
        where = f"bundle {bundle.bundle_id} engine {role!r} ({spec.file})"
        chw = input_chw(bundle, spec)  # the image tile, or the shared map for a classifier fed by the anomaly engine
        sha = bundle.manifest.files[spec.file]
        pairs = [provider_options(p, input_name=spec.input_name, input_chw=chw, batch=batch, onnx_sha256=sha)
                 for p in cfg.providers]
        requested = [name for name, _ in pairs]
        usable = resolve_providers(requested, ort.get_available_providers(), allow_fallback=cfg.allow_fallback)
        providers = [(name, opts) for name, opts in pairs if name in usable] or [("CPUExecutionProvider", {})]
        for name, _ in providers:  # ORT's TRT EP creates nothing itself; a missing dir fails late
            if name == ORT_NAMES["tensorrt"]:
                path = dict(providers)[name].get("trt_engine_cache_path")
                if path:
                    _ensure_dir(path)
        try:
            session = ort.InferenceSession(
                str(bundle.path(spec.file)), sess_options=_session_options(cfg), providers=providers
            )
        except Exception as exc:  # ORT raises its own pybind exception types
            raise EngineError(f"{where}: ONNX Runtime cannot create a session: {exc}") from exc
        really = list(session.get_providers())
        if really[0] != providers[0][0] and not cfg.allow_fallback:
            raise EngineError(
                f"{where}: asked for {providers[0][0]} but ONNX Runtime runs {really[0]} "
                "(provider failed to initialise: check CUDA / TensorRT libraries, or set allow_fallback: true)"
            )
        if not cfg.allow_fallback:
            session.disable_fallback()  # an EP failure at run time must raise, not re-run on the CPU
        _check_io(session, spec.input_name, spec.outputs, chw, where)
        _check_fed_outputs(session, fed_outputs(bundle, role), where)
        log.info(
            "%s: ONNX Runtime %s runs on %s (requested %s, intra_op_threads=%d, optimisation=%s)",
            where, ort.__version__, really, requested, cfg.intra_op_threads, cfg.graph_optimization,
        )
        return cls(role=role, session=session, input_name=spec.input_name, outputs=dict(spec.outputs))

    @property
    def provider(self) -> str:
        return self._providers[0]

    @property
    def providers(self) -> list[str]:
        """Every provider the session really uses, in priority order."""
        return list(self._providers)

    def run(self, batch: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[Any]]:
        if self._session is None:
            raise EngineError(f"{self.role} engine is closed")
        try:
            values = self._session.run(self._names, {self._input_name: batch})
        except Exception as exc:  # InvalidArgument, Fail, RuntimeException from the pybind layer
            raise EngineError(f"{self.role} engine failed on a batch of shape {batch.shape}: {exc}") from exc
        return {role: np.asarray(v) for role, v in zip(self._roles, values, strict=True)}

    def close(self) -> None:
        self._session = None


def _ensure_dir(path: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"engine cache directory {path} cannot be created: {exc.strerror}") from exc


def _check_io(
    session: ort.InferenceSession,
    input_name: str,
    outputs: dict[str, str],
    chw: tuple[int, int, int],
    where: str,
) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    if input_name not in inputs:
        raise BundleError(f"{where}: graph has no input {input_name!r} (inputs: {sorted(inputs)})")
    if len(inputs) != 1:
        raise BundleError(f"{where}: graph has {len(inputs)} inputs {sorted(inputs)}; exactly one is supported")
    graph_chw = _static_chw(list(inputs[input_name].shape), where)
    if graph_chw != chw:
        raise BundleError(f"{where}: graph input is C,H,W={graph_chw} but the manifest says {chw} "
                          "(input spec, or input_chw for a shared-backbone input)")
    if inputs[input_name].type != "tensor(float)":
        raise BundleError(f"{where}: graph input type {inputs[input_name].type}, expected tensor(float)")
    names = {o.name for o in session.get_outputs()}
    missing = {role: name for role, name in outputs.items() if name not in names}
    if missing:
        raise BundleError(f"{where}: manifest names outputs {missing} the graph does not have (has {sorted(names)})")


def _check_fed_outputs(session: ort.InferenceSession, fed: dict[str, tuple[int, int, int]], where: str) -> None:
    """Outputs another engine takes as input (shared backbone map) must have the C, h, w it expects."""
    shapes = {o.name: list(o.shape) for o in session.get_outputs()}
    for name, chw in fed.items():
        shape = shapes.get(name)
        if shape is None:
            raise BundleError(f"{where}: the classifier takes output {name!r}, which the graph does not have "
                              f"(outputs: {sorted(shapes)})")
        static = [d if isinstance(d, int) else None for d in shape[1:]]
        if len(shape) != 4 or any(d is not None and d != c for d, c in zip(static, chw, strict=True)):
            raise BundleError(f"{where}: output {name!r} has shape {shape} but the classifier's input_chw is "
                              f"{list(chw)} (shared stage mismatch: anomaly and classifier from different trainings?)")


ENGINE = OrtEngine
