"""Logging setup: structlog JSON lines (or a console renderer on a terminal), with stdlib logging routed in.

kopf and aiohttp log through the standard library; their records go through the same
``structlog.stdlib.ProcessorFormatter`` as our own structlog calls, so every line on stderr has one shape.
kopf's object logger attaches ``k8s_ref`` (the object's kind/name/namespace) and ``settings`` (the whole
``OperatorSettings``) as record extras: we turn ``k8s_ref`` into fields and never copy ``settings``, which
would dump the full configuration into every line.

Every line about an Execution carries ``execution``, ``namespace``, ``correlation_id`` and ``attempt``: get
such a logger from :func:`execution_logger`.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Mapping
from typing import Any, Final, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from execution_operator.api import Kind

LogFormat = Literal["auto", "json", "console"]
LOG_FORMATS: Final[tuple[str, ...]] = ("auto", "json", "console")

#: Loggers too chatty at INFO: aiohttp's access log (liveness probes every few seconds).
_QUIET_LOGGERS: Final[dict[str, int]] = {"aiohttp.access": logging.WARNING}
_HANDLER_MARK: Final[str] = "_execution_operator_handler"


def _add_k8s_ref(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Copy kopf's ``k8s_ref`` record extra into the event; Executions get the standard keys."""
    record = event_dict.get("_record")
    ref = getattr(record, "k8s_ref", None) if record is not None else None
    if isinstance(ref, dict) and ref:
        kind = ref.get("kind")
        name = ref.get("name")
        namespace = ref.get("namespace")
        event_dict.setdefault("k8s", {k: v for k, v in ref.items() if k in ("kind", "name", "namespace")})
        if kind == Kind.EXECUTION and name:
            event_dict.setdefault("execution", name)
        if namespace:
            event_dict.setdefault("namespace", namespace)
    return event_dict


def _drop_internal_extras(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Remove keys that must never reach the output (``settings`` is kopf's full configuration)."""
    event_dict.pop("settings", None)
    event_dict.pop("k8s_skip", None)
    event_dict.pop("k8s_ref", None)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]


def _resolve_format(fmt: str, stream: TextIO) -> Literal["json", "console"]:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        return "console" if callable(isatty) and isatty() else "json"
    return "json" if fmt == "json" else "console"


def configure_logging(
    level: int | str = "INFO",
    fmt: LogFormat | str = "auto",
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging (kopf, aiohttp) to one handler on ``stream`` (default stderr).

    ``fmt="auto"`` renders for a human when the stream is a terminal and JSON lines otherwise. Calling it
    again replaces the previous handler, so tests can reconfigure onto their own stream.
    """
    out = stream if stream is not None else sys.stderr
    resolved = _resolve_format(fmt, out)
    final: list[Processor]
    if resolved == "json":
        final = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    else:
        final = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(colors=bool(getattr(out, "isatty", lambda: False)())),
        ]

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), _add_k8s_ref, _drop_internal_extras],
        processors=[_drop_internal_extras, *final],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name, quiet_level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet_level)

    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a reconfiguration (tests, CLI flags parsed late) must reach existing loggers.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "execution_operator", **bound: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger writing through the stdlib logger ``name``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger.bind(**bound) if bound else logger


def execution_logger(
    namespace: str,
    name: str,
    correlation_id: str | None,
    attempt: int | None,
    **extra: Any,
) -> structlog.stdlib.BoundLogger:
    """A logger whose every line carries the Execution's identity.

    That is ``execution``, ``namespace``, ``correlation_id`` and ``attempt``, plus any ``extra`` fields.
    """
    return get_logger(
        "execution_operator.execution",
        execution=name,
        namespace=namespace,
        correlation_id=correlation_id,
        attempt=attempt,
        **extra,
    )


def bind_execution_context(
    namespace: str, name: str, correlation_id: str | None, attempt: int | None
) -> Mapping[str, contextvars.Token[Any]]:
    """Bind the Execution's identity to the current context (asyncio task or thread).

    Useful around code that logs through plain stdlib loggers; returns the bound tokens' mapping so the
    caller can ``structlog.contextvars.reset_contextvars(**tokens)`` afterwards.
    """
    return structlog.contextvars.bind_contextvars(
        execution=name, namespace=namespace, correlation_id=correlation_id, attempt=attempt
    )
