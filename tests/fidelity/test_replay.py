"""The replay tier: every case of the corpus recorded from a real kube-apiserver, against the local API server.

The whole corpus runs once, in file order, in one fresh API server (later cases use what earlier ones made);
each case is then one test. A step listed in `exceptions.EXCEPTIONS` may differ (its reason is printed);
a listed step that matches fails the test, so the list cannot go stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fidelity import replay
from tests.fidelity.exceptions import EXCEPTIONS

CASES = replay.load_cases()
SHARED_CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "fidelity" / "cases.jsonl"


@pytest.fixture(scope="module")
def results() -> dict[str, list[replay.StepResult]]:
    with replay.local_apiserver() as url:
        steps = replay.replay(CASES, url)
    by_case: dict[str, list[replay.StepResult]] = {}
    for r in steps:
        by_case.setdefault(r.case, []).append(r)
    replay.LAST_SUMMARY = replay.summary(steps, EXCEPTIONS)
    return by_case


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case_matches_the_real_server(case: dict[str, Any], results: dict[str, list[replay.StepResult]]) -> None:
    steps = results[case["name"]]
    wrong = [f"{r.key}: " + "; ".join(r.problems[:4]) for r in steps if not r.matched and r.key not in EXCEPTIONS]
    stale = [r.key for r in steps if r.matched and r.key in EXCEPTIONS]
    assert not wrong, "\n".join(wrong)
    assert not stale, f"listed as exceptions but matching now (remove them from exceptions.py): {stale}"


def test_every_exception_names_a_step_of_the_corpus() -> None:
    keys = {f"{c['name']}/{s['name']}" for c in CASES for s in c["steps"]}
    keys |= {f"{c['name']}/{d['name']}" for c in CASES for s in c["steps"] for d in s.get("during") or []}
    assert set(EXCEPTIONS) <= keys, set(EXCEPTIONS) - keys


@pytest.mark.skipif(not SHARED_CORPUS.exists(), reason="no recorded corpus beside the repository")
def test_the_copy_of_the_corpus_is_current() -> None:
    assert replay.CORPUS.read_bytes() == SHARED_CORPUS.read_bytes()
