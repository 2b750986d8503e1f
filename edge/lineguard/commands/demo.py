"""``lineguard demo``: the whole product on one machine, with nothing but this repository.

1. a dataset: ``--data DIR`` (folder contract) or a generated one (textured parts with scratches,
   pits, cracks and stains) under the work dir;
2. a bundle trained and calibrated by our own training code (``lineguard train`` in a child
   process, so this process stays torch-free like the edge box) and reused on the next run;
3. the real service: replay source at line rate -> ONNX Runtime -> decision -> PLC link over
   Modbus TCP to the PLC simulator on loopback, uncertain frames over ZeroMQ to the collection
   sink on loopback, Prometheus metrics on HTTP;
4. a live summary, then proof: the simulated PLC holds exactly one verdict for every part.
"""

from __future__ import annotations

import argparse
import logging
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from lineguard.bundle import load_bundle
from lineguard.config import BundleSection, LineConfig, MetricsSection, ServiceSection
from lineguard.errors import BundleError, LineGuardError
from lineguard.imageio import list_images
from lineguard.plc.config import PlcConfig, TcpTransportConfig
from lineguard.publisher import PublisherConfig
from lineguard.service import InspectionService
from lineguard.sources import ReplaySourceConfig

HELP = "run the demo line: bundle, replayed camera, PLC simulator, sink, metrics"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="dataset folder (good/, <defect>/...); default: generated")
    p.add_argument("--workdir", type=Path, default=Path("var/demo"), help="where data, bundle and sink live")
    p.add_argument("--parts", type=int, default=120, help="parts to inspect (replayed from the test images)")
    p.add_argument("--rate", type=float, default=15.0, help="line rate in parts per second")
    p.add_argument("--metrics-port", type=int, default=9108, help="Prometheus port (0 = any free port)")
    p.add_argument("--deadline-ms", type=float, default=500.0, help="trigger -> verdict deadline")
    p.add_argument("--retrain", action="store_true", help="train a new bundle even if one exists")
    p.add_argument("--input-size", type=int, default=None,
                   help="model input size for training; given, it turns the automatic per-line configuration off")
    p.add_argument("--auto-time-budget-s", type=float, default=240.0,
                   help="time for the automatic configuration's search and training (default 240 s, so the first "
                        "run stays short; lineguard train's own default is 600 s)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dataset(args: argparse.Namespace) -> Path:
    if args.data is not None:
        return Path(args.data)
    root: Path = args.workdir / "data"
    if (root / "train").is_dir():
        return root
    from lineguard_models.synth import SynthConfig, write_dataset  # training side: generated data

    print(f"[demo] generating a synthetic dataset in {root}", flush=True)
    tmp = root.with_name("data.tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    cfg = SynthConfig(width_px=320, height_px=240, n_good=60, n_test_good=40, n_defect_per_class=20, split=True)
    write_dataset(tmp, cfg)
    tmp.rename(root)
    return root


def _bundle(args: argparse.Namespace, data: Path) -> Path:
    out: Path = args.workdir / "bundle"
    if out.exists() and not args.retrain:
        try:
            load_bundle(out)
            print(f"[demo] reusing bundle {out} (use --retrain to train again)", flush=True)
            return out
        except BundleError as exc:
            print(f"[demo] existing bundle unusable ({exc}); training again", flush=True)
    cmd = [sys.executable, "-m", "lineguard.cli", "train", "--data", str(data), "--out", str(out),
           "--product", "demo-part", "--recipe", "1", "--overwrite"]
    if args.input_size is not None:  # a recipe by hand; otherwise train chooses one for the demo line
        cmd += ["--input-size", str(args.input_size)]
    if args.auto_time_budget_s is not None:
        cmd += ["--auto-time-budget-s", str(args.auto_time_budget_s)]
    print(f"[demo] training: {' '.join(cmd[2:])}", flush=True)
    t0 = time.monotonic()
    if subprocess.call(cmd) != 0:
        raise LineGuardError("training the demo bundle failed (see the messages above)")
    print(f"[demo] bundle trained in {time.monotonic() - t0:.0f} s", flush=True)
    return out


def _stream(data: Path, parts: int) -> list[str]:
    """Test images (good and defects), shuffled like a real line, repeated up to ``parts``."""
    test = data / "test" if (data / "test").is_dir() else data
    files = [str(p) for p in list_images(test) if "masks" not in p.parts]
    if not files:
        raise LineGuardError(f"no images to replay under {test}")
    random.Random(0).shuffle(files)
    return [files[i % len(files)] for i in range(parts)]


def _summary(service: InspectionService, sink_stored: int, plc_results: int) -> str:
    s = service.stats
    lat = sorted(s.e2e_ms[-500:])
    p50 = lat[len(lat) // 2] if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
    verdicts = " ".join(f"{k}={v}" for k, v in sorted(s.by_verdict.items()))
    return (f"frames {s.frames:4d}  decided {s.decided:4d}  [{verdicts}]  fail-safe {s.failsafe}  "
            f"e2e p50 {p50:.1f} ms p99 {p99:.1f} ms  PLC results {plc_results}  sink stored {sink_stored}")


def run(args: argparse.Namespace) -> int:
    from lineguard.plc.sim import PlcSimulator
    from lineguard.sink.config import SinkConfig
    from lineguard.sink.server import SinkServer

    args.workdir.mkdir(parents=True, exist_ok=True)
    data = _dataset(args)
    bundle_dir = _bundle(args, data)
    _calibration_outcome(bundle_dir)
    stream = _stream(data, args.parts)

    plc_sim = PlcSimulator().start()
    sink = SinkServer.from_config(SinkConfig(bind=f"tcp://127.0.0.1:{_free_port()}", store_dir=args.workdir / "sink"))
    sink_thread = threading.Thread(target=sink.serve_forever, name="sink", daemon=True)
    sink_thread.start()
    cfg = LineConfig(
        bundle=BundleSection(path=bundle_dir),
        source=ReplaySourceConfig(type="replay", paths=tuple(stream), rate_parts_per_s=args.rate, recursive=False),
        plc=PlcConfig(transport=TcpTransportConfig(host=plc_sim.host, port=plc_sim.port), deadline_ms=args.deadline_ms),
        publisher=PublisherConfig(endpoint=sink.endpoint),
        metrics=MetricsSection(port=args.metrics_port),
        service=ServiceSection(decision_log_path=args.workdir / "decisions.jsonl"),
    )
    service = InspectionService.from_config(cfg)
    try:
        service.start()
        port = service.metrics_server.port if service.metrics_server else 0
        print(f"[demo] line running: PLC simulator modbus://{plc_sim.host}:{plc_sim.port}, sink {sink.endpoint}, "
              f"metrics http://127.0.0.1:{port}/metrics", flush=True)
        last = 0.0
        while not service.finished():
            time.sleep(0.1)
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                service.supervise_once()
                print("[demo] " + _summary(service, sink.stats.stored, len(plc_sim.results())), flush=True)
    finally:
        service.stop()
        sink.stop()
        sink_thread.join(timeout=5)
        plc_sim.stop()
    return _report(service, plc_sim, sink.stats.stored, stream)


def _calibration_outcome(bundle_dir: Path) -> None:
    """What calibration promised for this line: thresholds, automated share, the recipe chosen."""
    m = load_bundle(bundle_dir).manifest
    cal = m.calibration
    print(f"[demo] bundle {m.bundle_id}: accept < {m.thresholds.lower:.4g}, reject >= {m.thresholds.upper:.4g}; "
          f"automated share on its calibration images {100 * float(cal.get('automated_share', 0.0)):.1f} %",
          flush=True)
    auto = cal.get("auto")
    if isinstance(auto, dict):
        print(f"[demo] recipe chosen for this line: {auto.get('chosen')} ({auto.get('reason')})", flush=True)


def _truth_table(by_part: dict[int, set[tuple[int, int]]], stream: list[str], failsafe: int) -> None:
    """What the PLC received per true label (the image's folder): the line engineer's view."""
    from lineguard.contracts import Verdict

    table: dict[str, dict[str, int]] = {}
    for part, entries in by_part.items():
        if len(entries) != 1 or not 1 <= part <= len(stream):
            continue
        label = Path(stream[part - 1]).parent.name
        verdict = Verdict(next(iter(entries))[1]).label
        row = table.setdefault(label, {})
        row[verdict] = row.get(verdict, 0) + 1
    print("[demo] verdicts at the PLC by true label:")
    for label in sorted(table, key=lambda x: (x != "good", x)):
        cells = "  ".join(f"{v}={n}" for v, n in sorted(table[label].items()))
        print(f"[demo]   {label:<12} {cells}")
    total = sum(sum(row.values()) for row in table.values())
    # a fail-safe reaches the PLC as its fail-safe code (reject by default): not a decision of the model
    decided = sum(n for row in table.values() for v, n in row.items() if v in ("accept", "reject")) - failsafe
    escapes = sum(n for label, row in table.items() if label != "good" for v, n in row.items() if v == "accept")
    rejected_good = table.get("good", {}).get("reject", 0)
    print(f"[demo] decided without a person: {decided}/{total} ({100 * decided / max(total, 1):.1f} %); "
          f"escapes (defects accepted): {escapes}; good parts rejected: {rejected_good} (fail-safes included: "
          f"{failsafe} parts in all, e.g. a missed deadline, go to the PLC as its fail-safe verdict)")


def _report(service: InspectionService, plc_sim: object, sink_stored: int, stream: list[str]) -> int:
    from lineguard.plc.sim import PlcSimulator

    assert isinstance(plc_sim, PlcSimulator)
    parts = len(stream)
    by_part = plc_sim.verdicts_by_part()
    results = plc_sim.results()
    print("[demo] " + _summary(service, sink_stored, len(results)))
    _truth_table(by_part, stream, service.stats.failsafe)
    duplicates = [p for p, v in by_part.items() if len(v) != 1]
    missing = parts - len(by_part)
    ok = not duplicates and missing == 0
    print(f"[demo] PLC check: {len(by_part)} parts with a verdict, {missing} without, "
          f"{len(duplicates)} with more than one -> {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1
