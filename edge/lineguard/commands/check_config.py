"""``lineguard check-config``: validate a line config; each error names its YAML line."""

from __future__ import annotations

import argparse

from lineguard.config import load_config

HELP = "validate a config file and report each error with its YAML line"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="path of the line YAML config")
    p.add_argument("--bundle", action="store_true", help="also verify the bundle the config points to")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.bundle:
        from lineguard.bundle import load_bundle

        b = load_bundle(cfg.bundle.path)
        print(f"bundle {b.bundle_id} verified ({len(b.manifest.files)} files)")
    print(f"{args.config}: OK (source {cfg.source.type}, plc {cfg.plc.transport.type if cfg.plc else 'off'})")
    return 0
