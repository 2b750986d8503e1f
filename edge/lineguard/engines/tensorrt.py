"""Native TensorRT 10 engine, built on the target from the bundle's ONNX graph and cached on disk.

Data flow: batch [N, C, H, W] float32 (image tiles, or the anomaly engine's shared stage map for a
classifier that shares the backbone pass: shapes from ``engines.base.input_chw``) -> host-to-device
copy -> ``execute_async_v3`` with tensor-name I/O -> device-to-host copies -> outputs bound by the
manifest's names (the anomaly engine's ``features`` output comes back to the host like the others;
the runner hands the top tile's map to the classifier engine).

Build: ``OnnxParser`` -> one optimisation profile (batch 1..tile count, tuned for the tile count)
-> FP16 (and INT8 with an entropy calibrator fed from the bundle's golden images) -> serialized
engine stored under ``cache_dir`` with a name keyed by GPU name, compute capability, TensorRT
version, precision, batch and the ONNX file's sha256 (:func:`engine_cache_key`). An engine built
for another GPU or TensorRT version is never loaded; a changed ONNX gets a new key.

``tensorrt`` and ``cuda-python`` are optional and imported only when this back-end is selected;
a box without them gets an :class:`EngineError` that says what to install. CUDA memory is managed
through cuda-python's runtime bindings (``cuda.bindings.runtime``, or ``cuda.cudart`` in older
releases); no torch, no pycuda. Must never: load a cache file whose key does not match this GPU
and build, or run with unchecked CUDA return codes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lineguard.bundle import Bundle, EngineSpec
from lineguard.engines.base import engine_spec, fed_outputs, input_chw
from lineguard.engines.config import TensorrtEngineConfig
from lineguard.errors import BundleError, EngineError, LineGuardError
from lineguard.imageio import read_image
from lineguard.preprocess import prepare

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuInfo:
    """The identity of a GPU as far as a TensorRT engine cares."""

    name: str
    compute_capability: tuple[int, int]


def engine_cache_key(
    *,
    gpu: GpuInfo,
    trt_version: str,
    onnx_sha256: str,
    precision: str,
    batch: int,
    input_chw: tuple[int, int, int],
) -> str:
    """File name of the cached engine. Pure; every input that changes the engine changes the name.

    Readable prefix (GPU, sm, TensorRT version, precision, batch) for the operator browsing the
    cache; a digest over all fields so two GPUs with the same slug cannot collide.
    """
    if not re.fullmatch(r"[0-9a-f]{64}", onnx_sha256):
        raise ValueError(f"onnx_sha256 must be 64 lowercase hex digits, got {onnx_sha256!r}")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu.name).strip("-").lower() or "gpu"
    major, minor = gpu.compute_capability
    fields = {
        "gpu": gpu.name, "cc": [major, minor], "trt": trt_version, "onnx": onnx_sha256,
        "precision": precision, "batch": batch, "chw": list(input_chw),
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    version = re.sub(r"[^0-9A-Za-z.]+", "_", trt_version)
    return f"{slug}-sm{major}{minor}-trt{version}-{precision}-b{batch}-{onnx_sha256[:12]}-{digest}.engine"


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (10.x), or an :class:`EngineError` saying what to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineError(
            "engine backend 'tensorrt' selected but the TensorRT Python package is not installed: "
            "install TensorRT 10 (x86: pip install 'lineguard[gpu]'; Jetson: JetPack's python3-libnvinfer) "
            "or use backend: onnxruntime"
        ) from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise EngineError(f"TensorRT {trt.__version__} found; LineGuard needs TensorRT 10 (tensor-name I/O API)")
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime bindings, or an :class:`EngineError` saying what to install."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6 layout
        except ImportError as exc:
            raise EngineError(
                "engine backend 'tensorrt' needs cuda-python for device memory and streams "
                "(pip install cuda-python matching your CUDA major version), or use backend: onnxruntime"
            ) from exc
    return cudart


def cuda_check(cudart: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple; raise :class:`EngineError` on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, msg = cudart.cudaGetErrorString(err)
        text = msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)
        raise EngineError(f"CUDA {what} failed: {text} ({err})")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_info(cudart: Any, device_id: int) -> GpuInfo:
    props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device_id), f"get properties of device {device_id}")
    raw = props.name
    name = raw.split(b"\0")[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return GpuInfo(name=name.strip(), compute_capability=(int(props.major), int(props.minor)))


def _handle(obj: Any) -> int:
    """Integer handle of a cuda-python stream / pointer object (TensorRT takes plain ints)."""
    try:
        return int(obj)
    except TypeError:
        return int(obj.getPtr())


class _DeviceBuffer:
    """One cudaMalloc'ed block; freed by :meth:`free` (idempotent)."""

    def __init__(self, cudart: Any, nbytes: int) -> None:
        self._cudart = cudart
        self.nbytes = nbytes
        self.ptr: int = _handle(cuda_check(cudart, cudart.cudaMalloc(max(nbytes, 1)), f"malloc {nbytes} bytes"))

    def free(self) -> None:
        if self.ptr:
            self._cudart.cudaFree(self.ptr)
            self.ptr = 0


def calibration_batches(
    bundle: Bundle, batch: int, min_images: int, spec: EngineSpec | None = None
) -> list[npt.NDArray[np.float32]]:
    """INT8 calibration data: the golden images' tiles, prepared exactly as on the line, in batches.

    For an engine fed by the anomaly engine (``spec.input_source``: shared backbone pass) the
    calibration inputs are that engine's maps of the same tiles, computed with ONNX Runtime on the
    CPU from the bundle's anomaly graph (the same graph TensorRT builds from; build time only).
    """
    golden = bundle.manifest.golden
    if len(golden) < min_images:
        raise EngineError(
            f"INT8 needs at least {min_images} calibration images but bundle {bundle.bundle_id} has "
            f"{len(golden)} golden images: use precision fp16 or add golden images"
        )
    tiles = np.concatenate([prepare(read_image(bundle.path(g.file)), bundle.manifest.input)[0] for g in golden])
    if spec is not None and spec.source_output is not None:
        tiles = _anomaly_output(bundle, spec.source_output, tiles)
    count = len(tiles) // batch
    if count == 0:
        raise EngineError(f"{len(tiles)} calibration tiles do not fill one batch of {batch}")
    return [np.ascontiguousarray(tiles[i * batch : (i + 1) * batch]) for i in range(count)]


def _anomaly_output(bundle: Bundle, name: str, tiles: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Output ``name`` of the bundle's anomaly graph on ``tiles`` (ONNX Runtime, CPU)."""
    try:
        import onnxruntime as ort

        anomaly = bundle.manifest.engines["anomaly"]
        sess = ort.InferenceSession(str(bundle.path(anomaly.file)), providers=["CPUExecutionProvider"])
        maps = [sess.run([name], {anomaly.input_name: tiles[i : i + 1]})[0] for i in range(len(tiles))]
    except Exception as exc:  # ORT's pybind errors
        raise EngineError(
            f"INT8 calibration: cannot compute anomaly output {name!r} on the golden images: {exc}"
        ) from exc
    return np.ascontiguousarray(np.concatenate(maps), dtype=np.float32)


def make_calibrator(
    trt: Any, cudart: Any, batches: list[npt.NDArray[np.float32]], cache_file: Path
) -> Any:
    """An ``IInt8EntropyCalibrator2`` over ``batches`` (class defined here: trt is imported lazily)."""
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise EngineError(f"TensorRT {trt.__version__} has no IInt8EntropyCalibrator2: use precision fp16")

    class _Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # type: ignore[misc]  # pybind11 bases need the explicit call
            self._batches = list(batches)
            self._index = 0
            self._buffer = _DeviceBuffer(cudart, batches[0].nbytes)

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._index >= len(self._batches):
                return None
            host = self._batches[self._index]
            self._index += 1
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            cuda_check(cudart, cudart.cudaMemcpy(self._buffer.ptr, host.ctypes.data, host.nbytes, kind), "calib copy")
            return [self._buffer.ptr]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            _atomic_write(cache_file, bytes(cache))

        def free(self) -> None:
            self._buffer.free()

    return _Calibrator()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _parse_onnx(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> Any:
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    return network, parser  # the parser must outlive the network's weights until the build


def build_serialized(
    trt: Any, cudart: Any, bundle: Bundle, role: str, cfg: TensorrtEngineConfig, *, batch: int, calib_file: Path
) -> bytes:
    """Build a serialized engine for ``role`` (minutes on a Jetson; cached by the caller)."""
    spec = engine_spec(bundle, role)
    chw = input_chw(bundle, spec)  # the image tile, or the shared stage map (classifier fed by the anomaly engine)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse_onnx(trt, builder, logger, bundle.path(spec.file))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb * 1024 * 1024)
    profile = builder.create_optimization_profile()
    profile.set_shape(spec.input_name, (1, *chw), (batch, *chw), (batch, *chw))
    config.add_optimization_profile(profile)
    calibrator = None
    if cfg.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if cfg.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        batches = calibration_batches(bundle, batch, cfg.int8_calibration_images_min, spec)
        calibrator = make_calibrator(trt, cudart, batches, calib_file)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise EngineError(f"TensorRT failed to build the {role} engine of bundle {bundle.bundle_id} (see log)")
    return bytes(serialized)


def _check_engine_io(
    engine: Any, input_name: str, chw: tuple[int, int, int], where: str,
    fed: dict[str, tuple[int, int, int]] | None = None,
) -> None:
    """Input name and C, H, W as the manifest says; outputs another engine takes (``fed``: the shared
    backbone map) with the C, h, w that engine's ``input_chw`` expects."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    if input_name not in names:
        raise BundleError(f"{where}: engine has no input {input_name!r} (tensors: {names})")
    dims = tuple(engine.get_tensor_shape(input_name))
    if len(dims) != 4 or tuple(dims[1:]) != chw:
        raise BundleError(f"{where}: engine input is {dims}, the manifest says [N, {chw}]")
    for name, want in (fed or {}).items():
        if name not in names:
            raise BundleError(f"{where}: the classifier takes output {name!r}, which the engine lacks ({names})")
        got = tuple(engine.get_tensor_shape(name))
        if len(got) != 4 or tuple(got[1:]) != want:
            raise BundleError(f"{where}: output {name!r} is {got}, the classifier's input_chw is [N, {want}]")


class TensorrtEngine:
    """A deserialized TensorRT engine with its execution context, stream and device buffers."""

    def __init__(
        self,
        *,
        role: str,
        trt: Any,
        runtime: Any,
        trt_engine: Any,
        cudart: Any,
        device_id: int,
        input_name: str,
        outputs: dict[str, str],
        max_batch: int,
        provider: str,
    ) -> None:
        self.role = role
        self._trt = trt
        self._runtime = runtime  # the engine must not outlive the runtime that deserialized it
        self._engine = trt_engine
        self._cudart = cudart
        self._device_id = device_id
        self._input = input_name
        self._outputs = outputs
        self._max_batch = max_batch
        self._provider = provider
        self._context = trt_engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"{role}: TensorRT could not create an execution context (out of GPU memory?)")
        self._stream = cuda_check(cudart, cudart.cudaStreamCreate(), "stream create")
        self._buffers: dict[str, _DeviceBuffer] = {}
        self._dtypes: dict[str, Any] = {}
        try:
            self._allocate()
        except BaseException:
            self.close()  # device memory is not garbage-collected: give back what was allocated
            raise

    def _allocate(self) -> None:
        trt = self._trt
        shape = (self._max_batch, *tuple(self._engine.get_tensor_shape(self._input))[1:])  # Dims: no slicing
        self._context.set_input_shape(self._input, shape)
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            dims = tuple(self._context.get_tensor_shape(name))
            self._dtypes[name] = dtype
            self._buffers[name] = _DeviceBuffer(self._cudart, int(np.prod(dims)) * dtype.itemsize)
            self._context.set_tensor_address(name, self._buffers[name].ptr)
        missing = [n for n in [self._input, *self._outputs.values()] if n not in self._buffers]
        if missing:
            raise BundleError(f"{self.role}: engine has no tensor(s) {missing} named by the manifest")

    @classmethod
    def from_bundle(cls, bundle: Bundle, role: str, cfg: TensorrtEngineConfig, *, batch: int) -> TensorrtEngine:
        trt, cudart = import_tensorrt(), import_cudart()
        spec = engine_spec(bundle, role)
        cuda_check(cudart, cudart.cudaSetDevice(cfg.device_id), f"select device {cfg.device_id}")
        gpu = gpu_info(cudart, cfg.device_id)
        chw = input_chw(bundle, spec)
        key = engine_cache_key(
            gpu=gpu, trt_version=str(trt.__version__), onnx_sha256=bundle.manifest.files[spec.file],
            precision=cfg.precision, batch=batch, input_chw=chw,
        )
        try:
            cfg.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EngineError(f"TensorRT cache directory {cfg.cache_dir} cannot be created: {exc.strerror}") from exc
        path = cfg.cache_dir / key
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(path.read_bytes()) if path.is_file() else None
        if engine is None:
            if path.is_file():
                log.warning("cached engine %s unreadable (truncated?); rebuilding", path)
            log.info("building TensorRT %s engine for %s/%s on %s (this takes a while)", cfg.precision,
                     bundle.bundle_id, role, gpu.name)
            try:
                data = build_serialized(trt, cudart, bundle, role, cfg, batch=batch,
                                        calib_file=path.with_suffix(".calib"))
            except LineGuardError:
                raise
            except Exception as exc:  # TensorRT pybind errors, API differences between 10.x releases
                raise EngineError(f"TensorRT build of {bundle.bundle_id}/{role} failed: {exc}") from exc
            _atomic_write(path, data)
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise EngineError(f"TensorRT built but cannot deserialize the {role} engine ({path})")
        _check_engine_io(engine, spec.input_name, chw, path.name, fed_outputs(bundle, role))
        provider = f"TensorRT {trt.__version__} native {cfg.precision} on {gpu.name}"
        log.info("bundle %s engine %r runs on %s (cache %s)", bundle.bundle_id, role, provider, path.name)
        return cls(role=role, trt=trt, runtime=runtime, trt_engine=engine, cudart=cudart,
                   device_id=cfg.device_id, input_name=spec.input_name, outputs=dict(spec.outputs),
                   max_batch=batch, provider=provider)

    @property
    def provider(self) -> str:
        return self._provider

    def run(self, batch: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[Any]]:
        if not self._buffers:
            raise EngineError(f"{self.role} engine is closed")
        if batch.ndim != 4 or not 1 <= batch.shape[0] <= self._max_batch:
            raise EngineError(
                f"{self.role}: batch shape {batch.shape} outside the engine profile (1..{self._max_batch})"
            )
        cu = self._cudart
        host = np.ascontiguousarray(batch, dtype=self._dtypes[self._input])
        try:
            cuda_check(cu, cu.cudaSetDevice(self._device_id), "select device")
            if not self._context.set_input_shape(self._input, host.shape):
                raise EngineError(f"{self.role}: TensorRT refused input shape {host.shape}")
            h2d, d2h = cu.cudaMemcpyKind.cudaMemcpyHostToDevice, cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
            buf = self._buffers[self._input]
            cuda_check(cu, cu.cudaMemcpyAsync(buf.ptr, host.ctypes.data, host.nbytes, h2d, self._stream), "copy in")
            if not self._context.execute_async_v3(_handle(self._stream)):
                raise EngineError(f"{self.role}: TensorRT execution failed (see log)")
            results: dict[str, npt.NDArray[Any]] = {}
            for role, name in self._outputs.items():
                out = np.empty(tuple(self._context.get_tensor_shape(name)), dtype=self._dtypes[name])
                src = self._buffers[name].ptr
                cuda_check(cu, cu.cudaMemcpyAsync(out.ctypes.data, src, out.nbytes, d2h, self._stream), "copy out")
                results[role] = out
            cuda_check(cu, cu.cudaStreamSynchronize(self._stream), "stream synchronize")
        except LineGuardError:
            raise
        except Exception as exc:  # TensorRT's pybind errors
            raise EngineError(f"{self.role}: TensorRT run failed: {exc}") from exc
        return results

    def close(self) -> None:
        for buf in self._buffers.values():
            buf.free()
        self._buffers.clear()
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None


ENGINE = TensorrtEngine
