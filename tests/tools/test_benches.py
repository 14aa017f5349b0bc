"""The benchmarks still run: each one, at a small size, against its own local cluster and operator.

They are not part of any tier's figures (those come from running them at full size, as their docstrings
say); this only keeps them from rotting when a file they use moves. Each prints its figures; the test
checks the lines that name them.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

SMALL_RUNS = [
    pytest.param(["throughput.py", "--count", "6", "--memory-count", "0"],
                 ("executions/s end to end", "operator API writes"), id="throughput"),
    pytest.param(["latency.py", "--count", "3", "--pool-size", "2", "--burst", "4", "--burst-pool", "2"],
                 ("SUMMARY warm_p50_ms=", "burst of 4"), id="latency"),
    pytest.param(["client_roundtrip.py", "--count", "3", "--warmup", "1"], ("round trip:",), id="client_roundtrip"),
    pytest.param(["storm.py", "--storm", "6", "--healthy", "3", "--interval", "0.2"],
                 ("storm of 6 Executions", "healthy, during the storm"), id="storm"),
    pytest.param(["apiserver_writes.py", "--count", "20", "--repeats", "1"], ("us per write",), id="apiserver_writes"),
]


@pytest.mark.parametrize(("argv", "expected"), SMALL_RUNS)
def test_bench_runs_at_a_small_size(argv: list[str], expected: tuple[str, ...]) -> None:
    env = dict(os.environ, PATH=f"{ROOT / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run([sys.executable, str(BENCH / argv[0]), *argv[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (
        f"{argv[0]} exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    for line in expected:
        assert line in done.stdout, f"{argv[0]} printed no {line!r}:\n{done.stdout[-3000:]}"


def test_benches_import_no_test_code() -> None:
    """The benchmarks use the local cluster's testing helpers (localcluster.testing), never the tests' files."""
    for script in sorted(BENCH.glob("*.py")):
        tree = ast.parse(script.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "tests" or n.startswith("tests.") for n in names), f"{script.name} imports {names}"
