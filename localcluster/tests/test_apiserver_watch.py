"""The API server emulator: list and watch semantics, Table output, pod logs, request log and faults."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_apiserver_support import TABLE, WIDGET_CRD, Api, cm, collect, eventually, pod

from localcluster.apiserver import ApiServer, FaultRule
from localcluster.apiserver.bookmarks import next_bookmark

CM = "/api/v1/namespaces/default/configmaps"
PODS = "/api/v1/namespaces/default/pods"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ApiServer]:
    s = ApiServer(tmp_path, bookmark_interval=0.2, history_size=50, root_ca_publisher=False)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def api(server: ApiServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, server.url)


def names(items: list[dict[str, Any]]) -> list[str]:
    return [i["metadata"]["name"] for i in items]


# ---------------------------------------------------------------------------------------------- list
async def test_label_selectors(api: Api) -> None:
    await api.post(CM, cm("a", {"app": "x", "tier": "web"}))
    await api.post(CM, cm("b", {"app": "y"}))
    await api.post(CM, cm("c", {"tier": "db"}))
    cases = {
        "app=x": ["a"], "app==x": ["a"], "app!=x": ["b", "c"], "app in (x,y)": ["a", "b"],
        "app notin (x)": ["b", "c"], "tier": ["a", "c"], "!tier": ["b"], "app=x,tier=web": ["a"],
        "app,!tier": ["b"], "app in(x, y),!tier": ["b"],
    }
    for selector, expected in cases.items():
        _, lst = await api.get(f"{CM}?labelSelector={selector}")
        assert names(lst["items"]) == expected, selector


async def test_field_selectors(api: Api) -> None:
    await api.post(PODS, pod("on-node", nodeName="local-node"))
    await api.post(PODS, pod("pending"))
    await api.patch(f"{PODS}/on-node/status", {"status": {"phase": "Running"}})
    _, lst = await api.get(f"{PODS}?fieldSelector=spec.nodeName=local-node")
    assert names(lst["items"]) == ["on-node"]
    _, lst = await api.get(f"{PODS}?fieldSelector=status.phase!=Running")
    assert names(lst["items"]) == ["pending"]
    _, lst = await api.get("/api/v1/pods?fieldSelector=metadata.name=pending,metadata.namespace=default")
    assert names(lst["items"]) == ["pending"]


async def test_list_pagination_and_metadata(api: Api, server: ApiServer) -> None:
    for i in range(5):
        await api.post(CM, cm(f"c{i}"))
    _, page = await api.get(f"{CM}?limit=2")
    assert page["kind"] == "ConfigMapList"
    assert page["apiVersion"] == "v1"
    assert page["metadata"]["resourceVersion"] == str(server.store.rv)
    assert names(page["items"]) == ["c0", "c1"]
    assert page["metadata"]["remainingItemCount"] == 3
    seen = names(page["items"])
    while page["metadata"].get("continue"):
        _, page = await api.get(f"{CM}?limit=2&continue={page['metadata']['continue']}")
        seen += names(page["items"])
    assert seen == [f"c{i}" for i in range(5)]


async def test_list_pages_with_a_selector_have_no_remaining_count(api: Api) -> None:
    for i in range(4):
        await api.post(CM, cm(f"c{i}", {"set": "p" if i < 3 else "q"}))
    _, page = await api.get(f"{CM}?limit=2&labelSelector=set%3Dp")
    assert names(page["items"]) == ["c0", "c1"]
    assert "remainingItemCount" not in page["metadata"]
    assert "kind" not in page["items"][0]  # items of a built-in kind's list carry no kind/apiVersion
    _, page = await api.get(f"{CM}?limit=1&labelSelector=set%3Dp&continue={page['metadata']['continue']}")
    assert names(page["items"]) == ["c2"]
    assert page["metadata"].get("continue")  # c3 follows (not matching): the real server still hands a token
    _, page = await api.get(f"{CM}?limit=1&labelSelector=set%3Dp&continue={page['metadata']['continue']}")
    assert page["items"] == []
    assert "continue" not in page["metadata"]


async def test_list_at_an_exact_past_resource_version(api: Api, server: ApiServer) -> None:
    _, a = await api.post(CM, cm("a", k="1"))
    rv = a["metadata"]["resourceVersion"]
    await api.patch(f"{CM}/a", {"data": {"k": "2"}})
    await api.post(CM, cm("b"))
    status, old = await api.get(f"{CM}?resourceVersion={rv}&resourceVersionMatch=Exact")
    assert status == 200
    assert old["metadata"]["resourceVersion"] == rv
    assert [(i["metadata"]["name"], i["data"]) for i in old["items"]] == [("a", {"k": "1"})]
    status, body = await api.get(f"{CM}?resourceVersion=1&resourceVersionMatch=Exact")  # before the server was up
    assert (status, body["reason"], body["message"]) == (410, "Expired",
                                                         "The resourceVersion for the provided list is too old.")
    status, body = await api.get(f"{CM}?resourceVersion={server.store.rv + 1000}")
    assert (status, body["reason"]) == (504, "Timeout")
    assert body["details"]["retryAfterSeconds"] == 1


async def test_media_types_partial_metadata_and_406(api: Api) -> None:
    await api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", WIDGET_CRD)
    path = "/apis/test.dev/v1/namespaces/default/widgets"
    await api.post(path, {"metadata": {"name": "w"}, "spec": {"size": 7}})
    _, meta = await api.get(path, headers={"Accept": "application/json;as=PartialObjectMetadataList;v=v1;"
                                                     "g=meta.k8s.io"})
    assert (meta["kind"], meta["apiVersion"]) == ("PartialObjectMetadataList", "meta.k8s.io/v1")
    assert meta["items"][0]["kind"] == "PartialObjectMetadata"
    assert "spec" not in meta["items"][0]
    status, body = await api.get(path, headers={"Accept": "application/vnd.kubernetes.protobuf"}, raw=True)
    assert status == 406
    assert body.startswith(b"k8s\x00")
    assert b"NotAcceptable" in body  # a protobuf Status
    status, body = await api.get(path, headers={"Accept": "text/html"})
    assert (status, body["reason"]) == (406, "NotAcceptable")
    status, lst = await api.get(path, headers={"Accept": "application/vnd.kubernetes.protobuf, application/json"})
    assert status == 200
    assert lst["kind"] == "WidgetList"
    assert lst["metadata"]["continue"] == ""
    _, table = await api.get(path, headers={"Accept": "application/json;as=Table;v=v1beta1;g=meta.k8s.io"})
    assert table["apiVersion"] == "meta.k8s.io/v1beta1"
    assert table["rows"][0]["object"]["apiVersion"] == "meta.k8s.io/v1beta1"


async def test_list_across_namespaces(api: Api) -> None:
    await api.post(CM, cm("a"))
    await api.post("/api/v1/namespaces", {"metadata": {"name": "other"}})
    await api.post("/api/v1/namespaces/other/configmaps", cm("b"))
    _, lst = await api.get("/api/v1/configmaps")
    assert sorted(names(lst["items"])) == ["a", "b"]


# ---------------------------------------------------------------------------------------------- watch
async def test_watch_from_resource_version_replays_later_events(api: Api) -> None:
    _, a = await api.post(CM, cm("a"))
    rv = a["metadata"]["resourceVersion"]
    await api.patch(f"{CM}/a", {"data": {"x": "1"}})
    await api.delete(f"{CM}/a")
    events = await collect(api.watch(f"{CM}?watch=true&resourceVersion={rv}"), 2)
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]
    assert events[0]["object"]["data"] == {"x": "1"}
    assert int(events[1]["object"]["metadata"]["resourceVersion"]) > int(
        events[0]["object"]["metadata"]["resourceVersion"])


async def test_watch_without_resource_version_sends_current_state_then_live(api: Api) -> None:
    await api.post(CM, cm("a"))
    stream = api.watch(f"{CM}?watch=1")
    first = await collect(stream, 1)
    assert first[0]["type"] == "ADDED"
    assert first[0]["object"]["metadata"]["name"] == "a"

    async def later() -> None:
        await api.post(CM, cm("b"))

    task = asyncio.create_task(later())
    nxt = await collect(stream, 1)
    await task
    assert nxt[0]["type"] == "ADDED"
    assert nxt[0]["object"]["metadata"]["name"] == "b"


async def test_watch_burst_arrives_whole_and_in_order(api: Api) -> None:
    """Changes made faster than a watcher drains them are sent together, each event intact, in order."""
    stream = api.watch(f"{CM}?watch=1&resourceVersion=0")
    await api.post(CM, cm("seed"))
    await collect(stream, 1)
    await asyncio.gather(*(api.post(CM, cm(f"b{i:03d}")) for i in range(60)))
    events = await collect(stream, 60)
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs)
    assert len(set(rvs)) == 60
    assert sorted(e["object"]["metadata"]["name"] for e in events) == [f"b{i:03d}" for i in range(60)]


async def test_watch_too_old_resource_version_is_410(api: Api, server: ApiServer) -> None:
    _, a = await api.post(CM, cm("a"))
    old_rv = a["metadata"]["resourceVersion"]
    for i in range(120):  # history_size=50: the early events are compacted away
        await api.patch(f"{CM}/a", {"data": {"i": str(i)}})
    assert server.store.compacted_rv > int(old_rv)
    events = await collect(api.watch(f"{CM}?watch=true&resourceVersion={old_rv}"), 1)
    assert events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert status["kind"] == "Status"
    assert status["code"] == 410
    assert status["reason"] == "Expired"
    assert "too old resource version" in status["message"]


async def test_watch_label_selector_entry_and_exit(api: Api) -> None:
    _, a = await api.post(CM, cm("a", {"app": "x"}))
    rv = a["metadata"]["resourceVersion"]
    _, left = await api.patch(f"{CM}/a", {"metadata": {"labels": {"app": "y"}}})  # leaves the selector
    await api.patch(f"{CM}/a", {"data": {"k": "v"}})  # invisible
    await api.patch(f"{CM}/a", {"metadata": {"labels": {"app": "x"}}})  # enters again
    await api.post(CM, cm("other", {"app": "y"}))
    events = await collect(api.watch(f"{CM}?watch=true&resourceVersion={rv}&labelSelector=app%3Dx"), 2)
    assert [e["type"] for e in events] == ["DELETED", "ADDED"]
    # DELETED carries the object as it was (still matching), at the version of the change that took it out
    assert events[0]["object"]["metadata"]["labels"] == {"app": "x"}
    assert events[0]["object"]["metadata"]["resourceVersion"] == left["metadata"]["resourceVersion"]
    assert events[1]["object"]["data"] == {"k": "v"}


async def test_watch_field_selector_by_name_as_kubectl_wait_does(api: Api) -> None:
    await api.post(CM, cm("a"))
    _, b = await api.post(CM, cm("b"))
    rv = b["metadata"]["resourceVersion"]
    await api.patch(f"{CM}/a", {"data": {"x": "1"}})
    await api.patch(f"{CM}/b", {"data": {"x": "1"}})
    events = await collect(api.watch(f"{CM}?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3Db"), 1)
    assert events[0]["object"]["metadata"]["name"] == "b"


async def test_watch_bookmarks_and_initial_events(api: Api, server: ApiServer) -> None:
    await api.post("/api/v1/namespaces", {"metadata": {"name": "other"}})
    await api.post(CM, cm("b"))
    await api.post(CM, cm("a"))
    stream = api.watch(f"{CM}?watch=true&allowWatchBookmarks=true&sendInitialEvents=true"
                       "&resourceVersionMatch=NotOlderThan")
    events = await collect(stream, 3)
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [
        ("ADDED", "a"), ("ADDED", "b"), ("BOOKMARK", None)]  # in key order, then the end of the initial events
    assert events[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    # A change this watch does not see (another namespace) makes the next periodic bookmark carry its version.
    _, hidden = await api.post("/api/v1/namespaces/other/configmaps", cm("x"))
    events = await collect(stream, 1)
    assert events[0]["type"] == "BOOKMARK"
    assert events[0]["object"]["kind"] == "ConfigMap"
    assert events[0]["object"]["metadata"] == {"resourceVersion": hidden["metadata"]["resourceVersion"]}


async def test_watch_bookmarks_need_a_change_after_the_watch_version(api: Api, server: ApiServer) -> None:
    """A quiet watch gets no periodic bookmark (bookmark_interval=0.2 s here), only its end."""
    events = [e async for e in api.watch(f"{CM}?watch=true&allowWatchBookmarks=true&timeoutSeconds=1"
                                         f"&resourceVersion={server.store.rv}")]
    assert events == []


def test_bookmark_schedule_is_two_seconds_before_the_timeout_or_the_frequency() -> None:
    assert next_bookmark(100.0, 105.0, 60.0) == 103.0
    assert next_bookmark(100.0, 1000.0, 60.0) == 160.0
    assert next_bookmark(100.0, None, 60.0) == 160.0
    assert next_bookmark(104.0, 105.0, 60.0) is None  # the last 2 s of a watch get none


async def test_watch_timeout_seconds_ends_stream(api: Api, server: ApiServer) -> None:
    started = time.monotonic()
    events = [e async for e in api.watch(f"{CM}?watch=true&timeoutSeconds=1&resourceVersion={server.store.rv}")]
    assert events == []
    assert 0.9 < time.monotonic() - started < 5


async def test_drop_watches_closes_streams(api: Api, server: ApiServer) -> None:
    done = asyncio.Event()

    async def consume() -> list[dict[str, Any]]:
        out = [e async for e in api.watch(f"{CM}?watch=true&resourceVersion={server.store.rv}")]
        done.set()
        return out

    task = asyncio.create_task(consume())
    await eventually(lambda: server.store.watchers.get(("", "configmaps")))
    assert server.drop_watches("configmaps") == 1
    await asyncio.wait_for(done.wait(), 5)
    assert await task == []


async def test_watch_namespace_scoping(api: Api, server: ApiServer) -> None:
    await api.post("/api/v1/namespaces", {"metadata": {"name": "other"}})
    rv = server.store.rv
    await api.post("/api/v1/namespaces/other/configmaps", cm("x"))
    await api.post(CM, cm("y"))
    events = await collect(api.watch(f"{CM}?watch=true&resourceVersion={rv}"), 1)
    assert events[0]["object"]["metadata"]["name"] == "y"
    events = await collect(api.watch(f"/api/v1/configmaps?watch=true&resourceVersion={rv}"), 2)
    assert names([e["object"] for e in events]) == ["x", "y"]


# ---------------------------------------------------------------------------------------------- tables
async def test_table_for_custom_resource_printer_columns(api: Api) -> None:
    await api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", WIDGET_CRD)
    path = "/apis/test.dev/v1/namespaces/default/widgets"
    await api.post(path, {"metadata": {"name": "w"}, "spec": {"size": 7}})
    await api.patch(f"{path}/w/status", {"status": {"conditions": [{"type": "Other", "status": "False"},
                                                                   {"type": "Ready", "status": "True"}]}})
    _, table = await api.get(path, headers={"Accept": TABLE})
    assert table["kind"] == "Table"
    assert table["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Size", "Ready", "Age"]
    row = table["rows"][0]
    assert row["cells"][:3] == ["w", 7, "True"]
    assert row["cells"][3].endswith("s")
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "w"
    _, one = await api.get(f"{path}/w", headers={"Accept": TABLE})
    assert one["rows"][0]["cells"][0] == "w"


async def test_table_for_pods_and_namespaces(api: Api) -> None:
    await api.post(PODS, pod("p", nodeName="local-node"))
    await api.patch(f"{PODS}/p/status", {"status": {"phase": "Pending", "containerStatuses": [
        {"name": "main", "ready": False, "restartCount": 0,
         "state": {"waiting": {"reason": "ErrImagePull"}}}]}})
    _, table = await api.get(PODS, headers={"Accept": TABLE})
    assert [c["name"] for c in table["columnDefinitions"]][:5] == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert table["rows"][0]["cells"][:4] == ["p", "0/1", "ErrImagePull", "0"]
    _, nst = await api.get("/api/v1/namespaces", headers={"Accept": TABLE})
    assert ["default", "Active"] in [r["cells"][:2] for r in nst["rows"]]


async def test_table_watch_events(api: Api, server: ApiServer) -> None:
    rv = server.store.rv
    await api.post(CM, cm("a", k="v"))
    await api.post(CM, cm("b"))
    async with api.session.get(f"{server.url}{CM}?watch=true&resourceVersion={rv}",
                               headers={"Accept": TABLE}) as resp:
        lines = [await asyncio.wait_for(resp.content.readline(), 5) for _ in range(2)]
    first, second = (json.loads(line) for line in lines)
    assert first["type"] == "ADDED"
    assert first["object"]["kind"] == "Table"
    assert first["object"]["rows"][0]["cells"][:2] == ["a", 1]
    # the column definitions come with the first event only, as the real server sends them
    assert first["object"]["columnDefinitions"]
    assert second["object"]["columnDefinitions"] is None
    assert second["object"]["rows"][0]["cells"][0] == "b"


# ---------------------------------------------------------------------------------------------- logs
def write_log(state_dir: Path, p: dict[str, Any], lines: list[tuple[str, str]]) -> Path:
    meta = p["metadata"]
    d = state_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
    d.mkdir(parents=True, exist_ok=True)
    f = d / "main.log"
    with f.open("a") as fh:
        for i, (stream, text) in enumerate(lines):
            fh.write(json.dumps({"time": f"2026-01-01T00:00:0{i}.000000000Z", "stream": stream, "log": text}) + "\n")
    return f


async def test_pod_logs(api: Api, tmp_path: Path) -> None:
    _, p = await api.post(PODS, pod("p", nodeName="local-node"))
    status, body = await api.get(f"{PODS}/p/log")
    assert status == 400
    assert 'is waiting to start: ContainerCreating' in body["message"]
    write_log(tmp_path, p, [("stdout", "one\n"), ("stderr", "two\n"), ("stdout", "three\n")])
    status, text = await api.get(f"{PODS}/p/log", raw=True)
    assert status == 200
    assert text == b"one\ntwo\nthree\n"
    _, text = await api.get(f"{PODS}/p/log?tailLines=2", raw=True)
    assert text == b"two\nthree\n"
    _, text = await api.get(f"{PODS}/p/log?limitBytes=5", raw=True)
    assert text == b"one\nt"
    _, text = await api.get(f"{PODS}/p/log?timestamps=true&tailLines=1", raw=True)
    assert text == b"2026-01-01T00:00:02.000000000Z three\n"
    status, body = await api.get(f"{PODS}/p/log?container=nope")
    assert status == 400
    status, body = await api.get(f"{PODS}/p/log?previous=true")
    assert status == 400
    assert "previous terminated container" in body["message"]


async def test_pod_logs_follow_until_container_terminates(api: Api, server: ApiServer, tmp_path: Path) -> None:
    _, p = await api.post(PODS, pod("p", nodeName="local-node"))
    await api.patch(f"{PODS}/p/status", {"status": {"phase": "Running", "containerStatuses": [
        {"name": "main", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}})
    write_log(tmp_path, p, [("stdout", "first\n")])
    chunks: list[bytes] = []
    async with api.session.get(f"{server.url}{PODS}/p/log?follow=true") as resp:
        chunks.append(await asyncio.wait_for(resp.content.readline(), 5))
        write_log(tmp_path, p, [("stdout", "second\n")])
        chunks.append(await asyncio.wait_for(resp.content.readline(), 5))
        await api.patch(f"{PODS}/p/status", {"status": {"phase": "Succeeded", "containerStatuses": [
            {"name": "main", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}})
        rest = await asyncio.wait_for(resp.content.read(), 5)
    assert chunks == [b"first\n", b"second\n"]
    assert rest == b""


# ---------------------------------------------------------------------------------------------- log, counters, faults
async def test_request_log_and_counters(api: Api, server: ApiServer) -> None:
    before = len(server.request_log)
    async with api.session.post(f"{server.url}{CM}", json=cm("a"), headers={"User-Agent": "bench/1.0"}) as r:
        assert r.status == 201
    rec = server.request_log[before]
    assert (rec.method, rec.verb, rec.resource, rec.namespace, rec.user_agent, rec.code) == (
        "POST", "create", "configmaps", "default", "bench/1.0", 201)
    await api.patch(f"{CM}/a/", {"data": {"x": "1"}})
    assert server.count(verb="create", resource="configmaps", user_agent="bench") == 1
    assert server.count(verb="patch", resource="configmaps") == 1
    _, log = await api.get(f"/debug/requests?since={before}")
    assert log["items"][0]["user_agent"] == "bench/1.0"
    assert log["items"][0]["verb"] == "create"


async def test_fault_injection_429_with_retry_after_and_times(api: Api, server: ApiServer) -> None:
    server.faults.add(FaultRule(method="POST", resource="configmaps", name_pattern="*", status=429, retry_after=2,
                                times=1))
    async with api.session.post(f"{server.url}{CM}", json=cm("a")) as resp:
        body = await resp.json()
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"
        assert body["reason"] == "TooManyRequests"
        assert body["details"]["retryAfterSeconds"] == 2
    assert (await api.post(CM, cm("a")))[0] == 201


async def test_fault_injection_by_name_and_delay_over_http(api: Api, server: ApiServer) -> None:
    await api.post(CM, cm("a"))
    await api.post(CM, cm("b"))
    status, _ = await api.post("/debug/faults", [{"method": "PATCH", "resource": "configmaps", "namePattern": "b",
                                                  "status": 500}, {"verb": "get", "resource": "configmaps",
                                                                    "delay": 0.3, "times": 1}])
    assert status == 201
    assert (await api.post("/debug/faults", {"bogus": 1}))[0] == 400
    assert (await api.patch(f"{CM}/a", {"data": {"x": "1"}}))[0] == 200
    status, body = await api.patch(f"{CM}/b", {"data": {"x": "1"}})
    assert status == 500
    assert body["reason"] == "InternalError"
    started = time.monotonic()
    assert (await api.get(f"{CM}/a"))[0] == 200
    assert time.monotonic() - started >= 0.3
    await api.delete("/debug/faults")
    assert (await api.patch(f"{CM}/b", {"data": {"x": "1"}}))[0] == 200


async def test_drop_watches_over_http(api: Api, server: ApiServer) -> None:
    task = asyncio.create_task(collect(api.watch(f"{CM}?watch=true&resourceVersion={server.store.rv}"), 1))
    await eventually(lambda: server.store.watchers.get(("", "configmaps")))
    status, body = await api.post("/debug/drop-watches", {})
    assert status == 200
    assert body["dropped"] >= 1
    assert await asyncio.wait_for(task, 5) == []  # the stream ended without events


async def test_fault_drops_one_clients_watch_and_then_answers_410(api: Api, server: ApiServer) -> None:
    """`drop_after` closes a matching watch mid-stream; `user_agent` keeps other clients' watches out of it."""
    status, _ = await api.post("/debug/faults", [
        {"verb": "watch", "resource": "configmaps", "userAgent": "victim/", "dropAfter": 1.0, "times": 1},
        {"verb": "watch", "resource": "configmaps", "userAgent": "victim/", "status": 410, "times": 1},
    ])
    assert status == 201
    rv = server.store.rv
    url = f"{server.url}{CM}?watch=true&resourceVersion={rv}"
    no_timeout = aiohttp.ClientTimeout(total=None)

    async def events(agent: str) -> tuple[int, list[dict[str, Any]]]:
        async with api.session.get(url, headers={"User-Agent": agent}, timeout=no_timeout) as resp:
            return resp.status, [json.loads(line) async for line in resp.content if line.strip()]

    bystander = asyncio.create_task(events("bystander/1.0"))
    victim = asyncio.create_task(events("victim/1.0"))
    await eventually(lambda: len(server.store.watchers.get(("", "configmaps"), ())) == 2)
    await api.post(CM, cm("a"))
    code, seen = await asyncio.wait_for(victim, 5)  # closed by the fault, after the event it was sent
    assert code == 200
    assert [e["object"]["metadata"]["name"] for e in seen] == ["a"]
    assert not bystander.done()
    async with api.session.get(url, headers={"User-Agent": "victim/1.0"}) as resp:
        assert resp.status == 410
        assert (await resp.json())["reason"] == "Expired"
    async with api.session.get(f"{url}&timeoutSeconds=1",
                               headers={"User-Agent": "victim/1.0"}, timeout=no_timeout) as resp:
        assert resp.status == 200  # both rules are used up
    assert (await api.post("/debug/drop-watches", {}))[0] == 200
    code, seen = await asyncio.wait_for(bystander, 5)
    assert code == 200
    assert [e["object"]["metadata"]["name"] for e in seen] == ["a"]


async def test_request_log_is_bounded(tmp_path: Path) -> None:
    s = ApiServer(tmp_path, request_log_limit=10, root_ca_publisher=False)
    await s.start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, s.url)
            for _ in range(25):
                await api.get("/api/v1/namespaces/default")
            assert len(s.request_log) <= 10
            _, log = await api.get("/debug/requests?since=24")
            assert log["total"] == 25
            assert len(log["items"]) == 1  # this request is logged once answered
    finally:
        await s.stop()


async def test_replay_of_old_slimmed_events_keeps_selector_semantics(api: Api, server: ApiServer) -> None:
    server.store.RECENT = 2  # older events keep only their bytes and selector fields
    _, a = await api.post(CM, cm("a", {"app": "x"}, k="v"))
    rv = a["metadata"]["resourceVersion"]
    await api.patch(f"{CM}/a", {"metadata": {"labels": {"app": "y"}}})
    await api.patch(f"{CM}/a", {"metadata": {"labels": {"app": "x"}}, "data": {"k": "w"}})
    for i in range(5):
        await api.post(CM, cm(f"filler{i}"))
    assert server.store.history[-8].slim
    events = await collect(api.watch(f"{CM}?watch=true&resourceVersion={rv}&labelSelector=app%3Dx"), 2)
    assert [e["type"] for e in events] == ["DELETED", "ADDED"]
    assert events[1]["object"]["data"] == {"k": "w"}  # the full object, from the stored bytes


async def test_history_is_bounded_by_bytes(tmp_path: Path) -> None:
    s = ApiServer(tmp_path, history_bytes=20_000, root_ca_publisher=False)
    await s.start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, s.url)
            await api.post(CM, cm("big", blob="x" * 1000))
            for i in range(60):
                await api.patch(f"{CM}/big", {"data": {"i": str(i)}})
            held = sum(len(e.obj_bytes) for e in s.store.history)
            assert held <= 20_000
            assert s.store.compacted_rv > 0
            events = await collect(api.watch(f"{CM}?watch=true&resourceVersion=1"), 1)
            assert events[0]["type"] == "ERROR"
            assert events[0]["object"]["code"] == 410
    finally:
        await s.stop()
