"""The sandbox runner end to end: a real supervisor and child process per test, temp dirs as volumes."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
from pathlib import Path

import pytest
from test_runner_support import run_runner

from execution_operator.errors import ErrorType
from execution_operator.report_parsing import parse_runner_report
from execution_operator.runner import report as r
from execution_operator.runner.child import error_type_of


def _raise(exc: BaseException) -> BaseException:
    """Give the exception a traceback, as if user code raised it."""
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - any exception is what the test hands on
        return caught


def _json_error() -> BaseException:
    try:
        json.loads("{nope")
    except json.JSONDecodeError as exc:
        return exc
    raise AssertionError("unreachable")


def _decode_error() -> BaseException:
    try:
        b"\xff".decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc
    raise AssertionError("unreachable")


class RequestsStyleConnectionError(OSError):
    """Named like requests.exceptions.ConnectionError (an OSError subclass)."""


RequestsStyleConnectionError.__name__ = "ConnectionError"


class ReadTimeout(Exception):
    """Named like requests/httpx timeouts."""


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (SyntaxError("x"), "syntax_error"),
        (IndentationError("x"), "syntax_error"),
        (ImportError("x"), "import_error"),
        (ModuleNotFoundError("x"), "import_error"),
        (TypeError("x"), "type_error"),
        (ValueError("x"), "value_error"),
        (_json_error(), "json_error"),
        (_decode_error(), "encoding_error"),
        (UnicodeError("x"), "encoding_error"),
        (KeyError("x"), "key_error"),
        (IndexError("x"), "index_error"),
        (AttributeError("x"), "attribute_error"),
        (NameError("x"), "name_error"),
        (UnboundLocalError("x"), "name_error"),
        (FileNotFoundError(2, "x"), "file_not_found"),
        (RecursionError("x"), "recursion_error"),
        (ZeroDivisionError("x"), "division_error"),
        (PermissionError(13, "x"), "permission"),
        (ConnectionRefusedError(111, "x"), "network_error"),
        (socket.gaierror(-2, "Name or service not known"), "network_error"),
        (ConnectionResetError(104, "reset"), "network_error"),
        (TimeoutError("x"), "network_timeout"),
        (urllib.error.URLError(socket.gaierror(-3, "Temporary failure")), "network_error"),
        (urllib.error.URLError(TimeoutError("timed out")), "network_timeout"),
        (RequestsStyleConnectionError("x"), "network_error"),
        (ReadTimeout("x"), "network_timeout"),
        (OSError(5, "I/O error"), "os_error"),
        (IsADirectoryError(21, "x"), "os_error"),
        (MemoryError(), "oom"),
        (RuntimeError("x"), "runtime_error"),
        (AssertionError("x"), "runtime_error"),
        (KeyboardInterrupt(), "runtime_error"),
        (Exception("x"), "runtime_error"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_exception_mapping(exc: BaseException, expected: str) -> None:
    assert error_type_of(_raise(exc)) == expected


def test_runner_type_names_are_contract_types() -> None:
    contract = {t.value for t in ErrorType}
    assert r.RUNNER_TYPES.issubset(contract)
    assert {entry[1] for entry in r.SIGNAL_ERROR_TYPES.values()} <= contract


def test_success_with_result_and_input(tmp_path: Path) -> None:
    res = run_runner(tmp_path, "print('hello')\nresult = {'doubled': input_data['n'] * 2}", {"n": 21})
    assert res.returncode == 0
    report = res.checked()
    assert report.success
    assert report.error_type is None
    assert report.exit_code == 0
    assert report.output == {"doubled": 42}
    assert report.stdout == "hello\n"
    assert report.stderr == ""
    assert report.user_code_started
    assert report.duration_seconds is not None
    assert json.loads((res.dirs["input"] / "data.json").read_text()) == {"n": 21}
    # The report is the last line; the user's output is relayed before it.
    lines = res.stdout.splitlines()
    assert lines[0] == "hello"
    assert lines[-1].startswith("SANDBOX-REPORT ")


def test_gzipped_payload(tmp_path: Path) -> None:
    res = run_runner(tmp_path, "result = input_data", {"big": "x" * 1000}, gz=True)
    assert res.checked().output == {"big": "x" * 1000}


def test_output_from_result_file_and_null(tmp_path: Path) -> None:
    code = "import json, os\njson.dump([1, 2], open(os.environ['SANDBOX_OUTPUT_DIR'] + '/result.json', 'w'))"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert run_runner(tmp_path / "a", code).checked().output == [1, 2]
    report = run_runner(tmp_path / "b", "x = 1").checked()
    assert report.success
    assert report.output is None


def test_input_file_and_global_agree(tmp_path: Path) -> None:
    code = "import json\nresult = json.load(open('" + str(tmp_path / "input" / "data.json") + "')) == input_data"
    assert run_runner(tmp_path, code, [1, "two", None]).checked().output is True


def test_exception_report(tmp_path: Path) -> None:
    res = run_runner(tmp_path, "x = 1\n\ndef f():\n    return x / 0\n\nf()\n")
    assert res.returncode == 1
    report = res.checked()
    assert report.error_type == "division_error"
    assert report.exit_code == 1
    assert report.message == "ZeroDivisionError: division by zero"
    assert report.exception_type == "ZeroDivisionError"
    assert report.meta["lineno"] == 4
    assert report.details is not None
    assert 'File "<execution>", line 6' in report.details
    assert 'File "<execution>", line 4' in report.details
    assert "child.py" not in report.details
    assert "runpy" not in report.details
    assert "return x / 0" in report.details  # source lines shown for the user's code
    assert "ZeroDivisionError: division by zero" in report.stderr  # as Python would print it


def test_syntax_error(tmp_path: Path) -> None:
    report = run_runner(tmp_path, "x = 1\ndef broken(:\n").checked()
    assert report.error_type == "syntax_error"
    assert report.meta["lineno"] == 2
    assert report.message.startswith("SyntaxError:")


@pytest.mark.parametrize(
    ("code", "error_type", "exit_code"),
    [
        ("import json\njson.loads('{bad')", "json_error", 1),
        ("import no_such_module_here", "import_error", 1),
        ("open('/definitely/not/here')", "file_not_found", 1),
        ("def f():\n    f()\nf()", "recursion_error", 1),
        ("b'\\xff'.decode()", "encoding_error", 1),
        ("import sys\nsys.exit(3)", "runtime_error", 3),
        ("import sys\nsys.exit('bye')", "runtime_error", 1),
        ("raise MemoryError()", "oom", 1),
    ],
)
def test_user_failures(tmp_path: Path, code: str, error_type: str, exit_code: int) -> None:
    report = run_runner(tmp_path, code).checked()
    assert (report.error_type, report.exit_code) == (error_type, exit_code)


def test_sys_exit_zero_is_success(tmp_path: Path) -> None:
    report = run_runner(tmp_path, "result = 7\nimport sys\nsys.exit(0)").checked()
    assert report.success
    assert report.output == 7


@pytest.mark.parametrize(
    ("code", "error_type", "exit_code", "signal_name"),
    [
        ("import ctypes\nctypes.string_at(0)", "segfault", 139, "SIGSEGV"),
        ("import os\nos.abort()", "abort", 134, "SIGABRT"),
        ("import os\nos.kill(os.getpid(), 9)", "killed", 137, "SIGKILL"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGBUS)", "bus_error", 135, "SIGBUS"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)", "runtime_error", 143, "SIGTERM"),
    ],
)
def test_signals(tmp_path: Path, code: str, error_type: str, exit_code: int, signal_name: str) -> None:
    res = run_runner(tmp_path, code)
    assert res.returncode == 1
    report = res.checked()
    assert (report.error_type, report.exit_code, report.meta["signal"]) == (error_type, exit_code, signal_name)


def test_segfault_shows_python_frames(tmp_path: Path) -> None:
    report = run_runner(tmp_path, "import ctypes\nctypes.string_at(0)").checked()
    assert 'File "<execution>", line 2' in report.stderr


def test_oom_from_cgroup_evidence(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n")
    code = (
        f"open({str(events)!r}, 'w').write('low 0\\nhigh 0\\nmax 4\\noom 2\\noom_kill 2\\noom_group_kill 0\\n')\n"
        "import os\nos.kill(os.getpid(), 9)"
    )
    report = run_runner(tmp_path, code, env={"SANDBOX_MEMORY_EVENTS": str(events)}).checked()
    assert (report.error_type, report.exit_code) == ("oom", 137)


def test_sigkill_without_oom_evidence_is_killed(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("oom 0\noom_kill 0\n")
    code = "import os\nos.kill(os.getpid(), 9)"
    report = run_runner(tmp_path, code, env={"SANDBOX_MEMORY_EVENTS": str(events)}).checked()
    assert (report.error_type, report.exit_code) == ("killed", 137)


@pytest.mark.parametrize(
    "code",
    [
        "import time\ntime.sleep(60)",
        "while True:\n    pass",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.01)",
    ],
    ids=["sleep", "busy-loop", "ignores-sigterm"],
)
def test_timeout(tmp_path: Path, code: str) -> None:
    began = time.monotonic()
    res = run_runner(tmp_path, code, timeout=1)
    elapsed = time.monotonic() - began
    report = res.checked()
    assert (report.error_type, report.exit_code) == ("timeout", 137)
    assert report.meta["timeoutSeconds"] == 1
    assert report.duration_seconds is not None
    assert 1.0 <= report.duration_seconds < 3.0
    assert elapsed < 10


def test_output_too_large_and_not_serialisable(tmp_path: Path) -> None:
    for sub, code, error_type in [
        ("big", "result = 'x' * 200000", "output_too_large"),
        ("set", "result = {1, 2}", "output_error"),
        ("nan", "result = float('nan')", "output_error"),
        ("file", "import os\nopen(os.environ['SANDBOX_OUTPUT_DIR'] + '/result.json', 'w').write('{nope')",
         "output_error"),
        ("bigfile", "import os\nopen(os.environ['SANDBOX_OUTPUT_DIR'] + '/result.json', 'w')"
         ".write('[' + '1,' * 600000 + '1]')", "output_too_large"),
    ]:
        (tmp_path / sub).mkdir()
        res = run_runner(tmp_path / sub, code)
        report = res.checked()
        assert res.returncode == 1, sub
        assert (report.success, report.error_type, report.exit_code) == (False, error_type, 0), sub


def test_output_at_the_limit_is_fine(tmp_path: Path) -> None:
    report = run_runner(tmp_path, "result = 'x' * (131072 - 2)").checked()
    assert report.success
    assert len(report.output) == 131070


def test_streams_are_separate_bounded_tails(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "for i in range(20000):\n    print(f'out {i}')\n"
        "print('err line', file=sys.stderr)\n"
        "result = 1"
    )
    res = run_runner(tmp_path, code)
    report = res.checked()
    assert report.stdout_truncated
    assert not report.stderr_truncated
    assert len(report.stdout.encode()) <= 16384
    assert report.stdout.endswith("out 19999\n")  # the tail, not the head
    assert report.stderr == "err line\n"
    assert "out 0\n" in res.stdout  # but everything was relayed live


def test_huge_binary_output_without_newline(tmp_path: Path) -> None:
    code = (
        "import os\n"
        "chunk = bytes(range(256)) * 4096\n"
        "for _ in range(40):\n    os.write(1, chunk)\n"
        "os.write(2, b'\\x00\\xff no newline')\n"
        "result = 'done'"
    )
    res = run_runner(tmp_path, code)
    report = res.checked()
    assert report.output == "done"
    assert report.stdout_truncated
    assert report.stderr.endswith(" no newline")
    assert res.stdout.split("\n")[-2].startswith("SANDBOX-REPORT ")


def test_closed_stdout(tmp_path: Path) -> None:
    code = "import os, sys\nprint('before', flush=True)\nos.close(1)\nos.close(2)\nresult = 'still fine'"
    report = run_runner(tmp_path, code).checked()
    assert report.output == "still fine"
    assert report.stdout == "before\n"


def test_threads_left_running_do_not_block(tmp_path: Path) -> None:
    code = "import threading, time\nthreading.Thread(target=lambda: time.sleep(300)).start()\nresult = 'quick'"
    began = time.monotonic()
    report = run_runner(tmp_path, code, timeout=30).checked()
    assert report.output == "quick"
    assert time.monotonic() - began < 10


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_leftover_processes_are_killed(tmp_path: Path) -> None:
    """Background processes, double-forked daemons and a bounded fork tree all die with the run."""
    pids_file = tmp_path / "output" / "pids"
    code = (
        "import os, subprocess, time\n"
        f"fd = os.open({str(pids_file)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)\n"
        "note = lambda pid: os.write(fd, f'{pid}\\n'.encode())\n"
        "note(subprocess.Popen(['sleep', '300']).pid)\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            note(os.getpid())\n"
        "            for _ in range(5):\n"
        "                if os.fork() == 0:\n"
        "                    note(os.getpid()); time.sleep(300)\n"
        "            time.sleep(300)\n"
        "        os._exit(0)\n"
        "    os.wait()\n"
        "deadline = time.monotonic() + 10\n"
        f"while time.monotonic() < deadline and len(open({str(pids_file)!r}).read().split()) < 19:\n"
        "    time.sleep(0.01)\n"
        "result = 'spawned'\n"
    )
    began = time.monotonic()
    report = run_runner(tmp_path, code).checked()
    assert report.output == "spawned"
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 19
    assert not [pid for pid in pids if _alive(pid)]
    assert time.monotonic() - began < 20


def test_setup_failure_is_internal(tmp_path: Path) -> None:
    res = run_runner(tmp_path, "", env={"SANDBOX_PAYLOAD_DIR": str(tmp_path / "missing")})
    report = res.checked()
    assert res.returncode == 1
    assert (report.error_type, report.exit_code, report.user_code_started) == ("internal_error", None, False)


def test_unwritable_termination_log_leaves_the_report_on_the_log(tmp_path: Path) -> None:
    """The termination message is a copy: without it the report stands on the log's last line."""
    res = run_runner(tmp_path, "result = 1", env={"SANDBOX_TERMINATION_LOG": str(tmp_path / "no" / "dir")})
    assert res.returncode == 0
    report = parse_runner_report(None, res.stdout, res.returncode)
    assert report is not None
    assert report.source == "logMarker"
    assert report.output == 1


def test_termination_message_is_a_bounded_summary(tmp_path: Path) -> None:
    res = run_runner(tmp_path, "raise ValueError('é' * 5000 + '\\u2028')")
    summary = json.loads(res.termination_message)
    assert len(res.termination_message.encode()) < 4096
    assert set(summary) == {"v", "nonce", "success", "exitCode", "errorType", "exceptionType", "message",
                            "userCodeStarted", "startedAt", "finishedAt", "durationSeconds", "reportLines"}
    assert summary["errorType"] == "value_error"
    assert len(summary["message"]) <= 512
    assert "\u2028" not in res.stdout.splitlines()[-1]
    assert res.stdout.splitlines()[-1].startswith("SANDBOX-REPORT")


def test_external_stop_exits_143_without_report(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from test_runner_support import DROP_CAPS

    (tmp_path / "payload").mkdir()
    (tmp_path / "payload" / "code.py").write_text("import time\nprint('running', flush=True)\ntime.sleep(60)")
    env = {**os.environ, "SANDBOX_PAYLOAD_DIR": str(tmp_path / "payload"), "SANDBOX_INPUT_DIR": str(tmp_path),
           "SANDBOX_OUTPUT_DIR": str(tmp_path), "SANDBOX_TIMEOUT_SECONDS": "60",
           "SANDBOX_TERMINATION_LOG": str(tmp_path / "tlog")}
    proc = subprocess.Popen([*DROP_CAPS, sys.executable, "-m", "execution_operator.runner"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"running\n"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 143
    assert b"SANDBOX-REPORT" not in out
    assert not (tmp_path / "tlog").exists()


#: Modules whose import would cost every execution milliseconds of CPU (compiled regexes, enums, typing).
HEAVY_MODULES = ("re", "enum", "typing", "json", "socket", "signal", "tokenize", "linecache", "dataclasses")


def test_runner_starts_without_heavy_modules(tmp_path: Path) -> None:
    """The supervisor and the harness load only C modules and their own code until the user's code runs."""
    code = "import sys\nresult = sorted(m for m in sys.modules if m.split('.')[0] in " + repr(HEAVY_MODULES) + ")"
    assert run_runner(tmp_path, code).checked().output == []


def test_user_printed_tracebacks_and_warnings_show_the_code(tmp_path: Path) -> None:
    """The code's lines reach linecache when the code imports it, so its own tracebacks show them."""
    code = (
        "import logging, warnings\n"
        "try:\n"
        "    value = 1 / 0\n"
        "except ZeroDivisionError:\n"
        "    logging.exception('caught')\n"
        "warnings.warn('careful')\n"
        "result = 'ok'\n"
    )
    report = run_runner(tmp_path, code).checked()
    assert report.output == "ok"
    assert 'File "<execution>", line 3' in report.stderr
    assert "    value = 1 / 0" in report.stderr
    assert "UserWarning: careful" in report.stderr
    assert "  warnings.warn('careful')" in report.stderr


def test_linecache_imported_before_the_code_still_shows_it(tmp_path: Path) -> None:
    code = "import linecache\nresult = linecache.getline('<execution>', 2)\n"
    assert run_runner(tmp_path, code).checked().output == "result = linecache.getline('<execution>', 2)\n"


def test_fork_churn_still_running_when_the_code_returns(tmp_path: Path) -> None:
    """A detached process that keeps forking (short-lived children) is swept, mid-fork, with the rest."""
    pid_file = tmp_path / "output" / "churner.pid"
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            if os.fork() == 0:\n"
        "                time.sleep(0.2)\n"
        "            os._exit(0)\n"
        "        os.wait()\n"
        f"while not os.path.exists({str(pid_file)!r}):\n"
        "    time.sleep(0.001)\n"
        "time.sleep(0.2)\n"
        "result = 'churning'\n"
    )
    began = time.monotonic()
    report = run_runner(tmp_path, code).checked()
    assert report.output == "churning"
    assert not _alive(int(pid_file.read_text()))
    assert time.monotonic() - began < 20


def test_output_whose_encoding_raises(tmp_path: Path) -> None:
    code = (
        "class Weird(dict):\n"
        "    def items(self):\n"
        "        raise KeyError('boom')\n"
        "result = {'x': Weird(a=1)}\n"
    )
    res = run_runner(tmp_path, code)
    report = res.checked()
    assert (report.error_type, report.exit_code) == ("output_error", 0)


def test_tail_cut_inside_a_character_stays_clean(tmp_path: Path) -> None:
    # 40001 bytes: the last 16384 start in the middle of a two-byte character.
    report = run_runner(tmp_path, "print('é' * 20000 + 'x', end='')\nresult = 1").checked()
    assert report.stdout_truncated
    assert "\ufffd" not in report.stdout
    assert report.stdout == "é" * 8191 + "x"
