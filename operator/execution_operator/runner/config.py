"""`Config`: the runner's settings, read from the environment variables the pod spec sets."""

from __future__ import annotations

import os

from execution_operator.runner import warm


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


class Config:
    """The runner's settings, from the environment the pod (or a test) gives it.

    A plain class, not a dataclass: importing dataclasses costs the runner's start-up ~10 ms.
    """

    def __init__(
        self,
        timeout_seconds: float = 30.0,
        output_limit: int = 131072,
        tail_bytes: int = 16384,
        termination_log: str = "",
        memory_events: str = "/sys/fs/cgroup/memory.events",
        relay_limit: int = 16 * 1024 * 1024,
        child_command: tuple[str, ...] = (),
        warm_mode: bool = False,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.output_limit = output_limit
        self.tail_bytes = tail_bytes
        self.termination_log = termination_log
        self.memory_events = memory_events
        self.relay_limit = relay_limit
        self.child_command = child_command
        #: Wait for the payload on stdin (a warm pool's pod) instead of reading it from the payload volume.
        self.warm_mode = warm_mode

    @classmethod
    def from_env(cls) -> Config:
        """The settings the pod spec passes as environment variables."""
        return cls(
            timeout_seconds=float(_env_int("SANDBOX_TIMEOUT_SECONDS", 30)),
            output_limit=_env_int("SANDBOX_OUTPUT_LIMIT_BYTES", 131072),
            tail_bytes=_env_int("SANDBOX_STREAM_TAIL_BYTES", 16384),
            termination_log=os.environ.get("SANDBOX_TERMINATION_LOG", ""),
            memory_events=os.environ.get("SANDBOX_MEMORY_EVENTS", "/sys/fs/cgroup/memory.events"),
            relay_limit=_env_int("SANDBOX_RELAY_LIMIT_BYTES", 16 * 1024 * 1024),
            warm_mode=warm.enabled(),
        )
