"""LocalCluster: the API server emulator plus the local node, with a kubeconfig for clients."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import yaml

from localcluster.apiserver import ApiServer

log = logging.getLogger(__name__)


def write_kubeconfig(path: Path, url: str, context: str = "localcluster", namespace: str = "default") -> Path:
    """A no-auth kubeconfig whose current context points at `url`."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": url}}],
        "users": [{"name": context, "user": {}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
        "current-context": context,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.replace(path)
    return path


def _node_class() -> Any:
    """LocalNode if the node module is available (it is developed separately)."""
    try:
        return importlib.import_module("localcluster.node").LocalNode
    except (ImportError, AttributeError):
        return None


class LocalCluster:
    """ApiServer + LocalNode in the current event loop, plus a kubeconfig file.

    `with_node=False` runs the API server alone (pods then stay Pending and unbound).
    """

    def __init__(
        self,
        state_dir: Path | str,
        port: int = 0,
        host: str = "127.0.0.1",
        kubeconfig: Path | str | None = None,
        with_node: bool = True,
        images: Any = None,
        apiserver_options: dict[str, Any] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.port = port
        self.host = host
        self.kubeconfig_path = Path(kubeconfig).absolute() if kubeconfig else self.state_dir / "kubeconfig"
        self.with_node = with_node
        self.images = images
        self.apiserver = ApiServer(self.state_dir, **(apiserver_options or {}))
        self.node: Any = None
        self.url = ""
        # Set by localcluster.testing when the cluster runs in a background thread (a ClusterThread).
        self.runner: Any = None

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.url = await self.apiserver.start(self.host, self.port)
        write_kubeconfig(self.kubeconfig_path, self.url)
        if self.with_node:
            node_cls = _node_class()
            if node_cls is None:
                log.warning("localcluster.node is not available; running the API server without a node")
            else:
                kwargs: dict[str, Any] = {}
                if self.images is not None:
                    kwargs["images"] = self.images
                self.node = node_cls(self.url, self.state_dir, **kwargs)
                await self.node.start()

    async def stop(self) -> None:
        if self.node is not None:
            try:
                await self.node.stop()
            finally:
                self.node = None
        await self.apiserver.stop()

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
