"""Image references and the table that maps images to local entrypoints.

The local node has no container runtime and no registry: an "image" is a recipe saying which command
runs by default (ENTRYPOINT/CMD), with what extra environment and PATH, as which user. The two sandbox
images run the project's runner in a bare virtualenv (see `sandbox_interpreter`); tests add their own
entries.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

SANDBOX_IMAGE = "ghcr.io/execution-operator/sandbox"
SANDBOX_DATA_IMAGE = "ghcr.io/execution-operator/sandbox-data"
#: The package whose `runner` module is the sandbox images' entrypoint. The node runs it from that package's
#: source, bound read-only into each sandbox; it is located on this Python's path, never imported.
RUNNER_PACKAGE = "execution_operator"
RUNNER_COMMAND = ["python", "-m", f"{RUNNER_PACKAGE}.runner"]
SANDBOX_USER = 65532
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The grammar of github.com/distribution/reference (what the kubelet parses image names with).
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE_RE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)


class InvalidImageName(ValueError):
    """The image reference cannot be parsed; the kubelet reports `InvalidImageName`."""


@dataclass(frozen=True)
class ImageRef:
    """A parsed, normalised image reference (`docker.io/library/busybox:latest` style)."""

    original: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def normalized(self) -> str:
        """The fully qualified reference, as containerd names it in pull errors."""
        ref = self.repository
        if self.tag:
            ref += f":{self.tag}"
        if self.digest:
            ref += f"@{self.digest}"
        return ref


def parse_image(image: str) -> ImageRef:
    """Parse and normalise an image reference, applying the default tag `latest` as the kubelet does."""
    match = _REFERENCE_RE.match(image or "")
    if not match or len(match.group("name")) > 255:
        raise InvalidImageName(
            f'Failed to apply default image tag "{image}": couldn\'t parse image name "{image}": '
            "invalid reference format"
        )
    name = match.group("name")
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        # No registry host: Docker Hub, with `library/` for official images.
        name = f"docker.io/{name}" if rest else f"docker.io/library/{name}"
    tag = match.group("tag")
    digest = match.group("digest")
    if not tag and not digest:
        tag = "latest"
    return ImageRef(original=image, repository=name, tag=tag, digest=digest)


@dataclass
class ImageSpec:
    """What an image means locally: its default command, environment, PATH additions and user."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    path_prepend: list[str] = field(default_factory=list)
    user: int = 0
    working_dir: str | None = None

    def argv(self, command: list[str] | None, args: list[str] | None) -> list[str]:
        """Combine the container's command/args with the image's ENTRYPOINT/CMD like a runtime does."""
        if command:
            return [*command, *(args or [])]
        return [*self.entrypoint, *(args if args else self.cmd)]

    def path(self, extra_first: list[str] | None = None) -> str:
        """The PATH the container starts with."""
        return ":".join([*(extra_first or []), *self.path_prepend, DEFAULT_PATH])


@dataclass
class _Entry:
    pattern: str
    spec: ImageSpec
    uses_python: bool


class ImageTable:
    """Maps image references to local `ImageSpec`s; the first matching entry (latest added first) wins.

    A pattern is a repository (`ghcr.io/org/img`, or a Docker Hub short name such as `busybox`), optionally
    with `:tag`, and may use shell globs (`*`). A pattern without a tag matches every tag.
    """

    def __init__(self) -> None:
        self._entries: list[_Entry] = []

    @classmethod
    def default(cls) -> ImageTable:
        """A table that knows the two sandbox images, running the runner on the sandbox interpreter."""
        table = cls()
        for repo in (SANDBOX_IMAGE, SANDBOX_DATA_IMAGE):
            table.add(repo, entrypoint=list(RUNNER_COMMAND), user=SANDBOX_USER, python=True)
        return table

    def add(
        self,
        image_pattern: str,
        *,
        env: dict[str, str] | None = None,
        path_prepend: list[str] | None = None,
        entrypoint: list[str] | None = None,
        cmd: list[str] | None = None,
        user: int = 0,
        working_dir: str | None = None,
        python: bool = True,
    ) -> None:
        """Add an image; `python=True` puts the current interpreter on PATH and the project on PYTHONPATH."""
        spec = ImageSpec(
            entrypoint=list(entrypoint or []),
            cmd=list(cmd or []),
            env=dict(env or {}),
            path_prepend=list(path_prepend or []),
            user=user,
            working_dir=working_dir,
        )
        self._entries.insert(0, _Entry(_normalize_pattern(image_pattern), spec, python))

    def add_command_image(
        self,
        image_pattern: str,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        user: int = 0,
    ) -> None:
        """Add a test image whose ENTRYPOINT is `command` (e.g. `["sh", "-c", "echo hi"]`)."""
        self.add(image_pattern, entrypoint=command, env=env, user=user, python=True)

    def resolve(self, ref: ImageRef) -> tuple[ImageSpec, bool] | None:
        """The spec for a parsed reference and whether it wants the Python runtime, or None if unknown."""
        for entry in self._entries:
            has_tag = ":" in entry.pattern.rsplit("/", 1)[-1] or "@" in entry.pattern
            candidates = [ref.normalized, f"{ref.repository}:{ref.tag}"] if has_tag else [ref.repository]
            if any(fnmatch.fnmatchcase(c, entry.pattern) for c in candidates):
                return entry.spec, entry.uses_python
        return None


def _normalize_pattern(pattern: str) -> str:
    """Give short Docker Hub patterns their full name so `busybox` matches `docker.io/library/busybox`."""
    first, _, rest = pattern.partition("/")
    if not rest:
        return f"docker.io/library/{pattern}"
    if "." not in first and ":" not in first and first != "localhost" and "*" not in first:
        return f"docker.io/{pattern}"
    return pattern


@functools.cache
def runner_source_root() -> Path:
    """The directory holding the runner's package (`RUNNER_PACKAGE`), which sandboxes see read-only.

    `LOCALCLUSTER_RUNNER_SOURCE` if set (`localcluster up --runner-source` sets it); else where this
    Python would import the package from, found without importing it.
    """
    override = os.environ.get("LOCALCLUSTER_RUNNER_SOURCE")
    if override:
        return Path(override).resolve()
    spec = importlib.util.find_spec(RUNNER_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise RuntimeError(f"the runner's package {RUNNER_PACKAGE!r} is not installed here; "
                           "install it or set LOCALCLUSTER_RUNNER_SOURCE to the directory that holds it")
    return Path(locations[0]).resolve().parent


def sandbox_interpreter() -> str:
    """The CPython the sandbox images run on here, as a resolved path.

    `LOCALCLUSTER_SANDBOX_PYTHON` if set; else the distribution's interpreter of this Python's minor
    version when there is one: like the images' python it is an optimised (PGO and LTO) build, where this
    environment's may be a plain shared-library build that spends ~10% more CPU on every container.
    Else the current interpreter. The runner needs nothing beyond the standard library.
    """
    override = os.environ.get("LOCALCLUSTER_SANDBOX_PYTHON")
    if override:
        return os.path.realpath(override)
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for directory in ("/usr/local/bin", "/usr/bin"):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    return os.path.realpath(sys.executable)


def prepare_python_runtime(runtime_dir: Path) -> Path:
    """Lay out the sandbox images' Python: a virtualenv holding nothing but the standard library.

    Like the images (a venv with only the runner, whose source the node mounts on PYTHONPATH), it does
    not see this environment's packages: the code cannot import what a real sandbox lacks, and the
    interpreter's start-up does not scan a large site-packages. Returns the `bin` directory.
    """
    bin_dir = runtime_dir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    interpreter = sandbox_interpreter()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for lib in ("lib", "lib64"):  # an older layout linked this environment's own lib directories
        if (runtime_dir / lib).is_symlink():
            (runtime_dir / lib).unlink()
    (runtime_dir / "lib" / f"python{version}" / "site-packages").mkdir(parents=True, exist_ok=True)
    (runtime_dir / "pyvenv.cfg").write_text(
        f"home = {os.path.dirname(interpreter)}\ninclude-system-site-packages = false\n"
    )
    for name in ("python", "python3", f"python{version}"):
        link = bin_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(interpreter)
    precompile_runner()
    return bin_dir


def precompile_runner() -> None:
    """Write the runner's bytecode next to its source, as installing the image's wheel would.

    The sandbox sees the source read-only and may run with PYTHONDONTWRITEBYTECODE, so without this
    every pod would compile the runner again (about 10 ms of CPU each).
    """
    import compileall

    package = runner_source_root() / RUNNER_PACKAGE
    compileall.compile_file(str(package / "__init__.py"), quiet=2)
    compileall.compile_dir(str(package / "runner"), quiet=2)
