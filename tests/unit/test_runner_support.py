"""Helpers for the runner tests: run `python -m execution_operator.runner` as a sandbox pod would (no tests here)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from execution_operator.report_parsing import RunnerReport, parse_runner_report

#: Like the pod (capabilities drop ALL): without this, root could read the supervisor's /proc entries.
DROP_CAPS: list[str] = (
    ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    if os.geteuid() == 0 and shutil.which("setpriv")
    else []
)


@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str
    termination_message: str
    dirs: dict[str, Path]

    @property
    def report(self) -> RunnerReport | None:
        return parse_runner_report(self.termination_message, self.stdout, self.returncode)

    def checked(self) -> RunnerReport:
        report = self.report
        assert report is not None, (self.returncode, self.stdout[-2000:], self.stderr[-2000:])
        assert report.full
        return report


def run_runner(
    tmp_path: Path,
    code: str,
    input_data: Any = None,
    *,
    timeout: int = 10,
    gz: bool = False,
    env: dict[str, str] | None = None,
    deadline: float = 60.0,
) -> RunResult:
    dirs = {name: tmp_path / name for name in ("payload", "input", "output", "tmp")}
    for path in dirs.values():
        path.mkdir(exist_ok=True)
    files = {"code.py": code.encode()}
    if input_data is not None:
        files["input.json"] = json.dumps(input_data).encode()
    for name, data in files.items():
        if gz:
            (dirs["payload"] / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (dirs["payload"] / name).write_bytes(data)
    termination_log = tmp_path / "termination-log"
    full_env = {
        **os.environ,
        "SANDBOX_PAYLOAD_DIR": str(dirs["payload"]),
        "SANDBOX_INPUT_DIR": str(dirs["input"]),
        "SANDBOX_OUTPUT_DIR": str(dirs["output"]),
        "SANDBOX_TIMEOUT_SECONDS": str(timeout),
        "SANDBOX_OUTPUT_LIMIT_BYTES": "131072",
        "SANDBOX_STREAM_TAIL_BYTES": "16384",
        "SANDBOX_TERMINATION_LOG": str(termination_log),
        "SANDBOX_MEMORY_EVENTS": str(tmp_path / "no-memory-events"),
        "TMPDIR": str(dirs["tmp"]),
        **(env or {}),
    }
    proc = subprocess.run(
        [*DROP_CAPS, sys.executable, "-m", "execution_operator.runner"],
        env=full_env,
        capture_output=True,
        timeout=deadline,
        cwd=tmp_path,
    )
    message = termination_log.read_text() if termination_log.exists() else ""
    return RunResult(
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
        message,
        dirs,
    )
