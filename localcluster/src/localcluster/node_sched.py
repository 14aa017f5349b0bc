"""Pure scheduling helpers: quantities, label selectors, taints and the "does this pod fit" check.

Fit is judged per pod against the node's allocatable (a pod that could never fit is Unschedulable);
requests of pods already bound are not summed, so a burst of small pods never queues on the two-CPU
development machine. That is a deliberate simplification of the real scheduler.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from localcluster.quantity import parse_quantity

# The API server's quantity parsing (re-exported for the node's modules).
__all__ = ["match_label_selector", "parse_quantity", "pod_requests", "unschedulable_message"]


def pod_requests(pod: dict[str, Any]) -> dict[str, Decimal]:
    """Effective requests of a pod: the sum over containers, at least the max over init containers.

    A container with a limit but no request requests its limit, as the API server defaults it.
    """
    spec = pod.get("spec") or {}

    def one(container: dict[str, Any]) -> dict[str, Decimal]:
        resources = container.get("resources") or {}
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        out: dict[str, Decimal] = {}
        for name, qty in merged.items():
            try:
                out[name] = parse_quantity(qty)
            except ValueError:
                continue
        return out

    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for name, qty in one(container).items():
            total[name] = total.get(name, Decimal(0)) + qty
    for container in spec.get("initContainers") or []:
        for name, qty in one(container).items():
            total[name] = max(total.get(name, Decimal(0)), qty)
    return total


def match_label_selector(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty selector matches everything, a None one nothing."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(_match_expression(expr, labels) for expr in selector.get("matchExpressions") or [])


def _match_expression(expr: dict[str, Any], labels: dict[str, str]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
    present = key in labels
    if op == "In":
        return present and labels[key] in values
    if op == "NotIn":
        return not present or labels[key] not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and values:
        try:
            actual, bound = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return actual > bound if op == "Gt" else actual < bound
    return False


def _node_affinity_matches(pod: dict[str, Any], labels: dict[str, str]) -> bool:
    affinity = ((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = required.get("nodeSelectorTerms")
    if not terms:
        return True
    # Terms are ORed; expressions within a term are ANDed. matchFields supports metadata.name only.
    for term in terms:
        exprs_ok = all(_match_expression(e, labels) for e in term.get("matchExpressions") or [])
        fields_ok = all(
            _match_expression({**e, "key": "metadata.name"}, {"metadata.name": labels.get("_name", "")})
            for e in term.get("matchFields") or []
        )
        if exprs_ok and fields_ok:
            return True
    return False


def _tolerated(taint: dict[str, Any], tolerations: list[dict[str, Any]]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol.get("key") == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def unschedulable_message(
    pod: dict[str, Any],
    node_name: str,
    node_labels: dict[str, str],
    allocatable: dict[str, str],
    taints: list[dict[str, Any]] | None = None,
) -> str | None:
    """None when the pod fits the node, else the scheduler's `0/1 nodes are available: ...` message."""
    spec = pod.get("spec") or {}
    labels = {**node_labels, "_name": node_name}
    reasons: list[str] = []
    selector = spec.get("nodeSelector") or {}
    if any(node_labels.get(k) != v for k, v in selector.items()) or not _node_affinity_matches(pod, labels):
        reasons.append("1 node(s) didn't match Pod's node affinity/selector")
    for taint in taints or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerated(taint, spec.get("tolerations") or []):
            value = f"={taint['value']}" if taint.get("value") else ""
            reasons.append(f"1 node(s) had untolerated taint {{{taint.get('key')}{value}}}")
            break
    requests = pod_requests(pod)
    for resource in sorted(requests):
        if resource not in allocatable:
            extended = resource.startswith(("hugepages-", "ephemeral-storage")) or "/" in resource
            if extended and requests[resource] > 0:
                reasons.append(f"1 Insufficient {resource}")
            continue
        if requests[resource] > parse_quantity(allocatable[resource]):
            reasons.append(f"1 Insufficient {resource}")
    if not reasons:
        return None
    return f"0/1 nodes are available: {', '.join(reasons)}."
