"""`GET pods/NAME/log`: served from the node's CRI-style log files under the shared state dir.

Each line of `{state_dir}/pods/{ns}_{pod}_{uid}/{container}.log` is a JSON object
`{"time": RFC3339Nano, "stream": "stdout"|"stderr", "log": "text\\n"}`; clients get only the text.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from localcluster.apiserver.resources import ResourceInfo
from localcluster.apiserver.status import ApiError

if TYPE_CHECKING:
    from localcluster.apiserver.server import ApiServer

FOLLOW_POLL_SECONDS = 0.1


def log_path(state_dir: Path, ns: str, name: str, uid: str, container: str) -> Path:
    return state_dir / "pods" / f"{ns}_{name}_{uid}" / f"{container}.log"


def _render(line: bytes, timestamps: bool, since: dt.datetime | None) -> bytes | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    text = str(rec.get("log", ""))
    ts = str(rec.get("time", ""))
    if since is not None:
        try:
            t = dt.datetime.fromisoformat(ts.replace("Z", "+00:00")[:26] + "+00:00" if "." in ts else
                                          ts.replace("Z", "+00:00"))
            if t < since:
                return None
        except ValueError:
            pass
    out = f"{ts} {text}" if timestamps else text
    return out.encode()


def container_state(pod: dict[str, Any], container: str) -> dict[str, Any]:
    st = pod.get("status") or {}
    for cs in (st.get("containerStatuses") or []) + (st.get("initContainerStatuses") or []):
        if cs.get("name") == container:
            return cs.get("state") or {}
    return {}


def _since(q: Any) -> dt.datetime | None:
    if q.get("sinceSeconds"):
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=int(q["sinceSeconds"]))
    if q.get("sinceTime"):
        return dt.datetime.fromisoformat(q["sinceTime"].replace("Z", "+00:00"))
    return None


def container_of(pod: dict[str, Any], requested: str | None) -> str:
    """The container a log or attach request means: the one named, or the pod's only one.

    As validateContainer in pkg/registry/core/pod/strategy.go: with no name, a pod of one container
    means it; otherwise the error lists every container (init, regular, then ephemeral ones). A
    name must be one of them.
    """
    name = pod["metadata"]["name"]
    spec = pod.get("spec") or {}
    names = [c.get("name") for kind in ("initContainers", "containers", "ephemeralContainers")
             for c in spec.get(kind) or []]
    main_names = [c.get("name") for c in spec.get("containers") or []]
    container = requested
    if not container:
        if not main_names:
            raise ApiError(400, f"a container name must be specified for pod {name}", "BadRequest")
        if len(main_names) != 1:
            raise ApiError(400, f"a container name must be specified for pod {name}, choose one of: "
                                f"[{' '.join(str(n) for n in names)}]", "BadRequest")
        container = str(main_names[0])
    if container not in names:
        raise ApiError(400, f"container {container} is not valid for pod {name}", "BadRequest")
    return container


async def serve_pod_log(server: ApiServer, request: web.Request, info: ResourceInfo, ns: str,
                        name: str) -> web.StreamResponse:
    pod = server._must_get(info, ns, name)
    q = request.query
    container = container_of(pod, q.get("container"))
    if q.get("previous") in ("true", "1"):
        # restartPolicy Never: containers are never restarted, so there is no previous instance.
        raise ApiError(400, f'previous terminated container "{container}" in pod "{name}" not found', "BadRequest")
    uid = pod["metadata"].get("uid", "")
    path = log_path(server.state_dir, ns, name, uid, container) if server.state_dir else None
    if path is None or not path.exists():
        state = container_state(pod, container)
        if "terminated" not in state and "running" not in state:
            reason = (state.get("waiting") or {}).get("reason") or "ContainerCreating"
            raise ApiError(400, f'container "{container}" in pod "{name}" is waiting to start: {reason}',
                           "BadRequest")
    timestamps = q.get("timestamps") in ("true", "1")
    since = _since(q)
    tail = int(q["tailLines"]) if q.get("tailLines") else None
    limit = int(q["limitBytes"]) if q.get("limitBytes") else None
    follow = q.get("follow") in ("true", "1")

    data = path.read_bytes() if path is not None and path.exists() else b""
    complete, _, partial = data.rpartition(b"\n")
    offset = len(complete) + 1 if complete else 0
    lines = [r for r in (_render(ln, timestamps, since) for ln in complete.split(b"\n") if ln) if r is not None]
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    body = b"".join(lines)
    if not follow:
        if limit is not None:
            body = body[:limit]
        return web.Response(body=body, content_type="text/plain")

    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    sent = 0

    async def send(chunk: bytes) -> bool:
        nonlocal sent
        if limit is not None:
            chunk = chunk[: max(0, limit - sent)]
        if chunk:
            await resp.write(chunk)
            sent += len(chunk)
        return limit is None or sent < limit

    more = await send(body)
    buf = partial
    while more:
        current = server.store.get(info.store_key, ns, name)
        done = current is None or current["metadata"].get("uid") != uid or \
            "terminated" in container_state(current, container)
        if path is not None and path.exists():
            with path.open("rb") as f:
                f.seek(offset)
                new = f.read()
            offset += len(new)
            buf += new
            *full, buf = buf.split(b"\n")
            out = b"".join(r for r in (_render(ln, timestamps, since) for ln in full if ln) if r is not None)
            if out:
                more = await send(out)
        if done:
            break
        await asyncio.sleep(FOLLOW_POLL_SECONDS)
    await resp.write_eof()
    return resp
