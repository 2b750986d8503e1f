"""``lineguard run --config line.yaml``: the inspection service in the foreground.

SIGTERM / SIGINT stop it cleanly: intake stops, the part in flight is finished, queued parts get
their fail-safe verdict, the camera is closed, the PLC status word drops 'ready'; results the PLC
has not acknowledged are written to the decision log and reported in one line. Exit 0.

``--until-finished`` (replay): stop once the source has ended, every part is judged and the PLC has
acknowledged every result, or has acknowledged nothing for ``--ack-timeout-s``. Exit 0 when every
part's result reached the PLC, ``EXIT_NOT_ACKNOWLEDGED`` (3) when some never did.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from lineguard.config import load_config
from lineguard.plc import PlcOutcome
from lineguard.service import FINISH_ACK_TIMEOUT_S, InspectionService

HELP = "run the inspection service from a YAML config"
log = logging.getLogger(__name__)
EXIT_NOT_ACKNOWLEDGED = 3  # --until-finished: some part's result never reached the PLC
REACHED_PLC = {PlcOutcome.WRITTEN.value, PlcOutcome.FAILSAFE_DEADLINE.value, PlcOutcome.NONE.value}


def _positive_s(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="line YAML config (see docs/config.md)")
    p.add_argument(
        "--until-finished",
        action="store_true",
        help="exit when a replay source is exhausted and the PLC has acknowledged every result (or nothing for "
        f"--ack-timeout-s); exit code {EXIT_NOT_ACKNOWLEDGED} when some result never reached the PLC",
    )
    p.add_argument(
        "--ack-timeout-s",
        type=_positive_s,
        default=FINISH_ACK_TIMEOUT_S,
        metavar="S",
        help="with --until-finished: stop when the PLC has acknowledged no result for this long after the "
        "source ended (default %(default)s)",
    )


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
        service.run_forever(stop, until_finished=args.until_finished, ack_timeout_s=args.ack_timeout_s)
    finally:
        service.stop()
    s = service.stats
    print(f"frames {s.frames}  decisions {s.decided}  fail-safe {s.failsafe} ({s.failsafe_breakdown()})  "
          f"verdicts {s.by_verdict}")
    outcomes = dict(service.plc.outcomes)
    missing = sum(n for k, n in outcomes.items() if k not in REACHED_PLC)
    if outcomes and PlcOutcome.NONE.value not in outcomes:
        print(f"plc {outcomes}  never acknowledged {missing}")
    if args.until_finished and not stop.is_set() and missing:
        log.warning("%d part(s) whose result never reached the PLC: %s", missing, outcomes)
        return EXIT_NOT_ACKNOWLEDGED
    return 0
