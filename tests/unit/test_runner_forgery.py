"""The user's code tries to forge the runner's report; the recorded outcome must not change.

Each test would fail without the protection it names (the last-line/nonce rule, the supervisor
overwriting the termination message after killing everything, the credential check on the report
channel, the claim validation, non-dumpability, ignoring signals from the sandbox itself).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from test_runner_support import DROP_CAPS, run_runner

from execution_operator.classify import classify_finished_pod
from execution_operator.report_parsing import parse_runner_report

FAKE_NONCE = "0123456789abcdef0123456789abcdef"
FAKE_SUMMARY = {
    "v": 1, "nonce": FAKE_NONCE, "success": True, "exitCode": 0, "errorType": None, "exceptionType": None,
    "message": "", "userCodeStarted": True, "startedAt": "2026-01-01T00:00:00.000Z",
    "finishedAt": "2026-01-01T00:00:01.000Z", "durationSeconds": 1.0,
}
FAKE_FULL = {**FAKE_SUMMARY, "stdout": "", "stderr": "", "stdoutTruncated": False, "stderrTruncated": False,
             "output": "forged", "details": None, "meta": {}}
FAKE_LINE = f"SANDBOX-REPORT {FAKE_NONCE} {json.dumps(FAKE_FULL, separators=(',', ':'))}"

# Finds the harness's report socket the way a hostile program would (the env var is already gone).
FIND_CHANNEL = """
import os, socket, json
def channel():
    for fd in os.listdir('/proc/self/fd'):
        try:
            if os.readlink(f'/proc/self/fd/{fd}').startswith('socket:'):
                return socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            pass
    raise SystemExit('no channel found')
"""
FAKE_SUCCESS_FRAME = (
    "json.dumps({'kind': 'result', 'success': True, 'exitCode': 0, 'errorType': None, 'exceptionType': None,"
    " 'message': '', 'details': None, 'lineno': None}).encode() + b'\\n\"forged\"'"
)


def _pod(res_returncode: int, message: str) -> dict:
    return {
        "metadata": {"name": "ex-1"},
        "status": {"phase": "Failed" if res_returncode else "Succeeded", "containerStatuses": [
            {"name": "sandbox", "state": {"terminated": {"exitCode": res_returncode, "reason": "Error",
                                                         "message": message}}}]},
    }


def test_fake_report_line_and_termination_message(tmp_path: Path) -> None:
    """A fake marker line plus a matching fake termination message: the supervisor's line is last."""
    code = (
        "import os\n"
        f"print({FAKE_LINE!r})\n"
        f"open(os.environ['SANDBOX_TERMINATION_LOG'], 'w').write({json.dumps(FAKE_SUMMARY)!r})\n"
        "1 / 0\n"
    )
    res = run_runner(tmp_path, code)
    assert FAKE_LINE in res.stdout  # the fake was relayed...
    report = res.checked()
    assert (report.success, report.error_type) == (False, "division_error")  # ...and ignored
    assert report.nonce != FAKE_NONCE
    verdict = classify_finished_pod(_pod(res.returncode, res.termination_message), res.stdout)
    assert verdict.error is not None
    assert verdict.error.type == "division_error"


def test_fake_report_line_without_newline_when_termination_message_is_lost(tmp_path: Path) -> None:
    """Only the very last log line counts without the termination message; the supervisor starts a new line."""
    res = run_runner(tmp_path, f"result = 'real'\nprint({FAKE_LINE!r}, end='')")
    report = parse_runner_report(None, res.stdout, res.returncode)
    assert report is not None
    assert report.source == "logMarker"
    assert report.output == "real"
    assert report.nonce != FAKE_NONCE


def test_fake_traceback_on_stderr(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "print('Traceback (most recent call last):\\n  File \"<execution>\", line 9, in <module>\\n"
        "KeyError: \\'forged\\'', file=sys.stderr)\n"
        "result = 5\n"
    )
    res = run_runner(tmp_path, code)
    report = res.checked()
    assert report.success
    assert report.output == 5
    assert "KeyError" in report.stderr
    verdict = classify_finished_pod(_pod(res.returncode, res.termination_message), res.stdout)
    assert verdict.success
    assert verdict.error is None


def test_code_writes_the_termination_log(tmp_path: Path) -> None:
    code = (
        "import os\n"
        f"open(os.environ['SANDBOX_TERMINATION_LOG'], 'w').write({json.dumps(FAKE_SUMMARY)!r})\n"
        "raise ValueError('real failure')\n"
    )
    res = run_runner(tmp_path, code)
    assert json.loads(res.termination_message)["nonce"] != FAKE_NONCE
    assert res.checked().error_type == "value_error"


@pytest.mark.parametrize("forge", [False, True])
def test_code_makes_the_termination_log_unwritable(tmp_path: Path, forge: bool) -> None:
    """chmod 0444 on the termination log (after a forged summary, or not): the outcome is still the code's.

    It used to make the supervisor exit 2: an `internal_error` that any tenant could use to open its
    class's circuit. The verdict must be the code's own result, with its output, and no platform failure.
    """
    # The kubelet creates the file before the container starts; the harness does not.
    forged = f"open(os.environ['SANDBOX_TERMINATION_LOG'], 'w').write({json.dumps(FAKE_SUMMARY) if forge else ''!r})\n"
    code = (
        "import os\n"
        + forged
        + "os.chmod(os.environ['SANDBOX_TERMINATION_LOG'], 0o444)\n"
        "result = 7\n"
    )
    res = run_runner(tmp_path, code)
    assert res.returncode == 0
    verdict = classify_finished_pod(_pod(res.returncode, res.termination_message), res.stdout)
    assert verdict.success
    assert verdict.output == 7
    assert verdict.error is None
    assert verdict.user_code_started_at


def test_background_process_writes_termination_log_after_the_code_returns(tmp_path: Path) -> None:
    pid_file = tmp_path / "output" / "daemon.pid"
    code = (
        "import os, time\n"
        "harness = os.getpid()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "        while os.path.exists(f'/proc/{harness}/stat') and "
        "open(f'/proc/{harness}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z':\n"
        "            time.sleep(0.001)\n"
        "        end = time.monotonic() + 5\n"
        "        while time.monotonic() < end:\n"
        f"            open(os.environ['SANDBOX_TERMINATION_LOG'], 'w').write({json.dumps(FAKE_SUMMARY)!r})\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        f"while not os.path.exists({str(pid_file)!r}):\n"
        "    time.sleep(0.001)\n"
        "raise KeyError('real')\n"
    )
    res = run_runner(tmp_path, code)
    assert res.checked().error_type == "key_error"
    assert json.loads(res.termination_message)["nonce"] != FAKE_NONCE
    daemon = int(pid_file.read_text())
    stat = Path(f"/proc/{daemon}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_code_writes_a_success_claim_to_the_report_channel(tmp_path: Path) -> None:
    """The harness reports after the code, and the last frame wins."""
    code = FIND_CHANNEL + f"channel().send({FAKE_SUCCESS_FRAME})\n1 / 0\n"
    assert run_runner(tmp_path, code).checked().error_type == "division_error"


def test_code_claims_a_platform_outcome_on_the_channel(tmp_path: Path) -> None:
    """Claims the code could not make honestly (timeout, infrastructure) are refused."""
    frame = ("json.dumps({'kind': 'result', 'success': False, 'exitCode': 3, 'errorType': 'image_pull_error',"
             " 'exceptionType': None, 'message': 'forged', 'details': None, 'lineno': None}).encode()")
    code = FIND_CHANNEL + f"channel().send({frame})\nos._exit(3)\n"
    report = run_runner(tmp_path, code).checked()
    assert (report.error_type, report.exit_code) == ("runtime_error", 3)
    assert "forged" not in report.message


def test_code_restarts_the_timeout_clock(tmp_path: Path) -> None:
    code = FIND_CHANNEL + (
        "import time\nc = channel()\n"
        "while True:\n    c.send(b'{\"kind\": \"started\"}')\n    time.sleep(0.05)\n"
    )
    began = time.monotonic()
    report = run_runner(tmp_path, code, timeout=1).checked()
    assert report.error_type == "timeout"
    assert time.monotonic() - began < 10


def test_spawned_process_writes_to_the_report_channel(tmp_path: Path) -> None:
    """A forked helper keeps sending claims while and after the code fails: only the harness may report."""
    claim = ("json.dumps({'kind': 'result', 'success': False, 'exitCode': 1, 'errorType': 'value_error',"
             " 'exceptionType': 'ValueError', 'message': 'forged', 'details': None, 'lineno': None}).encode()")
    code = FIND_CHANNEL + (
        "import time\nc = channel()\n"
        "if os.fork() == 0:\n"
        "    while True:\n"
        f"        c.send({claim})\n"
        "time.sleep(0.05)\n"
        "raise KeyError('real')\n"
    )
    report = run_runner(tmp_path, code).checked()
    assert (report.success, report.error_type, report.message) == (False, "key_error", "KeyError: 'real'")


@pytest.mark.skipif(os.geteuid() == 0 and not DROP_CAPS, reason="needs a run without CAP_SYS_PTRACE")
def test_code_cannot_open_the_supervisors_fds(tmp_path: Path) -> None:
    code = (
        "import os\n"
        "opened = []\n"
        "for fd in os.listdir(f'/proc/{os.getppid()}/fd') if os.access(f'/proc/{os.getppid()}/fd', os.R_OK) "
        "else range(64):\n"
        "    try:\n"
        "        f = os.open(f'/proc/{os.getppid()}/fd/{fd}', os.O_WRONLY)\n"
        f"        os.write(f, b'\\n' + {FAKE_LINE.encode()!r} + b'\\n')\n"
        "        opened.append(int(fd))\n"
        "    except OSError:\n"
        "        pass\n"
        "result = opened\n"
    )
    res = run_runner(tmp_path, code)
    report = res.checked()
    assert report.output == []
    assert FAKE_LINE not in res.stdout


def test_code_signals_the_supervisor(tmp_path: Path) -> None:
    """A stop signal from inside the sandbox is not a stop request."""
    code = "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)\nos.kill(os.getppid(), signal.SIGINT)\nresult = 1"
    res = run_runner(tmp_path, code)
    assert res.returncode == 0
    assert res.checked().output == 1


def test_a_flood_on_the_report_channel_does_not_stop_the_clock(tmp_path: Path) -> None:
    """Frames sent as fast as possible (by the harness process and by a forked one) cannot starve the timeout."""
    code = FIND_CHANNEL + (
        "import threading\nc = channel()\n"
        "def flood():\n"
        "    while True:\n"
        f"        c.send({FAKE_SUCCESS_FRAME})\n"
        "if os.fork() == 0:\n"
        "    flood()\n"
        "threading.Thread(target=flood, daemon=True).start()\n"
        "flood()\n"
    )
    began = time.monotonic()
    report = run_runner(tmp_path, code, timeout=1).checked()
    assert (report.error_type, report.exit_code) == ("timeout", 137)
    assert time.monotonic() - began < 15
