"""The child's output streams as the supervisor keeps them: relayed live, with a bounded tail."""

from __future__ import annotations

import os


def write_all(fd: int, data: bytes) -> bool:
    """Write all of `data` to `fd`; False when a write failed (the reader is gone, the disk is full)."""
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except OSError:
        return False
    return True


class Stream:
    """One of the child's output streams: relayed live, with a bounded tail kept."""

    def __init__(self, fd: int, target: int, limit: int, relay_limit: int) -> None:
        self.fd = fd
        self.target = target
        self.limit = limit
        self.relay_limit = relay_limit
        self.tail = bytearray()
        self.total = 0
        self.relayed = 0
        self.relay_broken = False
        self.last_byte = 10  # as if after a newline

    def feed(self, data: bytes) -> None:
        """Take a chunk of output: keep it in the tail and relay it, up to the relay limit."""
        self.total += len(data)
        self.tail += data
        if len(self.tail) > 2 * self.limit:
            del self.tail[: -self.limit]
        if self.relay_broken:
            return
        room = self.relay_limit - self.relayed
        chunk = data if len(data) <= room else data[:room]
        if chunk and write_all(self.target, chunk):
            self.relayed += len(chunk)
            self.last_byte = chunk[-1]
        elif chunk:
            self.relay_broken = True
        if len(chunk) < len(data):
            write_all(self.target, b"\n[sandbox] output beyond the relay limit is not shown here\n")
            self.relay_broken = True
            self.last_byte = 10

    def text(self) -> tuple[str, bool]:
        """The tail as text, and whether it was cut (a cut never leaves half a UTF-8 character)."""
        truncated = self.total > self.limit
        data = bytes(self.tail[-self.limit :]) if truncated else bytes(self.tail)
        if truncated:  # the cut may fall inside a UTF-8 character: drop its continuation bytes
            skip = 0
            while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
                skip += 1
            data = data[skip:]
        return data.decode("utf-8", "replace"), truncated

    def end_line(self) -> None:
        """Make sure the next thing written to the target starts a new line."""
        if self.last_byte != 10:
            write_all(self.target, b"\n")
            self.last_byte = 10
