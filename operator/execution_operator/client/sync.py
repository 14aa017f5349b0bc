"""`Client`: the same API as `AsyncClient` for code without an event loop (scripts, CI jobs, notebooks).

Each client runs an `AsyncClient` on its own event loop in a daemon thread and waits for its calls, so
it works in a thread that already runs a loop (Jupyter) and shares every line of logic with the async
flavour. `on_output` callbacks are called from that thread: keep them quick.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

from execution_operator.client.aio import USER_AGENT, AsyncClient, AsyncExecutionHandle
from execution_operator.client.follower import OutputCallback
from execution_operator.client.result import ExecutionResult

T = TypeVar("T")


class _Loop:
    """An event loop in a daemon thread; `run` waits for a coroutine on it from any other thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="execution-operator-client", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a Client's methods cannot be called from its own on_output callback "
                               "(it runs on the client's I/O thread); use another Client there")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            # KeyboardInterrupt and the like: do not leave the call running behind the caller's back.
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()


class Client:
    """Run Python code as Executions and get typed results back.

    >>> from execution_operator.client import Client
    >>> with Client() as client:
    ...     client.run("result = input_data['x'] * 2", {"x": 21}).output
    42
    """

    def __init__(self, namespace: str | None = None, *, kubeconfig: str | os.PathLike[str] | None = None,
                 context: str | None = None, execution_class: str = "default",
                 user_agent: str = USER_AGENT) -> None:
        self._loop = _Loop()
        try:
            self._async = AsyncClient(namespace, kubeconfig=kubeconfig, context=context,
                                      execution_class=execution_class, user_agent=user_agent)
        except BaseException:
            self._loop.stop()
            raise
        self.namespace = self._async.namespace
        # Closed when collected or at exit too, so `Client().run(...)` in a script leaves nothing open.
        self._finalizer = weakref.finalize(self, _shut_down, self._loop, self._async)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut down the client's event loop and its HTTP session."""
        self._finalizer()

    def run(self, code: str, input: Any = None, *, execution_class: str | None = None,
            timeout_seconds: int | None = None, resources: Mapping[str, str] | None = None,
            retry: Mapping[str, int] | None = None, correlation_id: str | None = None,
            namespace: str | None = None, labels: Mapping[str, str] | None = None, wait: bool = True,
            wait_timeout: float | None = None, raise_on_failure: bool = True, delete: bool = False,
            on_output: OutputCallback | None = None, cancel_on_timeout: bool = True) -> ExecutionResult:
        """Create an Execution and wait for its result; see `AsyncClient.run`."""
        return self._loop.run(self._async.run(
            code, input, execution_class=execution_class, timeout_seconds=timeout_seconds, resources=resources,
            retry=retry, correlation_id=correlation_id, namespace=namespace, labels=labels, wait=wait,
            wait_timeout=wait_timeout, raise_on_failure=raise_on_failure, delete=delete, on_output=on_output,
            cancel_on_timeout=cancel_on_timeout))

    def submit(self, code: str, input: Any = None, **kwargs: Any) -> ExecutionHandle:
        """Create an Execution and return a handle; see `AsyncClient.submit`."""
        return ExecutionHandle(self, self._loop.run(self._async.submit(code, input, **kwargs)))

    def handle(self, name: str, namespace: str | None = None) -> ExecutionHandle:
        """A handle on an existing Execution; see `AsyncClient.handle`."""
        return ExecutionHandle(self, self._async.handle(name, namespace))

    def get(self, name: str, namespace: str | None = None) -> ExecutionResult:
        """The current result of an Execution; see `AsyncClient.get`."""
        return self._loop.run(self._async.get(name, namespace))

    def run_many(self, items: Iterable[str | tuple[str, Any] | Mapping[str, Any]], **kwargs: Any
                 ) -> Iterator[ExecutionResult]:
        """Submit a batch and yield each result as it finishes; see `AsyncClient.run_many`."""
        results: AsyncGenerator[ExecutionResult, None] = self._async.run_many(list(items), **kwargs)
        try:
            while True:
                try:
                    yield self._loop.run(_anext(results))
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run(results.aclose())


def _shut_down(loop: _Loop, client: AsyncClient) -> None:
    if loop.loop.is_running():
        loop.run(client.close())
    loop.stop()


async def _anext(iterator: AsyncIterator[T]) -> T:
    return await iterator.__anext__()


class ExecutionHandle:
    """One Execution: `wait()`, `cancel()`, `logs()`, `get()`, `delete()`."""

    def __init__(self, client: Client, handle: AsyncExecutionHandle) -> None:
        self._client = client
        self._handle = handle
        self.name = handle.name
        self.namespace = handle.namespace

    def __repr__(self) -> str:
        return repr(self._handle)

    def wait(self, *, wait_timeout: float | None = None, raise_on_failure: bool = True, delete: bool = False,
             on_output: OutputCallback | None = None, cancel_on_timeout: bool = True) -> ExecutionResult:
        """Wait for the terminal phase and return the result; see `AsyncExecutionHandle.wait`."""
        return self._client._loop.run(self._handle.wait(
            wait_timeout=wait_timeout, raise_on_failure=raise_on_failure, delete=delete, on_output=on_output,
            cancel_on_timeout=cancel_on_timeout))

    def cancel(self) -> None:
        """Ask the operator to cancel the Execution; see `AsyncExecutionHandle.cancel`."""
        self._client._loop.run(self._handle.cancel())

    def delete(self) -> None:
        """Delete the Execution; see `AsyncExecutionHandle.delete`."""
        self._client._loop.run(self._handle.delete())

    def logs(self) -> str:
        """The code's output so far; see `AsyncExecutionHandle.logs`."""
        return self._client._loop.run(self._handle.logs())

    def get(self) -> ExecutionResult:
        """The result as it stands now, finished or not."""
        return self._client._loop.run(self._handle.get())
