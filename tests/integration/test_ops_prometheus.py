"""A running LineGuard line as Prometheus and Grafana see it.

One real line per module: `lineguard run` (child process: replay source, synthetic bundle, PLC link
to the PLC simulator on loopback, publisher to the sink) and `lineguard sink` (child process). Then:

* every metric the dashboard and the alert rules query is one these processes really export
  (scraped over HTTP);
* a real Prometheus server (the distribution's binary) scrapes both and answers
  lineguard_frames_total over its HTTP API. Skips with the reason when prometheus is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lineguard.ops.promfiles import dashboard_exprs, referenced_metrics, rule_exprs
from lineguard.ops.testing import LineProcess, write_test_line
from lineguard.plc.sim import PlcSimulator, free_port

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "deploy" / "monitoring"
# Metrics Prometheus or node_exporter provide, not LineGuard.
EXTERNAL = {"up", "ALERTS", "node_filesystem_avail_bytes", "node_filesystem_size_bytes"}


@dataclass
class Line:
    edge_port: int
    sink_port: int
    edge: LineProcess
    sink: LineProcess


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    tmp = tmp_path_factory.mktemp("line")
    sim = PlcSimulator().start()
    sink_port, sink_zmq, edge_port = free_port(), free_port(), free_port()
    sink = LineProcess.start(["sink", "--bind", f"tcp://127.0.0.1:{sink_zmq}", "--store", str(tmp / "store"),
                              "--no-fsync", "--metrics-port", str(sink_port)], log_path=tmp / "sink.log")
    cfg = write_test_line(tmp, metrics_port=edge_port, plc=(sim.host, sim.port),
                          sink_endpoint=f"tcp://127.0.0.1:{sink_zmq}")
    edge = LineProcess.start(["run", "--config", str(cfg)], log_path=tmp / "run.log")
    try:
        sink.wait_http(f"http://127.0.0.1:{sink_port}/metrics", 30)
        edge.wait_http(f"http://127.0.0.1:{edge_port}/metrics", 60)
        yield Line(edge_port=edge_port, sink_port=sink_port, edge=edge, sink=sink)
    finally:
        edge.terminate()
        sink.terminate()
        sim.stop()


def _scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}


def _wait_for_verdicts(line: Line, timeout_s: float = 30.0) -> dict[str, float]:
    """Wait until verdicts reached the PLC and the supervisor exported the camera counters (their
    labelled series appear at its second tick, ~1 s after start, not with the endpoint)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = _scrape(line.edge_port)
        written = samples.get("lineguard_plc_results_written_total", 0)
        ready = written > 0 and "lineguard_camera_reconnects_total" in samples
        if ready or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_every_queried_metric_is_exported(line: Line) -> None:
    _wait_for_verdicts(line)
    exported = set(_scrape(line.edge_port)) | set(_scrape(line.sink_port))
    queried: dict[str, set[str]] = {}
    sources = {**rule_exprs(MON / "lineguard.rules.yml"),
               **dashboard_exprs(MON / "grafana/dashboards/lineguard.json")}
    for where, expr in sources.items():
        for name in referenced_metrics(expr):
            queried.setdefault(name, set()).add(where)
    assert "lineguard_plc_connected" in queried and "lineguard_sink_stored_total" in queried
    assert "lineguard_drift_state" in queried
    missing = {n: sorted(w) for n, w in queried.items() if n not in exported and n not in EXTERNAL}
    assert not missing, f"queried but not exported: {missing}"


def test_real_prometheus_scrapes_the_line(line: Line, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (scripts/ci-system-deps.sh installs it)")
    prom_port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(MON / "lineguard.rules.yml")],
        "scrape_configs": [
            {"job_name": "lineguard", "static_configs": [{"targets": [f"127.0.0.1:{line.edge_port}"]}]},
            {"job_name": "lineguard-sink", "static_configs": [{"targets": [f"127.0.0.1:{line.sink_port}"]}]},
        ],
    }))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        frames = _query_until(prom_port, "lineguard_frames_total", lambda v: v > 0, proc, tmp_path)
        assert frames > 0
        up = _query_until(prom_port, 'sum(up{job=~"lineguard|lineguard-sink"})', lambda v: v == 2, proc, tmp_path)
        assert up == 2
        # the recording rules evaluate against real data (an empty result would mean a wrong metric name)
        rate = _query_until(prom_port, "sum(lineguard:verdicts:rate5m)", lambda v: v > 0, proc, tmp_path)
        assert rate > 0
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def _query_until(port: int, query: str, ok: object, proc: subprocess.Popen[bytes], tmp: Path,
                 timeout_s: float = 30.0) -> float:
    assert callable(ok)
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited: {(tmp / 'prometheus.log').read_text()[-3000:]}")
        try:
            answer = json.loads(urllib.request.urlopen(url, timeout=2).read())
            last = json.dumps(answer)[:500]
            result = answer["data"]["result"]
            if result and ok(float(result[0]["value"][1])):
                return float(result[0]["value"][1])
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"{query}: no satisfying answer in {timeout_s} s; last: {last}")
