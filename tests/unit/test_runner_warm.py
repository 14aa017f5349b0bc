"""The runner's warm mode: started before it has work, it takes exactly one payload on stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from test_runner_support import DROP_CAPS, RunResult

from execution_operator.runner import warm


def start_warm(tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A runner as a warm pool's pod runs it: no payload volume, stdin open, waiting."""
    dirs = {name: tmp_path / name for name in ("payload", "input", "output", "tmp")}
    for path in dirs.values():
        path.mkdir(exist_ok=True)
    full_env = {
        **os.environ,
        "SANDBOX_WARM": "1",
        "SANDBOX_PAYLOAD_DIR": str(dirs["payload"]),
        "SANDBOX_INPUT_DIR": str(dirs["input"]),
        "SANDBOX_OUTPUT_DIR": str(dirs["output"]),
        "SANDBOX_TIMEOUT_SECONDS": "30",
        "SANDBOX_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "SANDBOX_MEMORY_EVENTS": str(tmp_path / "no-memory-events"),
        "TMPDIR": str(dirs["tmp"]),
        **(env or {}),
    }
    return subprocess.Popen([*DROP_CAPS, sys.executable, "-m", "execution_operator.runner"], env=full_env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)


def hand_over(proc: subprocess.Popen[bytes], tmp_path: Path, data: bytes) -> RunResult:
    out, err = proc.communicate(data, timeout=60)
    message_file = tmp_path / "termination-log"
    message = message_file.read_text() if message_file.exists() else ""
    return RunResult(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), message, {})


def payload(code: str, input_data: Any = None, *, timeout: int = 10, attempt: int = 1) -> bytes:
    text = None if input_data is None else json.dumps(input_data)
    return warm.encode_payload(code, text, timeout_seconds=timeout, attempt=attempt, execution="ex-1",
                               correlation_id="corr-1")


def test_runs_the_payload_from_stdin_with_its_input_and_environment(tmp_path: Path) -> None:
    proc = start_warm(tmp_path)
    code = ("import os\nprint('hello')\n"
            "result = {'double': input_data['x'] * 2,\n"
            "          'attempt': os.environ['SANDBOX_ATTEMPT'], 'execution': os.environ['SANDBOX_EXECUTION'],\n"
            "          'data': open(os.environ['SANDBOX_INPUT_DIR'] + '/data.json').read()}\n")
    report = hand_over(proc, tmp_path, payload(code, {"x": 21}, attempt=3)).checked()
    assert report.success, report
    assert report.output == {"double": 42, "attempt": "3", "execution": "ex-1", "data": '{"x": 21}'}
    assert report.stdout == "hello\n"
    assert report.user_code_started


def test_the_log_shows_the_payload_arrived_before_any_output_of_the_code(tmp_path: Path) -> None:
    proc = start_warm(tmp_path)
    data = payload("print('from the code')\n")
    result = hand_over(proc, tmp_path, data)
    lines = result.stdout.splitlines()
    assert lines[0] == f"{warm.PAYLOAD_MARKER} {len(data)}"
    assert lines.index("from the code") > 0


def test_no_marker_without_a_payload(tmp_path: Path) -> None:
    proc = start_warm(tmp_path)
    assert warm.PAYLOAD_MARKER not in hand_over(proc, tmp_path, b"").stdout


def test_warm_imports_are_loaded_before_the_code_and_a_missing_one_is_skipped(tmp_path: Path) -> None:
    proc = start_warm(tmp_path, {"SANDBOX_WARM_IMPORTS": "decimal, no_such_module_xyz"})
    code = "import sys\nresult = ['decimal' in sys.modules, 'no_such_module_xyz' in sys.modules]\n"
    report = hand_over(proc, tmp_path, payload(code)).checked()
    assert report.output == [True, False]


def test_the_payloads_timeout_applies_and_counts_from_when_the_code_starts(tmp_path: Path) -> None:
    proc = start_warm(tmp_path)
    report = hand_over(proc, tmp_path, payload("import time\ntime.sleep(20)\n", timeout=1)).checked()
    assert report.error_type == "timeout"
    assert report.meta.get("timeoutSeconds") == 1


def test_the_code_sees_a_closed_stdin_and_cannot_take_a_second_payload(tmp_path: Path) -> None:
    proc = start_warm(tmp_path)
    code = "import os, sys\nresult = [os.read(0, 100).decode(), sys.stdin is None or sys.stdin.closed]\n"
    report = hand_over(proc, tmp_path, payload(code)).checked()
    assert report.output == ["", True]
    assert proc.returncode == 0  # and the runner is gone: one payload, one run, then the container ends


def test_two_payloads_in_one_stream_run_nothing(tmp_path: Path) -> None:
    proc = start_warm(tmp_path)
    result = hand_over(proc, tmp_path, payload("result = 1\n") + payload("result = 2\n"))
    report = result.checked()
    assert not report.success
    assert not report.user_code_started
    assert report.error_type == "internal_error"


def test_no_payload_runs_nothing(tmp_path: Path) -> None:
    proc = start_warm(tmp_path)
    report = hand_over(proc, tmp_path, b"").checked()
    assert not report.success
    assert not report.user_code_started
    assert report.error_type == "internal_error"
    assert "no payload" in report.message


def test_an_oversized_payload_is_refused(tmp_path: Path) -> None:
    proc = start_warm(tmp_path)
    big = payload("result = 1\n", "x" * (warm.PAYLOAD_LIMIT_BYTES + 10))
    report = hand_over(proc, tmp_path, big).checked()
    assert not report.user_code_started
    assert report.error_type == "internal_error"
