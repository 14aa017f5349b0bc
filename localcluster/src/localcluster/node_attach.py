"""A container's stdin, as a kubelet exposes it to `pods/NAME/attach` (containers with `stdin: true`).

The node listens on a unix socket per such container, in a private directory of its own (mode 0700,
outside the state directory, so a sandbox never sees it), and writes the socket's path to
`{pod dir}/{container}.attach` for the API server to find. What an attach session sends is copied to
the container's stdin. With `stdinOnce: true` the container's stdin is closed when the first session
ends and the socket removed, so nothing can be written to it again, as a real runtime does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

_SOCKET_DIR: Path | None = None


def _socket_dir() -> Path:
    """One short private directory per node process (unix socket paths are limited to 107 bytes)."""
    global _SOCKET_DIR
    if _SOCKET_DIR is None or not _SOCKET_DIR.is_dir():
        _SOCKET_DIR = Path(tempfile.mkdtemp(prefix="lc-attach-"))
    return _SOCKET_DIR


def pointer_path(pod_dir: Path, container: str) -> Path:
    """Where the API server finds the socket of a container's stdin."""
    return pod_dir / f"{container}.attach"


class StdinRelay:
    """Copies attach sessions into one container's stdin; one session at a time."""

    def __init__(self, stdin: asyncio.StreamWriter, pod_dir: Path, container: str, *, once: bool) -> None:
        self.stdin = stdin
        self.once = once
        self.pointer = pointer_path(pod_dir, container)
        digest = hashlib.sha256(f"{pod_dir.name}/{container}".encode()).hexdigest()[:24]
        self.socket = _socket_dir() / f"{digest}.sock"
        self.server: asyncio.AbstractServer | None = None
        self.busy = False
        self.closed = False

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.server = await asyncio.start_unix_server(self._session, path=str(self.socket))
        os.chmod(self.socket, 0o600)
        self.pointer.write_text(str(self.socket))

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.busy or self.closed:
            writer.close()
            return
        self.busy = True
        try:
            while chunk := await reader.read(65536):
                self.stdin.write(chunk)
                await self.stdin.drain()
        except (ConnectionError, OSError):
            pass  # the container is gone, or the session broke: its stdin ends either way below
        finally:
            self.busy = False
            writer.close()
            if self.once:
                self.close()

    def close(self) -> None:
        """Close the container's stdin for good and stop listening."""
        if self.closed:
            return
        self.closed = True
        if self.server is not None:
            self.server.close()
        for path in (self.socket, self.pointer):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self.stdin.close()
