"""``lineguard run --config line.yaml``: the inspection service in the foreground.

SIGTERM / SIGINT stop it cleanly: intake stops, the part in flight is finished, queued parts get
their fail-safe verdict, the camera is closed, the PLC status word drops 'ready'.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from lineguard.config import load_config
from lineguard.service import InspectionService

HELP = "run the inspection service from a YAML config"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="line YAML config (see docs/config.md)")
    p.add_argument("--until-finished", action="store_true", help="exit when a replay source is exhausted")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    service = InspectionService.from_config(cfg)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    service.start()
    try:
        service.run_forever(stop, until_finished=args.until_finished)
    finally:
        service.stop()
    s = service.stats
    print(f"frames {s.frames}  decisions {s.decided}  fail-safe {s.failsafe} ({s.failsafe_breakdown()})  "
          f"verdicts {s.by_verdict}")
    return 0
