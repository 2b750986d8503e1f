"""Benchmark of the PLC link on loopback against the PLC simulator.

Prints, and with ``--write`` stores in docs/benchmarks/plc.md:
  * result-block write latency p50/p99 per handshake mode (transport-measured, one FC16),
  * submit -> result in the PLC's registers latency p50/p99,
  * maximum parts per second sustained with acknowledged results (simulator acks at once),
  * time from connection loss to "lost" signalled, to reconnected, and to the status word
    showing link_recovered.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from lineguard.plc import PlcConfig, PlcLink
from lineguard.plc.config import TcpTransportConfig
from lineguard.plc.sim import PlcSimulator
from lineguard.plc.testing import audit, decision, settle


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _cfg(port: int, **kw: object) -> PlcConfig:
    base: dict[str, object] = {
        "transport": TcpTransportConfig(port=port),
        "flight_recorder_size": 100_000,
        "deadline_ms": 1000,
        "result_buffer_size": 1024,
    }
    return PlcConfig.model_validate({**base, **kw})


def bench_latency(mode: str, n: int, rate_hz: float) -> dict[str, float]:
    with PlcSimulator() as sim:
        reg = CollectorRegistry()
        link = PlcLink.from_config(_cfg(sim.port, handshake=mode), metrics_registry=reg)
        link.start()
        sim.wait_until(lambda: sim.heartbeats() != [], 2.0)
        t_submit: dict[int, int] = {}
        for pid in range(1, n + 1):
            t_submit[pid] = time.monotonic_ns()
            link.submit(decision(pid))
            time.sleep(1.0 / rate_hz)
        settle(link, 10.0)
        link.stop()
        writes = [
            tx.latency_us / 1000
            for tx in link.recorder.snapshot()
            if tx.op == "write_regs" and tx.address == link.cfg.registers.part_id.address and not tx.error
        ]
        e2e = [(r.t_ns - t_submit[r.part_id]) / 1e6 for r in sim.results()]
        assert audit(sim, reg, range(1, n + 1)).ok
    return {
        "write_p50_ms": _pct(writes, 0.5),
        "write_p99_ms": _pct(writes, 0.99),
        "e2e_p50_ms": _pct(e2e, 0.5),
        "e2e_p99_ms": _pct(e2e, 0.99),
        "n": float(len(writes)),
    }


def bench_throughput(n: int) -> float:
    """Submit n parts at once into a 1024-deep buffer; parts/s until the last one is acked."""
    with PlcSimulator() as sim:
        reg = CollectorRegistry()
        link = PlcLink.from_config(_cfg(sim.port, handshake="acknowledged", deadline_ms=60000), metrics_registry=reg)
        link.start()
        sim.wait_until(lambda: sim.heartbeats() != [], 2.0)
        t0 = time.monotonic()
        for pid in range(1, n + 1):
            link.submit(decision(pid))
        settle(link, 60.0)
        elapsed = time.monotonic() - t0
        link.stop()
        a = audit(sim, reg, range(1, n + 1))
        assert a.ok and a.written == n, a
    return n / elapsed


def bench_recovery(rounds: int, outage_s: float) -> dict[str, float]:
    lost, back, status, outage_back = [], [], [], []
    with PlcSimulator() as sim:
        link = PlcLink.from_config(
            _cfg(sim.port, reconnect_backoff_initial_ms=10, reconnect_backoff_max_ms=200, reconnected_flag_hold_ms=100)
        )
        link.start()
        sim.wait_until(lambda: link.health().connected, 2.0)
        for _ in range(rounds):
            time.sleep(0.3)
            n_rec = link.health().reconnects
            n_hb = len(sim.heartbeats())
            t0 = time.monotonic_ns()
            sim.drop_connections()
            sim.wait_until(lambda n=n_rec: link.health().reconnects > n, 5.0)
            t_lost = link.health().t_last_loss_ns
            t_back = time.monotonic_ns()
            sim.wait_until(lambda k=n_hb: any(s & 32 for _, _, s in sim.heartbeats()[k:]), 5.0)
            t_status = next(t for t, _, s in sim.heartbeats()[n_hb:] if s & 32)
            if t_lost is not None and t_lost > t0:
                lost.append((t_lost - t0) / 1e6)
            back.append((t_back - t0) / 1e6)
            status.append((t_status - t0) / 1e6)
        for _ in range(rounds):  # PLC away for outage_s, then back: time to resume after it returns
            time.sleep(0.3)
            n_rec = link.health().reconnects
            sim.offline()
            time.sleep(outage_s)
            t0 = time.monotonic_ns()
            sim.online()
            sim.wait_until(lambda n=n_rec: link.health().reconnects > n, 5.0)
            outage_back.append((time.monotonic_ns() - t0) / 1e6)
        link.stop()
    return {
        "lost_ms": statistics.median(lost) if lost else float("nan"),
        "reconnected_ms": statistics.median(back),
        "status_ms": statistics.median(status),
        "after_outage_ms": statistics.median(outage_back),
        "after_outage_max_ms": max(outage_back),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--parts", type=int, default=500, help="parts per latency run")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks/plc.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    lat = {mode: bench_latency(mode, args.parts, 200.0) for mode in ("fire_and_forget", "acknowledged")}
    tput = bench_throughput(1000)  # one burst that fits the 1024-deep buffer
    rec = bench_recovery(5, 0.5)
    lines = [
        "## PLC link (Modbus TCP, loopback, PLC simulator)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; measured by `scripts/bench_plc.py` (defaults: poll 10 ms, ack poll 2 ms).",
        "",
        "| handshake | result write p50 | p99 | submit -> in PLC p50 | p99 | results |",
        "|---|---|---|---|---|---|",
    ]
    for mode, r in lat.items():
        lines.append(
            f"| {mode} | {r['write_p50_ms']:.2f} ms | {r['write_p99_ms']:.2f} ms | "
            f"{r['e2e_p50_ms']:.2f} ms | {r['e2e_p99_ms']:.2f} ms | {int(r['n'])} at 200/s |"
        )
    lines += [
        "",
        f"Maximum sustained rate with acknowledged results (simulator acks at once): **{tput:.0f} parts/s**.",
        "",
        "Connection loss (simulator drops the TCP connection; median of 5):",
        f"- loss detected by the link: {rec['lost_ms']:.1f} ms",
        f"- connection re-established: {rec['reconnected_ms']:.1f} ms",
        f"- status word with `link_recovered` in the PLC: {rec['status_ms']:.1f} ms",
        f"- PLC away 500 ms, then back: link resumes {rec['after_outage_ms']:.0f} ms after it returns "
        f"(max {rec['after_outage_max_ms']:.0f} ms; backoff capped at 200 ms in this run, 2 s by default)",
        "",
        "Notes: the simulator runs in the same Python process as the link (one GIL, 2 cores shared with",
        "other work), so p99 values and the parts/s figure mostly measure this machine's scheduling; on",
        "three runs here the acknowledged rate ranged 376-806 parts/s. In acknowledged mode a result that",
        "waits behind an unacked one adds up to one ack poll (2 ms) plus the PLC's ack time; a real PLC",
        "acks once per scan (typ. 5-20 ms), which bounds the acknowledged rate to ~1 result per scan.",
        "Loss detection happens on the next transaction (poll every 10 ms, heartbeat every 250 ms).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        Path(__file__).resolve().parents[1].joinpath("docs/benchmarks/plc.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
