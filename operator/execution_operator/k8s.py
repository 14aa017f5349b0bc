"""A small async Kubernetes API client on aiohttp that speaks raw JSON.

Built once at startup and shared: building a client per event is ruinous (an SSL context and a CA load
each time), and the official client's model (de)serialisation is costly on hot paths. The operator's
credentials come from kopf's own login helpers (service account first, then the kubeconfig), so the
operator and kopf always talk to the same cluster; `execution_operator.client` passes an `Endpoint` built
from the official loaders instead, so this module imports kopf only where the operator logs in.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import structlog

from execution_operator import safejson
from execution_operator.api import API_VERSION, MANAGED_BY, Kind
from execution_operator.status import rfc3339

if TYPE_CHECKING:
    import kopf

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

log = structlog.get_logger("execution_operator.k8s")

#: Kubernetes verbs by HTTP method, for the request metrics.
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}

#: Answers retried by the client itself (with backoff, honouring Retry-After) before it gives up.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Seconds between tries of a request that met a transient answer; its last failure is raised.
TRANSIENT_BACKOFF = (0.2, 0.5, 1.0, 2.0)
#: The most of a server's Retry-After that one wait honours (longer waits are the caller's to schedule).
MAX_RETRY_AFTER = 10.0

#: The longest Kubernetes object name; an Event's is its object's name and a 17-character suffix.
MAX_NAME_CHARS = 253

#: Called after every request with (verb, status code, seconds): feeds the API metrics.
RequestObserver = Callable[[str, int, float], None]


class ApiError(Exception):
    """A non-2xx answer from the API server, with the fields of its `kind: Status` body."""

    def __init__(self, status: int, body: Mapping[str, Any] | None = None, *, text: str = "",
                 retry_after: float | None = None) -> None:
        self.status = status
        self.body: dict[str, Any] = dict(body or {})
        self.reason: str = str(self.body.get("reason") or "")
        self.message: str = str(self.body.get("message") or text or f"HTTP {status}")
        details = self.body.get("details")
        hinted = details.get("retryAfterSeconds") if isinstance(details, dict) else None
        #: Seconds the server asked us to wait (the Retry-After header, else details.retryAfterSeconds).
        self.retry_after: float | None = retry_after if retry_after is not None else (
            float(hinted) if isinstance(hinted, int | float) and not isinstance(hinted, bool) else None)
        super().__init__(f"{status} {self.reason}: {self.message}")

    @classmethod
    def from_text(cls, status: int, text: str, *, retry_after: float | None = None) -> ApiError:
        """From an error answer's body: a `kind: Status` when it parses, else its first 500 characters."""
        try:
            parsed = safejson.loads(text)
        except ValueError:
            parsed = None
        return cls(status, parsed if isinstance(parsed, dict) else None, text=text[:500], retry_after=retry_after)

    @property
    def transient(self) -> bool:
        """Throttled or a server-side failure: the same request may well succeed a moment later."""
        return self.status in TRANSIENT_STATUSES

    @property
    def not_found(self) -> bool:
        """404: the object is gone, or never was."""
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409 on a stale resourceVersion: re-read and decide again."""
        return self.status == 409 and self.reason != "AlreadyExists"

    @property
    def already_exists(self) -> bool:
        """409 on a create: the object exists already (e.g. a repeated create of a deterministic name)."""
        return self.status == 409 and self.reason == "AlreadyExists"


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach an API server, for clients that log in without kopf."""

    server: str
    ssl: ssl.SSLContext | bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Headers computed per request: tokens of exec credential plugins expire and are refreshed.
    auth_headers: Callable[[], Mapping[str, str]] | None = None
    #: TLS server name when it differs from the server's host (kubeconfig `tls-server-name`).
    server_hostname: str | None = None
    proxy: str | None = None


def load_connection_info() -> kopf.ConnectionInfo:
    """In-cluster service account first, then the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    import kopf

    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise RuntimeError("no Kubernetes credentials: set KUBECONFIG or run in a pod with a service account")
    return info


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    if info.insecure:
        return False
    ctx = ssl.create_default_context(
        cafile=str(info.ca_path) if info.ca_path else None,
        cadata=_text(info.ca_data) if info.ca_data else None,
    )
    cert = info.certificate_path
    key = info.private_key_path
    if info.certificate_data and info.private_key_data:
        # ssl only loads client certificates from files: write them to private temporary files once.
        cert = _to_tempfile(info.certificate_data)
        key = _to_tempfile(info.private_key_data)
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _text(data: str | bytes) -> str:
    raw = data if isinstance(data, bytes) else data.encode()
    if b"-----BEGIN" not in raw:
        raw = base64.b64decode(raw)
    return raw.decode()


def _to_tempfile(data: str | bytes) -> str:
    with tempfile.NamedTemporaryFile("w", delete=False, suffix=".pem") as handle:
        handle.write(_text(data))
        return handle.name


class KubeClient:
    """Raw-JSON requests against one API server; one aiohttp session with a bounded connection pool."""

    def __init__(
        self,
        info: kopf.ConnectionInfo | Endpoint,
        *,
        user_agent: str = MANAGED_BY,
        observer: RequestObserver | None = None,
        pool_size: int = 32,
        timeout: float = 30.0,
        transient_backoff: tuple[float, ...] | None = None,
    ) -> None:
        self.server = info.server.rstrip("/")
        #: Waits between tries on a transient answer (None: `TRANSIENT_BACKOFF`; empty: no retries here,
        #: for a caller with its own retry policy).
        self._transient_backoff = transient_backoff
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}
        self._auth_headers: Callable[[], Mapping[str, str]] | None = None
        self._request_options: dict[str, Any] = {}
        if isinstance(info, Endpoint):
            self._headers.update(info.headers)
            self._auth_headers = info.auth_headers
            self._auth = None
            self._ssl = info.ssl
            self._request_options = {k: v for k, v in (("server_hostname", info.server_hostname),
                                                       ("proxy", info.proxy)) if v}
        else:
            if info.token:
                self._headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
            self._auth = (
                aiohttp.BasicAuth(info.username, info.password or "") if info.username and not info.token else None
            )
            self._ssl = _ssl_context(info)
        self._pool_size = pool_size
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=10)
        self._observer = observer
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily so the session binds to the loop that uses it (kopf runs its own loop).
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, auth=self._auth, timeout=self._timeout
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session; a later request opens a new one."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        raw: bool = False,
    ) -> Any:
        """One request, retried on transient answers (429, 5xx, a dropped connection).

        Every request the operator makes is safe to repeat: creates use deterministic names (a repeat
        meets AlreadyExists), status writes carry the resourceVersion they were decided on (a repeat of
        an applied write meets a conflict), deletes of the gone meet NotFound.
        """
        # UTF-8 on the wire: escaping non-ASCII would make a request up to three times larger.
        data = None if body is None else json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        waits = TRANSIENT_BACKOFF if self._transient_backoff is None else self._transient_backoff
        for backoff in (*waits, None):
            try:
                return await self._request_once(method, path, params, data, content_type, raw)
            except ApiError as exc:
                if backoff is None or not exc.transient:
                    raise
                delay = max(backoff, min(exc.retry_after or 0.0, MAX_RETRY_AFTER))
            except (aiohttp.ClientConnectionError, TimeoutError):
                if backoff is None:
                    raise
                delay = backoff
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _request_once(
        self, method: str, path: str, params: Mapping[str, str] | None, data: bytes | None, content_type: str,
        raw: bool,
    ) -> Any:
        started = time.monotonic()
        headers = self._per_request_headers({"Content-Type": content_type} if data is not None else None)
        status = 0
        retry_after: str | None = None
        try:
            async with self._get_session().request(
                method, self.server + path, params=params, data=data, headers=headers, **self._request_options
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                text = await response.text()
        finally:
            if self._observer is not None:
                self._observer(_VERBS.get(method, method.lower()), status, time.monotonic() - started)
        if status >= 400:
            raise ApiError.from_text(status, text, retry_after=_seconds(retry_after))
        if raw:
            return text
        return safejson.loads(text) if text else {}

    def _per_request_headers(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        if self._auth_headers is None:
            return headers
        return {**(headers or {}), **self._auth_headers()}

    async def lines(
        self, path: str, params: Mapping[str, str] | None = None, *, read_timeout: float | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The lines of a streamed answer (a watch, a followed log), each without its newline.

        Split here rather than by aiohttp's readline, which refuses lines over 128 KiB (an Execution
        with large code, streams and output is bigger). An error answer raises `ApiError` first.
        """
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=read_timeout)
        async with self._get_session().get(
            self.server + path, params=params, headers=self._per_request_headers(None), timeout=timeout,
            **self._request_options,
        ) as response:
            if self._observer is not None:
                self._observer("get", response.status, time.monotonic() - started)
            if response.status >= 400:
                raise ApiError.from_text(response.status, await response.text())
            pending = b""
            async for chunk in response.content.iter_any():
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield line
            if pending:
                yield pending

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """GET a JSON object or list."""
        result: dict[str, Any] = await self.request("GET", path, params=params)
        return result

    async def get_text(self, path: str, params: Mapping[str, str] | None = None) -> str:
        """GET a text body, such as a pod's log."""
        result: str = await self.request("GET", path, params=params, raw=True)
        return result

    async def post(self, path: str, body: Any) -> dict[str, Any]:
        """Create an object."""
        result: dict[str, Any] = await self.request("POST", path, body=body)
        return result

    async def patch(self, path: str, body: Any, *, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        """Patch an object: a merge patch unless `content_type` says otherwise."""
        result: dict[str, Any] = await self.request("PATCH", path, body=body, content_type=content_type)
        return result

    async def delete(self, path: str, body: Any = None) -> dict[str, Any]:
        """Delete an object; `body` may carry DeleteOptions (e.g. a propagation policy)."""
        result: dict[str, Any] = await self.request("DELETE", path, body=body)
        return result

    async def write_stdin(self, path: str, data: bytes, *, container: str, limit_seconds: float = 10.0) -> None:
        """Write `data` to a container's stdin through `pods/NAME/attach`, then close it.

        The Kubernetes remote-command WebSocket protocol: `v5.channel.k8s.io` closes stdin with a
        `[255, 0]` frame, after which the server ends the session with a metav1.Status on the error
        channel (3) and closes; a Failure there (the kubelet refused: the container is not running)
        raises ApiError, as does a refused upgrade. With `v4.channel.k8s.io` only closing the
        connection ends stdin, so no Status can be read. OSError/aiohttp errors when the connection
        breaks, TimeoutError when the session outlasts `limit_seconds`.
        """
        started = time.monotonic()
        status = 0
        params = {"container": container, "stdin": "true", "stdout": "false", "stderr": "false", "tty": "false"}
        try:
            async with self._get_session().ws_connect(
                self.server + path, params=params, protocols=("v5.channel.k8s.io", "v4.channel.k8s.io"),
                timeout=aiohttp.ClientWSTimeout(ws_close=limit_seconds), autoping=True, max_msg_size=0,
                headers=self._per_request_headers(None), **self._request_options,
            ) as ws:
                status = 101
                async with asyncio.timeout(limit_seconds):
                    await ws.send_bytes(b"\x00" + data)
                    if ws.protocol == "v5.channel.k8s.io":
                        await ws.send_bytes(b"\xff\x00")
                        _raise_for_attach_status(await _attach_status(ws))
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status
            raise ApiError(exc.status, None, text=exc.message) from exc
        finally:
            if self._observer is not None:
                self._observer("get", status, time.monotonic() - started)  # a WebSocket upgrade is a GET


async def _attach_status(ws: aiohttp.ClientWebSocketResponse) -> bytes:
    """The error channel's content, read until the server closes the session.

    Empty frames count for nothing: the server's first message, empty, on the lowest channel it
    writes, only says the session is up.
    """
    received = b""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x03":
            received += msg.data[1:]
        elif msg.type == aiohttp.WSMsgType.ERROR:
            raise ConnectionError(f"the attach session broke: {ws.exception()}")
    return received


def _raise_for_attach_status(raw: bytes) -> None:
    """Raise ApiError for a Failure Status on the error channel.

    No Status at all means the session was cut before it ended: ConnectionError.
    """
    if not raw.strip():
        raise ConnectionError("the attach session ended without a status")
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(500, None, text=raw.decode(errors="replace")) from None
    if not isinstance(body, dict):
        raise ApiError(500, None, text=raw.decode(errors="replace"))
    if body.get("status") != "Success":
        code = body.get("code")
        raise ApiError(code if isinstance(code, int) and code >= 400 else 500, body)


def _seconds(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None  # an HTTP date: rare from an API server, and then the backoff alone applies


def path_for(
    api_version: str, plural: str, namespace: str | None = None, name: str | None = None, sub: str | None = None
) -> str:
    """The REST path of a resource: core (`v1`) under /api, groups under /apis."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{plural}"
    if name:
        base += f"/{quote(name)}"
    if sub:
        base += f"/{sub}"
    return base


def resource_version(body: Mapping[str, Any]) -> int:
    """An object's resourceVersion as a number, to tell the newer of two views (0 if it has none)."""
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


async def post_event(
    client: KubeClient, body: Mapping[str, Any], etype: str, reason: str, message: str, now: datetime
) -> None:
    """A core/v1 Event about an object; best effort (an Event is never worth failing a reconcile)."""
    meta = body.get("metadata", {})
    namespace = meta.get("namespace") or "default"
    stamp = rfc3339(now)
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        # The object's name may already be the longest a name can be: the suffix must fit after it.
        "metadata": {"name": f"{str(meta.get('name'))[:MAX_NAME_CHARS - 17]}.{uuid.uuid4().hex[:16]}",
                     "namespace": namespace},
        "involvedObject": {
            "apiVersion": body.get("apiVersion", API_VERSION),
            "kind": body.get("kind", Kind.EXECUTION),
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": etype,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": MANAGED_BY},
        "reportingComponent": MANAGED_BY,
        "reportingInstance": MANAGED_BY,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        await client.post(path_for("v1", "events", namespace), event)
    except Exception as exc:  # noqa: BLE001 - an Event is never worth failing a reconcile
        log.debug("event not posted", reason=reason, error=str(exc)[:200])
