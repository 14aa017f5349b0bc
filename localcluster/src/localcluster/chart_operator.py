"""The chart's operator Deployment, run beside the local cluster as a local process.

The local node runs sandbox pods, but not the operator's Deployment: the operator needs the API
server's address, which a pod on the local node cannot be given the way a real cluster gives it
(an in-cluster Service and a ServiceAccount token). So `python -m localcluster operator` reads the
Deployment that `helm install` created and runs the operator image's entrypoint (`execution-operator`,
here `python -m execution_operator`) with exactly that container's arguments and environment. Only
the ports move to free ones, bound to loopback, since the process shares the machine's network.
What this leaves out: the ServiceAccount's RBAC (the local API server allows every request) and the
Deployment's resources, probes and security context.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .node_images import parse_image

OPERATOR_IMAGE = "ghcr.io/execution-operator/operator"
#: The operator image's ENTRYPOINT, as the project's interpreter runs it.
OPERATOR_MODULE = "execution_operator"
_PORT_FLAGS = ("--metrics-port", "--liveness-port", "--bind-address")


class UnsupportedDeployment(ValueError):
    """The Deployment asks for something the local path cannot do faithfully."""


def operator_container(deployment: Mapping[str, Any]) -> Mapping[str, Any]:
    """The operator container of the chart's Deployment (by name, else the first)."""
    containers = ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
    for container in containers:
        if container.get("name") == "operator":
            return container
    if not containers:
        raise UnsupportedDeployment("the Deployment has no containers")
    return containers[0]


def operator_command(
    deployment: Mapping[str, Any], *, metrics_port: int, liveness_port: int, bind_address: str = "127.0.0.1"
) -> tuple[list[str], dict[str, str]]:
    """The operator's arguments and extra environment for the Deployment's operator container.

    Raises UnsupportedDeployment for an image other than the operator's, a `command` override, or an
    environment source other than a literal value or the pod's own name and namespace.
    """
    container = operator_container(deployment)
    image = parse_image(str(container.get("image") or ""))
    if image.repository != OPERATOR_IMAGE:
        raise UnsupportedDeployment(
            f"the Deployment runs {image.original}; only {OPERATOR_IMAGE} is mapped to the operator locally"
        )
    if container.get("command"):
        raise UnsupportedDeployment("the operator container overrides the image's command")
    ports = {"--metrics-port": str(metrics_port), "--liveness-port": str(liveness_port),
             "--bind-address": bind_address}
    given = [str(a) for a in container.get("args") or []]
    if any(a in _PORT_FLAGS for a in given):
        raise UnsupportedDeployment(f"write the port flags as --flag=value: {given}")
    args = [a for a in given if a.split("=", 1)[0] not in _PORT_FLAGS]
    args += [f"{flag}={value}" for flag, value in ports.items()]
    metadata = deployment.get("metadata") or {}
    fields = {"metadata.name": f"{metadata.get('name', 'operator')}-local",
              "metadata.namespace": str(metadata.get("namespace") or "default")}
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        name = str(var.get("name"))
        if "value" in var:
            env[name] = str(var["value"])
            continue
        field = ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if field not in fields:
            raise UnsupportedDeployment(f"env {name}: only values and the pod's name and namespace are supported")
        env[name] = fields[field]
    return args, env

