"""``lineguard check-bundle BUNDLE``: is this bundle safe to put on the line, on this box?

Off the frame path; the same checks a hot swap runs before it replaces the active bundle:
verify the manifest and every file's sha256, build the engines with the chosen engine (ONNX Runtime
CPU by default), warm up, and run the golden self-test. With ``--config line.yaml`` the signature is
checked against that line's policy by the same ``verify_bundle`` that ``run`` and swaps use (who
signed it, or why it is refused) and the bundle's input spec against the line's source. Without it,
the signature cannot be judged (the trusted keys live in the config) and the output says so. Prints
each problem and exits 1, or prints OK with the execution provider that really ran.

Never: change the bundle, or report OK when the engines could not be built or, with ``--config``,
when the line would refuse the bundle.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lineguard.bundle import SIGNATURE, Bundle, load_bundle
from lineguard.changeover.signing import line_verifier, verify_bundle
from lineguard.config import load_config
from lineguard.engines.config import (
    CpuProvider,
    CudaProvider,
    OrtEngineConfig,
    TensorrtEngineConfig,
    TensorrtProvider,
)
from lineguard.engines.runner import BundleRunner
from lineguard.engines.selftest import run_golden
from lineguard.errors import LineGuardError

HELP = "verify a model bundle: hashes, thresholds, golden self-test"
ENGINES = ("cpu", "cuda", "tensorrt-ep", "tensorrt")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--config", help="line YAML config: check the signature against its trusted keys and the "
                   "input size / pixel format against its source")
    p.add_argument(
        "--engine", choices=ENGINES, default="cpu",
        help="cpu / cuda / tensorrt-ep: ONNX Runtime with that provider; tensorrt: native TensorRT",
    )
    p.add_argument("--device", type=int, default=0, help="CUDA device ordinal for GPU engines")
    p.add_argument("--cache-dir", default="/var/cache/lineguard/trt", help="TensorRT engine cache directory")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16", help="native TensorRT only")


def engine_config(args: argparse.Namespace) -> OrtEngineConfig | TensorrtEngineConfig:
    """The engine config the command-line flags describe (no fallback: test what was asked for)."""
    cache = Path(args.cache_dir)
    if args.engine == "cpu":
        return OrtEngineConfig(providers=[CpuProvider(type="cpu")])
    if args.engine == "cuda":
        return OrtEngineConfig(providers=[CudaProvider(type="cuda", device_id=args.device), CpuProvider(type="cpu")])
    if args.engine == "tensorrt-ep":
        trt = TensorrtProvider(type="tensorrt", device_id=args.device, trt_engine_cache_path=cache)
        return OrtEngineConfig(
            providers=[trt, CudaProvider(type="cuda", device_id=args.device), CpuProvider(type="cpu")]
        )
    return TensorrtEngineConfig(backend="tensorrt", device_id=args.device, precision=args.precision, cache_dir=cache)


def _verify(args: argparse.Namespace) -> tuple[Bundle, str]:
    """The bundle and a line about its signature; raises LineGuardError when the line would refuse it."""
    if args.config is None:
        bundle = load_bundle(args.bundle)
        signed = (bundle.root / SIGNATURE).is_file()
        return bundle, (f"{SIGNATURE} present, NOT checked against trusted keys (give --config line.yaml)"
                        if signed else f"UNSIGNED (no {SIGNATURE}); a line with allow_unsigned: false refuses it")
    from lineguard.preflight import source_format_problems

    cfg = load_config(args.config)
    verified = verify_bundle(args.bundle, line_verifier(cfg))
    problems = source_format_problems(cfg, verified.bundle.manifest.input)
    if problems:
        raise LineGuardError("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
    return verified.bundle, verified.signature.describe()


def run(args: argparse.Namespace) -> int:
    try:
        bundle, signature = _verify(args)
    except LineGuardError as exc:
        print(f"FAIL {args.bundle}: {exc}")
        return 1
    print(f"bundle {bundle.bundle_id}: {signature}")
    m = bundle.manifest
    clf = f"{len(m.classifier.classes)} classes" if m.classifier else "no classifier"
    print(f"bundle {m.bundle_id}: product {m.product}, recipe {m.recipe}, {len(m.files)} files verified, "
          f"thresholds [{m.thresholds.lower:.6g}, {m.thresholds.upper:.6g}), {clf}, {len(m.golden)} golden images")
    try:
        with BundleRunner.from_bundle(bundle, engine_config(args)) as runner:
            runner.warmup()
            failures = run_golden(runner, bundle)
            provider = runner.provider
    except LineGuardError as exc:
        print(f"FAIL {m.bundle_id}: engines cannot run: {exc}")
        return 1
    if failures:
        print(f"FAIL {m.bundle_id}: golden self-test on {provider}:")
        for line in failures:
            print(f"  - {line}")
        return 1
    print(f"OK {m.bundle_id}: golden self-test passed on {provider}")
    return 0
