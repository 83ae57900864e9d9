"""manifest.toml of a native bundle: parse, validate, pick this platform's library.

Follows what polyplug 0.1.3 accepts (its manifest parser and runtime checks), with two
deliberate differences: ``version`` is checked before the library is touched
(0.1.3 checks it after init has run), and the library path is confined to the
bundle directory here, in the host, before any process starts.
"""

from __future__ import annotations

import difflib
import errno
import logging
import os
import platform
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._dependencies import Dependency, parse_dependencies
from ._ids import bundle_id as expected_bundle_id
from ._oserrors import describe, describe_path, loader_errors
from .errors import InitFailed, LoaderError, ManifestError, ManifestMissingFile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

NATIVE_LOADER = "native"
# What polyplug 0.1.3 reads (POLYPLUG_V1_SPEC.md §E); it ignores any other key, so
# an unknown one is only warned about, with the known key it most resembles.
KNOWN_KEYS = (
    "name",
    "id",
    "version",
    "loader",
    "file",
    "provides",
    "function_count",
    "needs_reinit_on_dep_reload",
    "bundle_dependencies",
    "dependency",
)
_logger = logging.getLogger("polyplug_isolated")
# ASCII digits only, matched whole (``$`` would admit a trailing newline).
_PROVIDES = re.compile(r"(?P<name>[^@\s]+)(@(?P<version>[0-9]+(\.[0-9]+){0,2}))?")
_OS_NAMES = {"linux": "linux", "darwin": "macos", "win32": "windows"}
MAX_MANIFEST_BYTES = 1 << 20  # polyplug's manifests are a few hundred bytes
_ARCH_NAMES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


@dataclass(frozen=True)
class ManifestData:
    """A validated manifest: ``file`` is the library for this platform, inside ``path``."""

    id: int
    name: str
    version: str
    loader: str
    provides: tuple[str, ...]
    file: Path
    path: Path
    function_count: dict[str, int] = field(default_factory=dict)
    dependencies: tuple[Dependency, ...] = ()  # [[dependency]], see _dependencies
    needs_reinit_on_dep_reload: bool = False

    @property
    def version_major(self) -> str:
        """The major used in ``[function_count]`` keys ("0" when there is no version)."""
        return self.version.split(".", 1)[0] if "." in self.version else "0"


def platform_key() -> str:
    """This machine as a ``[file]`` key, e.g. ``linux.x86_64``."""
    os_name = _OS_NAMES.get(sys.platform, sys.platform)
    machine = platform.machine().lower()
    return f"{os_name}.{_ARCH_NAMES.get(machine, machine)}"


def bundle_directory(path: str | os.PathLike[str]) -> Path:
    """The bundle directory for ``path``; a file path means its directory, as in polyplug."""
    path = Path(os.fsdecode(path)).absolute()
    return path.parent if path.is_file() else path


def parse_manifest(path: str | os.PathLike[str], *, check_function_counts: bool = True) -> ManifestData:
    """Reads and validates ``<path>/manifest.toml``.

    ``check_function_counts=False`` leaves out the check that every ``provides``
    entry has its ``[function_count]`` key (polyplug's Relaxed/Yolo, and reloads).

    Raises:
        ManifestError: missing or malformed manifest, a wrong type, a bad value.
        ManifestMissingFile: no library for this platform.
        InitFailed: ``id`` missing or 0 (the seed loader's error for that case).
    """
    with loader_errors(describe_path(path), "finding its directory", ManifestError):
        directory = bundle_directory(path)
    manifest_path = directory / "manifest.toml"
    where = str(directory)
    try:
        text = read_capped(manifest_path).decode("utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"bundle at {where}: no manifest.toml in that directory; a polyplug bundle is a "
            "directory holding manifest.toml beside its library",
            bundle=where,
        ) from None
    except (OSError, ValueError) as exc:  # ValueError: UnicodeDecodeError, a NUL in the path
        raise ManifestError(
            f"bundle at {where}: cannot read {manifest_path}: {describe(exc)}", bundle=where
        ) from exc
    try:
        raw = tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError is a ValueError; nesting recurses
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ManifestError(
            f"bundle at {where}: {manifest_path} is not valid TOML: {reason}", bundle=where
        ) from None
    return _validate(raw, directory, manifest_path, check_function_counts)


def read_capped(path: Path, cap: int = MAX_MANIFEST_BYTES) -> bytes:
    """The bytes of ``path``, a regular file of at most ``cap`` bytes; OSError otherwise.

    Opened without blocking (a FIFO would wait for a writer forever) and
    checked on the open descriptor (no swap between check and read), so a
    FIFO, a device (/dev/zero), a directory or a huge file is refused unread.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, a device or a directory?)")
        chunks, size = [], 0
        while size <= cap and (chunk := os.read(fd, cap + 1 - size)):  # the file may grow after fstat
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if info.st_size > cap or size > cap:
        raise OSError(errno.EFBIG, f"larger than {cap >> 20} MiB; a manifest is a few hundred bytes")
    return b"".join(chunks)


def _validate(
    raw: dict[str, Any], directory: Path, manifest_path: Path, check_function_counts: bool = True
) -> ManifestData:
    def fail(
        message: str, error: type[ManifestError] | type[ManifestMissingFile] = ManifestError
    ) -> LoaderError:
        return error(f"bundle {bundle!r}: {manifest_path}: {message}", bundle=bundle)

    bundle = str(directory)
    for key in unknown_keys(raw):
        _logger.warning(
            "bundle at %s: %s: unknown key %r is ignored%s",
            directory,
            manifest_path,
            key,
            did_you_mean(key, KNOWN_KEYS),
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise fail("`name` is required and must be a non-empty string")
    bundle = name

    loader = raw.get("loader")
    if loader is None:
        raise fail('missing field `loader`: add `loader = "native"` (`runtime = ...` is not read)')
    if not isinstance(loader, str) or not loader:
        raise fail('`loader` must be a non-empty string such as "native"')
    if loader != NATIVE_LOADER:
        raise fail(f"declares loader {loader!r}, but polyplug_isolated only runs {NATIVE_LOADER!r} bundles")

    declared_id = raw.get("id", 0)
    if isinstance(declared_id, bool) or not isinstance(declared_id, int):
        raise fail(f"`id` must be an integer, not {type(declared_id).__name__}")
    if declared_id == 0:
        raise InitFailed(f"bundle {name!r}: manifest.id is required but was 0 or missing", bundle=name)
    if not 0 < declared_id < 1 << 64:
        raise fail(f"`id` {declared_id} is not an unsigned 64-bit integer")
    expected = expected_bundle_id(name)
    if declared_id != expected:
        raise fail(
            f"tampered with bundle_id: expected=0x{expected:016X} (fnv1a64 of the name), "
            f"found=0x{declared_id:016X}"
        )

    version = raw.get("version", "")
    if not isinstance(version, str):
        raise fail('`version` must be a string such as "1.0.0"')
    if version and not _is_version(version):
        raise fail(f"invalid version {version!r}: use major.minor or major.minor.patch, each below 2**32")

    provides = raw.get("provides", [])
    if not isinstance(provides, list) or not all(isinstance(p, str) for p in provides):
        raise fail("`provides` must be an array of strings")
    for entry in provides:
        match = _PROVIDES.fullmatch(entry)
        if not match or (match["version"] and not _is_version(match["version"], parts=(1, 2, 3))):
            raise fail(f"provides entry {entry!r} is not `name` or `name@version`")

    function_count = raw.get("function_count", {})
    if not isinstance(function_count, dict):
        raise fail('`function_count` must be a table of "contract@major" = count')
    for key, count in function_count.items():
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 1 << 32:
            raise fail(f"function_count[{key!r}] must be an unsigned 32-bit integer, not {count!r}")

    data = ManifestData(
        id=declared_id,
        name=name,
        version=version,
        loader=loader,
        provides=tuple(provides),
        file=_library_path(raw.get("file"), directory, fail),
        path=directory,
        function_count=dict(function_count),
        dependencies=parse_dependencies(raw.get("dependency"), fail),
        needs_reinit_on_dep_reload=_flag(raw, "needs_reinit_on_dep_reload", fail),
    )
    for entry in provides if check_function_counts else ():
        key = f"{entry.split('@', 1)[0]}@{data.version_major}"
        if key not in function_count and not version:
            raise fail(
                f"`version` is missing, so provides {entry!r} needs [function_count] key {key!r}: "
                f'add e.g. `version = "1.0.0"` (its major keys [function_count]: '
                f'`"{entry.split("@", 1)[0]}@1" = <count>`)'
            )
        if key not in function_count:
            raise fail(f"provides {entry!r} but [function_count] has no key {key!r}: add `{key!r} = <count>`")
    return data


def _flag(raw: dict[str, Any], key: str, fail: Callable[[str], LoaderError]) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise fail(f"`{key}` must be true or false, not {value!r}")
    return value


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict (for tools; parse_manifest reports its errors itself)."""
    with open(path, "rb") as file:
        data: dict[str, Any] = tomllib.load(file)
    return data


def unknown_keys(raw: dict[str, Any]) -> list[str]:
    """Top-level keys polyplug does not read (a typo such as ``provide``), in file order."""
    return [key for key in raw if key not in KNOWN_KEYS]


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _is_version(text: str, parts: tuple[int, ...] = (2, 3)) -> bool:
    """major.minor[.patch] (or the given part counts), ASCII digits, each a u32 as in polyplug's Version."""
    numbers = text.split(".")
    return (
        len(numbers) in parts
        and all(n.isascii() and n.isdigit() and len(n) <= 10 for n in numbers)
        and all(int(n) < 1 << 32 for n in numbers)
    )


def _library_path(spec: Any, directory: Path, fail: Callable[..., LoaderError]) -> Path:
    key = platform_key()
    if isinstance(spec, dict):
        os_name, arch = key.split(".")
        per_os = spec.get(os_name, {})
        relative = per_os.get(arch) if isinstance(per_os, dict) else None
        if relative is None:
            available = sorted(
                f"{o}.{a}" for o, archs in spec.items() if isinstance(archs, dict) for a in archs
            )
            raise fail(f"no file entry for platform {key}, available: {available}", ManifestMissingFile)
    else:
        relative = spec
    if relative is None or relative == "":
        raise fail(
            '`file` is empty or missing: name the library, e.g. [file] linux.x86_64 = "libx.so"',
            ManifestMissingFile,
        )
    if not isinstance(relative, str):
        raise fail('`file` must be a string or a [file] table of os.arch = "path"')
    if "\0" in relative:
        raise fail("`file` contains a NUL character, which no file name can")
    try:
        root = directory.resolve()
        library = (root / relative).resolve()
    except (OSError, ValueError) as exc:
        raise fail(f"`file` {describe_path(relative)!r} is not a usable path: {describe(exc)}") from exc
    if not library.is_relative_to(root):
        raise fail(
            f"artifact {relative!r} resolves outside the bundle directory (path traversal or symlink escape)"
        )
    return library
