"""Fault rules by share of requests, for a background of faults under load, and by client."""

from __future__ import annotations

from localcluster.apiserver.faults import FaultRule, Faults


def test_probability_hits_about_that_share_and_counts_only_hits() -> None:
    faults = Faults(seed=7)
    rule = faults.add(FaultRule(method="GET", status=500, probability=0.1))
    hits = sum(faults.match("GET", "get", "pods", "", "ns", "p") is not None for _ in range(5000))
    assert 400 <= hits <= 600
    assert rule.hits == hits


def test_user_agent_prefix_picks_one_client() -> None:
    faults = Faults()
    faults.add(FaultRule(status=429, user_agent="kopf/"))
    assert faults.match("GET", "watch", "pods", "", "", "", "kopf/1.45.2") is not None
    assert faults.match("GET", "watch", "pods", "", "", "", "execution-operator") is None
    assert faults.match("GET", "watch", "pods", "", "", "") is None
