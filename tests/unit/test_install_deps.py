"""hack/install-ci-deps.sh on a machine without bubblewrap, unzip or npm, shown by a PATH that hides them.

The script runs for real (bash, coreutils, the real python3); only the commands it must not find are
left out of PATH, and `apt-get`, `sudo` and `id` are stubs that record what they were asked to do.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "install-ci-deps.sh"
#: What a package installs, as the stub apt-get "installs" it.
PROVIDES = {"bubblewrap": "bwrap", "unzip": "unzip", "npm": "npm"}
HIDDEN = {"bwrap", "unzip", "npm", "promtool", "prometheus", "chromium", "apt-get", "sudo", "id"}


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _machine(tmp_path: Path, *, apt: bool = True, uid: int = 0, sudo: bool = False,
             present: tuple[str, ...] = (), apt_fails: bool = False) -> tuple[dict[str, str], Path]:
    """An environment whose PATH holds the system's commands except HIDDEN, plus the stubs asked for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = bin_dir / entry.name
            if entry.name in HIDDEN or target.exists() or not os.access(entry.path, os.X_OK):
                continue
            target.symlink_to(entry.path)
    log = tmp_path / "calls.log"
    for command in present:
        _executable(bin_dir / command, "#!/bin/sh\nexit 0\n")
    _executable(bin_dir / "id", f"#!/bin/sh\necho {uid}\n")
    if apt:
        installs = "".join(
            f'    {package}) printf "#!/bin/sh\\nexit 0\\n" > "{bin_dir}/{command}"; chmod +x "{bin_dir}/{command}";;\n'
            for package, command in PROVIDES.items()
        )
        _executable(bin_dir / "apt-get", (
            f'#!/bin/bash\necho "apt-get $*" >> "{log}"\n'
            f'[[ $1 == install ]] || exit 0\n{"exit 100" if apt_fails else ""}\n'
            f'for p in "$@"; do\n  case $p in\n{installs}  esac\ndone\n'
        ))
    if sudo:
        _executable(bin_dir / "sudo", f'#!/bin/bash\necho "sudo $1" >> "{log}"\nexec "$@"\n')
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    return env, log


def _run(env: dict[str, str], tmp_path: Path, local_only: bool = True) -> subprocess.CompletedProcess[str]:
    venv = tmp_path / "venv"  # a venv that exists, so python3-venv is not wanted
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"
    if not python.exists():
        python.symlink_to(shutil.which("python3") or "/usr/bin/python3")
    bash = shutil.which("bash") or "/bin/bash"
    mode = ["--local-cluster"] if local_only else []
    return subprocess.run([bash, str(SCRIPT), *mode, str(venv)], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_installs_the_missing_packages_with_apt_as_root(tmp_path: Path) -> None:
    env, log = _machine(tmp_path)
    proc = _run(env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "apt-get update -qq"
    assert calls[1].startswith("apt-get install -y")
    assert calls[1].split()[-3:] == ["bubblewrap", "npm", "unzip"]
    assert (tmp_path / "bin" / "bwrap").exists()


def test_uses_sudo_when_not_root(tmp_path: Path) -> None:
    env, log = _machine(tmp_path, uid=1000, sudo=True)
    proc = _run(env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines()[:2] == ["sudo apt-get", "apt-get update -qq"]


def test_nothing_is_installed_when_everything_is_there(tmp_path: Path) -> None:
    env, log = _machine(tmp_path, present=("bwrap", "unzip", "npm"))
    proc = _run(env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not log.exists()
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("apt", "uid", "expected"),
    [(False, 0, "missing bubblewrap and no apt-get here: install bubblewrap with the system's package manager"),
     (True, 1000, "missing bubblewrap: as root, run apt-get update && apt-get install -y bubblewrap")],
)
def test_stops_at_once_with_one_line_naming_the_package_and_the_command(
    tmp_path: Path, apt: bool, uid: int, expected: str
) -> None:
    env, log = _machine(tmp_path, apt=apt, uid=uid, present=("unzip", "npm"))
    proc = _run(env, tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == f"install-ci-deps: {expected}\n"
    assert not log.exists()


def test_the_full_set_for_make_test_and_a_failing_apt_stops_with_the_command(tmp_path: Path) -> None:
    env, log = _machine(tmp_path, apt_fails=True)
    proc = _run(env, tmp_path, local_only=False)
    assert proc.returncode == 1
    packages = "bubblewrap chromium npm prometheus unzip" + (
        "" if Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() else " fonts-dejavu-core")
    packages = " ".join(sorted(packages.split()))
    assert proc.stderr.splitlines()[-1] == (
        f"install-ci-deps: apt-get install failed; install {packages} with: apt-get install -y {packages}")
    assert log.read_text().splitlines()[1].endswith(packages)
