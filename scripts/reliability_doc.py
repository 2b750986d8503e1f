"""One row of ``scripts/bench_faults.py`` (a fault at one rate), its PASS/FAIL against the issue 21
targets, and docs/benchmarks/reliability.md written from the rows. Pure formatting, no I/O but the
final write."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faults_lib import Audit

LINK_BACK_S = 2.5
EXTRA_LOG_LINES = 20  # "a fault episode writes a handful of lines, not one per part"

# issue 21's table, row by row: the integration test that covers it (loopback peers, exact counts at
# the PLC and in the decision log). Kept here so a regenerated doc keeps the list.
PI, SB, PF = ("tests/integration/test_part_identity_replay.py", "tests/integration/test_signed_bundle_start.py",
              "tests/integration/test_plc_fault_line.py")
TESTS: list[tuple[str, str]] = [
    ("replay stream with unreadable files",
     f"{PI}::test_every_file_is_one_part_unreadable_ones_fail_safe_under_their_own_ids, "
     "::test_replay_command_summary_counts_every_triggered_part, "
     "::test_part_ids_from_plc_triggers_follow_the_files_including_the_unreadable (PLC simulator: exactly 30 "
     "results, fail-safes at the 6 unreadable ids, each judged part its own verdict; decision log: each id once); "
     "GenICam incomplete buffers and block-id gaps: tests/integration/test_part_identity_genicam.py"),
    ("unsigned / edited bundle, allow_unsigned false",
     f"{SB}::test_run_refuses_the_bundle_before_any_part_is_judged (unsigned, edited after signing, unknown key; "
     "bundle.* and changeover.* policy: exit 1, 0 results and 0 heartbeats at the PLC simulator, 0 decision-log "
     "lines), ::test_check_bundle_with_config_names_the_signer_and_refuses_an_edit, "
     "::test_check_config_refuses_a_missing_or_changed_bundle; swap and rollback: tests/integration/"
     "test_changeover_swap.py::test_unsigned_drop_is_refused_and_not_installed, "
     "::test_preloaded_bundle_edited_on_disk_is_refused_at_the_swap, "
     "::test_rollback_refuses_a_previous_bundle_edited_on_disk"),
    ("decision log on a full disk",
     "tests/integration/test_fault_decision_log_disk_full.py"
     "::test_full_disk_every_part_reaches_the_plc_one_warning_lines_written_when_space_returns (tmpfs; 40 parts "
     "once each at the PLC simulator, 40 lines once each when space returns, 1 WARNING), "
     "::test_lineguard_run_with_the_decision_log_on_dev_full_stops_with_exit_0_and_its_summary (SIGTERM: exit 0, "
     "summary; parts at the PLC = the summary's written + deadline fail-safes, each once; the summary's outcomes "
     "add up to its decisions; one line: every decision unwritten)"),
    ("PLC that never acknowledges",
     f"{PF}::test_never_acknowledging_plc_until_finished (uModbus: part 1 once at the PLC; log: unacknowledged 1, "
     "unsent 7, overflow 12; exit 3; one dump)"),
    ("PLC answers a result write too late (reply lost)",
     "tests/integration/test_plc_faults.py::test_result_whose_answer_was_lost_is_read_back (deadline 50 ms and "
     "2 s, both handshakes: the block reaches the simulator once, the log says written), "
     "::test_replies_lost_on_the_network_are_read_back (a TCP relay swallows every 3rd reply), "
     "::test_repeated_losses_log_a_few_lines_not_two_per_loss"),
    ("PLC absent for the first N s / killed for M s",
     f"{PF}::test_plc_absent_for_the_first_second, ::test_plc_killed_for_a_second_and_a_half (uModbus: every "
     "written part once, no missed_deadline part written late, link back <= 2.5 s; log: each part once)"),
    ("SIGTERM while the PLC is down",
     f"{PF}::test_sigterm_while_the_plc_is_down (written parts = PLC parts minus buffered; each part once in the "
     "log; one 'PLC link stopped with N result(s)' line; exit 0)"),
    ("sink store on a full small disk",
     "tests/integration/test_sink_disk_full.py (the sink alone: eviction on a tmpfs smaller than the quota, "
     "store_error on inode exhaustion, recovery); tests/integration/test_faults_sink_disk_full.py"
     "::test_edge_line_with_its_sink_on_a_full_small_disk (added: the whole line; each part once at the PLC "
     "simulator and in the decision log, every frame sent stored by eviction, 0 refused)"),
    ("check-config",
     f"{SB}::test_check_config_* (missing bundle / replay path, unwritable decision-log directory, bad endpoint "
     "and port collision, 640x480 bundle on a 320x240 camera); tests/unit/test_preflight.py. No part runs, so no "
     "PLC / decision-log counts apply."),
]


OBSERVATIONS = [
    "- *No verdict (connected)* is n/a for the PLC that never acknowledges: it is connected the whole run but "
    "acknowledges nothing: the link writes one result and waits (when the link is lost and re-made in between, "
    "most likely a transaction timeout on a loaded box, it writes the next one and `unacknowledged` counts 2); "
    "every other part is in the decision log as "
    "`unsent`, `overflow` or `missed_deadline`, "
    "and `run --until-finished` ends with exit 3 after `--ack-timeout-s`.",
    "- The PLC link's default `result_buffer_size` (8) is smaller than rate x deadline at 50 parts/s (25 results "
    "at 500 ms, 10 at the default 200 ms): during an outage results overflow within ~0.2 s instead of waiting for "
    "their deadline (`overflow` next to `missed_deadline` in the 50/s rows). Nothing is written late or lost from "
    "the decision log; a line that wants a short outage bridged sets `result_buffer_size` >= rate x deadline.",
    "- SIGTERM while the PLC is down: with the 8-result buffer, results decided during the outage overflow or pass "
    "their deadline before the stop, so no 'PLC link stopped with N result(s)' line is due here (that path is "
    "asserted in test_plc_fault_line.py::test_sigterm_while_the_plc_is_down with a 64-result buffer).",
    "- PLC answers every 10th result late: the PLC stores the block, its reply comes 0.3 s later, past the "
    "link's 100 ms timeout, so the link reconnects and reads `result_seq` back before writing anything else: "
    "every part is `written` once, none is written again or counted `missed_deadline` (before stop 19 such a "
    "part was written again, or logged `missed_deadline` while the PLC held it when its deadline passed during "
    "the reconnect). The lost / re-established / read-back lines are throttled per fault episode (3 of each, "
    "then one '... and N more' line).",
    "- pymodbus logs two records of its own per outage (`Connection ... failed`, `Repeating....`); the PLC link "
    "logs one flight-recorder dump per fault episode (the *dumps* column; ~65 lines, one record).",
    "- Unreadable files: the first 5 are logged one by one, then one line a minute and the rest at close "
    "(lineguard.sources.partwarn); before that, one WARNING per file (80 in 8 s at 50/s).",
    "- The sink's full-disk run uses a 256x256 bundle (~190 KB per frame at the sink) on an 8 MB tmpfs, of which "
    "the store's 1 MB headroom file is part: the store keeps ~38 frames and evicts the rest. On a disk already "
    "filled by others to 0.5 MB free, a trial run refused every frame as `quota_full` (nothing of its own to evict; "
    "the headroom file alone is 1 MB).",
]


@dataclass
class Row:
    scenario: str
    rate: float
    exit_code: int
    audit: Audit | None
    log_lines: int = 0
    log_records: int = 0
    log_bytes: int = 0
    dumps: int = 0
    recovery_s: float | None = None
    recovery_what: str = ""
    recovery_target_s: float | None = None
    connected_target: str = "0"  # "n/a": the PLC never works (never acknowledges), so there is no such part
    note: str = ""
    skipped: str = ""
    sink_refused: int = 0
    wall_s: float = 0.0

    @property
    def refusal(self) -> bool:
        return "bundle" in self.scenario

    def checks(self, baseline_lines: int | None) -> dict[str, bool | None]:
        """Target -> met (None: does not apply)."""
        a = self.audit
        if a is None:
            return {}
        if self.refusal:
            return {"refused, 0 verdicts": self.exit_code != 0 and a.answered == 0 and a.log_lines == 0
                    and self.note == "before any part"}
        extra = self.log_records - baseline_lines if baseline_lines is not None else None
        return {
            "verdict while connected": None if self.connected_target == "n/a" else a.unanswered_connected == 0,
            "0 doubled": a.doubled == 0,
            "0 shifted": a.shifted == 0,
            "log once": a.log_exactly_once,
            "log = PLC": a.log_vs_plc == 0,
            "recovery": None if self.recovery_target_s is None else
            (self.recovery_s is not None and self.recovery_s <= self.recovery_target_s),
            "log bounded": None if extra is None else extra <= EXTRA_LOG_LINES,
            "sink keeps storing": None if "sink store" not in self.scenario else self.sink_refused == 0,
        }

    def passed(self, baseline_lines: int | None = None) -> bool:
        return all(v is not False for v in self.checks(baseline_lines).values())

    def one_line(self) -> str:
        a = self.audit
        if a is None:
            return f"{self.rate:g}/s {self.scenario}: skipped ({self.skipped})"
        rec = f"{self.recovery_s:.2f}" if self.recovery_s is not None else "-"
        return (f"{self.rate:g}/s {self.scenario}: exit {self.exit_code} triggered {a.triggered} answered "
                f"{a.answered} failsafe {a.failsafe} missed {a.missed_deadline} doubled {a.doubled} shifted "
                f"{a.shifted} unanswered-connected {a.unanswered_connected} log {a.log_lines} once "
                f"{a.log_exactly_once} stderr {self.log_records} records {self.log_lines} lines recovery {rec} "
                f"{self.note} ({self.wall_s:.1f} s)")


def _cell(v: bool | None) -> str:
    return "-" if v is None else ("PASS" if v else "**FAIL**")


def render(rows: Sequence[Row], facts: Mapping[str, Any]) -> str:
    baseline = {r.rate: r.log_records for r in rows if r.scenario.startswith("no fault")}
    out = [
        "# Reliability: faults on the line (issue 21)",
        "",
        "Measured by `scripts/bench_faults.py` (" + (f"`{facts['argv']}`" if facts.get("argv") else "defaults")
        + f") on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {facts['host']}; "
        f"load average {facts['load_before'][0]:.1f} before, {facts['load_after'][0]:.1f} after "
        "(the box was shared with other jobs); "
        f"bench wall time {facts['wall_s']:.0f} s.",
        "",
        "Each run is the real `lineguard run --until-finished` process (replay source, a signed synthetic bundle "
        "through ONNX Runtime, the PLC link, the decision log, the publisher where a sink is involved) against an "
        "independent PLC on uModbus that records every result block and acknowledges it, and the real "
        f"`lineguard sink`; all on loopback. {facts['seconds']:g} s of parts per run (rate x seconds replay "
        f"files), deadline {facts['deadline_ms']:g} ms (the default 200 ms would add load-induced deadline "
        "fail-safes on this loaded box).",
        "",
        "Columns: *triggered* parts the source produced; *answered* parts with a result block at the PLC; "
        "*fail-safe* answered with a fail-safe flag; *missed* decision-log lines with `plc: missed_deadline` (never "
        "written late); *doubled* parts with more than one result at the PLC or log line; *shifted* parts whose result "
        "(PLC verdict and score register, log verdict and score) is not their own file's (each file's own score from "
        "`lineguard score`); *no verdict (connected)* parts without a result at the PLC outside the fault window; "
        "*log once* every triggered part exactly once in the decision log; *log vs PLC* parts whose decision-log "
        "`plc` outcome contradicts the PLC (`written` but not received, or `missed_deadline` / `overflow` / "
        "`unsent` but received: a stale result written late); *stderr* log records / lines / KB the "
        "service wrote (a flight-recorder dump is one record of ~65 lines; the no-fault run at the same rate is the "
        "baseline); *recovery* seconds once the peer is back.",
        "",
        "| rate /s | fault | exit | triggered | answered | fail-safe | missed | doubled | shifted | no verdict "
        "(connected) | log lines | log once | log vs PLC | stderr records / lines / KB | dumps | recovery s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = r.audit
        if a is None:
            out.append(f"| {r.rate:g} | {r.scenario} | | | | | | | | | | | | | | | skipped: {r.skipped} |")
            continue
        rec = f"{r.recovery_s:.2f} ({r.recovery_what})" if r.recovery_s is not None else (
            f"none ({r.recovery_what})" if r.recovery_what else "-")
        conn = "n/a" if r.connected_target == "n/a" else str(a.unanswered_connected)
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(a.outcomes.items()) if k)
        note = "; ".join(x for x in (f"plc: {outcomes}" if outcomes else "", r.note) if x)
        out.append(f"| {r.rate:g} | {r.scenario} | {r.exit_code} | {a.triggered} | {a.answered} | {a.failsafe} | "
                   f"{a.missed_deadline} | {a.doubled} | {a.shifted} | {conn} | {a.log_lines} | "
                   f"{'yes' if a.log_exactly_once else 'no'} | {a.log_vs_plc} | {r.log_records} / {r.log_lines} / "
                   f"{r.log_bytes / 1024:.1f} | {r.dumps} | "
                   f"{rec} | {note} |")
    out += ["", "## Targets", "",
            "0 parts without a verdict while the PLC is connected, 0 doubled, 0 shifted, the decision log holds "
            "every triggered part exactly once and agrees with the PLC (no stale result written late), "
            f"link back <= {LINK_BACK_S} s after the PLC listens again, log "
            f"volume bounded (at most {EXTRA_LOG_LINES} log records over the no-fault run at the same rate), the "
            "sink keeps storing on a full disk (0 refused), unsigned / edited bundles refused before any part.",
            "", "| rate /s | fault | checks | result |", "|---|---|---|---|"]
    for r in rows:
        if r.audit is None:
            out.append(f"| {r.rate:g} | {r.scenario} | skipped: {r.skipped} | SKIP |")
            continue
        base = baseline.get(r.rate) if not r.scenario.startswith("no fault") else None
        cells = ", ".join(f"{k} {_cell(v)}" for k, v in r.checks(base).items() if v is not None)
        out.append(f"| {r.rate:g} | {r.scenario} | {cells} | {'PASS' if r.passed(base) else '**FAIL**'} |")
    out += ["", "## What the runs show", "", *OBSERVATIONS]
    out += ["", "## The integration test for each case of issue 21's table", "",
            "| case | test (loopback peers; exact counts at the PLC and in the decision log) |", "|---|---|"]
    out += [f"| {case} | {tests} |" for case, tests in TESTS]
    return "\n".join(out) + "\n"


def write_doc(path: Path, rows: Sequence[Row], facts: Mapping[str, Any]) -> str:
    text = render(rows, facts)
    path.write_text(text)
    return text
