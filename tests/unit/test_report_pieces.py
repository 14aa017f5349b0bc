"""A long report travels as several log lines under 16 KiB, and is put back together in any order."""

from __future__ import annotations

import json

from execution_operator.report_parsing import log_holds_full_report, parse_runner_report
from execution_operator.runner import report as r

NONCE = "c0ffee" * 5 + "00"


def full_report(stdout: str) -> dict[str, object]:
    return {"v": 1, "nonce": NONCE, "success": True, "exitCode": 0, "errorType": None, "exceptionType": None,
            "message": "", "userCodeStarted": True, "startedAt": "2026-01-01T00:00:00.000Z",
            "finishedAt": "2026-01-01T00:00:01.000Z", "durationSeconds": 1.0, "stdout": stdout, "stderr": "",
            "stdoutTruncated": False, "stderrTruncated": False, "output": {"n": 1}, "details": None, "meta": {}}


def test_long_reports_are_split_into_lines_below_sixteen_kib() -> None:
    report = full_report("é" * 16000 + "x" * 20000)
    data, count = r.marker_lines(report)
    lines = data.decode().splitlines()
    assert count == len(lines) > 1
    assert all(len(line.encode()) < 16384 for line in lines)
    assert lines[0].startswith(f"SANDBOX-REPORT {NONCE} 1/{count} ")
    summary = json.loads(r.encode_summary(report, report_lines=count))
    assert summary["reportLines"] == count


def test_pieces_are_joined_even_with_other_lines_between_them() -> None:
    report = full_report("y" * 30000)
    data, count = r.marker_lines(report)
    lines = data.decode().splitlines()
    mixed = ["user says hi", lines[0], "stderr line that lagged", *lines[1:-1], "late stderr", lines[-1]]
    summary = r.encode_summary(report, report_lines=count).decode()
    parsed = parse_runner_report(summary, "\n".join(mixed) + "\n", 0)
    assert parsed is not None
    assert parsed.full
    assert parsed.stdout == "y" * 30000
    assert parsed.output == {"n": 1}


def test_a_missing_piece_leaves_only_the_summary_and_asks_for_more_log() -> None:
    report = full_report("z" * 30000)
    data, count = r.marker_lines(report)
    lines = data.decode().splitlines()
    tail = "\n".join(lines[1:]) + "\n"  # the first piece fell outside the tail that was read
    assert not log_holds_full_report(tail)
    assert log_holds_full_report(data.decode())
    parsed = parse_runner_report(r.encode_summary(report, report_lines=count).decode(), tail, 0)
    assert parsed is not None
    assert not parsed.full
    assert parsed.stdout == ""


def test_forged_pieces_with_another_nonce_are_ignored() -> None:
    report = full_report("real")
    data, count = r.marker_lines(report)
    forged = 'SANDBOX-REPORT ' + "f" * 32 + ' 1/1 {"v":1}\n'
    parsed = parse_runner_report(r.encode_summary(report, report_lines=count).decode(), forged + data.decode(), 0)
    assert parsed is not None
    assert parsed.full
    assert parsed.stdout == "real"
