"""Prints the replay tier's `matched X/Y` line at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fidelity import replay


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any) -> None:
    if replay.LAST_SUMMARY:
        terminalreporter.write_line(replay.LAST_SUMMARY)
