"""scripts/quality_bounds.py: observed suite rates against the predicted bounds, and whether the test refutes them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import quality_bounds as qb


def _run(folder: Path, name: str, escapes: int, false_rejects: int, esc_bound: float = 0.139,
         fr_bound: float = 0.049) -> None:
    labels = ["good"] * 100 + ["pit"] * 100
    (folder / f"{name}.json").write_text(json.dumps({
        "test_labels": labels, "false_reject": false_rejects / 100, "escape_by_class": {"pit": escapes / 100},
        "predicted": {"false_reject_upper": fr_bound, "escape_upper": {"pit": esc_bound}}}))


def test_an_excess_within_the_tests_noise_is_not_a_contradiction(tmp_path: Path) -> None:
    _run(tmp_path, "inside", escapes=5, false_rejects=1)
    _run(tmp_path, "noisy", escapes=17, false_rejects=0)  # 17/100: lower 95 % limit 11.1 % < 13.9 %
    _run(tmp_path, "wrong", escapes=30, false_rejects=0)  # 30/100: lower limit 22.6 % > 13.9 %
    by = {(r[0], r[1]): r for r in qb.rows(tmp_path)}
    assert by[("inside", "escapes pit")][5:] == (True, True)
    assert by[("noisy", "escapes pit")][2:] == (17, 100, 0.139, False, True)
    assert by[("wrong", "escapes pit")][5:] == (False, False)
    assert by[("wrong", "false rejects")][5:] == (True, True)


def test_runs_without_predicted_bounds_are_left_out(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text(json.dumps({"test_labels": ["good"], "false_reject": 0.0}))
    assert qb.rows(tmp_path) == []
