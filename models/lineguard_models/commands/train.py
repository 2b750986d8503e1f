"""``lineguard train``: dataset folder -> calibrated, verified model bundle.

Thin CLI over :func:`lineguard_models.pipeline.train` (argument parsing and config only). See
docs/training.md for the folder contract and the hold-out, and docs/calibration.md for the policy.

Must never: hold training logic of its own.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pydantic import ValidationError

from lineguard.bundle import read_manifest
from lineguard.errors import ConfigError
from lineguard_models.autoconfig import AutoConfig, train_auto
from lineguard_models.calibration import CalibrationPolicy
from lineguard_models.classifier import ClassifierConfig
from lineguard_models.finetune import FinetuneConfig
from lineguard_models.pipeline import TrainConfig, train
from lineguard_models.verdict_head import VerdictHeadConfig

HELP = "train an anomaly bundle from a dataset folder (needs the train extra)"


def tiles_arg(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"--tiles wants ROWSxCOLS such as 2x3, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def add_policy_arguments(p: argparse.ArgumentParser) -> None:
    """Calibration policy options shared with ``lineguard calibrate`` and ``retrain`` (None = keep the default /
    the bundle's policy)."""
    p.add_argument("--escape-target", type=float, default=None,
                   help="max fraction of each defect class accepted on the calibration images (default 0.02)")
    p.add_argument("--false-reject-budget", type=float, default=None,
                   help="max fraction of good parts rejected (default 0.01)")
    p.add_argument("--band", choices=["automate", "recheck", "none"], default=None,
                   help="'automate' (default): the thresholds that decide the most calibration parts within the "
                        "targets (a band only where good and defect scores overlap); 'recheck': the whole gap "
                        "between the classes is a band; 'none': one threshold")
    p.add_argument("--escape-tail", choices=["model", "observed"], default=None,
                   help="'model' (default): the accept threshold goes no higher than where each class's modelled "
                        "lower tail puts --escape-target of new defects (few defect images rarely show a class's "
                        "lowest scores); 'observed': the calibration scores alone (docs/calibration.md)")
    p.add_argument("--reject-tail", choices=["model", "observed"], default=None,
                   help="'model' (default): with too few good images to bound --false-reject-budget, the reject "
                        "threshold may sit below the highest good score, where the goods' modelled upper tail puts "
                        "the budget of new good parts (one atypical good does not send every defect near it to "
                        "recheck; at most one calibration good more is rejected); 'observed': the calibration "
                        "scores alone (docs/calibration.md)")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the calibrating images shared with ``lineguard calibrate`` (retrain reads its dataset store)."""
    p.add_argument("--max-defects-per-class", type=int, default=None, help="defect images used per class")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="skip unreadable/empty image files instead of stopping (they are listed in the report)")


def add_classifier_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared with ``lineguard retrain``."""
    p.add_argument("--classifier-finetune", action="store_true",
                   help="always fine-tune the defect classifier's last stage on every orientation view (without "
                        "this flag the per-line choice tries it from 30 images per class and keeps it only where "
                        "cross-validation says it pays); at inference the views are averaged only for a flagged part "
                        "whose single view is unsure (NEU-DET, 40/class: 98.7 %% as trained here, 99.0 %% in the "
                        "fine-tuning study, vs 98.2-98.7 %% frozen; 1 flagged part in 6 through the views, p50 15 ms, "
                        "p99 100 ms for the classifier), several times the classifier's training time, no shared "
                        "backbone pass (docs/classifier.md)")


def classifier_config(args: argparse.Namespace) -> ClassifierConfig:
    if args.classifier_finetune:
        return ClassifierConfig(average_views=True, finetune=FinetuneConfig())
    return ClassifierConfig()


def bundle_policy(bundle: Path, updates: dict[str, object]) -> CalibrationPolicy:
    """``bundle``'s calibration policy with ``updates`` (the options given); a clear error when invalid."""
    base = {k: v for k, v in read_manifest(bundle).thresholds.policy.items() if k != "mode"}
    try:
        return CalibrationPolicy.model_validate({**base, **updates})
    except ValidationError as exc:
        raise ConfigError(f"invalid calibration options: {exc}") from exc


def policy_updates(args: argparse.Namespace) -> dict[str, object]:
    pairs = {"escape_target": args.escape_target, "false_reject_budget": args.false_reject_budget,
             "band": args.band, "escape_tail": args.escape_tail,
             "reject_tail": args.reject_tail}
    return {k: v for k, v in pairs.items() if v is not None}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="dataset folder (good/, <defect>/, optional train/ test/)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to create")
    p.add_argument("--max-good", type=int, default=None, help="most good images used for fitting")
    p.add_argument("--seed", type=int, default=0, help="seed of the hold-out, coreset and sampling")
    p.add_argument("--input-size", type=int, default=None,
                   help="engine input size per tile, px, of the side --input-side names (aspect kept, multiples "
                        "of 32; default 288 on the short side); a recipe option: given, it turns automatic "
                        "configuration off (as do --input-side, --tiles, --bank-size, --bank-fraction, --backbone, "
                        "--stages, --image-score, --bank-turns)")
    add_recipe_arguments(p)
    p.add_argument("--product", default="product", help="product name in the bundle")
    p.add_argument("--recipe", type=int, default=0, help="PLC recipe number this bundle serves")
    p.add_argument("--tiles", type=tiles_arg, default=None,
                   help="ROWSxCOLS tiles (default 1x1); a recipe option: given, it turns automatic configuration off")
    p.add_argument("--tile-overlap", type=int, default=0, help="overlap between tiles, image px")
    p.add_argument("--bank-size", type=int, default=None,
                   help="memory bank rows after coreset selection (default: the product default); a recipe option: "
                        "given, it turns automatic configuration off")
    p.add_argument("--holdout-fraction", type=float, default=0.2, help="share of good images held out (0.2)")
    p.add_argument("--calibration-folds", type=int, default=None,
                   help="0: the held-out good images calibrate; K >= 2: every good image is fitted and calibrates "
                        "out-of-fold (K extra banks, about 1 + K/1.7 times the training time; docs/calibration.md). "
                        "Default: 3 in automatic configuration (its folds), 0 with --no-auto")
    add_auto_arguments(p)
    p.add_argument("--no-verdict-head", action="store_true",
                   help="keep the plain anomaly engine: no supervised good-vs-defect head fused into its score (by "
                        "default one is tried when at least 30 good images calibrate, i.e. with --calibration-folds "
                        ">= 2 as automatic configuration uses, and at least 10 defect images are labelled; it only "
                        "raises scores; docs/anomaly-model.md \"Verdict head\")")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--camera-profile", type=Path, default=None,
                   help="camera profile YAML: which augmentations this camera can really produce "
                        "(docs/augmentation.md); default: conservative profile for the images' format")
    add_classifier_arguments(p)
    add_policy_arguments(p)
    add_data_arguments(p)


# options that set the recipe by hand: any of them given means no automatic configuration
RECIPE_OPTIONS = ("input_size", "tiles", "bank_size", "input_side", "bank_fraction", "backbone", "stages",
                  "neighbourhood", "image_score", "bank_turns")
_RECIPE_FIELDS = {"input_side": "input_side", "bank_fraction": "bank_fraction", "backbone": "backbone",
                  "stages": "stages", "neighbourhood": "neighbourhood_cells", "image_score": "image_score",
                  "bank_turns": "bank_turns"}


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The issue-22 recipe knobs (docs/anomaly-model.md); each given one turns automatic configuration off."""
    p.add_argument("--input-side", choices=["short", "long"], default=None,
                   help="which side --input-size sets: short (default; long frames keep their detail) or long")
    p.add_argument("--bank-fraction", type=float, default=None,
                   help="memory bank = this share of the training images' patches by greedy coreset (default 0.1; "
                        "1 = as many rows as patches; turned copies do not add rows)")
    p.add_argument("--backbone", choices=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
                   default=None, help="feature backbone (default efficientnet_lite2)")
    p.add_argument("--stages", type=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()), default=None,
                   help="backbone stages feeding the patch features, comma-separated (default stage3,stage4)")
    p.add_argument("--neighbourhood", type=int, choices=[1, 3, 5, 7], default=None,
                   help="odd side of the window each stage's features are averaged over (default 1: every feature "
                        "cell alone; 3: PatchCore's local averaging)")
    p.add_argument("--image-score", choices=["patch_max", "map_max", "topk_mean"], default=None,
                   help="how patch distances become the image score (default topk_mean)")
    p.add_argument("--bank-turns", type=int, choices=[1, 2, 4], default=None,
                   help="copies of each training image in the bank: 1, 2 (+180 deg) or 4 (90 deg turns); default: "
                        "4 when the camera profile says parts lie in any orientation, else 1; the bank keeps the rows "
                        "--bank-fraction gives")


def add_auto_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-auto", action="store_true",
                   help="train the recipe as given instead of choosing it per line (automatic configuration tries "
                        "a few recipes out-of-fold on the line's own images and keeps the one that decides the most "
                        "parts within the targets; docs/training.md)")
    p.add_argument("--latency-budget-ms", type=float, default=40.0,
                   help="automatic configuration: most engine p50 (ONNX Runtime, 2 CPU threads, this machine) a "
                        "chosen recipe may have (default 40); on a line that gets a defect classifier the anomaly "
                        "engine gets this less the classifier's share of a flagged part, measured here first "
                        "(about 9-10 ms on an idle 2-core PC)")
    p.add_argument("--auto-time-budget-s", type=float, default=600.0,
                   help="automatic configuration: wall time of the whole call, from the dataset scan to the written "
                        "bundle; the first recipe's folds price the final training, which is reserved; later recipes "
                        "that would not fit are skipped, or stopped between folds, and listed (default 600)")


def recipe_updates(args: argparse.Namespace) -> dict[str, object]:
    """TrainConfig fields the recipe options set (None = the product default)."""
    out: dict[str, object] = {}
    if args.input_size is not None:
        out["input_size_px"] = args.input_size
    if args.tiles is not None:
        out["tile_rows"], out["tile_cols"] = args.tiles
    if args.bank_size is not None:
        out["bank_size"] = args.bank_size
    for option, name in _RECIPE_FIELDS.items():
        if getattr(args, option, None) is not None:
            out[name] = getattr(args, option)
    return out


def auto_mode(args: argparse.Namespace) -> bool:
    return not args.no_auto and all(getattr(args, name, None) is None for name in RECIPE_OPTIONS)


def run(args: argparse.Namespace) -> int:
    auto = auto_mode(args)
    folds = args.calibration_folds if args.calibration_folds is not None else (3 if auto else 0)
    if auto and folds < 2:
        raise ConfigError("automatic configuration calibrates out-of-fold: --calibration-folds must be >= 2 "
                          "(or use --no-auto for a held-out calibration)")
    try:
        cfg = TrainConfig.model_validate({
            "product": args.product, "recipe": args.recipe, "seed": args.seed, **recipe_updates(args),
            "tile_overlap_px": args.tile_overlap, "max_good": args.max_good,
            "max_defects_per_class": args.max_defects_per_class, "holdout_fraction": args.holdout_fraction,
            "calibration_folds": folds, "allow_unreadable": args.skip_unreadable,
            "camera_profile": args.camera_profile, "classifier": classifier_config(args),
            "verdict_head": VerdictHeadConfig(enabled=not args.no_verdict_head),
            "policy": CalibrationPolicy.model_validate(policy_updates(args)),
        })
        auto_cfg = AutoConfig(folds=max(folds, 2), time_budget_s=args.auto_time_budget_s,
                              latency_budget_ms=args.latency_budget_ms)
    except ValidationError as exc:
        raise ConfigError(f"invalid training options: {exc}") from exc
    if auto:
        bundle = train_auto(args.data, args.out, cfg, auto_cfg, overwrite=args.overwrite)
    else:
        bundle = train(args.data, args.out, cfg, overwrite=args.overwrite)
    m = bundle.manifest
    for w in m.calibration.get("warnings", []):
        print(f"WARNING: {w}")
    if "auto" in m.calibration:
        a = m.calibration["auto"]
        print(f"automatic configuration chose {a['chosen']}: {a['reason']} ({a['budget_note']})")
    print(f"automated share on the calibration images: {100 * m.calibration.get('automated_share', 0):.1f} %")
    print(f"bundle {m.bundle_id}: accept < {m.thresholds.lower:.6g}, reject >= {m.thresholds.upper:.6g}; "
          f"report: {args.out / 'report' / 'report.md'} (in a browser: {args.out / 'report' / 'report.html'})")
    return 0
