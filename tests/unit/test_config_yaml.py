"""Strict config loading: unknown keys, bad values and YAML syntax errors name their line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lineguard.config import load_config
from lineguard.yamlcfg import ConfigProblem

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
bundle:
  path: /tmp/bundle
source:
  type: replay
  paths: [/tmp/frames]
plc:
  transport:
    type: tcp
    host: 127.0.0.1
    port: 5020
  deadline_ms: 150
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "line.yaml"
    p.write_text(text)
    return p


def test_valid_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.plc is not None and cfg.plc.deadline_ms == 150
    assert cfg.source.type == "replay"
    assert cfg.metrics.port == 9108 and cfg.service.queue_size_frames == 4


def test_unknown_key_and_bad_value_report_their_lines(tmp_path: Path) -> None:
    text = GOOD.replace("  deadline_ms: 150", "  deadline_ms: -5\n  dedline_ms: 10")
    with pytest.raises(ConfigProblem) as err:
        load_config(_write(tmp_path, text))
    lines = {loc: line for line, loc, _ in err.value.problems}
    assert lines["plc.deadline_ms"] == 11
    assert lines["plc.dedline_ms"] == 12
    assert ":11: plc.deadline_ms" in str(err.value)


def test_wrong_source_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigProblem) as err:
        load_config(_write(tmp_path, GOOD.replace("type: replay", "type: webcam")))
    assert any(loc.startswith("source") and line == 4 for line, loc, _ in err.value.problems)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigProblem) as err:
        load_config(_write(tmp_path, GOOD.replace("    port: 5020", "    port: [5020")))
    assert err.value.problems[0][0] is not None and err.value.problems[0][0] >= 10


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigProblem):
        load_config(_write(tmp_path, GOOD + "bundle:\n  path: /other\n"))


def test_example_config_in_deploy_is_valid() -> None:
    cfg = load_config(ROOT / "deploy" / "line.example.yaml")
    assert cfg.source.type == "genicam"


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "lineguard.cli", "check-config", "--schema-only",
                         str(_write(tmp_path, GOOD))],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("port: 5020", "port: 99999"))
    res = subprocess.run([sys.executable, "-m", "lineguard.cli", "check-config", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert "bad.yaml:10: plc.transport.tcp.port" in res.stderr or "bad.yaml:10: plc.transport" in res.stderr


def test_config_reference_doc_is_current() -> None:
    generated = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_doc.py")], capture_output=True,
                               text=True, check=True).stdout
    assert (ROOT / "docs" / "config.md").read_text() == generated, "run scripts/gen_config_doc.py > docs/config.md"
