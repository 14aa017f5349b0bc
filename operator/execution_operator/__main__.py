"""`python -m execution_operator` / `execution-operator`: run the operator against KUBECONFIG or in-cluster.

`execution-operator run ...` instead runs code on the cluster and prints its result (see docs/client.md);
kopf and the handlers are imported only to run the operator, so that command starts quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import threading

from execution_operator import __version__, metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The operator's command line; the ports and the bind address may also come from the environment."""
    parser = argparse.ArgumentParser(prog="execution-operator", description=__doc__)
    parser.add_argument("-n", "--namespace", action="append", default=[],
                        help="watch only this namespace (repeatable; glob patterns allowed); default: all")
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (default)")
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", "8080")),
                        help="Prometheus metrics on :PORT/metrics (0 to disable)")
    parser.add_argument("--liveness-port", type=int, default=int(os.environ.get("LIVENESS_PORT", "8081")),
                        help="kopf liveness endpoint on :PORT/healthz (0 to disable)")
    parser.add_argument("--bind-address", default=os.environ.get("BIND_ADDRESS", "0.0.0.0"))
    parser.add_argument("--log-format", choices=["auto", "json", "console"],
                        default=os.environ.get("LOG_FORMAT", "auto"))
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    parser.add_argument("--peering", metavar="NAME", default=os.environ.get("PEERING_NAME"),
                        help="run as one of several replicas coordinated by kopf peering NAME (active/standby); "
                        "default: standalone")
    parser.add_argument("--peering-priority", type=int, default=int(os.environ.get("PEERING_PRIORITY", "0")),
                        help="this replica's peering priority (the highest active one works; default: random)")
    parser.add_argument("--dead-letter-max-age", type=float,
                        default=float(os.environ.get("DEAD_LETTER_MAX_AGE_SECONDS", 7 * 24 * 3600)),
                        help="delete DeadLetters older than this many seconds (default 7 days)")
    parser.add_argument("--dead-letter-max-per-namespace", type=int,
                        default=int(os.environ.get("DEAD_LETTER_MAX_PER_NAMESPACE", "1000")),
                        help="keep at most this many DeadLetters per namespace, deleting the oldest first")
    return parser.parse_args(argv)


class WatchRestartCounter(logging.Filter):
    """Counts kopf's watch-stream restarts (410 Gone, inactivity) into the metrics.

    It lets only INFO and above through: kopf reports restarts at DEBUG, which we want counted but not printed.
    """

    MARKERS = ("Restarting the watch-stream for ", "Watch-stream for ")

    def filter(self, record: logging.LogRecord) -> bool:
        """Count a watch restart if the record reports one; print only INFO and above unless debugging."""
        message = record.getMessage()
        for marker in self.MARKERS:
            if message.startswith(marker) and ("Restarting" in marker or "reconnecting" in message):
                resource = message[len(marker):].split(" ", 1)[0].split(".", 1)[0]
                metrics.record_watch_restart(resource)
        return record.levelno >= logging.INFO or logging.getLogger().isEnabledFor(logging.DEBUG)


def run(args: argparse.Namespace, *, stop_flag: threading.Event | None = None,
        ready_flag: threading.Event | None = None) -> None:
    """Run the operator in this thread until stopped; `stop_flag` and `ready_flag` let tests and embedders drive it."""
    import kopf

    from execution_operator import handlers
    from execution_operator.logs import configure_logging

    configure_logging(args.log_level, args.log_format)
    watching = logging.getLogger("kopf._cogs.clients.watching")
    watching.setLevel(logging.DEBUG)
    watching.addFilter(WatchRestartCounter())
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # kopf logs every handled watch event at INFO; our own lines say what happened, with context.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    metrics.METRICS.set_info(__version__)
    if args.metrics_port:
        metrics.start_metrics_server(args.metrics_port, args.bind_address)
    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    liveness = f"http://{args.bind_address}:{args.liveness_port}/healthz" if args.liveness_port else None
    scope: dict[str, object] = (
        {"namespaces": args.namespace} if args.namespace and not args.all_namespaces else {"clusterwide": True}
    )
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=not args.peering,
            peering_name=args.peering or None,
            priority=args.peering_priority or random.randint(1, 2**31 - 1),
            liveness_endpoint=liveness,
            memo=handlers.OperatorContext(
                dead_letter_max_age=args.dead_letter_max_age,
                dead_letter_max_per_namespace=args.dead_letter_max_per_namespace,
            ),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            **scope,  # type: ignore[arg-type]
        )
    )


def main(argv: list[str] | None = None) -> None:
    """The `execution-operator` entry point: `run ...` submits code as a client, anything else runs the operator."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["run"]:
        from execution_operator.client.cli import main as run_code

        raise SystemExit(run_code(args[1:]))
    run(parse_args(args))


if __name__ == "__main__":
    main()
