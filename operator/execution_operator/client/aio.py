"""`AsyncClient`: create Executions, wait for them on a watch, follow their output (asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import aiohttp

from execution_operator import __version__
from execution_operator.api import API_VERSION, EXECUTIONS, LABEL_CLIENT_BATCH, TERMINAL_PHASES, Kind
from execution_operator.client import apicalls
from execution_operator.client.apicalls import CRD_NAME, ApiCalls
from execution_operator.client.credentials import load_credentials
from execution_operator.client.exceptions import ClientError, WaitTimeout
from execution_operator.client.follower import RUNNER_LINE_PREFIXES, OutputCallback, OutputFollower
from execution_operator.client.result import ExecutionResult
from execution_operator.k8s import MERGE_PATCH, ApiError, path_for

USER_AGENT = f"execution-operator-client/{__version__}"
#: Set on every Execution of one `run_many` batch, so one watch with a label selector follows them all.
BATCH_LABEL = LABEL_CLIENT_BATCH

#: How long a cancel after a `WaitTimeout` is given to be recorded before the exception is raised.
CANCEL_GRACE_SECONDS = 30.0


def new_name(prefix: str = "run") -> str:
    """A client-generated name, so a create retried after a lost answer cannot make a second object."""
    return f"{prefix}-{secrets.token_hex(5)}"


def execution_body(code: str, input: Any = None, *, name: str, execution_class: str = "default",
                   timeout_seconds: int | None = None, resources: Mapping[str, str] | None = None,
                   retry: Mapping[str, int] | None = None, correlation_id: str | None = None,
                   labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Execution manifest for `run`/`submit`'s arguments (unset fields keep the API's defaults)."""
    spec: dict[str, Any] = {"code": code, "executionClassName": execution_class}
    optional = {"input": input, "timeoutSeconds": timeout_seconds, "resources": dict(resources or {}) or None,
                "retry": dict(retry or {}) or None, "correlationId": correlation_id}
    spec.update({k: v for k, v in optional.items() if v is not None})
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    return {"apiVersion": API_VERSION, "kind": Kind.EXECUTION, "metadata": metadata, "spec": spec}


class AsyncClient:
    """Run Python code as Executions and get typed results back (asyncio).

    Credentials are kubectl's (kubeconfig, exec plugins, in-cluster service account). Use one client
    for many calls: it keeps one connection pool. Close it with `await client.close()` or `async with`.
    """

    def __init__(self, namespace: str | None = None, *, kubeconfig: str | os.PathLike[str] | None = None,
                 context: str | None = None, execution_class: str = "default",
                 user_agent: str = USER_AGENT) -> None:
        credentials = load_credentials(kubeconfig, context)
        self.namespace = namespace or credentials.namespace
        self.execution_class = execution_class
        self._api = ApiCalls(credentials, user_agent)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session; the client cannot be used afterwards."""
        await self._api.kube.close()

    # ---------------------------------------------------------------------------------------------- calls
    async def run(self, code: str, input: Any = None, *, execution_class: str | None = None,
                  timeout_seconds: int | None = None, resources: Mapping[str, str] | None = None,
                  retry: Mapping[str, int] | None = None, correlation_id: str | None = None,
                  namespace: str | None = None, labels: Mapping[str, str] | None = None, wait: bool = True,
                  wait_timeout: float | None = None, raise_on_failure: bool = True, delete: bool = False,
                  on_output: OutputCallback | None = None, cancel_on_timeout: bool = True) -> ExecutionResult:
        """Create an Execution and (unless `wait=False`) wait for its result.

        Raises the `ExecutionFailed` subclass of its error family unless `raise_on_failure=False`,
        `WaitTimeout` when `wait_timeout` passes (cancelling it unless `cancel_on_timeout=False`).
        """
        handle = await self.submit(code, input, execution_class=execution_class, timeout_seconds=timeout_seconds,
                                   resources=resources, retry=retry, correlation_id=correlation_id,
                                   namespace=namespace, labels=labels)
        if not wait:
            return await handle.get()
        return await handle.wait(wait_timeout=wait_timeout, raise_on_failure=raise_on_failure, delete=delete,
                                 on_output=on_output, cancel_on_timeout=cancel_on_timeout)

    async def submit(self, code: str, input: Any = None, *, execution_class: str | None = None,
                     timeout_seconds: int | None = None, resources: Mapping[str, str] | None = None,
                     retry: Mapping[str, int] | None = None, correlation_id: str | None = None,
                     namespace: str | None = None, labels: Mapping[str, str] | None = None,
                     name: str | None = None) -> AsyncExecutionHandle:
        """Create an Execution and return a handle to wait for it, cancel it or read its logs."""
        ns = namespace or self.namespace
        for _ in range(3):
            chosen = name or new_name()
            body = execution_body(code, input, name=chosen, execution_class=execution_class or self.execution_class,
                                  timeout_seconds=timeout_seconds, resources=resources, retry=retry,
                                  correlation_id=correlation_id, labels=labels)
            created = await self._create(ns, body)
            if created is not None:
                return AsyncExecutionHandle(self, chosen, ns, resource_version=created)
            if name:
                break
        raise ClientError(f"An Execution named {name or chosen} already exists in namespace {ns}",
                          reason="Conflict", http_status=409)

    async def _create(self, namespace: str, body: dict[str, Any]) -> str | None:
        """Create; the new object's resourceVersion ("" if unknown), None when the name was someone else's."""
        path = path_for(API_VERSION, EXECUTIONS, namespace)
        tries = 0

        async def create() -> Any:
            nonlocal tries
            tries += 1
            return await self._api.kube.post(path, body)

        try:
            created = await self._api.call(f"create {CRD_NAME}", namespace, None, create)
        except ClientError as e:
            if e.http_status != 409:
                raise
            if tries == 1:
                return None
            return ""  # a retried create whose first try went through: the random name is ours
        return str((created.get("metadata") or {}).get("resourceVersion") or "")

    def handle(self, name: str, namespace: str | None = None) -> AsyncExecutionHandle:
        """A handle on an existing Execution (created elsewhere, or by an earlier process)."""
        return AsyncExecutionHandle(self, name, namespace or self.namespace)

    async def get(self, name: str, namespace: str | None = None) -> ExecutionResult:
        """The Execution's result as it is now (`finished` says whether it is final)."""
        return ExecutionResult.from_body(await self._get(namespace or self.namespace, name))

    async def run_many(self, items: Iterable[str | tuple[str, Any] | Mapping[str, Any]], *,
                       namespace: str | None = None, wait_timeout: float | None = None,
                       cancel_on_timeout: bool = True, delete: bool = False,
                       **common: Any) -> AsyncGenerator[ExecutionResult, None]:
        """Submit a batch and yield each result as it finishes (failures included: see `success`).

        An item is code, `(code, input)`, or a mapping of `submit`'s arguments; `common` holds the
        arguments shared by all. One watch follows the whole batch (a label selector).
        """
        ns = namespace or self.namespace
        batch = uuid.uuid4().hex[:16]
        requests: list[dict[str, Any]] = []
        for item in items:
            args = dict(common)
            if isinstance(item, str):
                args["code"] = item
            elif isinstance(item, tuple):
                args["code"], args["input"] = item
            else:
                args.update(item)
            args["labels"] = {**(args.get("labels") or {}), BATCH_LABEL: batch}
            requests.append(args)
        creating = asyncio.Semaphore(16)

        async def create(args: dict[str, Any]) -> str:
            async with creating:
                return (await self.submit(namespace=ns, **args)).name

        created = await asyncio.gather(*(create(args) for args in requests), return_exceptions=True)
        pending = {name for name in created if isinstance(name, str)}
        failure = next((e for e in created if isinstance(e, BaseException)), None)
        if failure is not None:
            # One request was refused: the batch is not run by halves.
            await asyncio.gather(*(self.handle(n, ns).cancel() for n in pending), return_exceptions=True)
            raise failure
        finished: asyncio.Queue[ExecutionResult | BaseException] = asyncio.Queue()

        def seen(event: str, body: dict[str, Any]) -> bool:
            name = (body.get("metadata") or {}).get("name")
            if name in pending and (event == "DELETED" or _phase(body) in TERMINAL_PHASES):
                pending.discard(name)
                finished.put_nowait(ExecutionResult.from_body(body))
            return not pending

        async def watch_batch() -> None:
            try:
                await self._watch(ns, {"labelSelector": f"{BATCH_LABEL}={batch}"}, seen)
            except Exception as e:  # noqa: BLE001 - handed to the waiting caller, who raises it
                finished.put_nowait(e)

        watcher = asyncio.create_task(watch_batch())
        deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
        try:
            while pending or not finished.empty():
                try:
                    outcome = await asyncio.wait_for(finished.get(), None if deadline is None
                                                  else max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    if cancel_on_timeout:
                        await asyncio.gather(*(self.handle(n, ns).cancel() for n in pending))
                    raise WaitTimeout(sorted(pending)[0], ns, None, waited=wait_timeout or 0.0,
                                      cancelled=cancel_on_timeout) from None
                if isinstance(outcome, BaseException):
                    raise outcome
                if delete:
                    await self.handle(outcome.name, ns).delete()
                yield outcome
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    # ---------------------------------------------------------------------------------------------- plumbing
    async def _get(self, namespace: str, name: str) -> dict[str, Any]:
        body: dict[str, Any] = await self._api.call(
            f"get {CRD_NAME}", namespace, name,
            lambda: self._api.kube.get(path_for(API_VERSION, EXECUTIONS, namespace, name)))
        return body

    async def _watch(self, namespace: str, selector: Mapping[str, str],
                     seen: Callable[[str, dict[str, Any]], bool], *, since: str | None = None) -> None:
        """List, then watch, the Executions matching `selector` until `seen(event, body)` returns True.

        `since` (the resourceVersion a create answered) starts the watch without a list: nothing
        older can matter. A watch that ends or drops is resumed from the last resourceVersion seen
        (bookmarks included); one answered 410 Gone (too old) is replaced by a new list, as informers do.
        """
        path = path_for(API_VERSION, EXECUTIONS, namespace)
        rv: str | None = since or None
        failures = 0
        while True:
            if rv is None:
                done, rv = await self._list_once(namespace, path, selector, seen)
                if done:
                    return
                if rv is None:
                    continue
            opened = time.monotonic()
            try:
                done, rv, events = await self._watch_once(namespace, path, selector, rv, seen)
                if done:
                    return
                if events or time.monotonic() - opened > 5:
                    failures = 0
                else:  # closed at once with nothing in it (a proxy cutting streams): do not spin
                    failures = min(failures + 1, apicalls.REQUEST_ATTEMPTS)
                    await asyncio.sleep(min(0.1 * 2 ** failures, 3.0))
            except ApiError as e:
                if e.status == 410:
                    rv = None
                    continue
                if e.status not in (429, 500, 502, 503, 504) or failures >= apicalls.REQUEST_ATTEMPTS:
                    raise self._api.translate(e, f"watch {CRD_NAME}", namespace, None) from None
                failures += 1
                await asyncio.sleep(min(0.2 * 2 ** failures, 3.0))
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                # A dropped stream (reset, cut mid-line, read timeout): resume from the last resourceVersion.
                failures += 1
                if failures > apicalls.REQUEST_ATTEMPTS:
                    raise self._api.unreachable(e) from None
                await asyncio.sleep(min(0.1 * 2 ** failures, 3.0))

    async def _list_once(self, namespace: str, path: str, selector: Mapping[str, str],
                         seen: Callable[[str, dict[str, Any]], bool]) -> tuple[bool, str | None]:
        """One list: (whether `seen` was satisfied, the list's resourceVersion to watch from)."""
        listed = await self._api.call(f"list {CRD_NAME}", namespace, None,
                                      lambda: self._api.kube.get(path, dict(selector)))
        for item in listed.get("items") or []:
            if seen("ADDED", item):
                return True, None
        return False, str((listed.get("metadata") or {}).get("resourceVersion") or "") or None

    async def _watch_once(self, namespace: str, path: str, selector: Mapping[str, str], rv: str,
                          seen: Callable[[str, dict[str, Any]], bool]) -> tuple[bool, str | None, int]:
        """One watch stream from `rv`.

        Returns (whether `seen` was satisfied, the resourceVersion to resume from — None after a 410 Gone,
        so the caller lists again — and how many events came).
        """
        params = {**selector, "watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(random.randint(240, 300))}
        events = 0
        async with contextlib.aclosing(self._api.kube.lines(path, params, read_timeout=360)) as stream:
            async for line in stream:
                if not line.strip():
                    continue
                events += 1
                event = json.loads(line)
                kind, body = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if body.get("code") == 410:
                        return False, None, events
                    raise self._api.translate(ApiError(int(body.get("code") or 500), body),
                                              f"watch {CRD_NAME}", namespace, None)
                rv = str((body.get("metadata") or {}).get("resourceVersion") or rv)
                if kind != "BOOKMARK" and seen(str(kind), body):
                    return True, rv, events
        return False, rv, events


class AsyncExecutionHandle:
    """One Execution: wait for it, cancel it, read its logs."""

    def __init__(self, client: AsyncClient, name: str, namespace: str, *, resource_version: str | None = None
                 ) -> None:
        self.client = client
        self.name = name
        self.namespace = namespace
        #: The version this client created: the first wait watches from it instead of listing.
        self._created_version = resource_version or None

    def __repr__(self) -> str:
        return f"<Execution {self.namespace}/{self.name}>"

    async def get(self) -> ExecutionResult:
        """The result as it stands now, finished or not."""
        return await self.client.get(self.name, self.namespace)

    async def wait(self, *, wait_timeout: float | None = None, raise_on_failure: bool = True,
                   delete: bool = False, on_output: OutputCallback | None = None,
                   cancel_on_timeout: bool = True) -> ExecutionResult:
        """Wait on a watch for the terminal phase and return the result (see `AsyncClient.run`)."""
        last: dict[str, Any] = {}
        try:
            body = await asyncio.wait_for(self._until_finished(on_output, last), wait_timeout)
        except TimeoutError:
            raise await self._timed_out(wait_timeout or 0.0, last, cancel_on_timeout) from None
        result = ExecutionResult.from_body(body)
        if delete:
            await self.delete()
        return result.raise_for_failure() if raise_on_failure else result

    async def output(self) -> AsyncIterator[str]:
        """The code's stdout and stderr lines as they are printed, until the Execution finishes."""
        lines: asyncio.Queue[str | None] = asyncio.Queue()

        async def waiter() -> None:
            try:
                await self._until_finished(lines.put_nowait, {})
            finally:
                lines.put_nowait(None)

        task = asyncio.create_task(waiter())
        try:
            while (line := await lines.get()) is not None:
                yield line
            await task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def cancel(self) -> None:
        """Ask the operator to stop it (`spec.cancel: true`); it then ends `Cancelled`."""
        path = path_for(API_VERSION, EXECUTIONS, self.namespace, self.name)
        await self.client._api.call(f"patch {CRD_NAME}", self.namespace, self.name,
                                    lambda: self.client._api.kube.patch(path, {"spec": {"cancel": True}},
                                                                        content_type=MERGE_PATCH))

    async def delete(self) -> None:
        """Delete the Execution (its DeadLetter, if any, stays)."""
        path = path_for(API_VERSION, EXECUTIONS, self.namespace, self.name)
        with contextlib.suppress(ClientError):
            await self.client._api.call(f"delete {CRD_NAME}", self.namespace, self.name,
                                        lambda: self.client._api.kube.delete(path, {"propagationPolicy":
                                                                                    "Background"}))

    async def logs(self) -> str:
        """The current pod's log without the runner's report lines.

        Once the pod is gone (the operator deletes a pod when its attempt is recorded), the recorded stdout
        and stderr tails.
        """
        body = await self.client._get(self.namespace, self.name)
        status = body.get("status") or {}
        pod = status.get("podName")
        if pod:
            api = self.client._api
            path = path_for("v1", "pods", self.namespace, pod, "log")
            try:
                text = await api.call("get pods/log", self.namespace, pod, lambda: api.kube.get_text(path))
                kept = (line for line in text.splitlines() if not line.startswith(RUNNER_LINE_PREFIXES))
                return "".join(line + "\n" for line in kept)
            except ClientError as e:
                if e.http_status not in (400, 404):  # not yet started, or gone: the recorded tails
                    raise
        return (status.get("stdout") or "") + (status.get("stderr") or "")

    # ---------------------------------------------------------------------------------------------- internals
    async def _until_finished(self, on_output: OutputCallback | None, last: dict[str, Any]) -> dict[str, Any]:
        """Watch until terminal; `last` holds the latest body seen (for a timeout's message)."""
        follower = OutputFollower(self.client._api, self.namespace, on_output) if on_output else None

        def seen(event: str, body: dict[str, Any]) -> bool:
            if (body.get("metadata") or {}).get("name") != self.name:
                return False
            if event == "DELETED":
                raise ClientError(f"Execution {self.namespace}/{self.name} was deleted before it finished",
                                  reason="Deleted")
            last.clear()
            last.update(body)
            if follower is not None:
                follower.pod((body.get("status") or {}).get("podName"))
            return _phase(body) in TERMINAL_PHASES

        try:
            since, self._created_version = self._created_version, None
            await self.client._watch(self.namespace, {"fieldSelector": f"metadata.name={self.name}"}, seen,
                                     since=since)
            if follower is not None:
                await follower.finish(last)
        finally:
            if follower is not None:
                await follower.stop()
        return last

    async def _timed_out(self, waited: float, last: dict[str, Any], cancel: bool) -> WaitTimeout:
        phase = _phase(last) if last else None
        if not cancel:
            return WaitTimeout(self.name, self.namespace, phase, waited=waited, cancelled=False,
                               result=ExecutionResult.from_body(last) if last else None)
        await self.cancel()
        seen: dict[str, Any] = {}
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._until_finished(None, seen), CANCEL_GRACE_SECONDS)
        final = seen or last
        return WaitTimeout(self.name, self.namespace, phase, waited=waited, cancelled=True,
                           result=ExecutionResult.from_body(final) if final else None)


def _phase(body: Mapping[str, Any]) -> str | None:
    phase = (body.get("status") or {}).get("phase")
    return str(phase) if phase else None
