"""Fault bench (issue 21, part 6): the real ``lineguard run`` (replay source -> ONNX Runtime ->
decision -> PLC link -> decision log -> publisher) against an independent PLC on uModbus and the
real ``lineguard sink``, all on loopback, with one fault per scenario at 10 and 50 parts/s.

For each run it counts, from what the PLC received and what the decision log holds: parts
triggered / answered / fail-safe / missed deadline / doubled / shifted (a result carrying another
file's verdict or score: each file's own score comes from ``lineguard score``), whether every
triggered part is in the decision log exactly once, the lines the service logged, and the time to
recover once the peer is back. Writes docs/benchmarks/reliability.md (``--out``).

    .venv/bin/python scripts/bench_faults.py                  # both rates, a few minutes
    .venv/bin/python scripts/bench_faults.py --rates 10 --seconds 4 --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faults_lib import Audit, Expect, UModbusPlc, audit, log_records
from reliability_doc import Row, write_doc

from lineguard.bundle import SIGNATURE, load_bundle
from lineguard.changeover.signing import public_key_text
from lineguard.changeover.testing import edit_thresholds_after_signing, make_bundle
from lineguard.engines.synthetic import synthetic_image
from lineguard.plc.sim import free_port

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_MS = 500.0  # a loaded 2-core box: the 200 ms default would add load-induced deadline fail-safes
BARE_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


# ------------------------------------------------------------------------------------ the line

@dataclass
class Line:
    tmp: Path
    rate: float
    seconds: float
    bundle: Path
    key: Ed25519PrivateKey
    frames: Path = field(init=False)
    expect: dict[int, Expect] = field(init=False)

    def make_frames(self, name: str, unreadable_every: int = 0,
                    bundle: Path | None = None) -> tuple[Path, dict[int, Expect]]:
        spec = load_bundle(bundle or self.bundle).manifest.input
        rng = np.random.default_rng(21)
        folder = self.tmp / name
        folder.mkdir()
        n = int(self.rate * self.seconds)
        for pos in range(n):
            path = folder / f"{pos:05d}.png"
            if unreadable_every and pos % unreadable_every == 2:
                kind = pos // unreadable_every % 4  # truncated PNG, zero bytes, text, bare JPEG header
                _ok, png = cv2.imencode(".png", synthetic_image("good", spec, rng))  # type: ignore[arg-type]
                path.write_bytes([png.tobytes()[: png.size // 2], b"", b"not a PNG\n", BARE_JPEG][kind])
                continue
            k = str(rng.choice(["good", "good", "good", "bright", "dark", "faint"]))
            cv2.imwrite(str(path), synthetic_image(k, spec, rng))  # type: ignore[arg-type]
        return folder, score_files(bundle or self.bundle, folder, self.tmp / f"{name}.csv")

    def config(self, name: str, plc_port: int, *, frames: Path | None = None, bundle: Path | None = None,
               log_path: Path | None = None, sink_port: int | None = None) -> tuple[Path, Path]:
        log = log_path or self.tmp / name / "decisions.jsonl"
        (self.tmp / name).mkdir(exist_ok=True)
        doc: dict[str, Any] = {
            "bundle": {"path": str(bundle or self.bundle), "trusted_keys": [public_key_text(self.key)],
                       "allow_unsigned": False},
            "source": {"type": "replay", "paths": [str(frames or self.frames)], "rate_parts_per_s": self.rate},
            "plc": {"transport": {"type": "tcp", "host": "127.0.0.1", "port": plc_port},
                    "deadline_ms": DEADLINE_MS},
            "publisher": ({"enabled": True, "endpoint": f"tcp://127.0.0.1:{sink_port}", "audit_fraction": 1.0}
                          if sink_port else {"enabled": False}),
            "metrics": {"enabled": False},
            "service": {"decision_log_path": str(log), "decision_log_retry_ms": 200},
        }
        path = self.tmp / name / "line.yaml"
        path.write_text(json.dumps(doc, indent=2))  # JSON is YAML
        return path, log


def score_files(bundle: Path, folder: Path, out: Path) -> dict[int, Expect]:
    """Each file's own verdict and score through ``lineguard score`` (part id = position + 1)."""
    subprocess.run([sys.executable, "-m", "lineguard.cli", "score", "--bundle", str(bundle), "--out", str(out),
                    str(folder)], capture_output=True, text=True, timeout=600)
    rows = sorted(csv.DictReader(out.open()), key=lambda r: r["path"])
    return {i + 1: (Expect("unreadable") if r["error"] else Expect(r["verdict"], float(r["anomaly_score"])))
            for i, r in enumerate(rows)}


class Service:
    """``lineguard run`` as its own process; stdout / stderr go to files (a log flood cannot block it)."""

    def __init__(self, cfg: Path, *args: str) -> None:
        self.out_path, self.err_path = cfg.with_suffix(".out"), cfg.with_suffix(".err")
        self.t0 = time.monotonic()
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "lineguard.cli", "run", "--config", str(cfg), *args],
                                         stdout=out, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait(self, timeout_s: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr(self) -> str:
        return self.err_path.read_text()


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def wait_for(cond: Callable[[], bool], timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def summary_frames(out: str) -> int:
    return int(out.split("frames ")[1].split()[0]) if "frames " in out else 0


def row(name: str, line: Line, svc: Service | None, code: int, a: Audit | None, **kw: Any) -> Row:
    err = svc.stderr() if svc else ""
    return Row(scenario=name, rate=line.rate, exit_code=code, audit=a, log_lines=len(err.splitlines()),
               log_records=log_records(err), log_bytes=len(err.encode()), dumps=err.count("transactions:\n"), **kw)


def until_finished(line: Line, name: str, plc: UModbusPlc, *, ack_timeout_s: float = 2.0,
                   frames: Path | None = None, expect: dict[int, Expect] | None = None,
                   during: Callable[[Service, Path], dict[str, Any]] | None = None,
                   connected_target: str = "0", **cfg_kw: Any) -> Row:
    """One run with ``--until-finished``; ``during`` injects the fault and returns timing facts."""
    cfg, log = line.config(name, plc.port, frames=frames, **cfg_kw)
    svc = Service(cfg, "--until-finished", "--ack-timeout-s", str(ack_timeout_s))
    facts = during(svc, log) if during else {}
    code = svc.wait()
    plc.kill()
    exp = expect or line.expect
    a = audit(triggered=list(range(1, len(exp) + 1)), blocks=plc.received(), log=read_log(log), expect=exp,
              fault_windows_utc=facts.pop("windows", []))
    return row(name, line, svc, code, a, connected_target=connected_target, **facts)


# ------------------------------------------------------------------------------------ scenarios

def no_fault(line: Line) -> Row:
    return until_finished(line, "no fault (baseline)", UModbusPlc().listen())


def unreadable_files(line: Line) -> Row:
    frames, expect = line.make_frames("frames-unreadable", unreadable_every=5)
    return until_finished(line, "unreadable files (1 in 5)", UModbusPlc().listen(), frames=frames, expect=expect)


def refused_bundle(line: Line, how: str) -> Row:
    bundle = line.tmp / f"bundle-{how}"
    shutil.copytree(line.bundle, bundle)
    if how == "unsigned":
        (bundle / SIGNATURE).unlink()
    else:
        edit_thresholds_after_signing(bundle)
    plc = UModbusPlc().listen()
    cfg, log = line.config(f"bundle-{how}", plc.port, bundle=bundle)
    svc = Service(cfg, "--until-finished")
    code = svc.wait()
    plc.kill()
    a = audit(triggered=[], blocks=plc.received(), log=read_log(log), expect={}, fault_windows_utc=[])
    refused = "before any part" if plc.t_first_write is None else "PLC was written to"
    return row(f"{how} bundle, allow_unsigned false", line, svc, code, a, note=refused)


def decision_log_disk_full(line: Line) -> Row:
    name = "decision log on a full disk"
    if os.geteuid() != 0:
        return row(name, line, None, 0, None, skipped="needs root to mount a small tmpfs")
    disk = line.tmp / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=524288", "lineguard-bench", str(disk)], check=True)
    try:
        ballast = disk / "ballast"
        with contextlib.suppress(OSError), ballast.open("wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)

        def fault(svc: Service, log: Path) -> dict[str, Any]:
            time.sleep(line.seconds * 0.4 + 2.0)  # start-up, then 40 % of the parts while full
            ballast.unlink()
            t_space = time.monotonic()
            ok = wait_for(lambda: log.exists() and log.stat().st_size > 0, 30)
            return {"recovery_s": time.monotonic() - t_space if ok else None, "recovery_what": "log written"}

        return until_finished(line, name, UModbusPlc().listen(), log_path=disk / "decisions.jsonl", during=fault)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def plc_never_acks(line: Line) -> Row:
    return until_finished(line, "PLC never acknowledges", UModbusPlc(ack=False).listen(), ack_timeout_s=1.0,
                          connected_target="n/a")


def plc_late_replies(line: Line) -> Row:
    """Every 10th result block is stored by the PLC but answered 0.3 s late, past the link's
    100 ms timeout: the link reconnects and must read result_seq back, neither counting the part
    missed nor writing it again."""
    plc = UModbusPlc(stall_every=10, stall_s=0.3).listen()
    r = until_finished(line, "PLC answers every 10th result 0.3 s late", plc)
    r.note = f"{plc.stalled} replies held back past the timeout"
    return r


def plc_outage(line: Line, *, absent_first_s: float = 0.0, killed_s: float = 0.0) -> Row:
    plc = UModbusPlc()
    slack = DEADLINE_MS / 1000 + 0.5

    def fault(svc: Service, log: Path) -> dict[str, Any]:
        if absent_first_s:
            wait_for(lambda: log.exists() and log.stat().st_size > 0, 60)  # parts flow, none reach a PLC
            t_down_utc = time.time() - 60
            time.sleep(absent_first_s)
        else:
            plc.listen()
            wait_for(lambda: len(plc.received()) >= 10, 60)
            plc.kill()
            t_down_utc = time.time() - slack
            time.sleep(killed_s)
        plc.listen()
        t_listen, t_listen_utc = time.monotonic(), time.time()
        wait_for(lambda: plc.t_first_write is not None, 30)
        back = plc.t_first_write - t_listen if plc.t_first_write else None
        return {"recovery_s": back, "recovery_what": "link back", "recovery_target_s": 2.5,
                "windows": [(t_down_utc, t_listen_utc + (back or 30) + slack)]}

    name = f"PLC absent for the first {absent_first_s:g} s" if absent_first_s else f"PLC killed for {killed_s:g} s"
    return until_finished(line, name, plc, during=fault)


def sigterm_plc_down(line: Line) -> Row:
    plc = UModbusPlc().listen()
    cfg, log = line.config("sigterm", plc.port)
    svc = Service(cfg)
    wait_for(lambda: len(plc.received()) >= 10, 60)
    time.sleep(line.seconds * 0.2)
    plc.kill()
    t_down_utc = time.time() - DEADLINE_MS / 1000 - 0.5
    time.sleep(DEADLINE_MS / 1000 * 0.6)  # within the deadline: results still buffered at SIGTERM
    svc.proc.send_signal(signal.SIGTERM)
    t_term = time.monotonic()
    code = svc.wait()
    stop_s = time.monotonic() - t_term
    n = summary_frames(svc.stdout())
    a = audit(triggered=list(range(1, n + 1)), blocks=plc.received(), log=read_log(log), expect=line.expect,
              fault_windows_utc=[(t_down_utc, time.time() + 60)])
    stopped = sum("PLC link stopped with" in ln for ln in svc.stderr().splitlines())
    return row("SIGTERM while the PLC is down", line, svc, code, a, recovery_s=stop_s,
               recovery_what="exit after SIGTERM", note=f"'PLC link stopped with' lines: {stopped}")


def sink_metrics(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            key = s.name + (f":{s.labels['reason']}" if "reason" in s.labels else "")
            out[key] = out.get(key, 0.0) + s.value
    return out


class Sink:
    def __init__(self, store: Path, port: int, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lineguard.cli", "sink", "--bind", f"tcp://127.0.0.1:{port}", "--store",
             str(store), "--metrics-port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()
        self.metrics_port = int(self.proc.stdout.readline().split()[-1])
        self.t_up = time.monotonic()

    def stored(self) -> float:
        return sink_metrics(self.metrics_port).get("lineguard_sink_stored_total", 0.0)

    def stop(self) -> tuple[dict[str, float], str]:
        m = sink_metrics(self.metrics_port)
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return m, err


def sink_killed(line: Line, down_s: float = 2.0) -> Row:
    port, store = free_port(), line.tmp / "sink-killed-store"
    sinks = [Sink(store, port)]

    def fault(svc: Service, log: Path) -> dict[str, Any]:
        wait_for(lambda: sinks[0].stored() >= 3, 60)
        sinks[0].proc.kill()
        sinks[0].proc.wait()
        time.sleep(down_s)
        sinks.append(Sink(store, port))
        ok = wait_for(lambda: sinks[1].stored() >= 1, 30)
        return {"recovery_s": time.monotonic() - sinks[1].t_up if ok else None,
                "recovery_what": "sink storing again"}

    r = until_finished(line, f"sink killed -9 for {down_s:g} s", UModbusPlc().listen(), sink_port=port,
                       during=fault)
    m, _ = sinks[1].stop()
    db = sqlite3.connect(f"file:{store / 'index.sqlite3'}?mode=ro", uri=True)
    try:
        kept = int(db.execute("SELECT count(*) FROM frames").fetchone()[0])
    finally:
        db.close()
    r.note = (f"sink stored {int(m.get('lineguard_sink_stored_total', 0))} after the restart; the store holds "
              f"{kept} of the {len(line.expect)} frames sent (the others were sent while it was down, beyond what "
              "ZeroMQ queues: PUSH has no reply)")
    return r


def sink_disk_full(line: Line) -> Row:
    name = "sink store on a full small disk"
    if os.geteuid() != 0:
        return row(name, line, None, 0, None, skipped="needs root to mount a small tmpfs")
    disk = line.tmp / "sink-disk"
    disk.mkdir()
    # 8 MB (1 MB of it the store's headroom file) for 256x256 parts of ~190 KB at the sink (PNG +
    # anomaly map): room for ~35, far fewer than a run sends, so the store must evict to keep storing
    big = line.tmp.parent / "bundle-256"
    if not big.exists():
        make_bundle(big, bundle_id="bench-faults-256", recipe=1, key=line.key, input_size=256)
    frames, expect = line.make_frames("frames-256", bundle=big)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8388608", "lineguard-bench", str(disk)], check=True)
    try:
        port = free_port()
        sink = Sink(disk / "store", port, "--min-free-mb", "0.5")
        r = until_finished(line, name, UModbusPlc().listen(), sink_port=port, frames=frames, expect=expect,
                           bundle=big)
        time.sleep(1.0)  # the last frames in flight
        m, err = sink.stop()
        stored, evicted = int(m.get("lineguard_sink_stored_total", 0)), int(m.get("lineguard_sink_evicted_total", 0))
        refused = {k.split(":")[1]: int(v) for k, v in m.items()
                   if k.startswith("lineguard_sink_rejected_total:") and v}
        r.note = (f"sink stored {stored}, evicted {evicted}, refused {refused or 0}; "
                  f"sink log {len(err.splitlines())} lines")
        r.sink_refused = sum(refused.values())
        return r
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


SCENARIOS: list[tuple[str, Callable[[Line], Row]]] = [
    ("baseline", no_fault),
    ("unreadable", unreadable_files),
    ("unsigned", lambda ln: refused_bundle(ln, "unsigned")),
    ("edited", lambda ln: refused_bundle(ln, "edited")),
    ("dlog-full", decision_log_disk_full),
    ("never-ack", plc_never_acks),
    ("late-reply", plc_late_replies),
    ("plc-absent", lambda ln: plc_outage(ln, absent_first_s=2.0)),
    ("plc-killed", lambda ln: plc_outage(ln, killed_s=2.0)),
    ("sigterm", sigterm_plc_down),
    ("sink-killed", sink_killed),
    ("sink-full", sink_disk_full),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", type=float, nargs="+", default=[10.0, 50.0])
    p.add_argument("--seconds", type=float, default=8.0, help="parts per run = rate x seconds")
    p.add_argument("--only", nargs="*", default=None, help=f"scenario keys: {[k for k, _ in SCENARIOS]}")
    p.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/reliability.md")
    p.add_argument("--keep", type=Path, default=None, help="work in this (new) folder and keep it: configs, logs")
    args = p.parse_args(argv)
    t_start, load_before = time.monotonic(), os.getloadavg()
    rows: list[Row] = []
    if args.keep:
        args.keep.mkdir(parents=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep
          else tempfile.TemporaryDirectory(prefix="bench-faults-")) as tmp:
        key = Ed25519PrivateKey.generate()
        bundle = make_bundle(Path(tmp) / "bundle", bundle_id="bench-faults", recipe=1, key=key)
        for rate in args.rates:
            line = Line(Path(tmp) / f"r{rate:g}", rate, args.seconds, bundle, key)
            line.tmp.mkdir()
            line.frames, line.expect = line.make_frames("frames")
            for key_name, scenario in SCENARIOS:
                if args.only and key_name not in args.only:
                    continue
                t0 = time.monotonic()
                r = scenario(line)
                r.wall_s = time.monotonic() - t0
                rows.append(r)
                print(r.one_line(), flush=True)
    facts = {"wall_s": time.monotonic() - t_start, "load_before": load_before, "load_after": os.getloadavg(),
             "host": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
             "seconds": args.seconds, "deadline_ms": DEADLINE_MS, "argv": " ".join(sys.argv[1:])}
    text = write_doc(args.out, rows, facts)
    print(text)
    base = {r.rate: r.log_records for r in rows if r.scenario.startswith("no fault")}
    return 0 if all(r.passed(None if r.scenario.startswith("no fault") else base.get(r.rate)) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
