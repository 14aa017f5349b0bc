"""Logging setup: JSON lines with the Execution identity, kopf/aiohttp records routed through structlog."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
import structlog

from execution_operator import logs


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    logs.configure_logging(level="DEBUG", fmt="json", stream=buf)
    yield buf
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_execution_operator_handler", False)]:
        root.removeHandler(h)


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_execution_logger_carries_identity(stream: io.StringIO) -> None:
    log = logs.execution_logger("team-a", "ex-1", "corr-42", 2)
    log.info("pod created", pod="ex-1-a2")
    (line,) = _lines(stream)
    assert line["event"] == "pod created"
    assert line["execution"] == "ex-1"
    assert line["namespace"] == "team-a"
    assert line["correlation_id"] == "corr-42"
    assert line["attempt"] == 2
    assert line["pod"] == "ex-1-a2"
    assert line["level"] == "info"
    assert line["logger"] == "execution_operator.execution"
    assert line["timestamp"].endswith("Z")


def test_kopf_object_logger_routed_without_settings(stream: io.StringIO) -> None:
    # kopf's ObjectLogger passes these extras on every record of its `kopf.objects` logger.
    extra = {
        "k8s_ref": {
            "apiVersion": "sandbox.dev/v1alpha1",
            "kind": "Execution",
            "name": "ex-2",
            "uid": "u-1",
            "namespace": "team-b",
        },
        "k8s_skip": False,
        # A real settings object: kopf's own event-posting handler on this logger reads it.
        "settings": kopf.OperatorSettings(),
    }
    logging.getLogger("kopf.objects").info("Handler 'create_fn' succeeded.", extra=extra)
    (line,) = _lines(stream)
    assert line["logger"] == "kopf.objects"
    assert line["event"] == "Handler 'create_fn' succeeded."
    assert line["execution"] == "ex-2"
    assert line["namespace"] == "team-b"
    assert line["k8s"] == {"kind": "Execution", "name": "ex-2", "namespace": "team-b"}
    assert "settings" not in line
    assert "k8s_skip" not in line


def test_foreign_exception_is_rendered(stream: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("kopf._core.reactor").exception("watch failed")
    (line,) = _lines(stream)
    assert line["level"] == "error"
    assert "RuntimeError: boom" in line["exception"]


def test_aiohttp_access_is_quiet(stream: io.StringIO) -> None:
    logging.getLogger("aiohttp.access").info("GET /healthz 200")
    logging.getLogger("aiohttp.access").warning("slow")
    lines = _lines(stream)
    assert [line["event"] for line in lines] == ["slow"]


def test_contextvars_binding(stream: io.StringIO) -> None:
    logs.bind_execution_context("ns", "ex-3", "c-3", 1)
    logging.getLogger("execution_operator.something").info("plain stdlib line")
    (line,) = _lines(stream)
    assert (line["execution"], line["namespace"], line["correlation_id"], line["attempt"]) == (
        "ex-3",
        "ns",
        "c-3",
        1,
    )


def test_reconfigure_replaces_handler(stream: io.StringIO) -> None:
    other = io.StringIO()
    logs.configure_logging(level="INFO", fmt="json", stream=other)
    logs.get_logger().info("once")
    assert stream.getvalue() == ""
    assert [line["event"] for line in _lines(other)] == ["once"]
    marked = [h for h in logging.getLogger().handlers if getattr(h, "_execution_operator_handler", False)]
    assert len(marked) == 1


def test_auto_format_console_on_tty(stream: io.StringIO) -> None:
    tty = _TTY()
    logs.configure_logging(level="INFO", fmt="auto", stream=tty)
    logs.execution_logger("ns", "ex-4", None, 1).info("hello console")
    text = tty.getvalue()
    assert "hello console" in text
    assert "ex-4" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_auto_format_json_when_not_tty(stream: io.StringIO) -> None:
    buf = io.StringIO()
    logs.configure_logging(level="INFO", fmt="auto", stream=buf)
    logs.get_logger().info("machine")
    assert json.loads(buf.getvalue())["event"] == "machine"


def test_bad_format_rejected() -> None:
    with pytest.raises(ValueError, match="log format"):
        logs.configure_logging(fmt="xml", stream=io.StringIO())
