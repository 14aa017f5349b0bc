"""What the supervisor reads and sets about processes: the /proc table, the cgroup's OOM kills, prctl."""

from __future__ import annotations

import os

_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36


def harden() -> None:
    """Non-dumpable (the child cannot open /proc/<us>/fd/*) and a subreaper (orphans come to us)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def set_dumpable(flag: bool) -> None:
    """Set this process's dumpable flag (the forked harness undoes the supervisor's `harden`)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, int(flag), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def read_oom_kills(path: str) -> int | None:
    """The cgroup's cumulative oom_kill counter, or None where it cannot be read."""
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        return None
    return None


def _process_table() -> dict[int, int]:
    """Map pid -> ppid for every visible process."""
    table: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            table[int(entry)] = int(fields[1])
    return table


def descendants(root: int) -> set[int]:
    """Every live descendant of `root`, read from /proc: what the kill sweep must reach."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for kid in children.get(todo.pop(), []):
            if kid not in found:
                found.add(kid)
                todo.append(kid)
    return found
