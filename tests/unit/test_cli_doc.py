"""The CLI reference is generated from the parsers; a stale docs/cli.md fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cli_reference_doc_is_current() -> None:
    generated = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_doc.py")], capture_output=True,
                               text=True, check=True).stdout
    assert (ROOT / "docs" / "cli.md").read_text() == generated, "run scripts/gen_cli_doc.py > docs/cli.md"


def test_every_command_has_help_and_a_documented_entry() -> None:
    from lineguard.cli import COMMANDS, SUMMARIES

    assert set(COMMANDS) == set(SUMMARIES)
    text = (ROOT / "docs" / "cli.md").read_text()
    for name in COMMANDS:
        assert f"## `lineguard {name}`" in text


def test_global_options_before_the_command() -> None:
    res = subprocess.run([sys.executable, "-m", "lineguard.cli", "--log-level", "WARNING", "check-config", "--help"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "lineguard check-config" in res.stdout, res.stderr
