"""`python -m localcluster up`: run the API server emulator and the local node until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from localcluster.cluster import LocalCluster


async def _up(args: argparse.Namespace) -> int:
    cluster = LocalCluster(
        Path(args.state_dir),
        port=args.port,
        host=args.host,
        kubeconfig=args.kubeconfig,
        with_node=not args.no_node,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await cluster.start()
    print(f"localcluster ready: KUBECONFIG={cluster.kubeconfig_path}", flush=True)
    try:
        await stop.wait()
    finally:
        await cluster.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the API server and the local node in the foreground")
    up.add_argument("--state-dir", default=".localcluster")
    up.add_argument("--port", type=int, default=0)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--kubeconfig", default=None, help="where to write the kubeconfig (default STATE_DIR/kubeconfig)")
    up.add_argument("--no-node", action="store_true", help="run only the API server")
    up.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "up":
        return asyncio.run(_up(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
