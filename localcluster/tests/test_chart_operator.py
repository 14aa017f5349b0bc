"""The chart's operator Deployment turned into the local operator's command line (pure, no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from localcluster.chart_operator import UnsupportedDeployment, operator_command


def deployment(**container: Any) -> dict[str, Any]:
    spec = {"name": "operator", "image": "ghcr.io/execution-operator/operator:0.1.0",
            "args": ["--namespace=team-a", "--liveness-port=8081", "--metrics-port=8080", "--log-format=json"]}
    spec.update(container)
    return {"metadata": {"name": "execution-operator", "namespace": "ops"},
            "spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "busybox"}, spec]}}}}


def test_the_deployments_arguments_with_local_ports() -> None:
    args, env = operator_command(deployment(), metrics_port=18080, liveness_port=18081)
    assert args == ["--namespace=team-a", "--log-format=json", "--metrics-port=18080", "--liveness-port=18081",
                    "--bind-address=127.0.0.1"]
    assert env == {}


def test_environment_values_and_the_pods_own_fields() -> None:
    env_vars = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "LOG_LEVEL", "value": "DEBUG"}]
    _, env = operator_command(deployment(env=env_vars), metrics_port=1, liveness_port=2)
    assert env == {"POD_NAME": "execution-operator-local", "POD_NAMESPACE": "ops", "LOG_LEVEL": "DEBUG"}


def test_a_digest_pinned_operator_image_is_the_operator() -> None:
    image = "ghcr.io/execution-operator/operator@sha256:" + "a" * 64
    args, _ = operator_command(deployment(image=image), metrics_port=1, liveness_port=2)
    assert "--namespace=team-a" in args


@pytest.mark.parametrize(
    ("container", "message"),
    [({"image": "ghcr.io/someone/else:1"}, "only ghcr.io/execution-operator/operator"),
     ({"command": ["sh"]}, "overrides the image's command"),
     ({"args": ["--metrics-port", "8080"]}, "--flag=value"),
     ({"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}, "env T")],
)
def test_what_cannot_run_locally_is_refused_with_a_reason(container: dict[str, Any], message: str) -> None:
    with pytest.raises(UnsupportedDeployment, match=message):
        operator_command(deployment(**container), metrics_port=1, liveness_port=2)
