"""The engine protocol and the registry of engine back-ends, keyed by ``backend``.

Data flow: preprocess -> batch [T, C, H, W] float32 -> ``Engine.run`` -> outputs bound by *role*
('score', 'map', 'probs', 'features'), never by index -> :class:`lineguard.engines.runner.BundleRunner`.
An engine's input is the image batch, or (shared backbone pass) the anomaly engine's output named
by the manifest's ``input_source``; :func:`input_chw` and :func:`fed_outputs` give the shapes both
sides are checked against.

A back-end module is imported only when a config selects it, so a CPU box without TensorRT or
CUDA never imports them, and selecting a missing one fails with a clear :class:`EngineError`.
Must never: hand out an engine built from an unverified bundle (only ``load_bundle`` makes a
:class:`~lineguard.bundle.Bundle`), or return outputs whose names were guessed.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from lineguard.bundle import Bundle, EngineSpec
from lineguard.engines.config import OrtEngineConfig, TensorrtEngineConfig
from lineguard.errors import BundleError, EngineError

# backend -> module providing ``ENGINE`` (a class with ``from_bundle``). Plain dict, explicit.
BACKENDS: dict[str, str] = {
    "onnxruntime": "lineguard.engines.ort",
    "tensorrt": "lineguard.engines.tensorrt",
}

# role of an engine -> output roles it must provide (bundle.py documents the shapes)
REQUIRED_OUTPUTS: dict[str, tuple[str, ...]] = {
    "anomaly": ("score",), "classifier": ("probs",), "classifier_views": ("probs",),
}


class Engine(Protocol):
    """One compiled graph of a bundle, ready to run batches.

    Implementations are used from one inference thread at a time (sessions / execution contexts
    are not shared across threads here; the runner serialises calls).
    """

    role: str

    @property
    def provider(self) -> str:
        """What really executes the graph, e.g. 'CPUExecutionProvider' or 'TensorRT 10.3 (fp16)'."""
        ...

    def run(self, batch: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[Any]]:
        """Run one batch [N, C, H, W] (tiles or stage maps); returns output role -> array.

        Raises :class:`EngineError`.
        """
        ...

    def close(self) -> None:
        """Release sessions / device memory. Idempotent."""
        ...


class EngineFactory(Protocol):
    """What a back-end module's ``ENGINE`` provides."""

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, role: str, cfg: Any, *, batch: int
    ) -> Engine: ...


def engine_spec(bundle: Bundle, role: str) -> EngineSpec:
    """The bundle's spec for ``role``, with the output roles this role requires checked."""
    spec = bundle.manifest.engines.get(role)
    if spec is None:
        raise BundleError(f"bundle {bundle.bundle_id} has no {role!r} engine")
    missing = [r for r in REQUIRED_OUTPUTS.get(role, ()) if r not in spec.outputs]
    if missing:
        raise BundleError(
            f"bundle {bundle.bundle_id}: engine {role!r} does not name its output role(s) {missing} "
            f"in manifest.engines.{role}.outputs (has {sorted(spec.outputs)})"
        )
    return spec


def input_chw(bundle: Bundle, spec: EngineSpec) -> tuple[int, int, int]:
    """C, H, W of an engine's input: the input spec's tile for the image, else the manifest's ``input_chw``."""
    if spec.input_chw is not None:
        return spec.input_chw
    inp = bundle.manifest.input
    return inp.channels, inp.input_height, inp.input_width


def fed_outputs(bundle: Bundle, role: str) -> dict[str, tuple[int, int, int]]:
    """Outputs of engine ``role`` that feed another engine's input -> the C, h, w that input takes.

    A shared backbone pass (anomaly output ``shared_features`` -> classifier input) must agree on
    the map's shape; the engines check their graphs against this when they load.
    """
    out: dict[str, tuple[int, int, int]] = {}
    if role != "anomaly":
        return out
    for spec in bundle.manifest.engines.values():
        if spec.source_output is not None and spec.input_chw is not None:
            out[spec.source_output] = spec.input_chw
    return out


def build_engine(
    bundle: Bundle, role: str, cfg: OrtEngineConfig | TensorrtEngineConfig, *, batch: int
) -> Engine:
    """Import the back-end named by ``cfg.backend`` and build the engine for ``role``.

    ``batch`` is the batch size the engine will see (tile count for the anomaly engine); back-ends
    that compile for fixed shapes (TensorRT) build their optimisation profile from it.
    """
    module_name = BACKENDS.get(cfg.backend)
    if module_name is None:  # unreachable through the config schema; kept for callers building cfg by hand
        raise EngineError(f"unknown engine backend {cfg.backend!r}; known: {sorted(BACKENDS)}")
    if batch < 1:
        raise EngineError(f"batch must be >= 1, got {batch}")
    engine_spec(bundle, role)
    module = importlib.import_module(module_name)
    factory: EngineFactory = module.ENGINE
    return factory.from_bundle(bundle, role, cfg, batch=batch)
