"""The testing helpers the end-to-end suite and the benchmarks share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from localcluster.testing import start_cluster_process

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (ROOT / ".tools" / "bin" / "kubectl").exists() and not shutil.which("kubectl"),
                    reason="needs kubectl (make tools)")
def test_a_manifest_that_fails_to_apply_stops_the_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the repository's pinned kubectl
    started: list[object] = []
    import localcluster.testing as testing

    real_popen = testing.subprocess.Popen

    def remember(*args: object, **kwargs: object) -> object:
        proc = real_popen(*args, **kwargs)  # type: ignore[call-overload]
        if "localcluster" in args[0]:  # type: ignore[operator]
            started.append(proc)  # the cluster, not the kubectl runs
        return proc

    monkeypatch.setattr(testing.subprocess, "Popen", remember)
    with pytest.raises(AssertionError, match=r"kubectl apply -f .*missing\.yaml exited with 1: .*does not exist"):
        start_cluster_process(tmp_path, [tmp_path / "missing.yaml"])
    (proc,) = started
    assert proc.poll() is not None, "the cluster was left running"  # type: ignore[attr-defined]
