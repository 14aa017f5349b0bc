"""`pods/NAME/attach` over WebSocket, as kubectl (1.30+) and other clients speak it.

The subprotocols are Kubernetes' remote-command channel protocols `v5.channel.k8s.io` and
`v4.channel.k8s.io`: every binary message starts with a channel byte (0 stdin, 1 stdout, 2 stderr,
3 error, 4 resize); the error channel carries one metav1.Status when the session ends; in v5 the
client may send `[255, 0]` to close stdin without closing the connection. stdin is copied to the
container's stdin through the node's relay (node_attach); stdout and stderr follow the container's
log from the moment of the attach, until the container ends.
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

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR = 0, 1, 2, 3
CLOSE = 255
#: Largest message accepted from a client (a payload is sent as one message).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def _flag(q: Any, name: str) -> bool:
    return str(q.get(name, "")).lower() in ("true", "1")


def _status(message: str | None) -> bytes:
    if message is None:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    return json.dumps({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError",
                       "code": 500}).encode()


async def serve_pod_attach(server: ApiServer, request: web.Request, info: ResourceInfo, ns: str,
                           name: str) -> web.StreamResponse:
    pod = server._must_get(info, ns, name)
    q = request.query
    container = container_of(pod, q.get("container"))
    want_in, want_out, want_err = _flag(q, "stdin"), _flag(q, "stdout"), _flag(q, "stderr")
    if not (want_in or want_out or want_err):
        raise ApiError(400, "you must specify at least 1 of stdin, stdout, stderr", "BadRequest")
    if not (pod.get("spec") or {}).get("nodeName"):
        raise ApiError(400, f"pod {name} does not have a host assigned", "BadRequest")
    if "running" not in container_state(pod, container):
        raise ApiError(400, f'container "{container}" in pod "{name}" is not running', "BadRequest")
    uid = str(pod["metadata"].get("uid", ""))
    log = log_path(server.state_dir, ns, name, uid, container) if server.state_dir else None
    relay: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    if want_in:
        containers = (pod.get("spec") or {}).get("containers") or []
        spec: dict[str, Any] = next((c for c in containers if c.get("name") == container), {})
        if not spec.get("stdin"):
            raise ApiError(400, f"stdin is not enabled for container {container} of pod {name}", "BadRequest")
        socket = _stdin_socket(log)
        try:
            if socket is None:
                raise FileNotFoundError(socket)
            relay = await asyncio.open_unix_connection(socket)
        except OSError:
            raise ApiError(400, f"the stdin of container {container} of pod {name} is closed", "BadRequest") from None
    ws = web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=MAX_MESSAGE_BYTES, autoping=True)
    if not ws.can_prepare(request).ok:
        if relay is not None:
            relay[1].close()
        raise ApiError(400, "Upgrade request required", "BadRequest")
    await ws.prepare(request)
    v5 = ws.ws_protocol == PROTOCOLS[0]
    follow = asyncio.ensure_future(_follow(server, ws, info, ns, name, uid, container, log, want_out, want_err)) \
        if (want_out or want_err) else None
    pump = asyncio.ensure_future(_pump_stdin(ws, relay[1] if relay else None, v5, follow is None))
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
    if not ws.closed:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(bytes([ERROR]) + _status(error))
            await ws.close()
    return ws


async def _pump_stdin(ws: web.WebSocketResponse, relay: asyncio.StreamWriter | None, v5: bool,
                      stdin_only: bool) -> str | None:
    """Copy the client's stdin frames to the relay; returns an error message, or None."""
    try:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY or not msg.data:
                continue
            channel, data = msg.data[0], msg.data[1:]
            if channel == STDIN and relay is not None:
                relay.write(data)
                await relay.drain()
            elif channel == CLOSE and v5 and data[:1] == bytes([STDIN]) and relay is not None:
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
