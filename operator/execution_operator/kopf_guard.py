"""Make kopf's watching survive any object and any answer the API server gives.

kopf decodes watch streams and lists itself and treats an error there as fatal: an object nested
too deep for Python's decoder (the API server stores up to 10,000 levels) raised RecursionError in
the watcher and stopped the operator for every tenant, on every restart. kopf has no setting for
either, so `install` swaps in, at kopf's own module attributes:
- `safejson.loads` for decoding watch events and list pages (clipped objects are then quarantined
  by the handlers);
- a watch loop that logs any failure of a watch stream and opens a new one with backoff, instead of
  letting the error end the watcher (kopf's own loop already does that for 410 Gone and 429).
`tests/unit/test_reliability.py` runs kopf's real stream code through these hooks, so a kopf upgrade
that moves them fails there.
"""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import AsyncIterator
from typing import Any

import structlog
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import watching as kopf_watching

from execution_operator import metrics, safejson

log = structlog.get_logger("execution_operator.watch")

#: Seconds before re-opening a watch stream after its n-th consecutive failure.
WATCH_FAILURE_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

_original_watch = kopf_watching.infinite_watch
_json_shim = types.SimpleNamespace(loads=safejson.loads, dumps=json.dumps, JSONDecodeError=json.JSONDecodeError)


async def _get(url: str, *, settings: Any, payload: object | None = None, headers: dict[str, str] | None = None,
               timeout: Any = None, logger: Any) -> Any:  # noqa: ASYNC109 (kopf's signature)
    """The `api.get` of kopf, decoding the answer with `safejson`."""
    response = await kopf_api.request(method="get", url=url, payload=payload, headers=headers, timeout=timeout,
                                      settings=settings, logger=logger)
    async with response:
        return safejson.loads(await response.read())


async def resilient_watch(**kwargs: Any) -> AsyncIterator[Any]:
    """The infinite watch of kopf, restarted (with a fresh list) whenever it fails instead of ending."""
    failures = 0
    resource = kwargs.get("resource")
    while True:
        try:
            async for event in _original_watch(**kwargs):
                failures = 0
                yield event
            return  # kopf's loop ends only in its tests (`_iterations`)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any watch failure reopens the watch after a backoff
            delay = WATCH_FAILURE_BACKOFF[min(failures, len(WATCH_FAILURE_BACKOFF) - 1)]
            failures += 1
            plural = str(getattr(resource, "plural", resource))
            metrics.record_watch_restart(plural)
            log.error("watch stream failed; reopening it", resource=plural, retry_in=delay,
                      error=f"{type(exc).__name__}: {exc}"[:500])
            await asyncio.sleep(delay)


def install() -> None:
    """Idempotent: point kopf's decoding and watch loop at the versions above."""
    kopf_api.json = _json_shim  # type: ignore[assignment,attr-defined]
    kopf_api.get = _get
    kopf_watching.infinite_watch = resilient_watch
