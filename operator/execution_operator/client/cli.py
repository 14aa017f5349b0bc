"""`execution-operator run`: run a Python file on the cluster, print its output, exit with its status.

The output (JSON) goes to stdout; the code's stdout and stderr go to stderr as they are printed; the
exit code is 0 on success, the user code's own exit code when it has one, else its failure family's
code (docs/client.md has the table). Ctrl-C cancels the Execution and waits for it to end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from execution_operator.client.aio import new_name
from execution_operator.client.exceptions import (
    ClientError,
    ExecutionCancelled,
    ExecutionError,
    InvalidExecution,
    WaitTimeout,
    exit_status_for,
)
from execution_operator.client.result import ExecutionResult

#: Exit code of a command line that cannot be used (argparse's own).
USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The command line of `execution-operator run`."""
    parser = argparse.ArgumentParser(
        prog="execution-operator run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", default="-", metavar="FILE|-",
                        help="the Python code to run (default: read it from stdin)")
    parser.add_argument("--input", metavar="JSON|@FILE", help="the code's input_data, as JSON or @file.json")
    parser.add_argument("--class", dest="execution_class", default="default", metavar="NAME",
                        help="the ExecutionClass (default: default)")
    parser.add_argument("--timeout", type=int, metavar="S", help="timeoutSeconds of the code (1..300)")
    parser.add_argument("--wait-timeout", type=float, metavar="S",
                        help="stop waiting after S seconds and cancel the Execution (exit code 124)")
    parser.add_argument("-n", "--namespace", metavar="NS", help="default: the kubeconfig context's namespace")
    parser.add_argument("--correlation-id", metavar="ID", help="spec.correlationId, for tracing across systems")
    parser.add_argument("--no-wait", action="store_true", help="create the Execution, print its name, exit 0")
    parser.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text",
                        help="text: the output's JSON; json/yaml: the whole result")
    parser.add_argument("--kubeconfig", metavar="PATH", help="default: KUBECONFIG, ~/.kube/config, in-cluster")
    parser.add_argument("--context", metavar="NAME", help="the kubeconfig context (default: the current one)")
    return parser


def _read_code(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    return Path(source).read_text()


def _read_input(value: str | None) -> Any:
    if value is None:
        return None
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    return json.loads(text)


def _print_result(result: ExecutionResult | dict[str, Any], form: str, out: TextIO) -> None:
    data = result.to_dict() if isinstance(result, ExecutionResult) else result
    if form == "yaml":
        out.write(yaml.safe_dump(data, sort_keys=False))
    else:
        out.write(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run code from a file or stdin and print its result; returns the exit status (2 for a usage error)."""
    args = build_parser().parse_args(argv)
    try:
        code = _read_code(args.file)
        input_data = _read_input(args.input)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    if not code.strip():
        print("error: no code to run (give a FILE, or pipe the code into stdin)", file=sys.stderr)
        return USAGE_ERROR
    from execution_operator.client.sync import Client

    try:
        client = Client(args.namespace, kubeconfig=args.kubeconfig, context=args.context,
                        execution_class=args.execution_class)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_status
    with client:
        return _run(client, code, input_data, args)


def _run(client: Any, code: str, input_data: Any, args: argparse.Namespace) -> int:
    def emit(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    name = new_name()
    try:
        handle = client.submit(code, input_data, timeout_seconds=args.timeout, correlation_id=args.correlation_id,
                               name=name)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return InvalidExecution.exit_status if e.reason == "Invalid" else e.exit_status
    except KeyboardInterrupt:
        # Interrupted while creating: the create may have gone through, and the name is ours.
        with contextlib.suppress(ExecutionError):
            client.handle(name).cancel()
        return ExecutionCancelled.exit_status
    if args.no_wait:
        if args.output == "text":
            print(handle.name)
        else:
            _print_result({"name": handle.name, "namespace": handle.namespace}, args.output, sys.stdout)
        return 0
    try:
        try:
            result = handle.wait(raise_on_failure=False, on_output=emit, wait_timeout=args.wait_timeout)
        except KeyboardInterrupt:
            print(f"\ncancelling Execution {handle.namespace}/{handle.name} (Ctrl-C again to stop waiting)",
                  file=sys.stderr)
            try:
                handle.cancel()
                result = handle.wait(raise_on_failure=False)
            except KeyboardInterrupt:
                return ExecutionCancelled.exit_status
    except WaitTimeout as e:
        print(f"error: {e}", file=sys.stderr)
        if args.output != "text":
            _print_result({"name": e.name, "namespace": e.namespace, "phase": e.phase, "waitTimeout": True,
                           "cancelled": e.cancelled, "result": e.result.to_dict() if e.result else None},
                          args.output, sys.stdout)
        return e.exit_status
    except ExecutionError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_status
    if args.output != "text":
        _print_result(result, args.output, sys.stdout)
    elif result.success:
        print(json.dumps(result.output))
    if not result.success:
        error = result.error
        what = f"{error.type}: {error.message}" if error else f"ended {result.phase}"
        print(f"error: Execution {result.namespace}/{result.name} failed: {what}", file=sys.stderr)
    return exit_status_for(result)
