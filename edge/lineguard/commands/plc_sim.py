"""``lineguard plc-sim``: run the PLC simulator (Modbus TCP server playing the PLC side).

For the demo and for commissioning without the real PLC: point the service's ``plc.transport``
at it. It triggers parts at a rate, acks results and can misbehave on purpose. Not part of
the inspection data flow; it never imports the service.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ruamel.yaml import YAML

from lineguard.errors import ConfigError
from lineguard.plc.config import RegisterMapConfig

HELP = "run a Modbus server that plays the PLC side"
log = logging.getLogger("lineguard.plc_sim")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5020, help="TCP port (default 5020; 502 needs root)")
    p.add_argument("--registers", type=Path, help="YAML file with a register map (the plc.registers section)")
    p.add_argument("--unit-id", type=int, help="override the register map's unit id")
    p.add_argument("--rate-hz", type=float, default=0.0, help="trigger parts at this rate (0 = no triggers)")
    p.add_argument("--first-part-id", type=int, default=1, help="part id of the first trigger")
    p.add_argument("--count", type=int, help="stop triggering after this many parts")
    p.add_argument("--no-ack", action="store_true", help="never acknowledge results (buffer overflow test)")
    p.add_argument("--ack-delay-ms", type=float, default=0.0, help="acknowledge results this much later")
    p.add_argument("--response-delay-ms", type=float, default=0.0, help="delay every Modbus response")
    p.add_argument("--drop-every-s", type=float, default=0.0, help="drop all connections periodically")
    p.add_argument("--duration-s", type=float, default=0.0, help="exit after this long (0 = until Ctrl-C)")


def _load_registers(path: Path | None, unit_id: int | None) -> RegisterMapConfig:
    data: dict[str, object] = {}
    if path is not None:
        try:
            loaded = YAML(typ="safe").load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read register map {path}: {exc}") from exc
        if isinstance(loaded, dict):
            data = dict(loaded.get("registers", loaded))
    if unit_id is not None:
        data["unit_id"] = unit_id
    try:
        return RegisterMapConfig.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"register map {path}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from lineguard.plc.sim import PlcSimulator  # server side imported only for this command

    regs = _load_registers(args.registers, args.unit_id)
    sim = PlcSimulator(
        registers=regs,
        host=args.host,
        port=args.port,
        ack=not args.no_ack,
        ack_delay_ms=args.ack_delay_ms,
        response_delay_ms=args.response_delay_ms,
    )
    sim.start()
    log.info("PLC simulator on %s:%d unit %d", args.host, sim.port, regs.unit_id)
    if args.rate_hz > 0:
        sim.start_triggers(args.rate_hz, first_part_id=args.first_part_id, count=args.count)
    t0 = time.monotonic()
    next_drop = t0 + args.drop_every_s if args.drop_every_s > 0 else float("inf")
    try:
        while not args.duration_s or time.monotonic() - t0 < args.duration_s:
            time.sleep(1.0)
            if time.monotonic() >= next_drop:
                sim.drop_connections()
                log.info("dropped all connections")
                next_drop += args.drop_every_s
            _report(sim)
    except KeyboardInterrupt:  # Ctrl-C / SIGINT is the normal way to end a commissioning session
        pass
    finally:
        sim.stop()
        _summary(sim)
    return 0


def _summary(sim: object) -> None:
    """One machine-readable line of what the PLC received, printed at exit (commissioning, tests)."""
    from collections import Counter

    from lineguard.contracts import Verdict
    from lineguard.plc.sim import PlcSimulator

    assert isinstance(sim, PlcSimulator)
    by_part = sim.verdicts_by_part()
    names = {int(v): v.label for v in Verdict}
    verdicts = Counter(names.get(v, str(v)) for answers in by_part.values() for _, v in answers)
    doubles = sum(1 for v in by_part.values() if len(v) > 1)
    print(f"plc-sim stopped: parts {len(by_part)} results {len(sim.results())} doubly-answered {doubles} "
          f"verdicts {dict(sorted(verdicts.items()))}", flush=True)


def _report(sim: object) -> None:
    from lineguard.plc.sim import PlcSimulator

    assert isinstance(sim, PlcSimulator)
    results = sim.results()
    by_part = sim.verdicts_by_part()
    doubles = sum(1 for v in by_part.values() if len(v) > 1)
    last = results[-1] if results else None
    log.info(
        "triggers=%d results=%d parts=%d doubly-answered=%d heartbeat=%d status=%s last=%s",
        len(sim.triggers()),
        len(results),
        len(by_part),
        doubles,
        sim.register(sim.cfg.heartbeat.address),
        {k for k, v in sim.status_bits().items() if v} or "{}",
        f"part {last.part_id} verdict {last.verdict} seq {last.seq}" if last else "-",
    )
