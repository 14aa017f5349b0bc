"""Credentials exactly as kubectl has them, through the official `kubernetes` package's loaders.

Those loaders are what users' kubeconfigs are tested against: exec credential plugins (EKS, GKE,
OIDC) with their refresh, tokens, client certificates, `insecure-skip-tls-verify`, `tls-server-name`,
`proxy-url`, several files in KUBECONFIG, and in-cluster service accounts. This module only turns
their result into an `Endpoint` for the project's own HTTP client.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from execution_operator.client.exceptions import ClientError
from execution_operator.k8s import Endpoint

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Credentials:
    """How to reach the API server, and the namespace to use when the caller names none."""

    endpoint: Endpoint
    #: The context's namespace (kubeconfig), the pod's own (in cluster), else `default`.
    namespace: str
    #: Where they came from, for messages: `kubeconfig /path (context x)` or `in-cluster service account`.
    source: str


def _kubernetes() -> Any:
    try:
        import kubernetes
    except ImportError:
        raise ClientError(
            "execution_operator.client needs the official `kubernetes` package for credentials: "
            "pip install 'execution-operator[client]'", reason="MissingDependency") from None
    return kubernetes


def load_credentials(kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None) -> Credentials:
    """From `kubeconfig` (or KUBECONFIG, or ~/.kube/config); in a pod without one, the service account."""
    kubernetes = _kubernetes()
    config_exception = kubernetes.config.ConfigException
    cfg = kubernetes.client.Configuration()
    path = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    has_file = any(Path(p).expanduser().is_file() for p in path.split(os.pathsep) if p)
    try:
        if kubeconfig or has_file or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            if not has_file:
                raise ClientError(
                    f"No kubeconfig at {path} and not running in a pod: set KUBECONFIG, pass kubeconfig=... "
                    "(--kubeconfig), or check that `kubectl config view` shows a cluster", reason="Credentials")
            kubernetes.config.load_kube_config(config_file=path, context=context, client_configuration=cfg,
                                               persist_config=False)
            contexts, active = kubernetes.config.list_kube_config_contexts(config_file=path)
            chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
            namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
            source = f"kubeconfig {path} (context {(chosen or {}).get('name', '?')})"
        else:
            kubernetes.config.load_incluster_config(client_configuration=cfg)
            namespace = (SERVICE_ACCOUNT_NAMESPACE.read_text().strip() if SERVICE_ACCOUNT_NAMESPACE.is_file()
                         else "") or "default"
            source = "in-cluster service account"
    except config_exception as e:
        raise ClientError(f"The Kubernetes credentials could not be loaded: {e}", reason="Credentials") from None
    return Credentials(endpoint=_endpoint(cfg), namespace=namespace, source=source)


def _endpoint(cfg: Any) -> Endpoint:
    def auth_headers() -> Mapping[str, str]:
        # auth_settings() runs the loader's refresh hook: an expired exec-plugin token is renewed here.
        # (The loader turns a kubeconfig's username/password into a Basic token of the same header.)
        return {str(a["key"]): str(a["value"]) for a in cfg.auth_settings().values()
                if a.get("in") == "header" and a.get("value")}

    return Endpoint(
        server=cfg.host,
        ssl=_ssl_context(cfg) if cfg.host.startswith("https") else False,
        auth_headers=auth_headers,
        server_hostname=cfg.tls_server_name or None,
        proxy=cfg.proxy or None,
    )


def _ssl_context(cfg: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    return ctx
