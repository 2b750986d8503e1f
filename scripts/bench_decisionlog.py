"""Benchmark of the decision log on a healthy and on a failing disk.

Prints, and with ``--write`` stores in docs/benchmarks/decision-log.md:
  * the cost of ``DecisionLog.write`` on the calling (inspection / PLC) thread, p50/p99, with the
    disk healthy and during a fault,
  * memory per line held in the backlog during a fault (the bytes objects and their deque slots),
  * lines written per second in normal operation and when the backlog is written after the fault,
  * log records the fault episode produced.

The fault is real and needs no root: the log's folder is removed under the running log (every
open fails with ENOENT, as a full or read-only disk fails every write) and created again.

    .venv/bin/python scripts/bench_decisionlog.py --lines 50000 --write
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from lineguard.contracts import Decision, Verdict
from lineguard.decisionlog import DecisionLog
from lineguard.metrics import DecisionLogMetrics


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.levelname} {record.getMessage()}")


def _decision(seq: int) -> Decision:
    t = time.monotonic_ns()
    return Decision(seq=seq, part_id=seq + 1, verdict=Verdict.REJECT, anomaly_score=0.7312, bundle_id="casting-7",
                    camera_id="cam-a", t_capture_ns=t - 4_000_000, t_decided_ns=t, defect_class="scratch",
                    class_confidence=0.93, reasons=("score_above_upper",))


def _pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0  # µs


def _wait(cond: Callable[[], bool], timeout_s: float = 120.0) -> float:
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError("decision log did not catch up")
        time.sleep(0.001)
    return time.perf_counter() - t0


def _feed(dlog: DecisionLog, start: int, n: int) -> list[int]:
    costs = []
    for i in range(start, start + n):
        d = _decision(i)
        t0 = time.perf_counter_ns()
        dlog.write(d)
        costs.append(time.perf_counter_ns() - t0)
        if i % 1000 == 999:  # a line's pace never fills the queue (4096); a tight loop would
            while dlog._q.qsize() > 1000:
                time.sleep(0.001)
    return costs


def run(lines: int) -> dict[str, float | int | str]:
    root = Path(tempfile.mkdtemp(prefix="bench-dlog-"))
    counter = _Count()
    logging.getLogger("lineguard.decisionlog").addHandler(counter)
    logging.getLogger("lineguard.decisionlog").setLevel(logging.INFO)
    try:
        folder = root / "log"
        dlog = DecisionLog(path=folder / "decisions.jsonl", retry_ms=200, backlog_lines=lines + 10,
                           metrics=DecisionLogMetrics(CollectorRegistry()))
        t0 = time.perf_counter()
        healthy = _feed(dlog, 0, lines)
        _wait(lambda: dlog.written == lines)
        normal_rate = lines / (time.perf_counter() - t0)
        shutil.rmtree(folder)  # the fault: every open fails from here on
        faulty = _feed(dlog, lines, lines)
        _wait(lambda: dlog.fault_episodes == 1 and dlog.written == lines and dlog._q.empty())
        time.sleep(0.05)
        # what the backlog holds: each line's bytes object plus the deque's pointer to it
        held = sum(sys.getsizeof(b) + 8 for b in list(dlog._backlog))
        folder.mkdir()  # space is back
        catch_up_s = _wait(lambda: dlog.written == 2 * lines)
        dlog.close()
        written = sum(1 for _ in (folder / "decisions.jsonl").open())
        return {
            "lines": lines,
            "write_us_p50_healthy": _pct(healthy, 0.5), "write_us_p99_healthy": _pct(healthy, 0.99),
            "write_us_p50_fault": _pct(faulty, 0.5), "write_us_p99_fault": _pct(faulty, 0.99),
            "backlog_bytes_per_line": held / lines,
            "normal_lines_per_s": normal_rate,
            "catch_up_s": catch_up_s, "catch_up_lines_per_s": lines / catch_up_s,
            "lines_in_file_after": written, "lost": dlog.lost,
            "log_records": len(counter.records),
            "log": " / ".join(f"`{r.replace(str(root), '<tmp>')}`" for r in counter.records),
        }
    finally:
        logging.getLogger("lineguard.decisionlog").removeHandler(counter)
        shutil.rmtree(root, ignore_errors=True)


def _table(r: dict[str, float | int | str]) -> str:
    return "\n".join([
        "| measure | value |", "|---|---|",
        f"| `write()` on the calling thread, disk healthy, p50 / p99 | {r['write_us_p50_healthy']:.1f} / "
        f"{r['write_us_p99_healthy']:.1f} µs |",
        f"| `write()` on the calling thread, during the fault, p50 / p99 | {r['write_us_p50_fault']:.1f} / "
        f"{r['write_us_p99_fault']:.1f} µs |",
        f"| memory per line held in the backlog | {r['backlog_bytes_per_line']:.0f} bytes |",
        f"| lines per second from `write()` to the file, healthy (one feeding thread) | "
        f"{r['normal_lines_per_s']:,.0f} |",
        f"| backlog of {r['lines']:,} lines written after the fault in | {r['catch_up_s']:.2f} s "
        f"({r['catch_up_lines_per_s']:,.0f} lines/s) |",
        f"| lines in the file afterwards / lost | {r['lines_in_file_after']:,} / {r['lost']} |",
        f"| log records of the fault episode | {r['log_records']} |",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=50_000, help="lines before and during the fault each")
    ap.add_argument("--write", action="store_true", help="store the table in docs/benchmarks/decision-log.md")
    args = ap.parse_args()
    r = run(args.lines)
    table = _table(r)
    print(table)
    print("log:", r["log"])
    if args.write:
        host = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        doc = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "decision-log.md"
        doc.write_text(
            "# Decision log on a healthy and a failing disk\n\n"
            f"`scripts/bench_decisionlog.py --lines {args.lines}` on {host}, {time.strftime('%Y-%m-%d')}. "
            "The fault: the log's folder removed under the running log (every open fails), then created "
            "again; the lines of the fault wait in the in-memory backlog and are written in order.\n\n"
            + table + "\n\nLog records of the episode: " + str(r["log"]) + "\n")
        print(f"wrote {doc}")


if __name__ == "__main__":
    main()
