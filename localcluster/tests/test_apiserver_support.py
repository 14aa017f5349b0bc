"""Shared helpers for the API server emulator tests (no tests here): an aiohttp client and fixtures data."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from localcluster.testing import wait_until

JSON = "application/json"
MERGE = "application/merge-patch+json"
JSONPATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.dev"},
    "spec": {
        "group": "test.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"],
                  "categories": ["testing"]},
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 300},
                            "color": {"type": "string", "default": "blue", "enum": ["blue", "red"]},
                            "frozen": {"type": "string", "x-kubernetes-validations": [
                                {"rule": "self == oldSelf", "message": "frozen is immutable"}]},
                        },
                    },
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            }},
        }],
    },
}


class Api:
    """Thin request helper: returns (status, parsed JSON body or text)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def req(self, method: str, path: str, body: Any = None, ctype: str = JSON,
                  headers: dict[str, str] | None = None, raw: bool = False) -> tuple[int, Any]:
        hdrs = {"Content-Type": ctype, **(headers or {})}
        data = None
        if body is not None:
            data = body if isinstance(body, str | bytes) else json.dumps(body)
        async with self.session.request(method, self.url + path, data=data, headers=hdrs) as resp:
            text = await resp.read()
            if raw:
                return resp.status, text
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text.decode()

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.req("GET", path, **kw)

    async def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return await self.req("POST", path, body, **kw)

    async def put(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return await self.req("PUT", path, body, **kw)

    async def patch(self, path: str, body: Any, ctype: str = MERGE, **kw: Any) -> tuple[int, Any]:
        return await self.req("PATCH", path, body, ctype=ctype, **kw)

    async def delete(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.req("DELETE", path, body, **kw)

    async def watch(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """Yield watch events until the server closes the stream."""
        async with self.session.get(self.url + path, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)


async def collect(stream: AsyncIterator[dict[str, Any]], n: int, deadline: float = 10.0) -> list[dict[str, Any]]:
    """The first n events of a watch stream, failing after `deadline` seconds."""
    out: list[dict[str, Any]] = []

    async def run() -> None:
        async for ev in stream:
            out.append(ev)
            if len(out) >= n:
                return

    await asyncio.wait_for(run(), deadline)
    return out


async def eventually(check: Callable[[], Any], within: float = 10.0, interval: float = 0.02) -> Any:
    """Poll an (a)sync condition until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(interval)


def cm(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}},
            "data": data}


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}], **spec}}


def wait_for(check: Callable[[], Any], within: float = 30.0) -> Any:
    """`check()` once it is truthy, polled every 50 ms; AssertionError after `within` seconds."""
    return wait_until(check, timeout=within, what="the condition", interval=0.05)
