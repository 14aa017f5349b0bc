"""`OutputFollower`: each attempt's pod log followed in turn, its lines fed to a callback."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from execution_operator.client.apicalls import ApiCalls
from execution_operator.k8s import ApiError, path_for
from execution_operator.runner.report import MARKER
from execution_operator.runner.warm import PAYLOAD_MARKER

#: The runner's own lines in a sandbox's log (its report, a warm pod's receipt): never the code's output.
RUNNER_LINE_PREFIXES = (MARKER + " ", PAYLOAD_MARKER + " ")
#: How long the output follower may take to drain the last pod's log after the Execution finished.
OUTPUT_DRAIN_SECONDS = 5.0

#: A callback fed the code's output lines (plain or async).
OutputCallback = Callable[[str], Awaitable[None] | None]


class OutputFollower:
    """Follows each attempt's pod log in turn and feeds its lines to a callback, without report lines.

    The pod log API answers 400 while the container is still being created, so a new pod's log is
    retried briefly until it can be read. Lines already delivered are skipped when a dropped log stream
    is resumed. When the final pod was gone before any of its log could be read (a run of a few
    milliseconds), the recorded stdout and stderr tails are delivered instead.
    """

    def __init__(self, api: ApiCalls, namespace: str, emit: OutputCallback) -> None:
        self.api = api
        self.namespace = namespace
        self.emit = emit
        self.pods: asyncio.Queue[str | None] = asyncio.Queue()
        self.known: list[str] = []
        self.lines_read: dict[str, int] = {}
        self.task = asyncio.create_task(self._run())

    def pod(self, name: str | None) -> None:
        """The Execution names its current pod: follow it next, once its predecessors are done."""
        if name and name not in self.known:
            self.known.append(name)
            self.pods.put_nowait(name)

    async def finish(self, body: Mapping[str, Any]) -> None:
        """The Execution finished (`body`): drain the last log, else deliver the recorded tails."""
        self.pods.put_nowait(None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.task), OUTPUT_DRAIN_SECONDS)
        final = self.known[-1] if self.known else None
        if final is None or not self.lines_read.get(final):
            status = body.get("status") or {}
            for stream in ("stdout", "stderr"):
                for line in (status.get(stream) or "").splitlines():
                    await self._deliver(line)

    async def stop(self) -> None:
        """Stop following (what is not delivered by now never will be)."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _deliver(self, line: str) -> None:
        if line.startswith(RUNNER_LINE_PREFIXES):
            return
        outcome = self.emit(line)
        if inspect.isawaitable(outcome):
            await outcome

    async def _run(self) -> None:
        while (pod := await self.pods.get()) is not None:
            await self._follow(pod)

    async def _follow(self, pod: str) -> None:
        path = path_for("v1", "pods", self.namespace, pod, "log")
        delay = 0.05
        self.lines_read[pod] = 0
        while True:
            read = 0
            try:
                async with contextlib.aclosing(self.api.kube.lines(path, {"follow": "true"})) as stream:
                    async for raw in stream:
                        read += 1
                        if read > self.lines_read[pod]:
                            self.lines_read[pod] = read
                            await self._deliver(raw.decode("utf-8", "replace"))
                return
            except ApiError as e:
                if e.status != 400 or not self.pods.empty():
                    return  # the pod is gone (404), or a newer attempt has started
            except (aiohttp.ClientError, TimeoutError):
                pass  # dropped: resume, skipping the lines already delivered
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
