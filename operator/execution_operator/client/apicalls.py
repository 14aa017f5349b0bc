"""`ApiCalls`: the client's requests to the API server, retried and their errors made into `ClientError`s."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from execution_operator.api import API_VERSION, EXECUTIONS, GROUP
from execution_operator.client.credentials import Credentials
from execution_operator.client.exceptions import ClientError
from execution_operator.k8s import ApiError, KubeClient

CRD_NAME = f"{EXECUTIONS}.{GROUP}"
#: Attempts of one API request on a connection failure, 429 or 5xx (create included: names are ours).
REQUEST_ATTEMPTS = 6


class ApiCalls:
    """The project's KubeClient plus retries and the translation of API errors into `ClientError`s."""

    def __init__(self, credentials: Credentials, user_agent: str) -> None:
        self.credentials = credentials
        self.kube = KubeClient(credentials.endpoint, user_agent=user_agent, transient_backoff=())  # `call` retries

    async def call(self, what: str, namespace: str, name: str | None, request: Callable[[], Awaitable[Any]]) -> Any:
        """Run `request`, retrying what a well-behaved client retries; raise a `ClientError` otherwise."""
        delay = 0.2
        for attempt in range(1, REQUEST_ATTEMPTS + 1):
            try:
                return await request()
            except ApiError as e:
                if e.status not in (429, 500, 502, 503, 504) or attempt == REQUEST_ATTEMPTS:
                    raise self.translate(e, what, namespace, name) from None
                retry_after = ((e.body.get("details") or {}).get("retryAfterSeconds") or 0) if e.body else 0
                await asyncio.sleep(min(max(float(retry_after), delay), 10.0))
            except (aiohttp.ClientConnectionError, TimeoutError) as e:
                if attempt == REQUEST_ATTEMPTS:
                    raise self.unreachable(e) from None
                await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def unreachable(self, error: BaseException) -> ClientError:
        """A connection that kept failing, as a message that names the server and the credentials."""
        return ClientError(
            f"Cannot reach the Kubernetes API server at {self.kube.server} ({self.credentials.source}): "
            f"{error or type(error).__name__}. Is the cluster running? `kubectl cluster-info` checks the same "
            "credentials.", reason="Unreachable")

    def translate(self, e: ApiError, what: str, namespace: str, name: str | None) -> ClientError:
        """An API error as a message a person can act on."""
        details = e.body.get("details") or {}
        server = self.kube.server
        if e.status == 401:
            return ClientError(
                f"The API server at {server} refused the credentials of {self.credentials.source} (401 "
                "Unauthorized): log in again or refresh the kubeconfig's token.", reason="Unauthorized",
                http_status=401)
        if e.status == 403:
            return ClientError(
                f"Forbidden to {what} in namespace {namespace}: {e.message}. Ask for RBAC that allows it "
                f"(check with `kubectl auth can-i {what.split()[0]} {CRD_NAME} -n {namespace}`).",
                reason="Forbidden", http_status=403)
        if e.status == 404:
            if details.get("kind") == "namespaces" or e.message.startswith("namespaces "):
                return ClientError(
                    f"Namespace {namespace} does not exist on {server}: create it (`kubectl create namespace "
                    f"{namespace}`) or choose another one (namespace=..., --namespace).",
                    reason="NamespaceNotFound", http_status=404)
            if name is None or not details.get("name"):
                return ClientError(
                    f"The Execution API ({CRD_NAME}, {API_VERSION}) is not installed on {server}: install "
                    "execution-operator (`helm install execution-operator charts/execution-operator`) or its "
                    "CRDs (`kubectl apply -f crds/`).", reason="NotInstalled", http_status=404)
            return ClientError(f"Execution {namespace}/{name} not found.", reason="NotFound", http_status=404)
        if e.status == 422:
            causes = "; ".join(f"{c.get('field', '')}: {c.get('message', '')}".strip(": ")
                               for c in details.get("causes") or []) or e.message
            return ClientError(f"The API server refused the Execution as invalid: {causes}", reason="Invalid",
                               http_status=422)
        if e.status == 409:
            return ClientError(f"Could not {what}: {e.message}", reason="Conflict", http_status=409)
        return ClientError(f"The API server at {server} could not {what}: {e.status} {e.reason}: {e.message}",
                           reason="ServerError" if e.status >= 500 else "BadRequest", http_status=e.status)
