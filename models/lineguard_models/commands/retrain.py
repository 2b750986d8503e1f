"""``lineguard retrain``: new labels + the whole history -> candidate bundle -> promotion gate -> report.

Thin CLI over :func:`lineguard_models.retrain.retrain` (see docs/data-loop.md). Also imports a
dataset folder into the dataset store (``--import-folder``) for the first teach. Exit codes: 0 the
candidate passed the gate (written to ``--out``), 3 refused (written to ``<out>.refused``).

Must never: hold training or gate logic of its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from pydantic import ValidationError

from lineguard.errors import ConfigError
from lineguard_models.commands.train import (
    add_classifier_arguments,
    add_policy_arguments,
    bundle_policy,
    classifier_config,
    policy_updates,
    tiles_arg,
)
from lineguard_models.datastore import DatasetStore, GoodUse
from lineguard_models.pipeline import TrainConfig
from lineguard_models.retrain import GateConfig, retrain

HELP = "retrain on new labels plus the whole history; gate the candidate against the active bundle"
EXIT_REFUSED = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datastore", type=Path, required=True, help="dataset store folder (created by --import-folder)")
    p.add_argument("--import-folder", type=Path, action="append", default=[],
                   help="add a dataset folder (good/, <class>/) to the store first; repeatable")
    p.add_argument("--sink", type=Path, default=None,
                   help="sink store whose new labels are imported first (without --active/--out: import only)")
    p.add_argument("--good-use", choices=get_args(GoodUse), default="fit_flagged",
                   help="what a new good label from the sink does: fit_flagged = flagged goods join the memory bank, "
                        "accepted (audit) goods calibrate; fit_flagged_unbiased = as fit_flagged, but goods sent for "
                        "their score never calibrate (docs/data-loop.md)")
    p.add_argument("--active", type=Path, help="the bundle on the line (the gate's baseline)")
    p.add_argument("--out", type=Path, help="candidate bundle folder (written only if the gate passes)")
    p.add_argument("--recall-tolerance", type=float, default=0.05, help="largest allowed recall drop per class")
    p.add_argument("--false-reject-tolerance", type=float, default=0.0,
                   help="largest allowed rise of the false-reject rate")
    p.add_argument("--exclude-class", action="append", default=[],
                   help="leave a class out of training (ablation; the gate still checks it)")
    p.add_argument("--input-size", type=int, default=224,
                   help="engine input size per tile, px (the short side, aspect kept)")
    p.add_argument("--tiles", type=tiles_arg, default=(1, 1), help="ROWSxCOLS tiles")
    p.add_argument("--bank-size", type=int, default=None,
                   help="cap on memory bank rows (default: lineguard train's default bank)")
    p.add_argument("--calibration-folds", type=int, default=3,
                   help="K >= 2 (default 3): every good image fits and calibrates out-of-fold, K extra banks; "
                        "0: held-out good images calibrate. On casting the data loop only beats random "
                        "labelling with K = 3 (docs/benchmarks/data-loop.md)")
    add_classifier_arguments(p)
    add_policy_arguments(p)  # default: the active bundle's policy (the line's targets), changed only as asked
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--product", default="product", help="product name in the bundle")
    p.add_argument("--recipe", type=int, default=0, help="PLC recipe number")


def run(args: argparse.Namespace) -> int:
    store = DatasetStore.open(args.datastore)
    for folder in args.import_folder:
        print(f"{folder}: dataset version {store.import_folder(folder)}")
    if args.active is None and args.out is None:  # import only
        if args.sink is not None:
            version, n = store.import_sink(args.sink, good_use=args.good_use)
            print(f"{args.sink}: {n} label events -> dataset version {version}")
        return 0
    if args.active is None or args.out is None:
        raise ConfigError("retraining needs both --active and --out")
    try:
        train_cfg = TrainConfig(product=args.product, recipe=args.recipe, seed=args.seed,
                                input_size_px=args.input_size, tile_rows=args.tiles[0], tile_cols=args.tiles[1],
                                calibration_folds=args.calibration_folds, classifier=classifier_config(args),
                                **({"bank_size": args.bank_size} if args.bank_size is not None else {}),
                                policy=bundle_policy(args.active, policy_updates(args)))
        gate_cfg = GateConfig(recall_tolerance=args.recall_tolerance,
                              false_reject_tolerance=args.false_reject_tolerance)
    except ValidationError as exc:
        raise ConfigError(f"invalid retrain options: {exc}") from exc
    result = retrain(args.datastore, args.active, args.out, train_cfg=train_cfg, gate_cfg=gate_cfg, sink=args.sink,
                     exclude_classes=args.exclude_class, good_use=args.good_use)
    for reason in result.decision.reasons:
        print(f"REFUSED: {reason}")
    return 0 if result.decision.passed else EXIT_REFUSED
