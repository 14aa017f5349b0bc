"""Docs, comments and scripts name only files that exist.

Every tracked text file is scanned for repository paths (`docs/operations.md`, `hack/demo.sh`,
`tests/e2e/test_warm.py`, `execution_operator/pools.py`, ...); each must exist, so a moved or renamed
file cannot leave a pointer to nowhere behind.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP_DIRS = ("operator", "localcluster", "tests", "bench", "hack", "docs", "charts", "crds", "manifests",
            ".github", ".ci")
#: A path starts at a top-level folder of the repository (or at the operator's package) after a
#: character that cannot be part of a longer path, and ends at a word character.
_STARTS = "|".join(re.escape(d) for d in (*TOP_DIRS, "execution_operator"))
PATH = re.compile(rf"(?<![\w./-])((?:{_STARTS})/[\w./-]*\w)")
TEXT_SUFFIXES = {".md", ".py", ".sh", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".tpl", ".json", ".ini", ""}
#: `bench/1.0` is a user agent, not a file.
VERSION = re.compile(r"v?\d+(\.\d+)*")
#: Paths that are made when something runs, not files in the repository.
GENERATED = ("bench/results",)


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.stdout.splitlines()
            if (ROOT / line).suffix in TEXT_SUFFIXES or (ROOT / line).name in ("Makefile", "Dockerfile")]


def _resolves(ref: str) -> bool:
    candidates = [ROOT / ref]
    if ref.startswith("execution_operator/"):
        candidates.append(ROOT / "operator" / ref)
    if ref.startswith("localcluster/") and not ref.startswith(("localcluster/src", "localcluster/tests")):
        candidates.append(ROOT / "localcluster" / "src" / ref)
    if ref.startswith(("tests/", "src/")):  # the local cluster's own tree, named from inside it
        candidates.append(ROOT / "localcluster" / ref)
    return any(c.exists() for c in candidates)


def test_every_named_path_exists() -> None:
    missing: list[str] = []
    for file in _tracked():
        if file == Path(__file__).resolve():
            continue  # its own example of a missing path
        try:
            text = file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for match in PATH.finditer(text):
            ref = match.group(1).rstrip(".")
            if any(c in ref for c in "*{}$<") or ref.startswith(GENERATED) or VERSION.fullmatch(ref.rsplit("/")[-1]) \
                    or _resolves(ref):
                continue
            line = text.count("\n", 0, match.start()) + 1
            missing.append(f"{file.relative_to(ROOT)}:{line}: {ref}")
    assert not missing, "these name files that do not exist:\n" + "\n".join(missing)


def test_a_missing_path_is_found(tmp_path: Path) -> None:
    text = "see docs/no-such-page.md and hack/demo.sh"
    found = [m.group(1) for m in PATH.finditer(text) if not _resolves(m.group(1))]
    assert found == ["docs/no-such-page.md"]
