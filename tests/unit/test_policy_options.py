"""Calibration policy options: the same on train, calibrate and retrain; image options only where images are read."""

from __future__ import annotations

import argparse

import numpy as np

from lineguard_models.calibration import CalibrationPolicy, calibrate
from lineguard_models.commands import calibrate as calibrate_cmd
from lineguard_models.commands import retrain as retrain_cmd
from lineguard_models.commands import train as train_cmd
from lineguard_models.report import render_markdown
from lineguard_models.report_html import render_html

POLICY = {"escape_target", "false_reject_budget", "band", "escape_tail", "reject_tail"}
DATA = {"max_defects_per_class", "skip_unreadable"}


def _dests(module: object) -> set[str]:
    p = argparse.ArgumentParser()
    module.add_arguments(p)  # type: ignore[attr-defined]
    return {a.dest for a in p._actions}


def test_retrain_takes_the_policy_options_and_no_image_options_it_would_ignore() -> None:
    assert _dests(train_cmd) >= POLICY | DATA and _dests(calibrate_cmd) >= POLICY | DATA
    assert _dests(retrain_cmd) >= POLICY and not DATA & _dests(retrain_cmd)
    args = argparse.ArgumentParser()
    retrain_cmd.add_arguments(args)
    parsed = args.parse_args(["--datastore", "ds", "--reject-tail", "observed", "--band", "recheck"])
    assert train_cmd.policy_updates(parsed) == {"reject_tail": "observed", "band": "recheck"}


def test_both_reports_name_the_tail_rules() -> None:
    good, defects = np.linspace(0.0, 1.0, 60), {"dent": np.linspace(2.0, 3.0, 20)}
    res = calibrate(good, defects, CalibrationPolicy(reject_tail="observed"))
    md = render_markdown(res, title="t", plots=[], context={})
    html = render_html(res, good, defects, title="t", context={})
    assert "escapes `model`, false rejects `observed`" in md
    assert "escapes <code>model</code>, false rejects <code>observed</code>" in html
