"""`pods/NAME/attach` over WebSocket, as kubectl (1.30+) and other clients speak it.

The subprotocols are Kubernetes' remote-command channel protocols `v5.channel.k8s.io` and
`v4.channel.k8s.io`: every binary message starts with a channel byte (0 stdin, 1 stdout, 2 stderr,
3 error, 4 resize); the error channel carries one metav1.Status when the session ends; in v5 the
client may send `[255, 0]` to close stdin without closing the connection. stdin is copied to the
container's stdin through the node's relay (node_attach); stdout and stderr follow the container's
log from the moment of the attach, until the container ends.

Which check answers where follows the real path. The API server itself (AttachLocation in
pkg/registry/core/pod/strategy.go) only finds the pod, the container and its node; everything else
is the kubelet's (getAttach in pkg/kubelet/server/server.go, Kubelet.GetAttach in
pkg/kubelet/kubelet_pods.go). A request offering `v5.channel.k8s.io` is answered by the API server's
stream translator (staging/src/k8s.io/apiserver/pkg/util/proxy/streamtranslator.go): it upgrades at
once and reports the kubelet's refusal on the error channel, as an InternalError Status. Other
requests are proxied to the kubelet, whose refusal is the HTTP answer to the upgrade, in plain text.
The runtime (containerd's ContainerIO.Attach) refuses nothing more: stdin a container does not have,
or has closed (`stdinOnce` after the first session), is read from the client and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from localcluster.apiserver.logs import FOLLOW_POLL_SECONDS, container_of, container_state, log_path
from localcluster.apiserver.resources import ResourceInfo
from localcluster.apiserver.status import ApiError

if TYPE_CHECKING:
    from localcluster.apiserver.server import ApiServer

V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
PROTOCOLS = (V5, V4)
STDIN, STDOUT, STDERR, ERROR = 0, 1, 2, 3
CLOSE = 255
#: Largest message accepted from a client (a payload is sent as one message).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class KubeletRefused(Exception):
    """The kubelet's refusal of an attach: an HTTP code and a plain-text message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _flag(q: Any, name: str) -> bool:
    # As the API server decodes PodAttachOptions (Convert_Slice_string_To_bool in apimachinery's
    # runtime conversion): present and neither "false" nor "0" is true, even an empty value.
    if name not in q:
        return False
    value = str(q.get(name))
    return value != "0" and value.lower() != "false"


def _status(message: str | None) -> bytes:
    if message is None:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    return json.dumps({"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {message}",
                       "reason": "InternalError", "details": {"causes": [{"message": message}]},
                       "code": 500}).encode()


def _offered(request: web.Request) -> list[str]:
    header = request.headers.get("Sec-WebSocket-Protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def _kubelet_checks(pod: dict[str, Any], ns: str, name: str, container: str, streams: tuple[bool, bool, bool]) -> None:
    """What the kubelet refuses: no stream asked for, or the container not running (it then has no
    running container of that name: Kubelet.GetAttach's "not found")."""
    if not any(streams):
        raise KubeletRefused(400, "you must specify at least 1 of stdin, stdout, stderr")
    if "running" not in container_state(pod, container):
        raise KubeletRefused(500, f"container {container} not found in pod {name}_{ns}")


async def serve_pod_attach(server: ApiServer, request: web.Request, info: ResourceInfo, ns: str,
                           name: str) -> web.StreamResponse:
    pod = server._must_get(info, ns, name)
    q = request.query
    container = container_of(pod, q.get("container"))
    if not (pod.get("spec") or {}).get("nodeName"):
        raise ApiError(400, f"pod {name} does not have a host assigned", "BadRequest")
    want_in, want_out, want_err = _flag(q, "stdin"), _flag(q, "stdout"), _flag(q, "stderr")
    offered = _offered(request)
    translated = V5 in offered
    ws = web.WebSocketResponse(protocols=PROTOCOLS if translated else (V4,), max_msg_size=MAX_MESSAGE_BYTES,
                               autoping=True)
    if not ws.can_prepare(request).ok:
        # The upgrade-aware proxy refuses a plain request before anything reaches the kubelet.
        raise ApiError(400, "Upgrade request required", "BadRequest")
    refusal: KubeletRefused | None = None
    try:
        _kubelet_checks(pod, ns, name, container, (want_in, want_out, want_err))
    except KubeletRefused as exc:
        refusal = exc
    if not translated:
        if refusal is not None:
            return web.Response(status=refusal.code, text=refusal.message)
        if offered and V4 not in offered:
            # The kubelet's WebSocket handshake (wsstream's handshake) refuses subprotocols it does not
            # speak; of those, only v4 (and v5 through the API server) are served here.
            return web.Response(status=403)
    uid = str(pod["metadata"].get("uid", ""))
    log = log_path(server.state_dir, ns, name, uid, container) if server.state_dir else None
    relay: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    stdin_state = "none"
    if want_in and refusal is None:
        containers = (pod.get("spec") or {}).get("containers") or []
        spec: dict[str, Any] = next((c for c in containers if c.get("name") == container), {})
        if spec.get("stdin"):
            stdin_state = "closed"
            socket = _stdin_socket(log)
            with contextlib.suppress(OSError):
                if socket is not None:
                    relay = await asyncio.open_unix_connection(socket)
                    stdin_state = "open"
    await ws.prepare(request)
    v5 = ws.ws_protocol == V5
    # The first message says the session is up: empty, on the lowest channel the server writes.
    await ws.send_bytes(bytes([STDOUT if want_out else STDERR if want_err else ERROR]))
    if refusal is not None:
        await _finish(ws, f"unable to upgrade connection: {refusal.message}")
        return ws
    follow = asyncio.ensure_future(_follow(server, ws, info, ns, name, uid, container, log, want_out, want_err)) \
        if (want_out or want_err) else None
    pump = asyncio.ensure_future(_pump_stdin(ws, relay[1] if relay else None, v5, follow is None, stdin_state))
    waiting = {pump} | ({follow} if follow is not None else set())
    # The session ends when the container ends (output followed to its end), or when the client
    # closes the connection; with stdin only, also when the client closes stdin.
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    error = pump.result() if pump in done else None
    for task in waiting - done:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    if relay is not None:
        relay[1].close()
    await _finish(ws, error)
    return ws


async def _finish(ws: web.WebSocketResponse, error: str | None) -> None:
    """The session's Status on the error channel, then the close.

    Without a subprotocol the kubelet speaks the first channel protocol, whose error channel
    carries only a failure's message, as plain text (v1WriteStatusFunc in the kubelet's
    remotecommand websocket.go); v4 and v5 write the Status as JSON, success included.
    """
    if ws.closed:
        return
    with contextlib.suppress(ConnectionError, RuntimeError):
        if ws.ws_protocol:
            await ws.send_bytes(bytes([ERROR]) + _status(error))
        elif error is not None:
            await ws.send_bytes(bytes([ERROR]) + error.encode())
        await ws.close()


async def _pump_stdin(ws: web.WebSocketResponse, relay: asyncio.StreamWriter | None, v5: bool,
                      stdin_only: bool, stdin_state: str) -> str | None:
    """Copy the client's stdin frames to the relay; returns an error message, or None.

    `stdin_state` is "open" (copied), "closed" (a `stdinOnce` stdin after its first session: the
    runtime's copy fails on the first write, or ends with the client's stdin) or "none" (the
    container has no stdin, or none was asked for: the runtime copies nothing and, stdin being the
    only stream, the session ends at once).
    """
    if stdin_only and stdin_state == "none":
        return None
    try:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY or not msg.data:
                continue
            channel, data = msg.data[0], msg.data[1:]
            if channel == STDIN and relay is not None:
                relay.write(data)
                await relay.drain()
            elif channel == STDIN and stdin_state == "closed" and data and stdin_only:
                return None  # written to a closed stdin: the runtime's copy ends, quietly
            elif channel == CLOSE and v5 and data[:1] == bytes([STDIN]) and stdin_state != "none":
                if relay is not None:
                    relay.close()
                    relay = None
                if stdin_only:
                    return None  # stdin was the only stream: the session is done
    except (ConnectionError, OSError) as exc:
        return f"error writing to the container's stdin: {exc}"
    finally:
        if relay is not None:
            relay.close()  # the connection ended: so does this session's stdin
    if stdin_only:
        return None
    await asyncio.Event().wait()  # the client closed: the output keeps being followed until cancelled
    return None


async def _follow(server: ApiServer, ws: web.WebSocketResponse, info: ResourceInfo, ns: str, name: str, uid: str,
                  container: str, log: Path | None, want_out: bool, want_err: bool) -> None:
    """Relay the container's output written after the attach began, until the container ends."""
    offset = _read_from(log, None)[1]
    buf = b""
    while not ws.closed:
        current = server.store.get(info.store_key, ns, name)
        done = current is None or current["metadata"].get("uid") != uid or \
            "terminated" in container_state(current, container)
        new, offset = _read_from(log, offset)
        if new:
            *lines, buf = (buf + new).split(b"\n")
            for line in lines:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                channel = STDOUT if rec.get("stream") == "stdout" else STDERR
                if (want_out and channel == STDOUT) or (want_err and channel == STDERR):
                    await ws.send_bytes(bytes([channel]) + str(rec.get("log", "")).encode())
        if done:
            return
        await asyncio.sleep(FOLLOW_POLL_SECONDS)


def _stdin_socket(log: Path | None) -> str | None:
    """The node's socket for the container's stdin, from the pointer file beside its log."""
    pointer = log.with_suffix(".attach") if log is not None else None
    try:
        return pointer.read_text().strip() if pointer is not None else None
    except OSError:
        return None


def _read_from(log: Path | None, offset: int | None) -> tuple[bytes, int]:
    """What the log holds past `offset` (None: nothing, just its current end), and the new offset."""
    if log is None or not log.exists():
        return b"", offset or 0
    if offset is None:
        return b"", log.stat().st_size
    with log.open("rb") as fh:
        fh.seek(offset)
        new = fh.read()
    return new, offset + len(new)
