"""Build the native test fixture bundles in ``fixtures/`` on demand.

The tests need real polyplug bundles (a shared library plus ``manifest.toml``)
that behave well, fail, crash or hang in controlled ways. Checking compiled
``.so`` files into the repository would tie them to one platform and let them
drift from their sources, so each fixture is kept as C source and compiled with
the system C compiler the first time a test asks for it.

Layout: one directory is one bundle. ``fixtures/<name>/`` holds ``*.c``,
``manifest.toml`` and optionally ``api.toml``; it is built into
``<out_dir>/<name>/lib<name>.so`` with the manifest (and api.toml) copied beside
it. A variant of a bundle (say a ``v2`` of ``adder`` used to test reloads) is
simply another directory (``fixtures/adder_v2/``) whose manifest may carry the
same bundle ``name`` and points ``[file]`` at ``libadder_v2.so``.

Builds are incremental (a bundle is recompiled only when one of its files or
a worker header is newer than its library), crash-safe (each bundle is assembled
in a temporary directory beside the target and renamed into place, so a bundle
directory is always complete; a later build sweeps up what a killed one left)
and safe for concurrent builders (a per-bundle lock file serialises them, and
the later one finds the bundle already fresh).
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ._paths import SOURCE_TREE, cache_dir, get_include, package_dir

__all__ = [
    "FIXTURES_DIR",
    "FixtureBuildError",
    "build_fixtures",
    "fixture_names",
    "fixture_path",
]

# The fixture sources: the repository's fixtures/, or the copy a wheel ships as
# package data (``pip install .``), built into the user's cache instead.
FIXTURES_DIR = package_dir("polyplug_isolated.fixtures", SOURCE_TREE / "fixtures")
_WORKER_DIR = Path(get_include())
BUILD_DIR = FIXTURES_DIR / "build" if FIXTURES_DIR.parent == SOURCE_TREE else cache_dir() / "fixtures"
_CFLAGS = ("-std=c11", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror")
_COPIED_FILES = ("manifest.toml", "api.toml")


class FixtureBuildError(RuntimeError):
    """A fixture bundle could not be built; ``stderr`` holds the compiler's output."""

    def __init__(self, fixture: str, message: str, stderr: str = "") -> None:
        detail = f"{message}\n{stderr.rstrip()}" if stderr.strip() else message
        super().__init__(f"fixture {fixture!r}: {detail}")
        self.fixture = fixture
        self.stderr = stderr


def fixture_names(source_dir: Path | None = None) -> list[str]:
    """Return the names of all fixtures (directories holding a manifest.toml), sorted."""
    root = FIXTURES_DIR if source_dir is None else Path(source_dir)
    return sorted(p.parent.name for p in root.glob("*/manifest.toml"))


def build_fixtures(
    names: Iterable[str] | None = None,
    out_dir: Path | None = None,
    source_dir: Path | None = None,
) -> Path:
    """Build the named fixtures (all by default) into ``out_dir`` and return it.

    ``source_dir`` is the directory holding the fixture directories (default
    :data:`FIXTURES_DIR`). Up-to-date bundles are left untouched.
    """
    src_root = FIXTURES_DIR if source_dir is None else Path(source_dir)
    out = BUILD_DIR if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in fixture_names(src_root) if names is None else names:
        _build_one(name, src_root / name, out)
    return out


def fixture_path(name: str) -> Path:
    """Return the bundle directory of fixture ``name``, building it if needed."""
    return build_fixtures([name]) / name


def _build_one(name: str, src: Path, out: Path) -> None:
    if not (src / "manifest.toml").is_file():
        raise FixtureBuildError(name, f"no fixture at {src} (manifest.toml missing)")
    sources = sorted(src.glob("*.c"))
    if not sources:
        raise FixtureBuildError(name, f"no C sources in {src}")
    target = out / name
    library = target / f"lib{name}.so"
    # Its own files, the worker's headers (the ABI; the hostile fixture reads
    # the segment layout) and any C source of a sibling it includes.
    inputs = [p for p in src.iterdir() if p.is_file()] + sorted(_WORKER_DIR.glob("*.h")) + _included(sources)
    with open(out / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Checked under the lock: a concurrent builder may just have finished.
        if _is_fresh(library, inputs):
            return
        # Left by a builder that was killed mid-build; nobody else uses them now.
        for leftover in [*out.glob(f".{name}.build-*"), *out.glob(f".{name}.old-*")]:
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=out))
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; a bundle dir is not
            _compile(name, sources, staging / library.name)
            for filename in _COPIED_FILES:
                if (src / filename).is_file():
                    shutil.copy2(src / filename, staging / filename)
            _replace_dir(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _included(sources: list[Path]) -> list[Path]:
    """Sibling sources a fixture includes (``#include "../x/x.c"``), as paths."""
    found = []
    for source in sources:
        for line in source.read_text(errors="replace").splitlines():
            if line.startswith('#include "../'):
                found.append((source.parent / line.split('"')[1]).resolve())
    return found


def _is_fresh(library: Path, inputs: list[Path]) -> bool:
    try:
        built = library.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    return all(p.stat().st_mtime_ns <= built for p in inputs)


def _compile(name: str, sources: list[Path], library: Path) -> None:
    cmd = [
        *shlex.split(os.environ.get("CC", "cc")),
        *_CFLAGS,
        f"-I{_WORKER_DIR}",
        "-o",
        str(library),
        *map(str, sources),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FixtureBuildError(name, f"cannot run C compiler {cmd[0]!r}: {exc}") from exc
    if proc.returncode != 0:
        raise FixtureBuildError(
            name,
            f"compiler exited with status {proc.returncode}: {shlex.join(cmd)}",
            proc.stderr,
        )


def _replace_dir(staging: Path, target: Path) -> None:
    """Move the finished ``staging`` directory to ``target``, replacing any old one.

    A directory cannot be renamed over a non-empty one, so the old bundle is
    first renamed aside and then deleted; files of it that a process still has
    mapped stay valid. A crash in between leaves no bundle, never a partial one.
    """
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, retired / target.name)
        shutil.rmtree(retired, ignore_errors=True)
    os.replace(staging, target)
