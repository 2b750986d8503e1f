"""``lineguard calibrate``: new thresholds for an existing bundle from new images, no retraining.

Thin CLI over :func:`lineguard_models.pipeline.recalibrate`. Scores with the bundle's own ONNX
graph; the previous calibration scores are kept and the new images added. See docs/calibration.md.

Must never: retrain, or modify the bundle in place other than by an atomic replacement.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lineguard_models.commands.train import add_data_arguments, add_policy_arguments, bundle_policy, policy_updates
from lineguard_models.pipeline import recalibrate

HELP = "re-calibrate a bundle's thresholds with new defect images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, help="existing bundle folder")
    p.add_argument("--data", type=Path, required=True,
                   help="folder with new images (defect class folders, and good/ if any)")
    p.add_argument("--out", type=Path, default=None, help="new bundle folder (default: replace --bundle atomically)")
    add_policy_arguments(p)
    add_data_arguments(p)


def run(args: argparse.Namespace) -> int:
    updates = policy_updates(args)
    policy = bundle_policy(args.bundle, updates) if updates else None  # the bundle's, changed only as asked
    bundle = recalibrate(args.bundle, args.data, args.out, policy=policy,
                         max_defects_per_class=args.max_defects_per_class, allow_unreadable=args.skip_unreadable)
    m = bundle.manifest
    for w in m.calibration.get("warnings", []):
        print(f"WARNING: {w}")
    out = args.out or args.bundle
    print(f"bundle {m.bundle_id}: accept < {m.thresholds.lower:.6g}, reject >= {m.thresholds.upper:.6g}; "
          f"report: {out / 'report' / 'report.md'} (in a browser: {out / 'report' / 'report.html'})")
    return 0
