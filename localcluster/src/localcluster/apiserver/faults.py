"""Fault injection: make chosen requests fail or slow down, so clients' retry paths can be tested."""

from __future__ import annotations

import fnmatch
import random
import threading
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class FaultRule:
    """Matches requests by method/verb/resource/subresource/namespace/name glob and User-Agent prefix;
    None matches anything.

    `status` (e.g. 429, 500, 409, 410) is answered instead of serving the request, after `delay`
    seconds if given; a rule with only `delay` slows the request down and then serves it.
    `drop_after` serves a matching watch and closes its stream after that many seconds, as a load
    balancer or an API server restart does (the client must resume from its last resourceVersion).
    `times` limits how many requests the rule hits (None: until removed). `probability` makes it hit
    only that share of the requests it matches (at random), for a background of faults under load.
    """

    method: str | None = None
    resource: str | None = None
    name_pattern: str | None = None
    status: int | None = None
    retry_after: int | None = None
    delay: float | None = None
    times: int | None = None
    verb: str | None = None
    subresource: str | None = None
    namespace: str | None = None
    message: str | None = None
    user_agent: str | None = None
    drop_after: float | None = None
    probability: float | None = None
    hits: int = 0

    def matches(self, method: str, verb: str, resource: str, subresource: str, namespace: str,
                name: str, user_agent: str = "") -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.user_agent and not user_agent.startswith(self.user_agent):
            return False
        if self.method and self.method.upper() != method:
            return False
        if self.verb and self.verb != verb:
            return False
        if self.resource and self.resource not in (resource, f"{resource}/{subresource}"):
            return False
        if self.subresource is not None and self.subresource != subresource:
            return False
        if self.namespace is not None and self.namespace != namespace:
            return False
        return not (self.name_pattern and not fnmatch.fnmatchcase(name, self.name_pattern))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Faults:
    """The active rules; thread-safe because tests add rules from outside the server's loop."""

    def __init__(self, seed: int | None = None) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def remove(self, rule: FaultRule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def match(self, method: str, verb: str, resource: str, subresource: str, namespace: str,
              name: str, user_agent: str = "") -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if not rule.matches(method, verb, resource, subresource, namespace, name, user_agent):
                    continue
                if rule.probability is not None and self._random.random() >= rule.probability:
                    continue
                rule.hits += 1
                return rule
        return None
