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

from localcluster.apiserver import (
    decode,
    discovery,
    event_api,
    limits,
    managedfields,
    negotiation,
    openapi,
    protobuf,
    validation,
)
from localcluster.apiserver import patch as patch_mod
from localcluster.apiserver.attach import serve_pod_attach
from localcluster.apiserver.bookmarks import bookmark, next_bookmark
from localcluster.apiserver.faults import FaultRule, Faults
from localcluster.apiserver.listopts import (
    EXACT,
    ListOptions,
    decode_continue,
    encode_continue,
    list_options,
    parse_resource_version,
    query_bool,
)
from localcluster.apiserver.logs import serve_pod_log
from localcluster.apiserver.patch import json_copy, json_patch, merge_patch, strategic_merge
from localcluster.apiserver.resources import Registry, ResourceInfo, resources_from_crd
from localcluster.apiserver.scale import serve_scale, validate_scale
from localcluster.apiserver.selectors import combine, parse_field_selector, parse_label_selector
from localcluster.apiserver.status import (
    ApiError,
    already_exists,
    conflict,
    gone,
    invalid,
    not_found,
    precondition_failed,
)
from localcluster.apiserver.store import Event, Store, Watcher, dumps
from localcluster.apiserver.table import make_table, partial_metadata

log = logging.getLogger(__name__)
JSON = "application/json"
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
TERMINAL_PHASES = ("Succeeded", "Failed")
# Kinds whose deletion finishes when their contents are gone, not when finalizers empty.
_SELF_FINALIZING = {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")}
# Kinds whose registry answers DELETE with the deleted object (ReturnDeletedObject); the rest answer a Status.
_RETURNS_DELETED_OBJECT = {("", "pods"), ("", "serviceaccounts"), ("", "services"), ("", "namespaces"),
                           ("storage.k8s.io", "storageclasses"), ("scheduling.k8s.io", "priorityclasses"),
                           ("apiextensions.k8s.io", "customresourcedefinitions")}


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
    # `watch` counts on a collection only: a GET of a named object with ?watch=true is a plain get
    watch = ri.legacy_watch or (not ri.name and bool(query_bool(query, "watch")))
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


class ApiServer:
    """An in-memory Kubernetes API server on aiohttp.

    `store` holds the objects, `request_log`/`counters` record traffic, `faults` injects failures.
    `bookmark_interval` is how often a watch that allows bookmarks gets one (the real watch cache: a
    minute; tests shorten it), besides the one 2 s before its timeout.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        bookmark_interval: float = 60.0,
        history_size: int = 10000,
        history_bytes: int = 128 * 1024 * 1024,
        git_version: str = "v1.35.0",
        request_log_limit: int = 200_000,
        root_ca_publisher: bool = True,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else None
        # kube-controller-manager's root-CA publisher: kube-root-ca.crt in every namespace (tests of list and
        # watch mechanics turn it off to start from empty namespaces)
        self.root_ca_publisher = root_ca_publisher
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
        # What happened before the server was up is compacted, as on a cluster that has run a while: a watch
        # or an exact list from a resourceVersion older than now is 410, as on the real server.
        self.store.forget_history()

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
        except negotiation.NotAcceptable as e:
            if e.protobuf_body:
                resp = web.Response(body=e.body(), status=e.code, content_type=negotiation.PROTOBUF)
            else:
                resp = web.Response(body=dumps(e.to_status()), status=e.code, content_type=JSON)
        except ApiError as e:
            resp = web.Response(body=dumps(e.to_status()), status=e.code, content_type=JSON, headers=e.headers)
            _add_warnings(resp, e.warnings)
        except web.HTTPException:
            raise
        except Exception as e:  # noqa: BLE001 - any handler bug is one request's 500, never the server's end
            # As kube-apiserver: an error that is no API status becomes 500 InternalError "Internal error
            # occurred: ..." (apierrors.NewInternalError), and it recovers from a handler's panic and serves on.
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
        if path == "/openapi/v2":
            v2 = openapi.v2_document(self.git_version)
            if "protobuf" in request.headers.get("Accept", ""):
                return web.Response(body=protobuf.encode_openapi_v2(v2), content_type=protobuf.OPENAPI_V2)
            return self._json(v2)
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

    @staticmethod
    async def _raw_body(request: web.Request) -> bytes:
        """The request body's bytes: every body reader goes through here (and so through the body size limit)."""
        raw = await request.read()
        limits.check_body(len(raw))
        return raw

    async def _read_object(self, request: web.Request, info: ResourceInfo) -> tuple[dict[str, Any], list[str]]:
        """The body of a create or update: an object, and the paths of its duplicated keys."""
        raw = await self._raw_body(request)
        ctype = request.headers.get("Content-Type", JSON).split(";")[0].strip()
        dups: list[str] = []
        if raw and ctype == JSON:
            try:
                body, dups = decode.loads(raw)
            except ValueError as e:
                if info.custom:
                    raise ApiError(400, f"the object provided is unrecognized (must be of type {info.kind}): "
                                        f"couldn't get version/kind; json parse error: "
                                        f"{decode.json_error_text(e, raw)}", "BadRequest") from None
                raise ApiError(400, f"the body of the request was in an unknown format: {e}", "BadRequest") from None
        else:
            body = self._parse_body(raw, ctype)
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was empty or not an object", "BadRequest")
        if info.custom:
            self._check_type_meta(info, body)
        return body, dups

    @staticmethod
    def _check_type_meta(info: ResourceInfo, body: dict[str, Any]) -> None:
        """A custom resource body of another version of the group is refused while decoding (400); the
        fields that version's (absent) schema would prune come back as warnings."""
        av = body.get("apiVersion")
        if isinstance(av, str) and av and av != info.api_version:
            same_kind = av.split("/")[0] == info.group and body.get("kind") == info.kind
            unknown = sorted(k for k in body if k not in ("apiVersion", "kind", "metadata")) if same_kind else []
            raise ApiError(400, f"the API version in the data ({av}) does not match the expected API version "
                                f"({info.api_version})", "BadRequest",
                           warnings=[f'unknown field "{k}"' for k in unknown])

    async def _read_patch(self, request: web.Request, ctype: str) -> Any:
        """A patch body; one that does not decode as its patch type is 400 `error decoding patch`."""
        raw = await self._raw_body(request)
        if ctype in ("application/merge-patch+json", "application/json-patch+json",
                     "application/strategic-merge-patch+json"):
            try:
                body = decode.loads_plain(raw) if raw else None
            except ValueError as e:
                raise ApiError(400, f"error decoding patch: {decode.json_error_text(e, raw)}", "BadRequest") from None
            if ctype != "application/json-patch+json" and not isinstance(body, dict):
                kind = patch_mod.go_json_kind(body)
                raise ApiError(400, f"error decoding patch: json: cannot unmarshal {kind} into Go value of type "
                                    "map[string]interface {}", "BadRequest")
            return body
        return self._parse_body(raw, request.headers.get("Content-Type", JSON).split(";")[0].strip())

    async def _read_body(self, request: web.Request) -> Any:
        raw = await self._raw_body(request)
        return self._parse_body(raw, request.headers.get("Content-Type", JSON).split(";")[0].strip())

    @staticmethod
    def _parse_body(raw: bytes, ctype: str) -> Any:
        if not raw:
            return None
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
            return decode.loads_plain(raw)
        except (ValueError, yaml.YAMLError) as e:
            raise ApiError(400, f"the body of the request was in an unknown format: {e}", "BadRequest") from None

    async def _streaming_subresource(self, request: web.Request, info: ResourceInfo, ri: ReqInfo, ns: str,
                                     verb: str) -> web.StreamResponse | None:
        """The subresources served by their own modules (pod logs and attach, custom resources' scale)."""
        if ri.sub == "log":
            return await serve_pod_log(self, request, info, ns, ri.name)
        if ri.sub == "attach" and request.method in ("GET", "POST"):
            return await serve_pod_attach(self, request, info, ns, ri.name)
        if ri.sub == "scale" and info.scale is not None:
            return await serve_scale(self, request, info, ns, ri.name, verb)
        return None

    async def _resource(self, request: web.Request, ri: ReqInfo) -> web.StreamResponse:
        info = self._info(ri)
        q = request.query
        verb = request[VERB_KEY]
        if ri.namespace and not info.namespaced:
            # a namespaced path for a cluster-scoped resource: no route at all
            return web.Response(status=404, text="404 page not found\n")
        ns = ri.namespace if info.namespaced else ""
        if ri.sub and ri.sub not in info.subresources:
            if info.custom and ri.name:
                raise not_found(info.group_resource, info.group, info.plural, ri.name)
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        dry_run = q.getall("dryRun", [])
        dry = "All" in dry_run
        streamed = await self._streaming_subresource(request, info, ri, ns, verb)
        if streamed is not None:
            return streamed
        # custom resources (and their status) have no protobuf form; their Scale has
        out = negotiation.negotiate(request.headers.get("Accept", ""), info.custom and ri.sub != "scale", verb)
        if verb == "list":
            return await self._list(info, ri, q, out)
        if verb == "watch":
            return await self._watch(request, info, ri, out)
        if verb == "get":
            obj = self._must_get(info, ns, ri.name)
            if out.as_ == "Table":
                return self._json(make_table(info, [obj], out.api_version, obj["metadata"].get("resourceVersion", ""),
                                             q.get("includeObject", "Metadata")))
            if out.as_ == "PartialObjectMetadata":
                return self._json(partial_metadata(obj, out.api_version))
            return self._obj_response(info, obj)
        if verb == "create" and info.group == "authorization.k8s.io":
            # No authorization here: every review is allowed (its body may be protobuf; it is not needed).
            review = {"apiVersion": info.api_version, "kind": info.kind, "metadata": {},
                      "status": {"allowed": True, "reason": "the local cluster does not authorize requests"}}
            return self._json(review, 201)
        manager = _field_manager(q, request.headers.get("User-Agent", ""))
        if verb == "create":
            decode.check_write_options("CreateOptions", q, dry_run)
            if ri.sub == "binding":
                return self._json(self.bind_pod(ns, ri.name, await self._read_body_object(request)), 201)
            if ri.sub == "eviction":
                body = await self._read_body_object(request)
                self.delete_object(info, ns, ri.name, body.get("deleteOptions") or {})
                return self._json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "code": 201}, 201)
            if ri.name and not info.custom:
                raise ApiError(405, "the server does not allow this method on the requested resource",
                               "MethodNotAllowed")
            body, dups = await self._read_object(request, info)
            # the custom resource handler takes a POST to an object's path as a create of the body's object
            warnings = self._field_validation(info, body, q, dups)
            obj = self.create_object(info, ri.namespace, body, dry_run=dry, manager=manager,
                                     warnings=warnings)
            return self._obj_response(info, obj, 201, warnings)
        if verb == "update":
            decode.check_write_options("UpdateOptions", q, dry_run)
            body, dups = await self._read_object(request, info)
            warnings = self._field_validation(info, body, q, dups)
            obj = self.update_object(info, ns, ri.name, body, ri.sub, dry_run=dry, manager=manager)
            return self._obj_response(info, obj, 200, warnings)
        if verb == "patch":
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            decode.check_write_options("PatchOptions", q, dry_run, ctype)
            body = await self._read_patch(request, ctype)
            patch_warnings: list[str] = []
            obj, created = self.patch_object(info, ns, ri.name, ctype, body, ri.sub, dry_run=dry, query=q,
                                             warnings=patch_warnings, manager=manager)
            return self._obj_response(info, obj, 201 if created else 200, patch_warnings)
        if verb == "delete":
            opts: dict[str, Any] = {}
            body = await self._read_body(request)
            if isinstance(body, dict):
                opts.update(body)
            for k in ("gracePeriodSeconds", "propagationPolicy"):
                if k in q:
                    opts[k] = int(q[k]) if k == "gracePeriodSeconds" else q[k]
            body_dry = opts.get("dryRun") or []
            dry_run = dry_run or (body_dry if isinstance(body_dry, list) else [body_dry])
            decode.check_delete_options(opts, dry_run)
            obj = self.delete_object(info, ns, ri.name, opts, dry_run="All" in dry_run)
            meta = obj["metadata"]
            # removed at once (no finalizer held it): a Status; marked for deletion: the object
            if not meta.get("deletionTimestamp") and info.store_key not in _RETURNS_DELETED_OBJECT:
                details = {"name": ri.name, **({"group": info.group} if info.group else {}), "kind": info.plural,
                           "uid": meta.get("uid", "")}
                return self._json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "details": details})
            return self._obj_response(info, obj, 200)
        if verb == "deletecollection":
            matcher = combine(parse_label_selector(q.get("labelSelector")),
                              parse_field_selector(q.get("fieldSelector"), info))
            items = []
            for o in list(self.store.iter(info.store_key, ns or None)):
                if matcher is None or matcher(o):
                    m = o["metadata"]
                    items.append(self.delete_object(info, m.get("namespace", ""), m["name"], {}, dry_run=dry))
            return self._json({"kind": f"{info.kind}List", "apiVersion": info.api_version,
                               "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})
        raise ApiError(405, "the server does not allow this method on the requested resource", "MethodNotAllowed")

    async def _read_body_object(self, request: web.Request) -> dict[str, Any]:
        body = await self._read_body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was empty or not an object", "BadRequest")
        return body

    def _obj_response(self, info: ResourceInfo, obj: dict[str, Any], status: int = 200,
                      warnings: list[str] | None = None) -> web.Response:
        raw = None
        if obj.get("apiVersion") != info.api_version:
            obj = {**obj, "apiVersion": info.api_version}
        elif self.store.get(info.store_key, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]) is obj:
            raw = self.store.encoded(obj)
        resp = self._json(obj, status, raw)
        _add_warnings(resp, warnings or [])
        return resp

    def _must_get(self, info: ResourceInfo, ns: str, name: str) -> dict[str, Any]:
        obj = self.store.get(info.store_key, ns, name)
        if obj is None:
            raise not_found(info.group_resource, info.group, info.plural, name)
        return obj

    def _field_validation(self, info: ResourceInfo, body: dict[str, Any], q: Any,
                          duplicates: list[str] | None = None) -> list[str]:
        """fieldValidation=Strict|Warn (also when unset)|Ignore: duplicated and unknown fields are an error (400),
        one Warning header each, or nothing."""
        mode = q.get("fieldValidation") or "Warn"
        if mode == "Ignore":
            return []
        msgs = [f'duplicate field "{p}"' for p in duplicates or ()]
        if not info.custom:
            if mode == "Strict":  # kubectl's default; the published schemas are too slow for every request
                self._strict_failure(info, msgs)
                _strict_builtin(info, body)
            return msgs
        unknown = decode.unknown_meta_fields(body)
        mod = _schema_module()
        if info.schema and mod is not None and hasattr(mod, "strict_unknown_fields"):
            unknown += sorted(p.lstrip(".") for p in mod.strict_unknown_fields(info.schema, _body_without_meta(body)))
        msgs += [f'unknown field "{p}"' for p in unknown]
        if mode == "Strict":
            self._strict_failure(info, msgs)
        return msgs

    @staticmethod
    def _strict_failure(info: ResourceInfo, msgs: list[str]) -> None:
        if msgs:
            raise ApiError(400, f'{info.kind} in version "{info.version}" cannot be handled as a {info.kind}: '
                                f"strict decoding error: {', '.join(msgs)}", "BadRequest")

    # ------------------------------------------------------------------------------ list
    async def _wait_for_rv(self, rv: int, within: float = 3.0) -> None:
        """A resourceVersion from the future: wait for it briefly, as the watch cache does, then 504."""
        reached = asyncio.Event()

        def check(_ev: Event) -> None:
            if self.store.rv >= rv:
                reached.set()

        self.store.listeners.append(check)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reached.wait(), within)
        finally:
            self.store.listeners.remove(check)
        if self.store.rv < rv:
            raise ApiError(504, f"Timeout: Too large resource version: {rv}, current: {self.store.rv}", "Timeout",
                           {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                            "retryAfterSeconds": 1})

    async def _list_state(self, info: ResourceInfo, ns: str,
                          opts: ListOptions) -> tuple[list[dict[str, Any]], int, str]:
        """The objects a list reads (at the resourceVersion it asks for), that version, and the key to start
        after (from a continue token)."""
        key, scope = info.store_key, ns or None
        if opts.continue_token:
            if opts.resource_version not in ("", "0"):
                raise ApiError(400, "specifying resource version is not allowed when using continue", "BadRequest")
            rv, start = decode_continue(opts.continue_token)
            objs = list(self.store.iter(key, scope)) if rv >= self.store.rv else self.store.state_at(key, rv, scope)
            if objs is None:
                raise gone("The provided continue parameter is too old to display a consistent list result. You can "
                           "start a new list without the continue parameter, or use the continue token in this "
                           "response to retrieve the remainder of the results. Continuing with the provided token "
                           "results in an inconsistent list - objects that were created, modified, or deleted "
                           "between the time the first chunk was returned and now may show up in the list.")
            return objs, rv, start
        if not opts.resource_version:
            return list(self.store.iter(key, scope)), self.store.rv, ""
        rv = parse_resource_version(opts.resource_version, info, watch=False)
        if rv > self.store.rv:
            await self._wait_for_rv(rv)
        if opts.rv_match == EXACT and rv < self.store.rv:
            objs = self.store.state_at(key, rv, scope)
            if objs is None:
                raise gone("The resourceVersion for the provided list is too old.")
            return objs, rv, ""
        return list(self.store.iter(key, scope)), self.store.rv, ""

    async def _list(self, info: ResourceInfo, ri: ReqInfo, q: Any, out: negotiation.Output) -> web.Response:
        opts = list_options(q, info, watch=False)
        ns = ri.namespace if info.namespaced else ""
        objs, rv, start = await self._list_state(info, ns, opts)
        # Keys are relative to the list's prefix: names within a namespace, namespace/name across them.
        across = info.namespaced and not ns
        keyed = sorted(((f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}" if across
                         else o["metadata"]["name"]), o) for o in objs)
        if start:
            keyed = [(k, o) for k, o in keyed if k > start]
        page: list[dict[str, Any]] = []
        cont, remaining = "", None
        for i, (_key, o) in enumerate(keyed):
            if opts.limit > 0 and len(page) >= opts.limit:
                # more keys follow (matching or not): the real server hands out a continue token
                cont = encode_continue(rv, keyed[i - 1][0])
                remaining = None if opts.has_selector else len(keyed) - i
                break
            if opts.matcher is None or opts.matcher(o):
                page.append(o)
        if out.as_ == "Table":
            return self._json(make_table(info, page, out.api_version, str(rv), q.get("includeObject", "Metadata"),
                                         cont, remaining=remaining))
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if cont:
            meta["continue"] = cont
        if remaining is not None:
            meta["remainingItemCount"] = remaining
        if out.as_:
            return self._json({"kind": "PartialObjectMetadataList", "apiVersion": out.api_version, "metadata": meta,
                               "items": [partial_metadata(o, out.api_version) for o in page]})
        if info.custom:  # unstructured lists: sorted keys, and "continue" even when empty
            meta = dict(sorted({**meta, "continue": cont}.items()))
        head = dumps({"apiVersion": info.api_version, "kind": f"{info.kind}List", "metadata": meta})
        items = b",".join(self._list_item(info, o) for o in page)
        raw = head[:-1] + b',"items":[' + items + b"]}"
        return self._json(None, raw=raw)

    def _list_item(self, info: ResourceInfo, obj: dict[str, Any]) -> bytes:
        """A list item's bytes: custom resources keep kind and apiVersion, built-in kinds' items have neither."""
        av = info.api_version
        if info.custom:
            return self.store.encoded(obj) if obj.get("apiVersion") == av else dumps({**obj, "apiVersion": av})
        data = self.store.encoded(obj)
        prefix = b'{"apiVersion":"' + av.encode() + b'","kind":"' + info.kind.encode() + b'",'
        if data.startswith(prefix):
            return b"{" + data[len(prefix):]
        return dumps({k: v for k, v in obj.items() if k not in ("apiVersion", "kind")})

    # ------------------------------------------------------------------------------ watch
    async def _watch(self, request: web.Request, info: ResourceInfo, ri: ReqInfo,
                     out: negotiation.Output) -> web.StreamResponse:
        opts = list_options(request.query, info, watch=True, name=ri.name)
        ns = (ri.namespace or None) if info.namespaced else None
        watcher = Watcher(info.store_key, ns, opts.matcher)
        initial: list[tuple[str, Event | dict[str, Any]]] = []
        legacy = opts.send_initial is None and opts.resource_version in ("", "0")
        if opts.resource_version not in ("", "0"):
            since = parse_resource_version(opts.resource_version, info, watch=True)
            if opts.send_initial and since > self.store.rv:
                await self._wait_for_rv(since)
        else:
            since = self.store.rv
        if opts.send_initial or legacy:
            # the current state first, in key order as the watch cache holds it
            snapshot = sorted(self.store.iter(info.store_key, ns),
                              key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
            initial = [("ADDED", o) for o in snapshot if opts.matcher is None or opts.matcher(o)]
            watcher.since = self.store.rv
        elif since < self.store.compacted_rv:
            return await self._watch_expired(request, ri, since)
        else:
            watcher.since = since
            for ev in self.store.events_since(info.store_key, since):
                et = watcher.classify(ev)
                if et is not None:
                    initial.append((et, ev))
        self.store.add_watcher(watcher)
        resp = web.StreamResponse(status=200, headers={"Content-Type": JSON, "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        # Without timeoutSeconds the real server ends a watch after a random 30 to 60 minutes.
        timeout = float(opts.timeout) if opts.timeout else 1800.0 * (1.0 + random.random())
        fault = request.get(FAULT_KEY)
        if fault is not None and fault.drop_after is not None:  # an injected fault ends the stream early
            timeout = min(timeout, fault.drop_after)
        deadline = time.monotonic() + timeout
        try:
            await resp.prepare(request)
            # A watch is logged when it starts streaming: it may stay open for the whole test.
            self._record(request, ri, "watch", request.headers.get("User-Agent", ""), 200, time.time())
            request[RECORDED_KEY] = True
            enc = self._event_encoder(info, out)
            for et, item in initial:
                if isinstance(item, Event):
                    await resp.write(enc(et, item))
                else:
                    await resp.write(self._encode_obj_event(info, out, et, item))
            if opts.send_initial and opts.allow_bookmarks:
                await resp.write(bookmark(info, watcher.since, initial_end=True))
            due = next_bookmark(time.monotonic(), deadline, self.bookmark_interval) if opts.allow_bookmarks else None
            while not self._stopping:
                now = time.monotonic()
                if now >= deadline:
                    break
                if due is not None and now >= due and watcher.queue.empty():
                    # a bookmark only when the resource changed after what this watch has seen
                    key_rv = self.store.key_rv.get(info.store_key, 0)
                    if key_rv > watcher.since:
                        await resp.write(bookmark(info, key_rv))
                    due = next_bookmark(time.monotonic(), deadline, self.bookmark_interval)
                    continue
                wait = min(deadline, due if due is not None else deadline) - now
                first: tuple[str, Event] | None = None
                if watcher.queue.empty():
                    try:
                        first = await asyncio.wait_for(watcher.queue.get(), max(wait, 0.0))
                    except TimeoutError:
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

    async def _watch_expired(self, request: web.Request, ri: ReqInfo, since: int) -> web.StreamResponse:
        """A watch from a compacted resourceVersion: 200, one ERROR event with a 410 Expired Status, the end."""
        err = gone(f"too old resource version: {since} ({self.store.compacted_rv})")
        resp = web.StreamResponse(status=200, headers={"Content-Type": JSON, "Cache-Control": "no-cache"})
        await resp.prepare(request)
        self._record(request, ri, "watch", request.headers.get("User-Agent", ""), 200, time.time())
        request[RECORDED_KEY] = True
        await resp.write(dumps({"type": "ERROR", "object": err.to_status()}) + b"\n")
        await resp.write_eof()
        return resp

    def _event_encoder(self, info: ResourceInfo, out: negotiation.Output) -> Any:
        """How this watch writes an event. A Table watch has column definitions in its first event only."""
        def enc(et: str, ev: Event) -> bytes:
            if et == "DELETED" and ev.type == "MODIFIED":
                # it left the watch's selector: the real server sends the object as it was, at the new version
                return self._encode_obj_event(info, out, et, _left_selector(ev))
            if not out.as_ and ev.obj.get("apiVersion") == info.api_version:
                return ev.encoded(et)
            return self._encode_obj_event(info, out, et, ev.full_object())
        return enc

    def _encode_obj_event(self, info: ResourceInfo, out: negotiation.Output, et: str, obj: dict[str, Any]) -> bytes:
        if out.as_ == "Table":
            payload: dict[str, Any] = make_table(info, [obj], out.api_version,
                                                 obj["metadata"].get("resourceVersion", ""),
                                                 with_columns=not out.headers_sent)
            out.headers_sent = True
            return dumps({"type": et, "object": payload}) + b"\n"
        if out.as_:
            return dumps({"type": et, "object": partial_metadata(obj, out.api_version)}) + b"\n"
        if obj.get("apiVersion") != info.api_version:
            obj = {**obj, "apiVersion": info.api_version}
            return dumps({"type": et, "object": obj}) + b"\n"
        return b'{"type":"' + et.encode() + b'","object":' + self.store.encoded(obj) + b"}\n"

    # ------------------------------------------------------------------------------ object semantics
    def _persist(self, info: ResourceInfo, ns: str, obj: dict[str, Any], etype: str,
                 old: dict[str, Any] | None, *, may_drop_managed_fields: bool = False) -> dict[str, Any]:
        """Store a change. A create, update or patch (not an apply) that storage refuses as too large is
        tried once more without `managedFields`, as the real request handlers do."""
        meta = obj["metadata"]
        if etype != "DELETED":
            key = limits.etcd_key(info.group, info.plural, ns, meta["name"], info.custom)
            mod_revision = int((old or {}).get("metadata", {}).get("resourceVersion") or 0)
            stored = {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
            try:
                limits.check_storable(key, len(dumps(stored)) + 1, mod_revision)
            except ApiError:
                if not (may_drop_managed_fields and meta.get("managedFields")):
                    raise
                del meta["managedFields"]
                stored = {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
                limits.check_storable(key, len(dumps(stored)) + 1, mod_revision)
            meta["resourceVersion"] = str(self.store.next_rv())
        else:
            obj = {**obj, "metadata": {**meta, "resourceVersion": str(self.store.next_rv())}}
        self.store.commit(info.store_key, ns, meta["name"], obj, etype, old)
        mirror = event_api.other_key(info.store_key)
        if mirror is not None:
            self._mirror_event(mirror, ns, obj, etype)
        self._index_owners(info, ns, obj, old, etype)
        uid = meta.get("uid", "")
        if etype == "ADDED":
            self._uids[uid] = (info.store_key, ns, meta["name"])
        elif etype == "DELETED":
            self._uids.pop(uid, None)
        return obj

    def _mirror_event(self, key: tuple[str, str], ns: str, obj: dict[str, Any], etype: str) -> None:
        """Keep the other Events API's copy in step: same uid and resourceVersion, converted fields."""
        name = obj["metadata"]["name"]
        prev = self.store.get(key, ns, name)
        if etype == "DELETED" and prev is None:
            return
        etype = "DELETED" if etype == "DELETED" else ("MODIFIED" if prev is not None else "ADDED")
        self.store.commit(key, ns, name, event_api.convert(obj, key), etype, prev)

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

    def _check_decodable(self, info: ResourceInfo, obj: dict[str, Any]) -> None:
        """What the real server's decoding into Go types refuses: 400 before any validation."""
        if info.custom:
            return
        err = validation.decode_errors(info.store_key, obj)
        if err:
            raise ApiError(400, f'{info.kind} in version "{info.version}" cannot be handled as a {info.kind}: {err}',
                           "BadRequest")

    @staticmethod
    def _invalid(info: ResourceInfo, name: str, causes: list[dict[str, Any]]) -> ApiError:
        if info.store_key == ("events.k8s.io", "events"):
            # events.k8s.io/v1 Events are validated as the core Event they are stored as
            return invalid("Event", "", "Event", name, causes)
        return invalid(info.kind_group, info.group, info.kind, name, causes)

    def _validate_custom_after(self, info: ResourceInfo, obj: dict[str, Any], old: dict[str, Any] | None,
                               meta_causes: list[dict[str, Any]], sub: str = "") -> dict[str, Any]:
        """The schema's verdict on a custom resource, listed after its metadata's errors in one 422."""
        try:
            return self._validate_custom(info, obj, old, sub)
        except ApiError as e:
            if not meta_causes or e.code != 422:
                raise
            causes = meta_causes + list((e.details or {}).get("causes") or [])
            raise self._invalid(info, obj["metadata"].get("name", ""), causes) from None

    def _validate_builtin(self, info: ResourceInfo, ns: str, obj: dict[str, Any],
                          old: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Object metadata for every kind, then the rules of the built-in kinds the project writes."""
        builtin = not info.custom
        meta = obj["metadata"]
        if old is None:
            causes = validation.validate_meta(info.plural, meta, builtin)
        else:
            causes = validation.validate_meta_update(old["metadata"], meta, builtin)
            causes += validation.validate_meta(info.plural, meta, builtin)
        key = info.store_key
        if key == ("", "configmaps"):
            causes += validation.validate_configmap(obj)
            if old is not None:
                causes += validation.validate_immutable_update(old, obj, ("data", "binaryData"))
        elif key == ("", "secrets") and old is not None:
            causes += validation.validate_immutable_update(old, obj, ("data",))
        elif key == ("", "pods"):
            causes += validation.validate_pod(obj)
            if old is not None:
                causes += validation.validate_pod_update(old, obj)
        elif key == ("", "events"):
            causes += validation.validate_core_event(obj, ns)
        elif key == ("events.k8s.io", "events"):
            causes += validation.validate_events_v1(obj)
        elif key == ("networking.k8s.io", "networkpolicies"):
            causes += validation.validate_network_policy(obj)
        return causes

    def create_object(self, info: ResourceInfo, ns: str, body: dict[str, Any], dry_run: bool = False,
                      manager: str = "", apply_config: dict[str, Any] | None = None,
                      warnings: list[str] | None = None) -> dict[str, Any]:
        """POST semantics: defaulting, validation, uid/rv/timestamps, side effects (warnings are appended);
        the fields go to manager (as applied, when the create is a server-side apply of apply_config)."""
        if not info.custom:
            body = validation.drop_nulls(body)
        try:
            return self._create_object(info, ns, body, dry_run, manager, apply_config, warnings)
        except (AttributeError, KeyError, TypeError):
            self._raise_shape_error(info, body)
            raise

    def _raise_shape_error(self, info: ResourceInfo, body: Any) -> None:
        """A built-in object whose values have the wrong JSON types (a string for a list, say) is refused
        with 400, as decoding into the Go types refuses it; the published schema names the field."""
        if info.custom:
            return
        err = validation.shape_error({**body, "apiVersion": info.api_version, "kind": info.kind}
                                     if isinstance(body, dict) else body)
        if err:
            raise ApiError(400, f'{info.kind} in version "{info.version}" cannot be handled as a {info.kind}: {err}',
                           "BadRequest") from None

    def _create_object(self, info: ResourceInfo, ns: str, body: dict[str, Any], dry_run: bool, manager: str,
                       apply_config: dict[str, Any] | None, warnings: list[str] | None) -> dict[str, Any]:
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
        if info.custom:
            _check_kind(info, obj, meta.get("name") or "")
        obj = {"apiVersion": info.api_version, "kind": info.kind, "metadata": meta,
               **{k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}}
        self._check_decodable(info, obj)
        name = meta.get("name") or ""
        gen = meta.get("generateName")
        if not name and gen:
            for _ in range(20):
                name = validation.generated_name(str(gen), _rand_suffix())
                if self.store.get(info.store_key, ns, name) is None:
                    break
        meta["name"] = name  # "" when neither is given: validation then names what is missing
        self._check_namespace(info, ns, name)
        for k in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                  "managedFields", "selfLink", "generation"):
            meta.pop(k, None)
        if info.custom and info.has_status:
            obj.pop("status", None)
        if warnings is not None:
            warnings.extend(validation.dedup_owner_references(meta))
        self._prepare_create(info, ns, obj)
        causes = self._validate_builtin(info, ns, obj, None)
        if info.custom:
            obj = self._validate_custom_after(info, obj, None, causes)
        if causes:
            raise self._invalid(info, name, causes)
        if self.store.get(info.store_key, ns, name) is not None:
            raise already_exists(info.group_resource, info.group, info.plural, name)
        if apply_config is not None:
            managedfields.apply({}, apply_config, obj, info.schema, manager, info.api_version, "", info.has_status,
                                True, now_rfc3339())
        elif manager:
            managedfields.record_update(None, obj, info.schema, manager, info.api_version, "", info.has_status,
                                        now_rfc3339())
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if info.has_generation:
            meta["generation"] = 1
        if dry_run:
            return obj  # a dry-run create has a uid and a creationTimestamp, but no resourceVersion
        obj = self._persist(info, ns, obj, "ADDED", None, may_drop_managed_fields=apply_config is None)
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
        elif key == ("networking.k8s.io", "networkpolicies"):
            validation.default_network_policy(obj)
        elif key == ("", "events"):
            obj.setdefault("source", {})
            for k in ("firstTimestamp", "lastTimestamp", "eventTime"):
                obj.setdefault(k, None)  # the Go types have no omitempty on these times
        elif key == ("events.k8s.io", "events"):
            obj.setdefault("deprecatedSource", {})
            for k in ("deprecatedFirstTimestamp", "deprecatedLastTimestamp"):
                obj.setdefault(k, None)

    def _default_pod(self, pod: dict[str, Any]) -> None:
        spec = pod.setdefault("spec", {})
        containers = spec.get("containers") or []
        for c in containers + (spec.get("initContainers") or []):
            c.setdefault("resources", {})
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            image = str(c.get("image", ""))
            tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
            c.setdefault("imagePullPolicy",
                         "Always" if not tagged or image.endswith(":latest") else "IfNotPresent")
        for v in spec.get("volumes") or []:
            for source in ("downwardAPI", "configMap", "secret"):
                if isinstance(v.get(source), dict):
                    v[source].setdefault("defaultMode", 420)
            for item in (v.get("downwardAPI") or {}).get("items") or []:
                if isinstance(item.get("fieldRef"), dict):
                    item["fieldRef"].setdefault("apiVersion", "v1")
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        if isinstance(spec["terminationGracePeriodSeconds"], int) and spec["terminationGracePeriodSeconds"] < 0:
            spec["terminationGracePeriodSeconds"] = 1  # the pod strategy raises a negative grace period to 1
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
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
        """The ServiceAccount admission plugin: the pod's service account must exist, and unless the pod or the
        account opts out, every container mounts the projected `kube-api-access-*` token volume."""
        spec = pod.get("spec") or {}
        sa = spec.get("serviceAccountName") or "default"
        account = self.store.get(("", "serviceaccounts"), ns, sa)
        if account is None:
            name = pod["metadata"]["name"]
            raise ApiError(403, f'pods "{name}" is forbidden: error looking up service account {ns}/{sa}: '
                                f'serviceaccount "{sa}" not found', "Forbidden", {"name": name, "kind": "pods"})
        automount = spec.get("automountServiceAccountToken")
        if automount is None:
            automount = account.get("automountServiceAccountToken")
        containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
        mounted = any(m.get("mountPath") == SERVICE_ACCOUNT_MOUNT for c in containers
                      for m in c.get("volumeMounts") or [])
        if automount is False or mounted or not containers:
            return
        volume = f"kube-api-access-{_rand_suffix()}"
        spec.setdefault("volumes", []).append({"name": volume, "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ], "defaultMode": 420}})
        for c in containers:
            c.setdefault("volumeMounts", []).append({"name": volume, "readOnly": True,
                                                     "mountPath": SERVICE_ACCOUNT_MOUNT})

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

    def _prepare_crd(self, crd: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        """The v1 defaults and the status a write leaves; the names controller fills in the rest later."""
        from localcluster.crdvalidation import apply_v1_defaults, stored_versions

        apply_v1_defaults(crd)
        spec = crd.get("spec")
        if not isinstance(spec, dict):
            return
        if old is None:
            crd["status"] = {"conditions": None, "acceptedNames": {"plural": "", "kind": ""},
                             "storedVersions": stored_versions(spec)}
            return
        status = json_copy(old.get("status") or {})
        stored = list(status.get("storedVersions") or [])
        for v in stored_versions(spec):
            if v not in stored:
                stored.append(v)
        status["storedVersions"] = stored
        crd["status"] = status

    def _establish_crd(self, name: str) -> None:
        """The names and establishing controllers: accepted names, NamesAccepted and Established."""
        key = ("apiextensions.k8s.io", "customresourcedefinitions")
        info = self.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        crd = self.store.get(key, "", name)
        if info is None or crd is None or crd["metadata"].get("deletionTimestamp"):
            return
        names = dict((crd.get("spec") or {}).get("names") or {})
        status = dict(crd.get("status") or {})
        ts = now_rfc3339()
        old_conditions = {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, dict)}

        def condition(ctype: str, reason: str, message: str) -> dict[str, Any]:
            prior = old_conditions.get(ctype)
            if prior is not None and prior.get("status") == "True":
                return prior
            return {"type": ctype, "status": "True", "lastTransitionTime": ts, "reason": reason, "message": message}

        status["acceptedNames"] = names
        status["conditions"] = [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ]
        if status == crd.get("status"):
            return
        self._persist(info, "", {**crd, "metadata": dict(crd["metadata"]), "status": status}, "MODIFIED", crd)

    def _establish_crd_soon(self, name: str) -> None:
        try:
            asyncio.get_running_loop().call_soon(self._establish_crd, name)
        except RuntimeError:
            self._establish_crd(name)

    def _after_create(self, info: ResourceInfo, ns: str, obj: dict[str, Any]) -> None:
        key = info.store_key
        if key == ("", "namespaces"):
            sa = self.registry.get("", "v1", "serviceaccounts")
            assert sa is not None
            name = obj["metadata"]["name"]
            self.create_object(sa, name, {"metadata": {"name": "default", "namespace": name}})
            if self.root_ca_publisher:
                # What the root-CA publisher puts in every namespace; this cluster serves plain HTTP, so no CA.
                cm = self.registry.get("", "v1", "configmaps")
                assert cm is not None
                self.create_object(cm, name, {"metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": name},
                                              "data": {"ca.crt": ""}})
        elif key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._register_crd(obj)
            self._establish_crd_soon(obj["metadata"]["name"])

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        self.registry.remove_group_resource(spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        for info in resources_from_crd(crd):
            self.registry.add(info)

    def _validate_custom(self, info: ResourceInfo, obj: dict[str, Any], old: dict[str, Any] | None,
                         sub: str = "") -> dict[str, Any]:
        """default_and_prune + validate (validate_status for /status) from localcluster.schema; 422 on errors."""
        if not info.schema:
            return obj
        mod = _schema_module()
        if mod is None:
            return obj
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            for k in [k for k in meta if k not in decode.OBJECT_META_FIELDS]:
                del meta[k]  # decoding into ObjectMeta drops what it does not have (a warning said so)
        pruned = mod.default_and_prune(info.schema, obj)
        if info.storage_schema is not None and isinstance(pruned, dict):
            # Conversion None: the object is stored as the storage version, pruned through its schema.
            pruned = mod.default_and_prune(info.storage_schema, pruned)
        if isinstance(pruned, dict):
            obj = pruned
            obj["metadata"] = meta
            obj["apiVersion"] = obj.get("apiVersion") or info.api_version
            obj["kind"] = obj.get("kind") or info.kind
        # the scale subresource's checks follow the schema's (customResourceValidator.Validate*)
        scale_errors = [mod.FieldError(c["reason"], c["field"], c["message"])
                        for c in validate_scale(info.scale, obj, spec=sub != "status")]
        if sub == "status" and old is not None:
            errors = mod.validate_status(info.schema, obj, old, after_schema=scale_errors)
        else:
            errors = mod.validate(info.schema, obj, old, after_schema=scale_errors)
        if errors:
            causes = [{"reason": e.type, "message": e.message, "field": e.field} for e in errors]
            raise invalid(info.kind_group, info.group, info.kind, (meta or {}).get("name", ""), causes)
        return obj

    def _validate_crd(self, crd: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        """CustomResourceDefinition validation as the apiextensions server does it (localcluster.crdvalidation)."""
        mod = _schema_module()
        if mod is None or not hasattr(mod, "validate_crd"):
            return
        errors = mod.validate_crd(crd, old)
        if errors:
            causes = [{"reason": e.type, "message": e.message, "field": e.field} for e in errors]
            raise invalid("CustomResourceDefinition.apiextensions.k8s.io", "apiextensions.k8s.io",
                          "CustomResourceDefinition", crd["metadata"].get("name", ""), causes)

    def update_object(self, info: ResourceInfo, ns: str, name: str, body: dict[str, Any], sub: str = "",
                      dry_run: bool = False, _patched: bool = False, manager: str = "",
                      applied: bool = False) -> dict[str, Any]:
        """PUT semantics (also the tail of every patch): preconditions, status split, generation, field
        ownership (`applied`: the body's managedFields were set by server-side apply)."""
        if not info.custom and sub != "status":  # status keeps the nulls its writers put (lastProbeTime: null)
            body = validation.drop_nulls(body)
        try:
            return self._update_object(info, ns, name, body, sub, dry_run, _patched, manager, applied)
        except (AttributeError, KeyError, TypeError):
            self._raise_shape_error(info, body)
            raise

    def _update_object(self, info: ResourceInfo, ns: str, name: str, body: dict[str, Any], sub: str,
                       dry_run: bool, _patched: bool, manager: str, applied: bool) -> dict[str, Any]:
        old = self._must_get(info, ns, name)
        new = json_copy(body) if not _patched else body
        meta = new.get("metadata")
        meta = dict(meta) if isinstance(meta, dict) else {}
        new["metadata"] = meta
        applied_fields = meta.get("managedFields") if applied else None
        self._check_update_preconditions(info, ns, name, meta, old, _patched)
        if info.custom:
            _check_kind(info, new, name)
        new["apiVersion"] = info.api_version
        new["kind"] = info.kind
        causes: list[dict[str, Any]] = []
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
            self._check_decodable(info, new)
            causes = self._validate_builtin(info, ns, new, old)
        if info.custom:
            new = self._validate_custom_after(info, new, old, causes, sub)
        if causes:
            raise self._invalid(info, name, causes)
        if info.store_key == ("", "pods") and sub != "status":
            self._check_pod_update(old, new)
        if info.store_key == ("apiextensions.k8s.io", "customresourcedefinitions") and sub != "status":
            self._prepare_crd(new, old)
            self._validate_crd(new, old)
        new_meta = new["metadata"]
        new_meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if not new_meta.get("finalizers"):
            new_meta.pop("finalizers", None)
        if applied_fields is not None:
            new_meta["managedFields"] = applied_fields
        elif manager:
            managedfields.record_update(old, new, info.schema, manager, info.api_version, sub, info.has_status,
                                        now_rfc3339())
        elif old["metadata"].get("managedFields"):
            new_meta["managedFields"] = old["metadata"]["managedFields"]
        if not new_meta.get("managedFields"):
            new_meta.pop("managedFields", None)
        if _semantically_equal(old, new):
            return old
        if info.has_generation and _spec_changed(info, old, new):
            new_meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if dry_run:
            return new
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers") \
                and not self._awaiting_node(info, new) and info.store_key not in _SELF_FINALIZING:
            # The update that clears the last finalizer deletes the object: the answer is the update (at the
            # stored resourceVersion), the DELETED event carries the object as it was last stored.
            self._remove(info, ns, old, old)
            return new
        new = self._persist(info, ns, new, "MODIFIED", old, may_drop_managed_fields=not applied)
        if info.store_key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._register_crd(new)
            self._establish_crd_soon(name)
        return new

    @staticmethod
    def _check_update_preconditions(info: ResourceInfo, ns: str, name: str, meta: dict[str, Any],
                                    old: dict[str, Any], patched: bool) -> None:
        """What an update must agree on with the stored object: name, resourceVersion (required for custom
        resources unless patched) and uid."""
        if meta.get("name") not in (None, name):
            raise ApiError(400, f'the name of the object ({meta.get("name")}) does not match the name on the URL '
                                f"({name})", "BadRequest")
        rv = meta.get("resourceVersion")
        if rv not in (None, "") and not str(rv).isdigit():
            raise ApiError(500, f'strconv.ParseUint: parsing {json.dumps(str(rv))}: invalid syntax', "")
        if rv not in (None, "") and str(rv) != old["metadata"]["resourceVersion"]:
            raise conflict(info.group_resource, info.group, info.plural, name)
        if rv in (None, "") and info.custom and not patched:
            # Custom resources do not allow unconditional updates (AllowUnconditionalUpdate is false).
            raise invalid(info.group_resource, info.group, info.plural, name, [{
                "reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
                "message": "Invalid value: 0: must be specified for an update"}])
        uid = meta.get("uid")
        if uid and uid != old["metadata"].get("uid"):
            # the object's uid is a precondition of the update (storage.Preconditions, checked in the store)
            key = "/".join(p for p in ("/registry", info.group if info.custom else "", info.plural, ns, name) if p)
            raise ApiError(409, f'Operation cannot be fulfilled on {info.group_resource} "{name}": StorageError: '
                                f"invalid object, Code: 4, Key: {key}, ResourceVersion: 0, AdditionalErrorMsg: "
                                f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                                f'{old["metadata"].get("uid")}', "Conflict",
                           {"name": name, **({"group": info.group} if info.group else {}), "kind": info.plural})

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
                     warnings: list[str] | None = None, manager: str = "") -> tuple[dict[str, Any], bool]:
        """PATCH in all four content types; returns (object, created). Field-validation warnings are appended."""
        q = query or {}
        warn = warnings if warnings is not None else []
        old = self.store.get(info.store_key, ns, name)
        if ctype == "application/apply-patch+yaml":
            if not isinstance(body, dict):
                raise ApiError(400, "the body of the request was empty or not an object", "BadRequest")
            if old is None:
                if sub:
                    raise not_found(info.group_resource, info.group, info.plural, name)
                body.setdefault("metadata", {})["name"] = name
                if info.namespaced:
                    body["metadata"]["namespace"] = ns
                warn.extend(self._field_validation(info, body, q))
                return self.create_object(info, ns, body, dry_run=dry_run, manager=manager,
                                          apply_config=json_copy(body)), True
            warn.extend(self._field_validation(info, body, q))
            merged = _apply_merge(info, old, body)
            force = q.get("force") not in (None, "false", "False", "FALSE", "0", "f", "F")  # force=maybe forces
            managedfields.apply(old, body, merged, info.schema, manager, info.api_version, sub, info.has_status,
                                force, now_rfc3339())
            return self.update_object(info, ns, name, merged, sub, dry_run=dry_run, _patched=True,
                                      manager=manager, applied=True), False
        if old is None:
            raise not_found(info.group_resource, info.group, info.plural, name)
        if ctype == "application/merge-patch+json":
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
        return self.update_object(info, ns, name, patched, sub, dry_run=dry_run, _patched=True,
                                  manager=manager), False

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
        for what, key in (("UID", "uid"), ("ResourceVersion", "resourceVersion")):
            if pre.get(key) and pre[key] != meta.get(key):
                raise precondition_failed(info.kind_group, info.group, info.kind, name, what, str(pre[key]),
                                          str(meta.get(key)))
        policy = opts.get("propagationPolicy")
        if policy is None and opts.get("orphanDependents") is True:
            policy = "Orphan"
        policy = policy or "Background"
        grace = opts.get("gracePeriodSeconds")
        if dry_run:
            return {**obj, "metadata": _deleting_meta(meta)} if meta.get("finalizers") else obj
        if info.store_key == ("", "namespaces"):
            return self._delete_namespace(obj)
        if info.store_key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            return self._delete_crd(info, obj)
        is_pod = info.store_key == ("", "pods")
        deleting = bool(meta.get("deletionTimestamp"))
        if is_pod:
            spec = obj.get("spec") or {}
            phase = (obj.get("status") or {}).get("phase")
            if not spec.get("nodeName") or phase in TERMINAL_PHASES:
                grace = 0
            elif grace is None:
                grace = int(spec.get("terminationGracePeriodSeconds", 30))
            grace = int(grace)
            current = meta.get("deletionGracePeriodSeconds")
            if deleting and current is not None and grace >= int(current) and grace > 0:
                return obj
        else:
            grace = 0
        # The registry adds the garbage collector's finalizer for Orphan and Foreground, owners or not.
        fins = [f for f in meta.get("finalizers") or [] if f not in (ORPHAN, FOREGROUND)]
        gc_finalizer = {"Orphan": ORPHAN, "Foreground": FOREGROUND}.get(policy)
        if gc_finalizer:
            fins.append(gc_finalizer)
        elif deleting:
            fins = list(meta.get("finalizers") or [])
        if deleting and not is_pod:
            if fins == list(meta.get("finalizers") or []):
                return obj
            obj = self._persist(info, ns, {**obj, "metadata": {**meta, "finalizers": fins}}, "MODIFIED", obj)
            return self._collect_finalizers(info, ns, obj)
        if not fins and not is_pod:
            self._remove(info, ns, obj, obj)
            return obj
        new_meta = {**meta, "deletionGracePeriodSeconds": grace,
                    "deletionTimestamp": _rfc3339_in(grace) if grace else now_rfc3339()}
        if fins:
            new_meta["finalizers"] = fins
        if int(meta.get("generation") or 0) > 0 and not deleting:
            new_meta["generation"] = int(meta["generation"]) + 1  # deletion bumps the generation
        new = self._persist(info, ns, {**obj, "metadata": new_meta}, "MODIFIED", obj)
        if fins:
            return self._collect_finalizers(info, ns, new)
        if not grace:
            self._remove(info, ns, new, new)  # an unscheduled pod goes at once, after the MODIFIED
        return new

    def _collect_finalizers(self, info: ResourceInfo, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        """The garbage collector's part of a deletion: orphan or delete the dependents, then drop its finalizer.

        Returns the object as the DELETE answers it (the state the deletion stored).
        """
        meta = obj["metadata"]
        uid = meta.get("uid", "")
        fins = meta.get("finalizers") or []
        if ORPHAN in fins:
            self._orphan_dependents(uid)
            current = self.store.get(info.store_key, ns, meta["name"])
            if current is not None and current["metadata"].get("uid") == uid:
                self._drop_finalizer(info, ns, current, ORPHAN)
        elif FOREGROUND in fins:
            self._foreground[uid] = (info.store_key, ns, meta["name"])
            self._delete_dependents(uid)
            self._maybe_finish_foreground(uid, ns)
        return obj

    def _drop_finalizer(self, info: ResourceInfo, ns: str, obj: dict[str, Any], finalizer: str) -> None:
        """Remove one finalizer; the last one gone completes a pending deletion (DELETED carries the last state)."""
        m = obj["metadata"]
        fins = [f for f in m.get("finalizers") or [] if f != finalizer]
        new = {**obj, "metadata": {**m, "finalizers": fins}}
        if not fins:
            new["metadata"].pop("finalizers")
            if m.get("deletionTimestamp") and not self._awaiting_node(info, new):
                self._remove(info, ns, obj, obj)
                return
        self._persist(info, ns, new, "MODIFIED", obj)

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
        self._drop_finalizer(info, m.get("namespace", ""), o, FOREGROUND)

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
    e = validation.published_schema_error({**body, "apiVersion": info.api_version, "kind": info.kind}, strict=True)
    if e is None or e.validator != "additionalProperties":
        return
    path = ""
    for part in e.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    fields = [f"{path}.{n}" if path else n for n in _UNEXPECTED_RE.findall(str(e.message))]
    if fields:
        unknown = ", ".join(f'unknown field "{f}"' for f in fields)
        raise ApiError(400, f"{info.kind} in version \"{info.version}\" cannot be handled as a {info.kind}: "
                            f"strict decoding error: {unknown}", "BadRequest")


def _deleting_meta(meta: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Metadata of an object whose deletion starts (or goes on): deletionTimestamp (kept if set) and grace
    period 0 unless given; the first time, a generation is bumped (BeforeDelete)."""
    new = {**meta, "deletionTimestamp": meta.get("deletionTimestamp") or now_rfc3339(),
           "deletionGracePeriodSeconds": 0, **changes}
    if not meta.get("deletionTimestamp") and isinstance(meta.get("generation"), int) and meta["generation"] > 0:
        new["generation"] = meta["generation"] + 1
    return new


def _check_kind(info: ResourceInfo, obj: dict[str, Any], name: str) -> None:
    """ValidateTypeMeta: a custom resource of another kind is refused before any other validation."""
    kind = obj.get("kind")
    if isinstance(kind, str) and kind and kind != info.kind:
        raise invalid(f"{kind}.{info.group}", info.group, kind, name, [{
            "reason": "FieldValueInvalid", "field": "kind",
            "message": f"Invalid value: {json.dumps(kind)}: must be {info.kind}"}])


def _field_manager(q: Any, user_agent: str) -> str:
    """The fieldManager parameter, else the client's name (the User-Agent up to its first '/')."""
    return q.get("fieldManager") or user_agent.split("/", 1)[0]


def _add_warnings(resp: web.StreamResponse, warnings: list[str]) -> None:
    for w in warnings:
        escaped = w.replace("\\", "\\\\").replace('"', '\\"')
        resp.headers.add("Warning", f'299 - "{escaped}"')


def _left_selector(ev: Event) -> dict[str, Any]:
    """The object a watcher gets in the DELETED event when a change took it out of its selector: the old
    object with the change's resourceVersion (an old event keeps only the old labels and fields)."""
    old = ev.old or {}
    if ev.slim:
        new = ev.full_object()
        old = {**new, **{k: v for k, v in old.items() if k not in ("metadata", "spec", "status")},
               "metadata": {**new["metadata"], "labels": (old.get("metadata") or {}).get("labels") or {}}}
    return {**old, "metadata": {**(old.get("metadata") or {}), "resourceVersion": str(ev.rv)}}


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
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
    return {**obj, "metadata": meta}


def _semantically_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return _strip_volatile(a) == _strip_volatile(b)


def _spec_changed(info: ResourceInfo, old: dict[str, Any], new: dict[str, Any]) -> bool:
    skip = ("metadata", "status", "apiVersion", "kind")
    return {k: v for k, v in old.items() if k not in skip} != {k: v for k, v in new.items() if k not in skip}


def _apply_merge(info: ResourceInfo, old: dict[str, Any], applied: dict[str, Any]) -> dict[str, Any]:
    """The applied configuration merged over the live object: by the schema's list types for a custom
    resource, by strategic-merge keys for a built-in kind."""
    body = json_copy(applied)
    meta = body.get("metadata") or {}
    meta.pop("resourceVersion", None)
    if not info.custom:
        return json_copy(strategic_merge(old, body))
    merged = managedfields.merge(old, body, info.schema)
    assert isinstance(merged, dict)
    return merged


__all__ = ["ApiServer", "FaultRule", "ReqInfo", "RequestRecord", "parse_path"]
