"""``lineguard replay``: the full service on an image folder, without writing a config file.

For commissioning and regression checks: replays recorded frames through a bundle exactly as the
line would see them (same queue, decision, fail-safe and decision-log path as ``lineguard run``),
optionally towards a PLC (``--plc HOST:PORT``), and prints verdict statistics.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from lineguard.config import BundleSection, LineConfig, MetricsSection, ServiceSection
from lineguard.engines.bench import percentiles
from lineguard.errors import ConfigError
from lineguard.plc.config import PlcConfig, TcpTransportConfig
from lineguard.publisher import PublisherConfig
from lineguard.service import InspectionService
from lineguard.sources import ReplaySourceConfig

HELP = "replay an image folder through a bundle and print verdict statistics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively, sorted)")
    p.add_argument("--bundle", type=Path, required=True, help="bundle to judge with")
    p.add_argument("--rate", type=float, help="parts per second (default: as fast as the line keeps up)")
    p.add_argument("--plc", help="HOST:PORT of a Modbus TCP PLC (or `lineguard plc-sim`) to send verdicts to")
    p.add_argument("--sink", help="ZeroMQ endpoint of a collection sink for uncertain frames")
    p.add_argument("--decision-log", type=Path, help="write the JSON-lines decision log here")
    p.add_argument("--queue", type=int, default=8, help="inspection queue size in frames")
    p.add_argument("--drop", action="store_true",
                   help="answer frames that find the queue full with the fail-safe verdict, as on a line "
                        "(default: replay waits for the engine)")


def _plc(arg: str | None) -> PlcConfig | None:
    if not arg:
        return None
    host, _, port = arg.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--plc expects HOST:PORT, got {arg!r}")
    return PlcConfig(transport=TcpTransportConfig(host=host, port=int(port)))


def run(args: argparse.Namespace) -> int:
    cfg = LineConfig(
        bundle=BundleSection(path=args.bundle),
        source=ReplaySourceConfig(type="replay", paths=tuple(args.paths), rate_parts_per_s=args.rate),
        plc=_plc(args.plc),
        publisher=PublisherConfig(enabled=bool(args.sink), endpoint=args.sink or "tcp://127.0.0.1:5560"),
        metrics=MetricsSection(enabled=False),
        service=ServiceSection(queue_size_frames=args.queue, decision_log_path=args.decision_log,
                               overflow_policy="failsafe_newest" if args.drop else "block"),
    )
    service = InspectionService.from_config(cfg)
    service.start()
    try:
        service.run_forever(threading.Event(), until_finished=True)
    finally:
        service.stop()
    s = service.stats
    lat = percentiles(s.e2e_ms)
    print(f"bundle {service.bundle.bundle_id}: {s.frames} frames, {s.decided} verdicts, fail-safe {s.failsafe} "
          f"({s.failsafe_breakdown()})")
    for verdict, n in sorted(s.by_verdict.items()):
        print(f"  {verdict:<9} {n:6d}  {100 * n / max(s.decided, 1):5.1f} %")
    print(f"  latency frame -> verdict: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms")
    return 0
