"""Warm mode: the runner starts (interpreter up, the class's warm imports loaded) before it has work.

A warm pool's pod runs the runner with `SANDBOX_WARM=1`. Its container has `stdin: true` and
`stdinOnce: true`; the operator, after claiming the pod, attaches to that stdin once and writes one
payload, a JSON object, then closes it:

    {"v": 1, "code": "...", "input": <JSON text or null>, "timeoutSeconds": N,
     "attempt": N, "execution": "...", "correlationId": "..."}

The supervisor reads its stdin to end-of-file (at most `PAYLOAD_LIMIT_BYTES`), closes it, and forwards
the bytes to the harness on a pipe that is the harness's stdin; the harness (already forked, warm
imports done) parses them, puts devnull on its stdin and runs the code exactly as a cold pod would.
A second payload cannot arrive: the container's stdin is closed by the runtime when the first attach
ends (`stdinOnce`), the supervisor reads it once and closes it, and the supervisor runs one harness and
then exits (the pod has `restartPolicy: Never`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys

from execution_operator.runner import jsonc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

WARM_ENV = "SANDBOX_WARM"
WARM_IMPORTS_ENV = "SANDBOX_WARM_IMPORTS"
PAYLOAD_VERSION = 1
#: Printed by the supervisor when its stdin has ended with a payload: the pod's own evidence, in its
#: log, that the handover reached it (a restarted operator reads it before handing a payload again).
PAYLOAD_MARKER = "SANDBOX-PAYLOAD-RECEIVED"
#: Code (100 KiB) and input (1 MiB) as JSON text with escapes, with room to spare.
PAYLOAD_LIMIT_BYTES = 4 * 1024 * 1024
#: Payload fields copied into the environment the code sees, as a cold pod has them.
PAYLOAD_ENV = (("attempt", "SANDBOX_ATTEMPT"), ("execution", "SANDBOX_EXECUTION"),
               ("correlationId", "SANDBOX_CORRELATION_ID"), ("timeoutSeconds", "SANDBOX_TIMEOUT_SECONDS"))


def enabled(environ: Any = None) -> bool:
    """Whether this runner is a warm pool's (`SANDBOX_WARM=1`)."""
    return (environ if environ is not None else os.environ).get(WARM_ENV) == "1"


def import_warm_modules(spec: str) -> list[str]:
    """Import each module named in `spec` (comma-separated); return those that failed.

    A failure is not fatal: the code that needs the module gets the ImportError itself, as it would
    in a cold pod. Whatever a module prints goes to the pod's log before the code's streams begin.
    """
    failed = []
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        try:
            __import__(name)
        except BaseException:  # noqa: BLE001 - an import may raise anything, SystemExit included
            failed.append(name)
    return failed


def parse_payload(data: bytes) -> dict[str, Any]:
    """The payload object, or ValueError saying what is wrong with it."""
    if not data:
        raise ValueError("no payload arrived on stdin")
    payload = jsonc.loads(data)
    if not isinstance(payload, dict) or payload.get("v") != PAYLOAD_VERSION:
        raise ValueError("the payload is not a version 1 object")
    if not isinstance(payload.get("code"), str) or not payload["code"]:
        raise ValueError("the payload has no code")
    if payload.get("input") is not None and not isinstance(payload["input"], str):
        raise ValueError("the payload's input is not JSON text")
    return payload


def payload_timeout(data: bytes, default: float) -> float:
    """The payload's timeoutSeconds for the supervisor's clock (the harness reports bad payloads)."""
    try:
        value = parse_payload(data).get("timeoutSeconds")
    except ValueError:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 3600:
        return float(value)
    return default


class Inbox:
    """The supervisor's side: read the container's stdin to EOF once, then pass it to the harness.

    Both ends are non-blocking and driven by the supervisor's poll loop, so stop signals, stream relay
    and deadlines keep working while a payload trickles in or the harness is still importing.
    """

    def __init__(self, source: int, sink: int, limit: int = PAYLOAD_LIMIT_BYTES) -> None:
        self.source: int | None = source
        self.sink: int | None = sink
        self.limit = limit
        self.data = bytearray()
        self.offset = 0
        self.received = False
        os.set_blocking(source, False)
        os.set_blocking(sink, False)

    def read(self) -> bool:
        """Take what stdin has; True once it reached end-of-file (then stdin is closed for good)."""
        assert self.source is not None
        while True:
            try:
                chunk = os.read(self.source, 65536)
            except BlockingIOError:
                return False
            except OSError:
                chunk = b""
            if chunk and len(self.data) + len(chunk) <= self.limit:
                self.data += chunk
                continue
            if chunk:  # over the limit: what arrived is not a payload the harness will accept
                self.data = bytearray()
            os.close(self.source)
            self.source = None
            self.received = True
            return True

    def write(self) -> bool:
        """Forward the payload to the harness; True once all of it is written (the pipe is closed)."""
        if self.sink is None:
            return True
        while self.offset < len(self.data):
            try:
                self.offset += os.write(self.sink, self.data[self.offset : self.offset + 65536])
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno != errno.EPIPE:
                    raise
                break  # the harness is gone: its exit status tells what happened
        os.close(self.sink)
        self.sink = None
        return True

    def close(self) -> None:
        """Close both ends for good: the supervisor never reads stdin again."""
        for fd in (self.source, self.sink):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.source = self.sink = None


def receive_in_harness() -> tuple[str, str | None]:
    """In the harness: read the payload from stdin (the supervisor's pipe), then close stdin.

    Returns (code, input JSON text or None) and sets the payload's per-Execution variables in the
    environment. Raises ValueError or OSError for a missing or malformed payload.
    """
    chunks = []
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the code gets a closed stdin, as in a cold pod
    os.close(devnull)
    payload = parse_payload(b"".join(chunks))
    for field, variable in PAYLOAD_ENV:
        value = payload.get(field)
        if value is not None:
            os.environ[variable] = str(value)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdin.close()
    return payload["code"], payload.get("input")


def encode_payload(code: str, input_text: str | None, *, timeout_seconds: int, attempt: int, execution: str,
                   correlation_id: str) -> bytes:
    """What the operator writes on a claimed pod's stdin (the runner's own definition of the format)."""
    return jsonc.dumps(
        {"v": PAYLOAD_VERSION, "code": code, "input": input_text, "timeoutSeconds": timeout_seconds,
         "attempt": attempt, "execution": execution, "correlationId": correlation_id},
        ensure_ascii=False, separators=(",", ":"),
    ).encode("utf-8", "surrogatepass")
