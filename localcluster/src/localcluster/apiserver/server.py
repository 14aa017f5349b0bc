"""The API server emulator: HTTP routing, object semantics, watch streaming, logs, debug endpoints."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import importlib
import json
import logging
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from localcluster.apiserver import discovery, openapi, protobuf
from localcluster.apiserver.attach import serve_pod_attach
from localcluster.apiserver.faults import FaultRule, Faults
from localcluster.apiserver.logs import serve_pod_log
from localcluster.apiserver.patch import json_copy, json_patch, merge_patch, strategic_merge
from localcluster.apiserver.resources import Registry, ResourceInfo, resources_from_crd
from localcluster.apiserver.scale import serve_scale
from localcluster.apiserver.selectors import combine, parse_field_selector, parse_label_selector
from localcluster.apiserver.status import ApiError, already_exists, conflict, gone, invalid, not_found
from localcluster.apiserver.store import Event, Store, Watcher, dumps
from localcluster.apiserver.table import make_table

log = logging.getLogger(__name__)
JSON = "application/json"
SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
TERMINAL_PHASES = ("Succeeded", "Failed")
# Kinds whose deletion finishes when their contents are gone, not when finalizers empty.
_SELF_FINALIZING = {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")}


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339_in(seconds: int) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rand_suffix(n: int = 5) -> str:
    # The real server avoids vowels and confusable digits in generated names.
    return "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


@dataclass
class ReqInfo:
    """What a URL addresses: a resource request, or something else (discovery, version...)."""

    is_resource: bool = False
    group: str = ""
    version: str = ""
    plural: str = ""
    namespace: str = ""
    name: str = ""
    sub: str = ""
    legacy_watch: bool = False


def parse_path(path: str) -> ReqInfo:
    parts = [p for p in path.split("/") if p]
    if not parts:
        return ReqInfo()
    if parts[0] == "api" and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return ReqInfo()
    ri = ReqInfo(is_resource=True, group=group, version=version)
    if rest and rest[0] == "watch":
        ri.legacy_watch = True
        rest = rest[1:]
    if not rest:
        return ReqInfo()
    if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
        ri.namespace = rest[1]
        ri.plural = rest[2]
        ri.name = rest[3] if len(rest) > 3 else ""
        ri.sub = "/".join(rest[4:])
    else:
        ri.plural = rest[0]
        ri.name = rest[1] if len(rest) > 1 else ""
        ri.sub = "/".join(rest[2:])
    return ri


def request_verb(method: str, ri: ReqInfo, query: Any) -> str:
    if not ri.is_resource:
        return method.lower()
    watch = ri.legacy_watch or query.get("watch") in ("true", "1")
    if method == "GET":
        if watch:
            return "watch"
        return "get" if ri.name else "list"
    return {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if ri.name else "deletecollection",
    }.get(method, method.lower())


@dataclass(slots=True)
class RequestRecord:
    """One served request, as the benchmark and tests read it."""

    method: str
    path: str
    resource: str
    subresource: str
    namespace: str
    name: str
    verb: str
    user_agent: str
    code: int
    time: float
    duration: float = 0.0
    content_type: str = ""

    @property
    def status(self) -> int:
        """The HTTP status code (alias of `code`)."""
        return self.code

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.code}


RI_KEY = web.RequestKey("ri", ReqInfo)
VERB_KEY = web.RequestKey("verb", str)
RECORDED_KEY = web.RequestKey("recorded", bool)
FAULT_KEY = web.RequestKey("fault", FaultRule)


_SCHEMA: list[Any] = []


def _schema_module() -> Any:
    """The CRD schema functions, if present (they are developed separately); imported once."""
    if not _SCHEMA:
        try:
            _SCHEMA.append(importlib.import_module("localcluster.schema"))
        except ImportError:
            return None
    return _SCHEMA[0]


def _not_json_number(word: str) -> Any:
    """NaN and Infinity are not JSON: refused as the API server's decoder refuses them."""
    raise ValueError(f"invalid character '{word[0]}' looking for beginning of value")


class ApiServer:
    """An in-memory Kubernetes API server on aiohttp.

    `store` holds the objects, `request_log`/`counters` record traffic, `faults` injects failures.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        bookmark_interval: float = 5.0,
        history_size: int = 10000,
        history_bytes: int = 128 * 1024 * 1024,
        git_version: str = "v1.35.0",
        request_log_limit: int = 200_000,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.registry = Registry()
        self.store = Store(history_size, history_bytes)
        self.faults = Faults()
        self.request_log: list[RequestRecord] = []
        # The log keeps the newest records; `request_log_offset` counts those dropped before them.
        self.request_log_limit = request_log_limit
        self.request_log_offset = 0
        self.counters: Counter[tuple[str, str, str]] = Counter()
        self.bookmark_interval = bookmark_interval
        self.git_version = git_version
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._dependents: dict[str, set[tuple[tuple[str, str], str, str]]] = {}
        self._foreground: dict[str, tuple[tuple[str, str], str, str]] = {}  # owner uid -> owner ref
        self._service_ips = 0
        self._uids: dict[str, tuple[tuple[str, str], str, str]] = {}  # uid -> (store key, namespace, name)
        self.gc_delay = 0.2  # seconds before the garbage collector notices dangling owner references
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bootstrap()

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        _schema_module()  # import (and pay for cel-python) before serving, not inside the first CR request
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        sock = server.sockets[0]  # type: ignore[attr-defined]
        actual = sock.getsockname()[1]
        self.url = f"http://{host}:{actual}"
        self._loop = asyncio.get_running_loop()
        return self.url

    async def stop(self) -> None:
        self._stopping = True
        self.store.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def drop_watches(self, resource: str | None = None) -> int:
        """Close open watch streams (of one plural, or `plural.group`, or all); returns how many.

        Safe to call from another thread (e.g. a synchronous test): it then runs on the server's loop.
        """
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                current = asyncio.get_running_loop()
            except RuntimeError:
                current = None
            if current is not loop:
                async def _drop() -> int:
                    return self._drop_watches(resource)

                return asyncio.run_coroutine_threadsafe(_drop(), loop).result(10)
        return self._drop_watches(resource)

    def _drop_watches(self, resource: str | None) -> int:
        if resource is None:
            return self.store.drop_watches()
        n = 0
        plural, _, group = resource.partition(".")
        for key in list(self.store.watchers):
            if key[1] == plural and (not group or key[0] == group):
                n += self.store.drop_watches(key)
        return n

    def count(self, verb: str | None = None, resource: str | None = None, user_agent: str | None = None) -> int:
        """Requests served, filtered by verb / resource / user-agent prefix."""
        return sum(
            n for (v, r, ua), n in self.counters.items()
            if (verb is None or v == verb) and (resource is None or r == resource)
            and (user_agent is None or ua.startswith(user_agent))
        )

    # ------------------------------------------------------------------------------ bootstrap
    def _bootstrap(self) -> None:
        ns_info = self.registry.get("", "v1", "namespaces")
        assert ns_info is not None
        for ns in DEFAULT_NAMESPACES:
            self.create_object(ns_info, "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # ------------------------------------------------------------------------------ HTTP plumbing
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.time()
        ri = parse_path(request.path)
        verb = request_verb(request.method, ri, request.query)
        ua = request.headers.get("User-Agent", "")
        request[RI_KEY] = ri
        request[VERB_KEY] = verb
        try:
            rule = None
            if ri.is_resource:
                rule = self.faults.match(request.method, verb, ri.plural, ri.sub, ri.namespace, ri.name, ua)
            if rule is not None:
                request[FAULT_KEY] = rule
                if rule.delay:
                    await asyncio.sleep(rule.delay)
                if rule.status:
                    headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else {}
                    msg = rule.message or {
                        429: "the server has received too many requests and has asked us to try again later",
                        500: "an error on the server (injected) has prevented the request from succeeding",
                        409: "the object has been modified; please apply your changes to the latest version "
                             "and try again",
                    }.get(rule.status, "injected fault")
                    details = {"retryAfterSeconds": rule.retry_after} if rule.retry_after is not None else None
                    raise ApiError(rule.status, msg, details=details, headers=headers)
            resp = await handler(request)
        except ApiError as e:
            resp = web.Response(body=dumps(e.to_status()), status=e.code, content_type=JSON, headers=e.headers)
        except web.HTTPException:
            raise
        except Exception as e:
            err = ApiError(500, f"Internal error occurred: {type(e).__name__}: {e}")
            resp = web.Response(body=dumps(err.to_status()), status=500, content_type=JSON)
        if not request.get(RECORDED_KEY):
            self._record(request, ri, verb, ua, resp.status, started)
        return resp

    def _record(self, request: web.Request, ri: ReqInfo, verb: str, ua: str, code: int, started: float) -> None:
        rec = RequestRecord(
            method=request.method, path=request.path_qs, resource=ri.plural, subresource=ri.sub,
            namespace=ri.namespace, name=ri.name, verb=verb, user_agent=ua, code=code, time=started,
            duration=time.time() - started, content_type=request.headers.get("Content-Type", ""),
        )
        self.request_log.append(rec)
        if len(self.request_log) > self.request_log_limit:
            drop = len(self.request_log) // 2
            del self.request_log[:drop]
            self.request_log_offset += drop
        self.counters[(verb, ri.plural, ua)] += 1

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        ri = request[RI_KEY]
        if ri.is_resource:
            return await self._resource(request, ri)
        if path.startswith("/debug/"):
            return await self._debug(request, path)
        if path in ("/healthz", "/readyz", "/livez") or path.startswith(("/healthz/", "/readyz/", "/livez/")):
            return web.Response(text="ok")
        if path == "/version":
            return self._json({
                "major": "1", "minor": self.git_version.split(".")[1], "gitVersion": self.git_version,
                "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.25.0", "compiler": "gc", "platform": "linux/amd64",
                "emulationMajor": "1", "emulationMinor": self.git_version.split(".")[1],
            })
        if path.startswith("/openapi/"):
            doc = openapi.serve(self.registry, path, request.query)
            if doc is None:
                raise ApiError(404, "the server could not find the requested resource", "NotFound")
            return self._json(doc)
        body = discovery.serve(self.registry, path)
        if body is not None:
            return self._json(body)
        raise ApiError(404, "the server could not find the requested resource", "NotFound")

    @staticmethod
    def _json(obj: Any, status: int = 200, raw: bytes | None = None) -> web.Response:
        return web.Response(body=raw if raw is not None else dumps(obj), status=status, content_type=JSON)

    async def _debug(self, request: web.Request, path: str) -> web.StreamResponse:
        if path == "/debug/requests" and request.method == "GET":
            since = max(0, int(request.query.get("since", "0")) - self.request_log_offset)
            return self._json({"total": self.request_log_offset + len(self.request_log),
                               "items": [r.to_dict() for r in self.request_log[since:]]})
        if path == "/debug/counters" and request.method == "GET":
            return self._json([{"verb": v, "resource": r, "userAgent": ua, "count": n}
                               for (v, r, ua), n in self.counters.items()])
        if path == "/debug/faults":
            if request.method == "POST":
                body = await request.json()
                rules = body if isinstance(body, list) else [body]
                fields = set(FaultRule.__dataclass_fields__) - {"hits"}
                for r in rules:
                    # snake_case as in FaultRule, or camelCase (namePattern, retryAfter)
                    snake = {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): v for k, v in r.items()}
                    unknown = set(snake) - fields
                    if unknown:
                        raise ApiError(400, f"unknown fault rule fields: {sorted(unknown)}", "BadRequest")
                    self.faults.add(FaultRule(**snake))
                return self._json({"rules": [r.to_dict() for r in self.faults.rules]}, status=201)
            if request.method == "DELETE":
                self.faults.clear()
                return self._json({"rules": []})
            if request.method == "GET":
                return self._json({"rules": [r.to_dict() for r in self.faults.rules]})
        if path == "/debug/drop-watches" and request.method == "POST":
            resource = request.query.get("resource")
            if request.can_read_body:
                with contextlib.suppress(ValueError):
                    body = await request.json()
                    resource = (body or {}).get("resource", resource)
            return self._json({"dropped": self._drop_watches(resource)})
        raise ApiError(404, "the server could not find the requested resource", "NotFound")

    # ------------------------------------------------------------------------------ resource routing
    def _info(self, ri: ReqInfo) -> ResourceInfo:
        info = self.registry.get(ri.group, ri.version, ri.plural)
        if info is None:
            raise ApiError(404, "the server could not find the requested resource", "NotFound",
                           {"group": ri.group, "kind": ri.plural} if ri.group else {"kind": ri.plural})
        return info

    async def _read_body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        ctype = request.headers.get("Content-Type", JSON).split(";")[0].strip()
        if "protobuf" in ctype:
            try:
                return protobuf.decode(raw)
            except protobuf.ProtobufError as e:
                raise ApiError(415, f"the body of the request was in an unknown format - accepted media types "
                                    f"include: application/json, application/yaml ({e})",
                               "UnsupportedMediaType") from None
        if "cbor" in ctype:
            raise ApiError(415, 'the body of the request was in an unknown format - accepted media types include: '
                                'application/json, application/yaml', "UnsupportedMediaType")
        try:
            if "yaml" in ctype:
                return yaml.safe_load(raw)
            return json.loads(raw, parse_constant=_not_json_number)
        except (ValueError, yaml.YAMLError) as e:
            raise ApiError(400, f"the body of the request was in an unknown format: {e}", "BadRequest") from None

    async def _resource(self, request: web.Request, ri: ReqInfo) -> web.StreamResponse:
        info = self._info(ri)
        q = request.query
        verb = request[VERB_KEY]
        ns = ri.namespace if info.namespaced else ""
        if ri.sub and ri.sub not in info.subresources:
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        table = _table_accept(request.headers.get("Accept", ""))
        dry = q.get("dryRun") == "All"
        if verb == "list":
            return self._list(info, ri, q, table)
        if verb == "watch":
            return await self._watch(request, info, ri, table)
        if ri.sub == "log":
            return await serve_pod_log(self, request, info, ns, ri.name)
        if ri.sub == "attach" and request.method in ("GET", "POST"):
            return await serve_pod_attach(self, request, info, ns, ri.name)
        if ri.sub == "scale" and info.scale is not None:
            return await serve_scale(self, request, info, ns, ri.name, verb)
        if verb == "get":
            obj = self._must_get(info, ns, ri.name)
            if table:
                return self._json(make_table(info, [obj], table, str(self.store.rv),
                                             q.get("includeObject", "Metadata")))
            return self._obj_response(info, obj)
        if verb == "create" and info.group == "authorization.k8s.io":
            # No authorization here: every review is allowed (its body may be protobuf; it is not needed).
            review = {"apiVersion": info.api_version, "kind": info.kind, "metadata": {},
                      "status": {"allowed": True, "reason": "the local cluster does not authorize requests"}}
            return self._json(review, 201)
        if verb == "create":
            body = await self._read_body(request)
            if not isinstance(body, dict):
                raise ApiError(400, "the body of the request was empty or not an object", "BadRequest")
            if ri.sub == "binding":
                return self._json(self.bind_pod(ns, ri.name, body), 201)
            if ri.sub == "eviction":
                self.delete_object(info, ns, ri.name, body.get("deleteOptions") or {})
                return self._json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "code": 201}, 201)
            if ri.name:
                raise ApiError(405, "the server does not allow this method on the requested resource",
                               "MethodNotAllowed")
            warnings = self._field_validation(info, body, q)
            obj = self.create_object(info, ri.namespace, body, dry_run=dry)
            return self._obj_response(info, obj, 201, warnings)
        if verb == "update":
            body = await self._read_body(request)
            if not isinstance(body, dict):
                raise ApiError(400, "the body of the request was empty or not an object", "BadRequest")
            warnings = self._field_validation(info, body, q)
            obj = self.update_object(info, ns, ri.name, body, ri.sub, dry_run=dry)
            return self._obj_response(info, obj, 200, warnings)
        if verb == "patch":
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            body = await self._read_body(request)
            patch_warnings: list[str] = []
            obj, created = self.patch_object(info, ns, ri.name, ctype, body, ri.sub, dry_run=dry, query=q,
                                             warnings=patch_warnings)
            return self._obj_response(info, obj, 201 if created else 200, patch_warnings)
        if verb == "delete":
            opts: dict[str, Any] = {}
            body = await self._read_body(request)
            if isinstance(body, dict):
                opts.update(body)
            for k in ("gracePeriodSeconds", "propagationPolicy", "dryRun"):
                if k in q:
                    opts[k] = int(q[k]) if k == "gracePeriodSeconds" else q[k]
            obj = self.delete_object(info, ns, ri.name, opts, dry_run=dry or opts.get("dryRun") in ("All", ["All"]))
            return self._obj_response(info, obj, 200)
        if verb == "deletecollection":
            matcher = combine(parse_label_selector(q.get("labelSelector")),
                              parse_field_selector(q.get("fieldSelector")))
            items = []
            for o in list(self.store.iter(info.store_key, ns or None)):
                if matcher is None or matcher(o):
                    m = o["metadata"]
                    items.append(self.delete_object(info, m.get("namespace", ""), m["name"], {}, dry_run=dry))
            return self._json({"kind": f"{info.kind}List", "apiVersion": info.api_version,
                               "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})
        raise ApiError(405, "the server does not allow this method on the requested resource", "MethodNotAllowed")

    def _obj_response(self, info: ResourceInfo, obj: dict[str, Any], status: int = 200,
                      warnings: list[str] | None = None) -> web.Response:
        raw = None
        if obj.get("apiVersion") != info.api_version:
            obj = {**obj, "apiVersion": info.api_version}
        elif self.store.get(info.store_key, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]) is obj:
            raw = self.store.encoded(obj)
        resp = self._json(obj, status, raw)
        for w in warnings or []:
            escaped = w.replace("\\", "\\\\").replace('"', '\\"')
            resp.headers.add("Warning", f'299 - "{escaped}"')
        return resp

    def _must_get(self, info: ResourceInfo, ns: str, name: str) -> dict[str, Any]:
        obj = self.store.get(info.store_key, ns, name)
        if obj is None:
            raise not_found(info.group_resource, info.group, info.plural, name)
        return obj

    def _field_validation(self, info: ResourceInfo, body: dict[str, Any], q: Any) -> list[str]:
        """fieldValidation=Strict|Warn|Ignore: unknown fields are an error, a Warning header, or nothing."""
        mode = q.get("fieldValidation", "Warn")
        if mode == "Ignore":
            return []
        if not info.custom:
            if mode == "Strict":  # kubectl's default; the published schemas are too slow for every request
                _strict_builtin(info, body)
            return []
        if not info.schema:
            return []
        mod = _schema_module()
        if mod is None or not hasattr(mod, "strict_unknown_fields"):
            return []
        unknown = [p.lstrip(".") for p in mod.strict_unknown_fields(info.schema, _body_without_meta(body))]
        if not unknown:
            return []
        msgs = [f'unknown field "{p}"' for p in unknown]
        if mode == "Strict":
            raise ApiError(
                400,
                f'{info.kind} in version "{info.version}" cannot be handled as a {info.kind}: '
                f"strict decoding error: {', '.join(msgs)}",
                "BadRequest",
            )
        return msgs

    # ------------------------------------------------------------------------------ list
    def _selected(self, info: ResourceInfo, ns: str, q: Any) -> list[dict[str, Any]]:
        matcher = combine(parse_label_selector(q.get("labelSelector")), parse_field_selector(q.get("fieldSelector")))
        objs = self.store.iter(info.store_key, ns or None)
        out = [o for o in objs if matcher is None or matcher(o)]
        return out

    def _list(self, info: ResourceInfo, ri: ReqInfo, q: Any, table: str | None) -> web.Response:
        ns = ri.namespace if info.namespaced else ""
        objs = self._selected(info, ns, q)
        objs.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        rv = str(self.store.rv)
        cont_token = None
        if q.get("continue"):
            try:
                tok = json.loads(base64.urlsafe_b64decode(q["continue"].encode()))
                start = (tok["ns"], tok["name"])
                rv = tok.get("rv", rv)
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "continue key is not valid", "BadRequest") from None
            objs = [o for o in objs if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start]
        limit = int(q.get("limit", "0") or 0)
        remaining = 0
        if limit > 0 and len(objs) > limit:
            remaining = len(objs) - limit
            objs = objs[:limit]
            last = objs[-1]["metadata"]
            cont_token = base64.urlsafe_b64encode(json.dumps(
                {"rv": rv, "ns": last.get("namespace", ""), "name": last["name"]}).encode()).decode()
        if table:
            return self._json(make_table(info, objs, table, rv, q.get("includeObject", "Metadata"), cont_token))
        meta: dict[str, Any] = {"resourceVersion": rv}
        if cont_token:
            meta["continue"] = cont_token
            meta["remainingItemCount"] = remaining
        head = dumps({"apiVersion": info.api_version, "kind": f"{info.kind}List", "metadata": meta})
        av = info.api_version
        items = b",".join(self.store.encoded(o) if o.get("apiVersion") == av else dumps({**o, "apiVersion": av})
                          for o in objs)
        raw = head[:-1] + b',"items":[' + items + b"]}"
        return self._json(None, raw=raw)

    # ------------------------------------------------------------------------------ watch
    async def _watch(self, request: web.Request, info: ResourceInfo, ri: ReqInfo,
                     table: str | None) -> web.StreamResponse:
        q = request.query
        ns = (ri.namespace or None) if info.namespaced else None
        matcher = combine(parse_label_selector(q.get("labelSelector")), parse_field_selector(q.get("fieldSelector")))
        if ri.legacy_watch and ri.name:
            name_m = parse_field_selector(f"metadata.name={ri.name}")
            matcher = combine(matcher, name_m)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        send_initial = q.get("sendInitialEvents") in ("true", "1")
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        fault = request.get(FAULT_KEY)
        if fault is not None and fault.drop_after is not None:
            timeout = min(timeout or fault.drop_after, fault.drop_after)
        rv_param = q.get("resourceVersion", "")
        watcher = Watcher(info.store_key, ns, matcher)
        initial: list[tuple[str, Event | dict[str, Any]]] = []
        if rv_param in ("", "0") or send_initial:
            for o in self.store.iter(info.store_key, ns):
                if matcher is None or matcher(o):
                    initial.append(("ADDED", o))
            initial.sort(key=lambda t: int(t[1]["metadata"]["resourceVersion"]))  # type: ignore[index]
        else:
            try:
                since = int(rv_param)
            except ValueError:
                raise ApiError(400, f'invalid resource version "{rv_param}"', "BadRequest") from None
            if since < self.store.compacted_rv:
                err = gone(f"too old resource version: {since} ({self.store.compacted_rv + 1})")
                resp = web.StreamResponse(status=200, headers={"Content-Type": JSON})
                await resp.prepare(request)
                await resp.write(dumps({"type": "ERROR", "object": err.to_status()}) + b"\n")
                await resp.write_eof()
                return resp
            for ev in self.store.events_since(info.store_key, since):
                et = watcher.classify(ev)
                if et is not None:
                    initial.append((et, ev))
        self.store.add_watcher(watcher)
        start_rv = self.store.rv
        resp = web.StreamResponse(status=200, headers={"Content-Type": JSON, "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            # A watch is logged when it starts streaming: it may stay open for the whole test.
            self._record(request, ri, "watch", request.headers.get("User-Agent", ""), 200, time.time())
            request[RECORDED_KEY] = True
            enc = self._event_encoder(info, table)
            for et, item in initial:
                if isinstance(item, Event):
                    await resp.write(enc(et, item))
                else:
                    await resp.write(self._encode_obj_event(info, table, et, item))
            if send_initial and bookmarks:
                await resp.write(self._bookmark(info, start_rv, initial_end=True))
            deadline = time.monotonic() + timeout if timeout else None
            while not self._stopping:
                wait = self.bookmark_interval if bookmarks else 3600.0
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    wait = min(wait, left)
                first: tuple[str, Event] | None = None
                if watcher.queue.empty():
                    try:
                        first = await asyncio.wait_for(watcher.queue.get(), wait)
                    except TimeoutError:
                        if bookmarks and watcher.queue.empty() and (deadline is None or time.monotonic() < deadline):
                            await resp.write(self._bookmark(info, self.store.rv))
                        continue
                    if first is None:
                        break
                # Everything already queued goes out in one write: a burst of changes costs a watcher
                # one send, not one per event (the client reads newline-delimited events either way).
                chunk, closed = self._queued_events(watcher, enc, first)
                if chunk:
                    await resp.write(chunk)
                if closed:
                    break
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        finally:
            self.store.remove_watcher(watcher)
        return resp

    @staticmethod
    def _queued_events(
        watcher: Watcher, enc: Any, first: tuple[str, Event] | None, limit: int = 1 << 20
    ) -> tuple[bytes, bool]:
        """`first` and the events queued after it, encoded (up to about `limit` bytes), and whether it closed."""
        parts: list[bytes] = [enc(*first)] if first is not None else []
        size = len(parts[0]) if parts else 0
        while size < limit and not watcher.queue.empty():
            item = watcher.queue.get_nowait()
            if item is None:
                return b"".join(parts), True
            data = enc(*item)
            parts.append(data)
            size += len(data)
        return b"".join(parts), False

    def _event_encoder(self, info: ResourceInfo, table: str | None) -> Any:
        if table is None and not info.custom:
            return lambda et, ev: ev.encoded(et)
        if table is None:
            def enc(et: str, ev: Event) -> bytes:
                if ev.obj.get("apiVersion") == info.api_version:
                    return ev.encoded(et)
                return self._encode_obj_event(info, None, et, ev.full_object())
            return enc
        return lambda et, ev: self._encode_obj_event(info, table, et, ev.full_object())

    def _encode_obj_event(self, info: ResourceInfo, table: str | None, et: str, obj: dict[str, Any]) -> bytes:
        if table:
            payload: dict[str, Any] = make_table(info, [obj], table, obj["metadata"].get("resourceVersion", ""))
            return dumps({"type": et, "object": payload}) + b"\n"
        if obj.get("apiVersion") != info.api_version:
            obj = {**obj, "apiVersion": info.api_version}
            return dumps({"type": et, "object": obj}) + b"\n"
        return b'{"type":"' + et.encode() + b'","object":' + self.store.encoded(obj) + b"}\n"

    @staticmethod
    def _bookmark(info: ResourceInfo, rv: int, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return dumps({"type": "BOOKMARK", "object": {"kind": info.kind, "apiVersion": info.api_version,
                                                     "metadata": meta}}) + b"\n"

    # ------------------------------------------------------------------------------ object semantics
    def _persist(self, info: ResourceInfo, ns: str, obj: dict[str, Any], etype: str,
                 old: dict[str, Any] | None) -> dict[str, Any]:
        meta = obj["metadata"]
        if etype != "DELETED":
            meta["resourceVersion"] = str(self.store.next_rv())
        else:
            obj = {**obj, "metadata": {**meta, "resourceVersion": str(self.store.next_rv())}}
        self.store.commit(info.store_key, ns, meta["name"], obj, etype, old)
        self._index_owners(info, ns, obj, old, etype)
        uid = meta.get("uid", "")
        if etype == "ADDED":
            self._uids[uid] = (info.store_key, ns, meta["name"])
        elif etype == "DELETED":
            self._uids.pop(uid, None)
        return obj

    def _index_owners(self, info: ResourceInfo, ns: str, obj: dict[str, Any], old: dict[str, Any] | None,
                      etype: str) -> None:
        ref = (info.store_key, ns, obj["metadata"]["name"])
        old_refs = ((old or {}).get("metadata") or {}).get("ownerReferences") or []
        old_uids: set[str] = {r.get("uid", "") for r in old_refs}
        new_uids: set[str] = set() if etype == "DELETED" else {
            r.get("uid", "") for r in obj["metadata"].get("ownerReferences") or []}
        for u in old_uids - new_uids:
            deps = self._dependents.get(u)
            if deps is not None:
                deps.discard(ref)
                if not deps:
                    del self._dependents[u]
        for u in new_uids - old_uids:
            self._dependents.setdefault(u, set()).add(ref)

    def _check_namespace(self, info: ResourceInfo, ns: str, name: str) -> None:
        if not info.namespaced:
            return
        ns_obj = self.store.get(("", "namespaces"), "", ns)
        if ns_obj is None:
            raise not_found("namespaces", "", "namespaces", ns)
        if ns_obj["metadata"].get("deletionTimestamp"):
            raise ApiError(403, f'{info.group_resource} "{name}" is forbidden: unable to create new content in '
                                f"namespace {ns} because it is being terminated", "Forbidden",
                           {"name": name, "kind": info.plural, **({"group": info.group} if info.group else {}),
                            "causes": [{"reason": "NamespaceTerminating", "message": f"namespace {ns} is being "
                                        "terminated", "field": "metadata.namespace"}]})

    def _validate_name(self, info: ResourceInfo, name: str) -> list[dict[str, Any]]:
        if info.plural == "namespaces":
            if len(name) > 63 or not LABEL_RE.match(name):
                return [{"reason": "FieldValueInvalid", "field": "metadata.name",
                         "message": f'Invalid value: "{name}": {LABEL_MSG}'}]
            return []
        if info.plural == "customresourcedefinitions":
            return []
        if len(name) > 253:
            return [{"reason": "FieldValueTooLong", "field": "metadata.name",
                     "message": 'Too long: may not be more than 253 bytes'}]
        if not SUBDOMAIN_RE.match(name):
            return [{"reason": "FieldValueInvalid", "field": "metadata.name",
                     "message": f'Invalid value: "{name}": {SUBDOMAIN_MSG}'}]
        return []

    def create_object(self, info: ResourceInfo, ns: str, body: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        """POST semantics: defaulting, validation, uid/rv/timestamps, side effects."""
        obj = json_copy(body)
        meta = obj.setdefault("metadata", {}) or {}
        obj["metadata"] = meta
        if info.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and ns and body_ns != ns:
                raise ApiError(400, "the namespace of the provided object does not match the namespace sent on "
                                    "the request", "BadRequest")
            ns = ns or body_ns or "default"
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
            ns = ""
        obj = {"apiVersion": info.api_version, "kind": info.kind, "metadata": meta,
               **{k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}}
        name = meta.get("name") or ""
        if not name:
            gen = meta.get("generateName")
            if not gen:
                raise invalid(info.kind_group, info.group, info.kind, "", [
                    {"reason": "FieldValueRequired", "field": "metadata.name",
                     "message": "Required value: name or generateName is required"}])
            for _ in range(20):
                name = f"{gen}{_rand_suffix()}"
                if self.store.get(info.store_key, ns, name) is None:
                    break
            meta["name"] = name
        causes = self._validate_name(info, name)
        if causes:
            raise invalid(info.kind_group, info.group, info.kind, name, causes)
        self._check_namespace(info, ns, name)
        if self.store.get(info.store_key, ns, name) is not None:
            raise already_exists(info.group_resource, info.group, info.plural, name)
        for k in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                  "managedFields", "selfLink", "generation"):
            meta.pop(k, None)
        if info.custom and info.has_status:
            obj.pop("status", None)
        self._prepare_create(info, ns, obj)
        if info.custom:
            obj = self._validate_custom(info, obj, None)
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if info.has_generation:
            meta["generation"] = 1
        if dry_run:
            meta["resourceVersion"] = str(self.store.rv)
            return obj
        obj = self._persist(info, ns, obj, "ADDED", None)
        self._after_create(info, ns, obj)
        refs = obj["metadata"].get("ownerReferences") or []
        if refs and not any(r.get("uid") in self._uids for r in refs):
            self._collect_orphan_later(info, ns, obj["metadata"]["name"], obj["metadata"]["uid"])
        return obj

    def _collect_orphan_later(self, info: ResourceInfo, ns: str, name: str, uid: str) -> None:
        """The garbage collector deletes dependents whose owners are all gone (shortly, not inside the create)."""
        def collect() -> None:
            obj = self.store.get(info.store_key, ns, name)
            if obj is None or obj["metadata"].get("uid") != uid or obj["metadata"].get("deletionTimestamp"):
                return
            refs = obj["metadata"].get("ownerReferences") or []
            if refs and not any(r.get("uid") in self._uids for r in refs):
                with contextlib.suppress(ApiError):
                    self.delete_object(info, ns, name, {"propagationPolicy": "Background"})

        try:
            asyncio.get_running_loop().call_later(self.gc_delay, collect)
        except RuntimeError:
            collect()

    def _prepare_create(self, info: ResourceInfo, ns: str, obj: dict[str, Any]) -> None:
        key = info.store_key
        if key == ("", "namespaces"):
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        elif key == ("", "pods"):
            self._default_pod(obj)
            self._admit_runtime_class(obj)
            self._admit_service_account(ns, obj)
            self._enforce_quota(ns, obj["metadata"]["name"])
        elif key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._prepare_crd(obj)
            self._validate_crd(obj)
        elif key == ("", "secrets"):
            obj.setdefault("type", "Opaque")
            for k, v in (obj.pop("stringData", None) or {}).items():
                obj.setdefault("data", {})[k] = base64.b64encode(str(v).encode()).decode()
        elif key == ("", "services"):
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            if spec.get("clusterIP") != "None":
                self._service_ips += 1
                ip = f"10.96.{self._service_ips // 250}.{self._service_ips % 250 + 1}"
                spec.setdefault("clusterIP", ip)
                spec.setdefault("clusterIPs", [spec["clusterIP"]])
            for port in spec.get("ports") or []:
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
        elif key == ("", "events") and not obj.get("firstTimestamp") and not obj.get("eventTime"):
            obj.setdefault("count", 1)

    def _default_pod(self, pod: dict[str, Any]) -> None:
        spec = pod.setdefault("spec", {})
        containers = spec.get("containers") or []
        name = pod["metadata"]["name"]
        if not containers:
            raise invalid("Pod", "", "Pod", name, [{"reason": "FieldValueRequired", "field": "spec.containers",
                                                    "message": "Required value"}])
        all_containers = [("containers", i, c) for i, c in enumerate(containers)] + [
            ("initContainers", i, c) for i, c in enumerate(spec.get("initContainers") or [])]
        for field, i, c in all_containers:
            for required in ("name", "image"):
                if not c.get(required):
                    raise invalid("Pod", "", "Pod", name, [{"reason": "FieldValueRequired",
                                                            "field": f"spec.{field}[{i}].{required}",
                                                            "message": "Required value"}])
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            image = str(c.get("image", ""))
            tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
            c.setdefault("imagePullPolicy",
                         "Always" if not tagged or image.endswith(":latest") else "IfNotPresent")
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
        spec.setdefault("securityContext", {})
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("tolerations", [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300},
        ])
        qos = _qos_class(containers)
        pod["status"] = {"phase": "Pending", "qosClass": qos}

    def _admit_runtime_class(self, pod: dict[str, Any]) -> None:
        """The RuntimeClass admission plugin: a pod naming a missing RuntimeClass is refused."""
        rc = (pod.get("spec") or {}).get("runtimeClassName")
        if rc and self.store.get(("node.k8s.io", "runtimeclasses"), "", rc) is None:
            name = pod["metadata"]["name"]
            raise ApiError(403, f'pods "{name}" is forbidden: pod rejected: RuntimeClass "{rc}" not found',
                           "Forbidden", {"name": name, "kind": "pods"})

    def _admit_service_account(self, ns: str, pod: dict[str, Any]) -> None:
        """The ServiceAccount admission plugin: the pod's service account must exist."""
        sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        if self.store.get(("", "serviceaccounts"), ns, sa) is None:
            name = pod["metadata"]["name"]
            raise ApiError(403, f'pods "{name}" is forbidden: error looking up service account {ns}/{sa}: '
                                f'serviceaccount "{sa}" not found', "Forbidden", {"name": name, "kind": "pods"})

    def _enforce_quota(self, ns: str, name: str) -> None:
        for quota in self.store.iter(("", "resourcequotas"), ns):
            hard = (quota.get("spec") or {}).get("hard") or {}
            for key in ("pods", "count/pods"):
                if key not in hard:
                    continue
                limit = int(str(hard[key]))
                pods = list(self.store.iter(("", "pods"), ns))
                if key == "pods":
                    used = sum(1 for p in pods if (p.get("status") or {}).get("phase") not in TERMINAL_PHASES)
                else:
                    used = len(pods)
                if used + 1 > limit:
                    qname = quota["metadata"]["name"]
                    raise ApiError(
                        403,
                        f'pods "{name}" is forbidden: exceeded quota: {qname}, requested: {key}=1, '
                        f"used: {key}={used}, limited: {key}={limit}",
                        "Forbidden",
                        {"name": name, "kind": "pods"},
                    )

    def _prepare_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        expected = f"{names.get('plural', '')}.{spec.get('group', '')}"
        name = crd["metadata"].get("name", "")
        if name != expected:
            raise invalid("CustomResourceDefinition.apiextensions.k8s.io", "apiextensions.k8s.io",
                          "CustomResourceDefinition", name,
                          [{"reason": "FieldValueInvalid", "field": "metadata.name",
                            "message": f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group'}])
        accepted = dict(names)
        accepted.setdefault("singular", str(names.get("kind", "")).lower())
        accepted.setdefault("listKind", f"{names.get('kind', '')}List")
        names.setdefault("singular", accepted["singular"])
        names.setdefault("listKind", accepted["listKind"])
        ts = now_rfc3339()
        storage = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
        crd["status"] = {
            "acceptedNames": accepted,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": ts},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": ts},
            ],
            "storedVersions": storage,
        }
        spec.setdefault("scope", "Namespaced")
        spec.setdefault("conversion", {"strategy": "None"})

    def _after_create(self, info: ResourceInfo, ns: str, obj: dict[str, Any]) -> None:
        key = info.store_key
        if key == ("", "namespaces"):
            sa = self.registry.get("", "v1", "serviceaccounts")
            assert sa is not None
            name = obj["metadata"]["name"]
            self.create_object(sa, name, {"metadata": {"name": "default", "namespace": name}})
        elif key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._register_crd(obj)

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        self.registry.remove_group_resource(spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        for info in resources_from_crd(crd):
            self.registry.add(info)

    def _validate_custom(self, info: ResourceInfo, obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        """default_and_prune + validate from localcluster.schema; 422 Invalid on errors."""
        if not info.schema:
            return obj
        mod = _schema_module()
        if mod is None:
            return obj
        meta = obj.get("metadata")
        pruned = mod.default_and_prune(info.schema, obj)
        if isinstance(pruned, dict):
            obj = pruned
            obj["metadata"] = meta
            obj["apiVersion"] = obj.get("apiVersion") or info.api_version
            obj["kind"] = obj.get("kind") or info.kind
        errors = mod.validate(info.schema, obj, old)
        if errors:
            causes = [{"reason": e.type, "message": e.message, "field": e.field} for e in errors]
            raise invalid(info.kind_group, info.group, info.kind, (meta or {}).get("name", ""), causes)
        return obj

    def _validate_crd(self, crd: dict[str, Any]) -> None:
        """The structural-schema checks the real server applies to CRDs (when the schema module has them)."""
        mod = _schema_module()
        if mod is None or not hasattr(mod, "validate_crd"):
            return
        errors = mod.validate_crd(crd)
        if errors:
            causes = [{"reason": e.type, "message": e.message, "field": e.field} for e in errors]
            raise invalid("CustomResourceDefinition.apiextensions.k8s.io", "apiextensions.k8s.io",
                          "CustomResourceDefinition", crd["metadata"].get("name", ""), causes)

    def update_object(self, info: ResourceInfo, ns: str, name: str, body: dict[str, Any], sub: str = "",
                      dry_run: bool = False, _patched: bool = False) -> dict[str, Any]:
        """PUT semantics (also the tail of every patch): preconditions, status split, generation."""
        old = self._must_get(info, ns, name)
        new = json_copy(body) if not _patched else body
        meta = new.get("metadata")
        meta = dict(meta) if isinstance(meta, dict) else {}
        new["metadata"] = meta
        if meta.get("name") not in (None, name):
            raise ApiError(400, f'the name of the object ({meta.get("name")}) does not match the name on the URL '
                                f"({name})", "BadRequest")
        rv = meta.get("resourceVersion")
        if rv not in (None, "") and str(rv) != old["metadata"]["resourceVersion"]:
            raise conflict(info.group_resource, info.group, info.plural, name)
        if rv in (None, "") and info.custom and not _patched:
            # Custom resources do not allow unconditional updates (AllowUnconditionalUpdate is false).
            raise invalid(info.kind_group, info.group, info.kind, name, [{
                "reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
                "message": "Invalid value: 0x0: must be specified for an update"}])
        new["apiVersion"] = info.api_version
        new["kind"] = info.kind
        if sub == "status":
            status = new.get("status")
            new = {**old, "metadata": dict(old["metadata"])}
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        else:
            old_meta = old["metadata"]
            for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation",
                      "name", "namespace"):
                if k in old_meta:
                    meta[k] = old_meta[k]
                else:
                    meta.pop(k, None)
            meta.pop("managedFields", None)
            meta.pop("selfLink", None)
            if info.has_status:
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            if old_meta.get("deletionTimestamp"):
                added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
                if added:
                    raise invalid(info.kind_group, info.group, info.kind, name, [
                        {"reason": "FieldValueForbidden", "field": "metadata.finalizers",
                         "message": f"Forbidden: no new finalizers can be added if the object is being deleted, "
                                    f"found new finalizers {sorted(added)}"}])
        if info.custom:
            new = self._validate_custom(info, new, old)
        if info.store_key == ("", "pods") and sub != "status":
            self._check_pod_update(old, new)
        if info.store_key == ("apiextensions.k8s.io", "customresourcedefinitions") and sub != "status":
            self._prepare_crd(new)
            self._validate_crd(new)
        new_meta = new["metadata"]
        new_meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if not new_meta.get("finalizers"):
            new_meta.pop("finalizers", None)
        if _semantically_equal(old, new):
            return old
        if info.has_generation and _spec_changed(info, old, new):
            new_meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if dry_run:
            return new
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers") \
                and not self._awaiting_node(info, new) and info.store_key not in _SELF_FINALIZING:
            return self._remove(info, ns, new, old)
        new = self._persist(info, ns, new, "MODIFIED", old)
        if info.store_key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._register_crd(new)
        return new

    def _check_pod_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Pod specs are immutable except images, activeDeadlineSeconds and tolerations additions."""
        o, n = dict(old.get("spec") or {}), dict(new.get("spec") or {})
        for s in (o, n):
            for k in ("activeDeadlineSeconds", "tolerations"):
                s.pop(k, None)
            s["containers"] = [{k: v for k, v in c.items() if k != "image"} for c in s.get("containers") or []]
        if o != n and not (not o.get("nodeName") and n.get("nodeName") and {**n, "nodeName": None} ==
                           {**o, "nodeName": None}):
            name = new["metadata"]["name"]
            raise invalid("Pod", "", "Pod", name, [{
                "reason": "FieldValueForbidden", "field": "spec",
                "message": "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
                           "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
                           "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                           "(allow it to be set to 1 if it was previously negative)"}])

    def patch_object(self, info: ResourceInfo, ns: str, name: str, ctype: str, body: Any, sub: str = "",
                     dry_run: bool = False, query: Any = None,
                     warnings: list[str] | None = None) -> tuple[dict[str, Any], bool]:
        """PATCH in all four content types; returns (object, created). Field-validation warnings are appended."""
        q = query or {}
        warn = warnings if warnings is not None else []
        old = self.store.get(info.store_key, ns, name)
        if ctype == "application/apply-patch+yaml":
            if not q.get("fieldManager"):
                raise ApiError(400, "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is "
                                    "required for apply patch", "BadRequest")
            if not isinstance(body, dict):
                raise ApiError(400, "the body of the request was empty or not an object", "BadRequest")
            if old is None:
                if sub:
                    raise not_found(info.group_resource, info.group, info.plural, name)
                body.setdefault("metadata", {})["name"] = name
                if info.namespaced:
                    body["metadata"]["namespace"] = ns
                warn.extend(self._field_validation(info, body, q))
                return self.create_object(info, ns, body, dry_run=dry_run), True
            warn.extend(self._field_validation(info, body, q))
            applied = _apply_merge(old, body, not info.custom)
            return self.update_object(info, ns, name, applied, sub, dry_run=dry_run, _patched=True), False
        if old is None:
            raise not_found(info.group_resource, info.group, info.plural, name)
        if ctype == "application/merge-patch+json":
            if not isinstance(body, dict):
                raise ApiError(400, "the body of the request was empty or not an object", "BadRequest")
            patched = merge_patch(old, body)
        elif ctype == "application/json-patch+json":
            patched = json_patch(old, body)
        elif ctype == "application/strategic-merge-patch+json":
            if info.custom:
                raise ApiError(415, 'the body of the request was in an unknown format - accepted media types '
                                    'include: application/json-patch+json, application/merge-patch+json, '
                                    'application/apply-patch+yaml', "UnsupportedMediaType")
            if not isinstance(body, dict):
                raise ApiError(400, "the body of the request was empty or not an object", "BadRequest")
            patched = strategic_merge(old, body, service=info.plural == "services")
        else:
            raise ApiError(415, "the body of the request was in an unknown format - accepted media types include: "
                                "application/json-patch+json, application/merge-patch+json, "
                                "application/apply-patch+yaml", "UnsupportedMediaType")
        if not isinstance(patched, dict):
            raise ApiError(422, "patch produced a non-object", "Invalid")
        if ctype != "application/json-patch+json":
            patched = json_copy(patched)  # merges share untouched subtrees with the stored object
        warn.extend(self._field_validation(info, patched, q))
        return self.update_object(info, ns, name, patched, sub, dry_run=dry_run, _patched=True), False

    # ------------------------------------------------------------------------------ deletion & GC
    def _awaiting_node(self, info: ResourceInfo, obj: dict[str, Any]) -> bool:
        """A scheduled pod being deleted gracefully stays until its node confirms (grace period 0)."""
        if info.store_key != ("", "pods"):
            return False
        meta = obj["metadata"]
        return bool(meta.get("deletionTimestamp")) and int(meta.get("deletionGracePeriodSeconds") or 0) > 0

    def delete_object(self, info: ResourceInfo, ns: str, name: str, opts: dict[str, Any],
                      dry_run: bool = False) -> dict[str, Any]:
        """DELETE semantics: preconditions, graceful pods, finalizers, propagation policy."""
        obj = self._must_get(info, ns, name)
        meta = obj["metadata"]
        pre = opts.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta.get("uid"):
            raise ApiError(409, f'Precondition failed: UID in precondition: {pre["uid"]}, UID in object meta: '
                                f'{meta.get("uid")}', "Conflict")
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
            raise conflict(info.group_resource, info.group, info.plural, name)
        policy = opts.get("propagationPolicy")
        if policy is None and opts.get("orphanDependents") is True:
            policy = "Orphan"
        policy = policy or "Background"
        grace = opts.get("gracePeriodSeconds")
        if dry_run:
            return obj
        is_pod = info.store_key == ("", "pods")
        if is_pod:
            spec = obj.get("spec") or {}
            phase = (obj.get("status") or {}).get("phase")
            if not spec.get("nodeName") or phase in TERMINAL_PHASES:
                grace = 0
            elif grace is None:
                grace = int(spec.get("terminationGracePeriodSeconds", 30))
            grace = int(grace)
            current = meta.get("deletionGracePeriodSeconds")
            if meta.get("deletionTimestamp") and current is not None and grace >= int(current) and grace > 0:
                return obj
            if grace > 0:
                new = {**obj, "metadata": {**meta, "deletionTimestamp": _rfc3339_in(grace),
                                           "deletionGracePeriodSeconds": grace}}
                if policy == "Foreground" and self._has_dependents(meta.get("uid", "")):
                    new["metadata"]["finalizers"] = _add(meta.get("finalizers"), FOREGROUND)
                    self._foreground[meta.get("uid", "")] = (info.store_key, ns, name)
                    new = self._persist(info, ns, new, "MODIFIED", obj)
                    self._delete_dependents(meta.get("uid", ""))
                    return self.store.get(info.store_key, ns, name) or new
                return self._persist(info, ns, new, "MODIFIED", obj)
        uid = meta.get("uid", "")
        if info.store_key == ("", "namespaces"):
            return self._delete_namespace(obj)
        if info.store_key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            return self._delete_crd(info, obj)
        if policy == "Foreground" and self._has_dependents(uid):
            if meta.get("deletionTimestamp") and FOREGROUND in (meta.get("finalizers") or []):
                return obj
            new = {**obj, "metadata": {**meta, "deletionTimestamp": meta.get("deletionTimestamp") or now_rfc3339(),
                                       "deletionGracePeriodSeconds": 0,
                                       "finalizers": _add(meta.get("finalizers"), FOREGROUND)}}
            self._foreground[uid] = (info.store_key, ns, name)
            new = self._persist(info, ns, new, "MODIFIED", obj)
            self._delete_dependents(uid)
            return self.store.get(info.store_key, ns, name) or new
        if policy == "Orphan":
            self._orphan_dependents(uid)
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp") and not (is_pod and meta.get("deletionGracePeriodSeconds")):
                return obj
            new = {**obj, "metadata": {**meta, "deletionTimestamp": meta.get("deletionTimestamp") or now_rfc3339(),
                                       "deletionGracePeriodSeconds": 0}}
            return self._persist(info, ns, new, "MODIFIED", obj)
        return self._remove(info, ns, obj, obj)

    def _remove(self, info: ResourceInfo, ns: str, obj: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
        """Actually delete the object, then let GC and namespace/CRD finalisation run."""
        gone_obj = self._persist(info, ns, obj, "DELETED", old)
        meta = obj["metadata"]
        uid = meta.get("uid", "")
        # Background propagation: dependents go after the owner.
        self._delete_dependents(uid)
        self._dependents.pop(uid, None)
        for ref in meta.get("ownerReferences") or []:
            self._maybe_finish_foreground(ref.get("uid", ""), ns)
        if ns:
            self._maybe_finish_namespace(ns)
        if info.custom:
            self._maybe_finish_crd(info)
        return gone_obj

    def _has_dependents(self, uid: str) -> bool:
        return bool(self._dependents.get(uid))

    def _resolve_ref(self, ref: tuple[tuple[str, str], str, str]) -> tuple[ResourceInfo, dict[str, Any]] | None:
        key, ns, name = ref
        info = self.registry.any_version(*key)
        obj = self.store.get(key, ns, name)
        if info is None or obj is None:
            return None
        return info, obj

    def _delete_dependents(self, uid: str) -> None:
        for ref in list(self._dependents.get(uid, ())):
            found = self._resolve_ref(ref)
            if found is None:
                continue
            info, obj = found
            m = obj["metadata"]
            if m.get("deletionTimestamp") and not self._awaiting_node(info, obj):
                continue
            with contextlib.suppress(ApiError):
                self.delete_object(info, m.get("namespace", ""), m["name"], {"propagationPolicy": "Background"})

    def _orphan_dependents(self, uid: str) -> None:
        for ref in list(self._dependents.get(uid, ())):
            found = self._resolve_ref(ref)
            if found is None:
                continue
            info, obj = found
            m = obj["metadata"]
            refs = [r for r in m.get("ownerReferences") or [] if r.get("uid") != uid]
            new_meta = {**m, "ownerReferences": refs}
            if not refs:
                new_meta.pop("ownerReferences")
            self._persist(info, m.get("namespace", ""), {**obj, "metadata": new_meta}, "MODIFIED", obj)

    def _maybe_finish_foreground(self, owner_uid: str, ns: str) -> None:
        """Once an owner in foreground deletion has no dependents left, drop its finalizer (and it)."""
        if not owner_uid or self._has_dependents(owner_uid):
            return
        ref = self._foreground.pop(owner_uid, None)
        if ref is None:
            return
        found = self._resolve_ref(ref)
        if found is None:
            return
        info, o = found
        m = o["metadata"]
        if m.get("uid") != owner_uid or FOREGROUND not in (m.get("finalizers") or []):
            return
        namespace = m.get("namespace", "")
        fins = [f for f in m["finalizers"] if f != FOREGROUND]
        new = {**o, "metadata": {**m, "finalizers": fins}}
        if not fins:
            new["metadata"].pop("finalizers")
            if not self._awaiting_node(info, new):
                self._remove(info, namespace, new, o)
                return
        self._persist(info, namespace, new, "MODIFIED", o)

    def _delete_namespace(self, ns_obj: dict[str, Any]) -> dict[str, Any]:
        info = self.registry.get("", "v1", "namespaces")
        assert info is not None
        meta = ns_obj["metadata"]
        name = meta["name"]
        if not meta.get("deletionTimestamp"):
            new = {**ns_obj, "metadata": {**meta, "deletionTimestamp": now_rfc3339(), "deletionGracePeriodSeconds": 0},
                   "status": {**(ns_obj.get("status") or {}), "phase": "Terminating"}}
            ns_obj = self._persist(info, "", new, "MODIFIED", ns_obj)
        for key in self.store.resource_keys():
            rinfo = self.registry.any_version(*key)
            if rinfo is None or not rinfo.namespaced:
                continue
            for o in list(self.store.iter(key, name)):
                if o["metadata"].get("deletionTimestamp") and not self._awaiting_node(rinfo, o):
                    continue
                with contextlib.suppress(ApiError):
                    self.delete_object(rinfo, name, o["metadata"]["name"], {"propagationPolicy": "Background"})
        self._maybe_finish_namespace(name)
        return self.store.get(("", "namespaces"), "", name) or ns_obj

    def _maybe_finish_namespace(self, ns: str) -> None:
        ns_obj = self.store.get(("", "namespaces"), "", ns)
        if ns_obj is None or not ns_obj["metadata"].get("deletionTimestamp"):
            return
        for key in self.store.resource_keys():
            if key != ("", "namespaces") and self.store.count(key, ns):
                return
        info = self.registry.get("", "v1", "namespaces")
        assert info is not None
        if ns_obj["metadata"].get("finalizers"):
            return
        self._remove(info, "", ns_obj, ns_obj)

    def _delete_crd(self, info: ResourceInfo, crd: dict[str, Any]) -> dict[str, Any]:
        meta = crd["metadata"]
        if not meta.get("deletionTimestamp"):
            new = {**crd, "metadata": {**meta, "deletionTimestamp": now_rfc3339(), "deletionGracePeriodSeconds": 0}}
            crd = self._persist(info, "", new, "MODIFIED", crd)
        spec = crd.get("spec") or {}
        key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        cr_info = self.registry.any_version(*key)
        if cr_info is not None:
            for o in list(self.store.iter(key)):
                m = o["metadata"]
                if m.get("deletionTimestamp"):
                    continue
                with contextlib.suppress(ApiError):
                    self.delete_object(cr_info, m.get("namespace", ""), m["name"], {})
        return self._maybe_finish_crd_key(key) or crd

    def _maybe_finish_crd(self, info: ResourceInfo) -> None:
        self._maybe_finish_crd_key(info.store_key)

    def _maybe_finish_crd_key(self, key: tuple[str, str]) -> dict[str, Any] | None:
        crd_name = f"{key[1]}.{key[0]}"
        crd = self.store.get(("apiextensions.k8s.io", "customresourcedefinitions"), "", crd_name)
        if crd is None or not crd["metadata"].get("deletionTimestamp") or crd["metadata"].get("finalizers"):
            return None
        if self.store.count(key):
            return None
        info = self.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        assert info is not None
        gone_obj = self._persist(info, "", crd, "DELETED", crd)
        self.store.drop_watches(key)
        self.store.drop_key(key)
        self.registry.remove_group_resource(*key)
        return gone_obj

    # ------------------------------------------------------------------------------ pod subresources
    def bind_pod(self, ns: str, name: str, binding: dict[str, Any]) -> dict[str, Any]:
        """POST pods/NAME/binding: set spec.nodeName and PodScheduled=True, as the registry does."""
        info = self.registry.get("", "v1", "pods")
        assert info is not None
        pod = self._must_get(info, ns, name)
        target = (binding.get("target") or {}).get("name")
        if not target:
            raise invalid("Binding", "", "Binding", name, [{"reason": "FieldValueRequired", "field": "target.name",
                                                            "message": "Required value"}])
        if (pod.get("spec") or {}).get("nodeName"):
            raise ApiError(409, f'Operation cannot be fulfilled on pods/binding "{name}": pod {name} is already '
                                f"assigned to node \"{pod['spec']['nodeName']}\"", "Conflict",
                           {"name": name, "kind": "pods/binding"})
        if pod["metadata"].get("deletionTimestamp"):
            raise ApiError(409, f'Operation cannot be fulfilled on pods/binding "{name}": pod {name} is being '
                                "deleted, cannot be assigned to a host", "Conflict")
        status = dict(pod.get("status") or {})
        conds = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        conds.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                      "lastTransitionTime": now_rfc3339()})
        status["conditions"] = conds
        new = {**pod, "spec": {**pod["spec"], "nodeName": target}, "status": status,
               "metadata": dict(pod["metadata"])}
        self._persist(info, ns, new, "MODIFIED", pod)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}


_UNEXPECTED_RE = re.compile(r"'([^']+)' was unexpected")


def _strict_builtin(info: ResourceInfo, body: dict[str, Any]) -> None:
    """Unknown fields of a built-in kind, from kubernetes-validate's published schemas when installed."""
    try:
        import kubernetes_validate  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return
    obj = {**body, "apiVersion": info.api_version, "kind": info.kind}
    try:
        kubernetes_validate.validate(obj, "1.35", strict=True)
    except Exception as e:  # its errors are jsonschema ValidationErrors or schema lookup failures
        if getattr(e, "validator", None) != "additionalProperties":
            return
        path = ""
        for part in getattr(e, "absolute_path", []):
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        fields = [f"{path}.{n}" if path else n for n in _UNEXPECTED_RE.findall(str(getattr(e, "message", "")))]
        if fields:
            unknown = ", ".join(f'unknown field "{f}"' for f in fields)
            raise ApiError(400, f"{info.kind} in version \"{info.version}\" cannot be handled as a {info.kind}: "
                                f"strict decoding error: {unknown}", "BadRequest") from None


def _add(items: list[str] | None, item: str) -> list[str]:
    out = list(items or [])
    if item not in out:
        out.append(item)
    return out


def _qos_class(containers: list[dict[str, Any]]) -> str:
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if req or lim:
            any_set = True
        for r in ("cpu", "memory"):
            if r not in lim or (req.get(r, lim.get(r)) != lim.get(r)):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _body_without_meta(obj: dict[str, Any] | None) -> dict[str, Any]:
    if obj is None:
        return {}
    return {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")}


def _strip_volatile(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in ("resourceVersion", "managedFields")}
    return {**obj, "metadata": meta}


def _semantically_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return _strip_volatile(a) == _strip_volatile(b)


def _spec_changed(info: ResourceInfo, old: dict[str, Any], new: dict[str, Any]) -> bool:
    skip = ("metadata", "status", "apiVersion", "kind")
    return {k: v for k, v in old.items() if k not in skip} != {k: v for k, v in new.items() if k not in skip}


def _apply_merge(old: dict[str, Any], applied: dict[str, Any], strategic: bool) -> dict[str, Any]:
    """Server-side apply, simplified: the applied config is merged over the live object."""
    body = json_copy(applied)
    meta = body.get("metadata") or {}
    meta.pop("resourceVersion", None)
    if strategic:
        return json_copy(strategic_merge(old, body))
    return json_copy(_merge_keep_nulls(old, body))


def _merge_keep_nulls(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return json_copy(patch)
    out = dict(target)
    for k, v in patch.items():
        out[k] = _merge_keep_nulls(out.get(k), v) if isinstance(v, dict) else json_copy(v)
    return out


def _table_accept(accept: str) -> str | None:
    """The Table apiVersion if the client asked for Table output (first acceptable entry wins)."""
    for part in accept.split(","):
        params = dict(p.strip().split("=", 1) for p in part.split(";")[1:] if "=" in p)
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return f"meta.k8s.io/{params.get('v', 'v1')}"
        if part.strip().startswith("application/json") and "as=" not in part:
            return None
    return None


__all__ = ["ApiServer", "FaultRule", "ReqInfo", "RequestRecord", "parse_path"]
