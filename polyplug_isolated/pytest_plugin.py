"""pytest plugin for hosts of polyplug_isolated: a leak-checked Runtime, bundles by name, fault plans.

Registered through the ``pytest11`` entry point, so installing the package
enables it (``-p no:polyplug_isolated`` turns it off). It provides:

- ``isolated_runtime``: a Runtime closed at teardown; the test then fails (an
  error in its teardown) if a child process, a ``/dev/shm`` entry or a file
  descriptor created since the fixture started is still there. Its keyword
  arguments come from the ``isolated_runtime_options`` fixture: override it.
- ``fixture_bundle(name_or_path, **load_options)``: loads a bundle into
  ``isolated_runtime`` and returns the Bundle. A bare name is looked up in the
  ``polyplug_bundles`` ini directories, then among this project's own
  fixtures (built on first use); a path is loaded as it is.
- ``@pytest.mark.faults(*faults, bundle=None)``: a fault plan armed in every
  worker of the named bundle (every bundle when None) that the test loads into
  ``isolated_runtime``: at the first load, at each reload and at each
  supervisor restart, counters from zero, before polyplug_init.
- ``under_faults(bundle, *faults)``: a context manager arming faults in the
  bundle's current worker for a block of the test body.
- ``leak_check()`` / ``ResourceSnapshot``: the leak check itself, for tests
  that build their own Runtime.

pytest-timeout: its default ``signal`` method cannot interrupt a call blocked
in a worker (the SIGALRM handler runs only once the call returns), so give the
runtime a ``call_timeout`` shorter than the test's timeout; see the README.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import _fixtures
from ._bundle import Bundle
from ._config import WorkerOptions
from ._faults import Fault
from ._manifest import ManifestData
from ._runtime import Runtime
from .errors import BundleUnavailable

__all__ = ["BundleLoader", "ResourceSnapshot", "leak_check", "under_faults"]

FAULTS_MARKER = "faults"
BUNDLES_INI = "polyplug_bundles"


# ---- leak check -------------------------------------------------------------


@dataclass(frozen=True)
class ResourceSnapshot:
    """What this process holds that a worker could leak: children, /dev/shm names, fds."""

    children: frozenset[int]
    shm: frozenset[str]
    fds: tuple[tuple[str, str], ...]  # (fd, what it points at)

    @classmethod
    def take(cls) -> ResourceSnapshot:
        import psutil  # a test dependency: imported when a leak check runs, not when pytest starts

        children = frozenset(child.pid for child in psutil.Process().children(recursive=True))
        fds = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the fd listdir itself used, already closed
                fds.append((fd, os.readlink(f"/proc/self/fd/{fd}")))
        return cls(children, frozenset(os.listdir("/dev/shm")), tuple(sorted(fds)))

    def leaks_since(self, before: ResourceSnapshot) -> list[str]:
        """What is here now and was not in ``before``, one description per kind; empty if nothing."""
        import psutil

        problems = []
        leaked_children = self.children - before.children
        if leaked_children:
            described = []
            for pid in sorted(leaked_children):
                with contextlib.suppress(psutil.Error):  # it may exit while we look
                    described.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())}")
            problems.append(f"child processes still running: {described or sorted(leaked_children)}")
        # /dev/shm is shared by the whole machine: a name another process creates
        # and unlinks at once can be in one listing; a leaked name is in the next too.
        leaked_shm = (self.shm - before.shm) & set(os.listdir("/dev/shm"))
        if leaked_shm:
            problems.append(f"/dev/shm entries left: {sorted(leaked_shm)}")
        earlier = dict(before.fds)
        leaked_fds = {fd: target for fd, target in self.fds if earlier.get(fd) != target}
        if leaked_fds:
            problems.append(f"file descriptors left open: {leaked_fds}")
        return problems


@contextlib.contextmanager
def leak_check(what: str = "leak check") -> Iterator[None]:
    """Fails the test if the block leaves a child process, a /dev/shm entry or an fd behind.

    Checked only when the block ends normally: an exception leaving it is the
    more useful report, and is not masked.
    """
    before = ResourceSnapshot.take()
    yield
    problems = ResourceSnapshot.take().leaks_since(before)
    if problems:
        pytest.fail(f"{what}: " + "; ".join(problems), pytrace=False)


# ---- fault plans ------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """One ``@pytest.mark.faults``: its faults, and the bundle name they are for (None: all)."""

    faults: tuple[Fault, ...]
    bundle: str | None

    @classmethod
    def from_marker(cls, marker: pytest.Mark) -> _Plan:
        unknown = set(marker.kwargs) - {"bundle"}
        if unknown:
            pytest.fail(
                f"@pytest.mark.faults takes bundle= and no other keyword, not {sorted(unknown)}",
                pytrace=False,
            )
        not_faults = [arg for arg in marker.args if not isinstance(arg, Fault)]
        if not marker.args or not_faults:
            pytest.fail(
                "@pytest.mark.faults takes Fault values, e.g. "
                f"@pytest.mark.faults(Fault.crash().on_call(2), bundle='adder'); got {marker.args!r}",
                pytrace=False,
            )
        return cls(tuple(marker.args), marker.kwargs.get("bundle"))


class _PlannedRuntime(Runtime):
    """The Runtime of ``isolated_runtime``: arms the test's fault plans in the bundles it loads.

    Every load (load_bundle, IsolatedLoader, a reload of a bundle not yet
    loaded) goes through load_manifest, so the plans ride on the load's
    WorkerOptions and the runtime re-arms them in each worker it starts.
    """

    def __init__(self, plans: list[_Plan], **options: Any):
        super().__init__(**options)
        self._plans = plans
        self.loaded_names: set[str] = set()

    def load_manifest(self, manifest: ManifestData, options: WorkerOptions | None = None) -> Bundle:
        faults = [f for plan in self._plans if plan.bundle in (None, manifest.name) for f in plan.faults]
        if faults:
            options = options or WorkerOptions()
            options = dataclasses.replace(options, faults=(*faults, *options.faults))
        self.loaded_names.add(manifest.name)
        return super().load_manifest(manifest, options)

    def unused_plans(self) -> list[str]:
        return sorted(
            {
                plan.bundle
                for plan in self._plans
                if plan.bundle is not None and plan.bundle not in self.loaded_names
            }
        )


@contextlib.contextmanager
def under_faults(bundle: Bundle, *faults: Fault) -> Iterator[Bundle]:
    """Arms ``faults`` in ``bundle``'s current worker for the block, then disarms.

    Faults live in one worker: if it dies in the block, they die with it and
    the next worker starts clean (apart from load-time plans). On exit the
    worker, if it is still the same one, has *every* fault disarmed, those of
    ``@pytest.mark.faults`` included (Bundle.clear_faults cannot spare them).
    ``during_init()`` faults are refused: use the marker or ``load_bundle(faults=...)``.
    """
    pid = bundle.pid
    bundle.inject(*faults)
    try:
        yield bundle
    finally:
        if bundle.pid == pid:
            # The worker can still die between the check and the frame: then there is nothing to disarm.
            with contextlib.suppress(BundleUnavailable):
                bundle.clear_faults()


# ---- bundles by name -------------------------------------------------------------


class BundleLoader:
    """What ``fixture_bundle`` is: loads bundles by name or path into one runtime."""

    def __init__(self, runtime: Runtime, search: list[Path], root: Path):
        self.runtime = runtime
        self._search = search
        self._root = root

    def __call__(self, name_or_path: str | os.PathLike[str], **load_options: Any) -> Bundle:
        """Loads the bundle and returns it; ``load_options`` go to Runtime.load_bundle."""
        return self.runtime.load_bundle(self.path(name_or_path), **load_options)

    def path(self, name_or_path: str | os.PathLike[str]) -> Path:
        """The bundle directory: a path as given (relative to the rootdir), or a name looked up.

        Raises:
            LookupError: no ``polyplug_bundles`` directory and no project fixture has that name.
        """
        if isinstance(name_or_path, os.PathLike) or os.sep in name_or_path:
            return self._root / name_or_path
        for directory in self._search:
            if (directory / name_or_path / "manifest.toml").is_file():
                return directory / name_or_path
        if name_or_path in _fixtures.fixture_names():
            return _fixtures.fixture_path(name_or_path)
        places = [str(d) for d in self._search] + [f"the project fixtures {_fixtures.fixture_names()}"]
        raise LookupError(
            f"no bundle named {name_or_path!r} (a directory holding manifest.toml) in {places}; "
            f"set the {BUNDLES_INI} ini option or pass a path"
        )


# ---- hooks and fixtures ----------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        BUNDLES_INI,
        "directories holding bundle directories that fixture_bundle(name) finds by name",
        type="paths",
        default=[],
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{FAULTS_MARKER}(*faults, bundle=None): arm these polyplug_isolated Faults in every worker "
        "of the named bundle (all bundles when None) the test loads into isolated_runtime",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker(FAULTS_MARKER) and "isolated_runtime" not in getattr(item, "fixturenames", ()):
        pytest.fail(
            f"{item.nodeid}: @pytest.mark.faults arms faults in bundles loaded into isolated_runtime "
            "(or through fixture_bundle), and this test uses neither",
            pytrace=False,
        )


@pytest.fixture
def isolated_runtime_options() -> dict[str, Any]:
    """Keyword arguments of ``isolated_runtime``'s Runtime; override this fixture to set them."""
    return {}


@pytest.fixture
def isolated_runtime(
    request: pytest.FixtureRequest, isolated_runtime_options: dict[str, Any]
) -> Iterator[Runtime]:
    """A Runtime, closed at teardown; fails the test if processes, shm entries or fds outlive it."""
    plans = [_Plan.from_marker(marker) for marker in request.node.iter_markers(FAULTS_MARKER)]
    with leak_check("isolated_runtime leak check"):
        runtime = _PlannedRuntime(plans, **isolated_runtime_options)
        try:
            yield runtime
        finally:
            runtime.close()
    unused = runtime.unused_plans()
    if unused:
        pytest.fail(
            f"@pytest.mark.faults names bundles {unused} that the test never loaded "
            f"(it loaded {sorted(runtime.loaded_names)}): a typo, or not the manifest's name",
            pytrace=False,
        )


@pytest.fixture
def fixture_bundle(isolated_runtime: Runtime, request: pytest.FixtureRequest) -> BundleLoader:
    """``fixture_bundle("adder")`` loads a bundle into ``isolated_runtime`` and returns it."""
    config = request.config
    return BundleLoader(isolated_runtime, list(config.getini(BUNDLES_INI)), config.rootpath)
