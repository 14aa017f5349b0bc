"""kopf wiring only: every handler is a few lines that hand raw watch events to the controller.

Raw `on.event` handlers make kopf write nothing to our objects (no finalizers, no diff-base or progress
annotations), so every API write per Execution is one the controller chose to make.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from execution_operator import kopf_guard, metrics
from execution_operator.api import (
    DEAD_LETTERS,
    EXECUTION_CLASSES,
    EXECUTIONS,
    GROUP,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    VERSION,
    WARM_POOLS,
)
from execution_operator.controller import Controller
from execution_operator.deadletters import DeadLetters
from execution_operator.k8s import KubeClient, load_connection_info

SANDBOX_POD_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"


class OperatorContext:
    """Shared by all handlers through kopf's memo; `__copy__` returns itself so there is one."""

    def __init__(
        self, *, dead_letter_max_age: float = 7 * 24 * 3600, dead_letter_max_per_namespace: int = 1000
    ) -> None:
        self.controller: Controller | None = None
        self.dead_letter_max_age = dead_letter_max_age
        self.dead_letter_max_per_namespace = dead_letter_max_per_namespace

    def __copy__(self) -> OperatorContext:
        return self

    def require(self) -> Controller:
        """The controller, once startup has built it."""
        assert self.controller is not None, "startup has not run"
        return self.controller


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """A diff base that is never built or stored.

    kopf builds one on every watch event for its change handlers, by deep-copying the whole object (a pod,
    or an Execution with its output tails) and stripping it again: a fifth of the operator's CPU under load.
    This operator registers raw event handlers only, which never read it.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        """An empty essence: there is nothing to compare."""
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        """No diff base is ever stored."""
        return None


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the handlers to `registry` (an explicit registry keeps tests and embedding independent)."""
    kopf_guard.install()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: OperatorContext, **_: Any) -> None:
        # Server-side selection: only our sandbox pods reach us, not every pod in the cluster.
        settings.watching.label_selectors[("v1", "pods")] = SANDBOX_POD_SELECTOR
        settings.persistence.finalizer = f"{GROUP}/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP, v1=False)
        settings.persistence.diffbase_storage = NoDiffBase(prefix=GROUP, v1=False)
        settings.posting.level = logging.WARNING
        settings.networking.request_timeout = 60
        settings.networking.connect_timeout = 10
        client = KubeClient(load_connection_info(), observer=metrics.observe_api_request)
        dead_letters = DeadLetters(client, max_age_seconds=memo.dead_letter_max_age,
                                   max_per_namespace=memo.dead_letter_max_per_namespace)
        memo.controller = Controller(client, dead_letters=dead_letters)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: OperatorContext, **_: Any) -> None:
        if memo.controller is not None:
            await memo.controller.client.close()

    @kopf.on.event(GROUP, VERSION, EXECUTIONS, registry=registry)
    async def execution_event(event: kopf.RawEvent, memo: OperatorContext, **_: Any) -> None:
        await memo.require().on_execution_event(event["object"], event.get("type"))

    @kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGED_BY}, registry=registry)
    async def pod_event(event: kopf.RawEvent, memo: OperatorContext, **_: Any) -> None:
        await memo.require().on_pod_event(event["object"], event.get("type"))

    @kopf.on.event(GROUP, VERSION, EXECUTION_CLASSES, registry=registry)
    async def class_event(event: kopf.RawEvent, memo: OperatorContext, **_: Any) -> None:
        await memo.require().on_class_event(event["object"], event.get("type"))

    @kopf.on.event(GROUP, VERSION, WARM_POOLS, registry=registry)
    async def pool_event(event: kopf.RawEvent, memo: OperatorContext, **_: Any) -> None:
        await memo.require().on_pool_event(event["object"], event.get("type"))

    @kopf.on.event(GROUP, VERSION, DEAD_LETTERS, registry=registry)
    async def dead_letter_event(event: kopf.RawEvent, memo: OperatorContext, **_: Any) -> None:
        dead_letters = memo.require().dead_letters
        if dead_letters is not None:
            await dead_letters.on_event(event["object"], event.get("type"))

    @kopf.on.probe(id="controller", registry=registry)
    def probe(memo: OperatorContext, **_: Any) -> dict[str, int]:
        controller = memo.require()
        return {"inFlight": len(controller.state.executions), "timers": len(controller.state.timers)}
