"""`python -m localcluster up`: run the API server emulator and the local node until SIGTERM/SIGINT.

`python -m localcluster operator --deployment FILE`: run the operator as the chart's Deployment in FILE
(`kubectl get deployment -o json`) configures it, beside the local cluster (see `chart_operator`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from localcluster.cluster import LocalCluster


async def _node_ready(url: str, node_proc: asyncio.subprocess.Process, deadline: float) -> None:
    """Wait until the node process has registered a Ready Node (or fail if it exits)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        while True:
            if node_proc.returncode is not None:
                raise RuntimeError(f"the local node exited with {node_proc.returncode}")
            try:
                async with session.get(f"{url}/api/v1/nodes") as response:
                    items = (await response.json()).get("items") or []
                    if any(c.get("type") == "Ready" and c.get("status") == "True"
                           for n in items for c in (n.get("status") or {}).get("conditions") or []):
                        return
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("the local node did not register within 60 s")
            await asyncio.sleep(0.1)


async def _up(args: argparse.Namespace) -> int:
    # By default the node runs in its own process, as a kubelet does: the API server and the node then
    # use a core each instead of sharing one event loop.
    separate_node = not args.no_node and not args.in_process_node
    cluster = LocalCluster(
        Path(args.state_dir),
        port=args.port,
        host=args.host,
        kubeconfig=args.kubeconfig,
        with_node=not args.no_node and not separate_node,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await cluster.start()
    node_proc = None
    try:
        if separate_node:
            node_proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "localcluster", "node", "--api-url", cluster.url,
                "--state-dir", str(cluster.state_dir), "--log-level", args.log_level,
            )
            await _node_ready(cluster.url, node_proc, loop.time() + 60)
        print(f"localcluster ready: KUBECONFIG={cluster.kubeconfig_path}", flush=True)
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
        if node_proc is not None:
            waiters.append(asyncio.ensure_future(node_proc.wait()))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
    finally:
        if node_proc is not None and node_proc.returncode is None:
            node_proc.terminate()
            try:
                await asyncio.wait_for(node_proc.wait(), 30)
            except TimeoutError:
                node_proc.kill()
        await cluster.stop()
    return 0 if node_proc is None or node_proc.returncode in (0, -signal.SIGTERM) else 1


async def _node(args: argparse.Namespace) -> int:
    from localcluster.node import LocalNode

    node = LocalNode(args.api_url, Path(args.state_dir))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if sys.version_info < (3, 12) and hasattr(asyncio, "PidfdChildWatcher"):
        # Python 3.11 waits for each container in a thread of its own; a pidfd in the event loop is what
        # 3.12 uses by default, and costs a burst of pods no thread start per container.
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(loop)
        asyncio.set_child_watcher(watcher)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    try:
        await stop.wait()
    finally:
        await node.stop()
    return 0


def _operator(args: argparse.Namespace) -> int:
    """Replace this process with the operator, so its pid is the operator's."""
    import json
    import os

    from localcluster.chart_operator import OPERATOR_MODULE, UnsupportedDeployment, operator_command

    document = json.loads(Path(args.deployment).read_text())
    items = document.get("items") if document.get("kind", "").endswith("List") else [document]
    if len(items or []) != 1:
        print(f"localcluster operator: {args.deployment} holds {len(items or [])} Deployments, not one",
              file=sys.stderr)
        return 2
    try:
        operator_args, env = operator_command(items[0], metrics_port=args.metrics_port,
                                              liveness_port=args.liveness_port)
    except UnsupportedDeployment as e:
        print(f"localcluster operator: {e}", file=sys.stderr)
        return 2
    argv = [sys.executable, "-m", OPERATOR_MODULE, *operator_args]
    print("localcluster operator:", " ".join(argv[1:]), file=sys.stderr, flush=True)
    os.execve(sys.executable, argv, {**os.environ, **env, "PYTHONUNBUFFERED": "1"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the API server and the local node in the foreground")
    up.add_argument("--state-dir", default=".localcluster")
    up.add_argument("--port", type=int, default=0)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--kubeconfig", default=None, help="where to write the kubeconfig (default STATE_DIR/kubeconfig)")
    up.add_argument("--no-node", action="store_true", help="run only the API server")
    up.add_argument("--in-process-node", action="store_true",
                    help="run the node in the API server's process instead of its own")
    up.add_argument("--log-level", default="WARNING")
    node = sub.add_parser("node", help="run only the local node against an API server")
    node.add_argument("--api-url", required=True)
    node.add_argument("--state-dir", default=".localcluster")
    node.add_argument("--log-level", default="WARNING")
    op = sub.add_parser("operator", help="run the operator with the arguments of the chart's Deployment")
    op.add_argument("--deployment", required=True, help="the Deployment as JSON (kubectl get deployment -o json)")
    op.add_argument("--metrics-port", type=int, required=True)
    op.add_argument("--liveness-port", type=int, required=True)
    for command in (up, node):
        command.add_argument("--runner-source", default=None,
                             help="the directory holding the sandbox runner's package (default: where this "
                                  "Python finds it); the node's child processes inherit it")
    args = parser.parse_args(argv)
    if getattr(args, "runner_source", None):
        os.environ["LOCALCLUSTER_RUNNER_SOURCE"] = os.path.abspath(args.runner_source)
    logging.basicConfig(level=getattr(args, "log_level", "WARNING").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "up":
        return asyncio.run(_up(args))
    if args.command == "node":
        return asyncio.run(_node(args))
    if args.command == "operator":
        return _operator(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
