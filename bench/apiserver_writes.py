"""What one write costs the local API server, in process (no HTTP): Execution creates, /status merge patches
and server-side applies, each with its validation, defaulting and managedFields bookkeeping.

    python bench/apiserver_writes.py [--count N] [--repeats R]

Prints the best of R runs of N writes of each kind, in microseconds per write (the best run is the one
least disturbed by other processes on a shared machine).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from localcluster.apiserver import ApiServer

ROOT = Path(__file__).resolve().parents[1]
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


def _best(repeats: int, count: int, write: Callable[[int, int], object]) -> float:
    best = float("inf")
    for rep in range(repeats):
        started = time.perf_counter()
        for i in range(count):
            write(rep, i)
        best = min(best, (time.perf_counter() - started) / count)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    server = ApiServer(tempfile.mkdtemp())
    crds = server.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    assert crds is not None
    server.create_object(crds, "", yaml.safe_load((ROOT / "crds" / "executions.sandbox.dev.yaml").read_text()))
    info = server.registry.get("sandbox.dev", "v1alpha1", "executions")
    assert info is not None
    code = "print(1)\n" * 2000  # ~20 KB of code, a leaf like any other for the field manager

    def create(rep: int, i: int) -> object:
        body = {"metadata": {"name": f"e{rep}-{i}"}, "spec": {"code": code, "input": {"x": i}}}
        return server.create_object(info, "default", body, manager="bench")

    def status(rep: int, i: int) -> object:
        return server.patch_object(info, "default", f"e{rep}-{i}", MERGE, {"status": {"phase": "Running"}},
                                   "status", manager="operator")

    def apply(rep: int, i: int) -> object:
        config = {"apiVersion": info.api_version, "kind": info.kind,
                  "metadata": {"name": f"e{rep}-{i}", "labels": {"team": "a"}}}
        return server.patch_object(info, "default", f"e{rep}-{i}", APPLY, config, query={"fieldManager": "labels"},
                                   manager="labels")[0]

    for name, write in (("create", create), ("status merge patch", status), ("server-side apply", apply)):
        print(f"{name}: {_best(args.repeats, args.count, write):.0f} us per write "
              f"(best of {args.repeats} x {args.count})")


if __name__ == "__main__":
    main()
