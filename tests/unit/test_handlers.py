"""The kopf wiring: raw event handlers only, which is what lets the operator skip kopf's diff base."""

from __future__ import annotations

import kopf

from execution_operator.handlers import NoDiffBase, register


def test_only_raw_event_handlers_are_registered() -> None:
    registry = kopf.OperatorRegistry()
    register(registry)
    assert registry._watching.get_all_handlers()
    # A change handler (on.create/update/field...) or a timer/daemon would read the diff base.
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()


def test_the_diff_base_is_never_built_or_read() -> None:
    storage = NoDiffBase(prefix="sandbox.dev", v1=False)
    body = kopf.Body({"metadata": {"name": "x", "annotations": {"a": "b"}}, "spec": {"code": "pass"}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
