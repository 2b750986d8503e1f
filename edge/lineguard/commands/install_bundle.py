"""``lineguard install-bundle BUNDLE --config line.yaml``: put a bundle version into the edge box's store.

Off the frame path (the service may be running: the store is shared through a file lock). Checks
the signature against the config's trusted keys and every file hash, copies atomically, checks the
copy again, then prepares the engines with the line's engine config (build, warm up, golden
self-test; for TensorRT this writes the plan cache the changeover will find), and maps the
bundle's recipe to it. A bundle that fails any step is not installed.

Never: install a bundle whose golden self-test failed on this box (unless ``--no-prepare``, which
leaves that test to the swap), or overwrite an installed version with different content.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from lineguard.bundle import Bundle
from lineguard.changeover.config import ChangeoverConfig
from lineguard.changeover.signing import SignatureVerifier
from lineguard.changeover.store import BundleStore
from lineguard.config import LineConfig, load_config
from lineguard.engines.config import OrtEngineConfig, TensorrtEngineConfig
from lineguard.errors import BundleError, ConfigError

HELP = "install a signed bundle into the edge box's bundle store (engines prepared now)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory to install")
    p.add_argument("--config", required=True, help="line config (its changeover: and engine: sections are used)")
    p.add_argument("--no-prepare", action="store_true", help="skip building engines and the golden test now")
    p.add_argument("--no-map", action="store_true", help="install without mapping the bundle's recipe to it")


def changeover_section(cfg: LineConfig, path: str) -> ChangeoverConfig:
    if cfg.changeover is None:
        raise ConfigError(f"{path} has no changeover: section (store_dir, trusted_keys)")
    return cfg.changeover


def prepare_engines(engine_cfg: OrtEngineConfig | TensorrtEngineConfig) -> Any:
    """A store prepare hook: build, warm up and self-test the bundle's engines, then release them."""
    from lineguard.engines import BundleRunner, run_golden

    def prepare(bundle: Bundle) -> dict[str, Any]:
        t0 = time.monotonic()
        with BundleRunner.from_bundle(bundle, engine_cfg) as runner:
            runner.warmup()
            failures = run_golden(runner, bundle)
            provider = runner.provider
        if failures:
            raise BundleError(f"bundle {bundle.bundle_id} failed its golden self-test on {provider}: "
                              + "; ".join(failures))
        return {"provider": provider, "golden": "passed", "prepare_ms": round((time.monotonic() - t0) * 1000, 1),
                "engine": engine_cfg.backend}

    return prepare


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    co = changeover_section(cfg, args.config)
    store = BundleStore.open(co.store_dir)
    verifier = SignatureVerifier.from_texts(co.trusted_keys, allow_unsigned=co.allow_unsigned)
    hook = None if args.no_prepare else prepare_engines(cfg.engine)
    entry = store.install(Path(args.bundle), verifier=verifier, prepare=hook, map_recipe=not args.no_map)
    signed = f"signed by {entry.signed_by}" if entry.signed_by else "UNSIGNED (allow_unsigned)"
    prepared = entry.prepared or {"golden": "not run (--no-prepare)"}
    print(f"installed {entry.bundle_id} (product {entry.product}, recipe {entry.recipe}) at {entry.path}; {signed}; "
          f"engines: {prepared}")
    return 0
