"""``lineguard backtest``: replay the sink's stored frames through a candidate bundle.

Thin CLI over :func:`lineguard_models.backtest.backtest`; prints the Markdown report and writes it
(and JSON) with ``--report``. Must never: hold replay logic of its own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lineguard_models.backtest import backtest

HELP = "replay stored production frames through a candidate bundle: more/fewer rejects and escapes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, help="candidate bundle folder")
    p.add_argument("--store", type=Path, required=True, help="the sink's store_dir")
    p.add_argument("--audit-fraction", type=float, default=None,
                   help="the publisher's audit_fraction, to extrapolate per 10,000 parts")
    p.add_argument("--report", type=Path, default=None, help="write REPORT.md and REPORT.json")


def run(args: argparse.Namespace) -> int:
    report = backtest(args.bundle, args.store, audit_fraction=args.audit_fraction)
    text = report.to_markdown()
    print(text)
    if args.report is not None:
        args.report.with_suffix(".md").write_text(text, encoding="utf-8")
        args.report.with_suffix(".json").write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    return 0
