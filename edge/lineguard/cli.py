"""The ``lineguard`` console command: one script, many subcommands.

Each subcommand lives in ``lineguard.commands.<module>`` (or ``lineguard_models.commands.<module>``
for training-side commands, which need torch) and is imported only when chosen, so the edge
box never imports torch and a missing optional back-end fails only when it is selected.

A command module provides::

    HELP: str                                   # one line for ``lineguard --help``
    def add_arguments(p: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int     # exit code
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

from lineguard import __version__
from lineguard.errors import LineGuardError

# name -> module path. Order is the order shown in --help.
COMMANDS: dict[str, str] = {
    # edge / operations
    "demo": "lineguard.commands.demo",
    "run": "lineguard.commands.run",
    "check-config": "lineguard.commands.check_config",
    "check-bundle": "lineguard.commands.check_bundle",
    "score": "lineguard.commands.score",
    "bench": "lineguard.commands.bench",
    "replay": "lineguard.commands.replay",
    "plc-sim": "lineguard.commands.plc_sim",
    "sink": "lineguard.commands.sink",
    "cameras": "lineguard.commands.cameras",
    "capture": "lineguard.commands.capture",
    # changeover (bundle store, signatures, hot swap)
    "install-bundle": "lineguard.commands.install_bundle",
    "sign-bundle": "lineguard.commands.sign_bundle",
    "bundles": "lineguard.commands.bundles",
    "swap": "lineguard.commands.swap",
    "sink-upload": "lineguard.commands.sink_upload",
    "label": "lineguard.commands.label",
    # training side (torch)
    "train": "lineguard_models.commands.train",
    "calibrate": "lineguard_models.commands.calibrate",
    "augment-preview": "lineguard_models.commands.augment_preview",
    "retrain": "lineguard_models.commands.retrain",
    "backtest": "lineguard_models.commands.backtest",
}

# Shown in --help without importing the module (importing would pull torch for training commands).
SUMMARIES: dict[str, str] = {
    "demo": "run the demo line: bundle, replayed camera, PLC simulator, sink, metrics",
    "run": "run the inspection service from a YAML config",
    "check-config": "validate a config file and report each error with its YAML line",
    "check-bundle": "verify a model bundle: hashes, thresholds, golden self-test",
    "score": "score images or folders with a bundle (ONNX Runtime only) into a CSV",
    "bench": "benchmark the engines and the service end to end",
    "replay": "replay an image folder through a bundle and print verdict statistics",
    "plc-sim": "run a Modbus server that plays the PLC side",
    "sink": "run the collection sink for uncertain frames",
    "cameras": "list GenICam devices visible through a GenTL producer (.cti)",
    "capture": "take teach-set frames from the line's camera into a dataset folder (PNG + JSON sidecar)",
    "install-bundle": "install a signed bundle into the edge box's bundle store (engines prepared now)",
    "sign-bundle": "sign a bundle's manifest with Ed25519 (or --generate-key a signing key)",
    "bundles": "list, activate (map to its recipe) or remove installed bundle versions",
    "swap": "ask the running service to switch bundle (by recipe or id), or show its changeover status",
    "sink-upload": "upload the sink's stored frames and index rows to S3-compatible storage",
    "train": "train an anomaly bundle from a dataset folder (needs the train extra)",
    "calibrate": "re-calibrate a bundle's thresholds with new defect images",
    "augment-preview": "write a contact sheet of physically plausible augmentations",
    "label": "serve the labelling page for frames stored by the sink",
    "retrain": "retrain on new labels plus all history, gated against the active bundle",
    "backtest": "predict a candidate bundle's rejects and escapes on stored production frames",
}


def _load(name: str) -> ModuleType:
    try:
        return importlib.import_module(COMMANDS[name])
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        if missing.startswith("lineguard"):
            raise
        hint = " (install the training extra: pip install 'lineguard[train]')" if "models" in COMMANDS[
            name
        ] else ""
        raise SystemExit(f"lineguard {name}: required package '{missing}' is not installed{hint}") from exc


def _command_name(argv: list[str]) -> str | None:
    """The subcommand in ``argv``: the first word that is not a global option or its value."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--log-level":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, ModuleType | None]:
    parser = argparse.ArgumentParser(prog="lineguard", description="LineGuard visual inspection")
    parser.add_argument("--version", action="version", version=f"lineguard {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _command_name(argv)
    module = None
    for name in COMMANDS:
        p = sub.add_parser(name, help=SUMMARIES[name], description=SUMMARIES[name])
        if name == chosen:
            module = _load(name)
            module.add_arguments(p)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if module is None:
        parser.print_help()
        return 2
    try:
        return int(module.run(args))
    except LineGuardError as exc:
        print(f"lineguard {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
