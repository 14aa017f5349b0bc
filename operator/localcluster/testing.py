"""Run a LocalCluster in a background thread with its own event loop.

Synchronous test code, subprocesses (kubectl) and other event loops can then talk to it over HTTP.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from localcluster.cluster import LocalCluster

T = TypeVar("T")


class ClusterThread:
    """The thread and loop a cluster runs in; `call` and `run` execute code on that loop."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._main, name="localcluster", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.cluster.start()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.cluster.stop()

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("local cluster did not start in time")
        if self._error is not None:
            raise RuntimeError("local cluster failed to start") from self._error

    def stop(self, timeout: float = 30.0) -> None:
        if self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the cluster's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """Call a plain function on the cluster's loop (e.g. `apiserver.drop_watches`)."""

        async def _call() -> T:
            return fn(*args)

        return self.run(_call(), timeout)


@contextmanager
def run_cluster_in_thread(state_dir: Path | str, **kwargs: Any) -> Iterator[LocalCluster]:
    """Start a LocalCluster in a daemon thread; yields it once it serves (`cluster.runner` is the thread)."""
    cluster = LocalCluster(state_dir, **kwargs)
    runner = ClusterThread(cluster)
    cluster.runner = runner
    runner.start()
    try:
        yield cluster
    finally:
        runner.stop()
