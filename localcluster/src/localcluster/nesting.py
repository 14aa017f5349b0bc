"""How deeply a JSON body may nest: as deep as the real API server's decoder takes, and no deeper.

Go's encoding/json (behind every decoder of the API server) refuses a document nested more than 10000
arrays and objects deep with `invalid character '{' exceeded max depth`; anything shallower is a
valid object, stored and served like any other. The emulator's own code walks objects recursively
(copies, diffs, field sets: two to three Python frames a level), so it needs more recursion room than
Python's default of 1000 frames, and cel-python lowers the limit to 2500 whenever an Environment is
made (`celpy_environment` keeps it from lowering it). `too_deep` makes enough room, for the rest of the
process, as soon as a body that may nest deeply arrives.
"""

from __future__ import annotations

import re
import sys
from itertools import accumulate

import celpy

#: Go's encoding/json maxNestingDepth.
MAX_NESTING_DEPTH = 10000
#: Python frames per nesting level on the emulator's deepest recursive path, with room to spare.
_FRAMES_PER_LEVEL = 4
_BASELINE_FRAMES = 2000
#: Bodies with fewer openings than this nest shallowly enough for any recursion limit Python starts with.
_DEFAULT_ROOM = 200
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(rb"[\[\]{}]")


def celpy_environment() -> celpy.Environment:
    """A cel-python Environment, without letting it lower the recursion room already made."""
    before = sys.getrecursionlimit()
    environment = celpy.Environment()  # sets the limit to 2500, whatever it was
    sys.setrecursionlimit(max(before, sys.getrecursionlimit()))
    return environment


def ensure_recursion_room() -> None:
    """Let a body nested MAX_NESTING_DEPTH deep through the emulator's recursive code."""
    wanted = MAX_NESTING_DEPTH * _FRAMES_PER_LEVEL + _BASELINE_FRAMES
    if sys.getrecursionlimit() < wanted:
        sys.setrecursionlimit(wanted)


def too_deep(raw: bytes) -> str | None:
    """Go's error for a JSON document nested deeper than MAX_NESTING_DEPTH, or None.

    Checked before Python parses the document, so no parser recurses deeper than the room above; a
    body that may nest deeper than Python's default allows makes sure of that room first (cel-python
    may have lowered it since). Cheap for ordinary bodies: only one with more brackets than the bound
    is scanned.
    """
    openings = raw.count(b"{") + raw.count(b"[")
    if openings > _DEFAULT_ROOM:
        ensure_recursion_room()
    if openings <= MAX_NESTING_DEPTH:
        return None
    brackets = _BRACKET.findall(_STRING.sub(b'""', raw))
    depths = accumulate(1 if b in (b"{", b"[") else -1 for b in brackets)
    for position, depth in enumerate(depths):
        if depth > MAX_NESTING_DEPTH:
            return f"invalid character '{brackets[position].decode()}' exceeded max depth"
    return None
