"""``polyplug.scanner``: find bundle directories below a directory, as polyplug's scanner does."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


@dataclass
class Manifest:
    """The three keys polyplug's scanner reads from a bundle's manifest.toml."""

    name: str
    version: str = "0.0.0"
    provides: list[str] | None = None


def scan_dir(dir_path: str | os.PathLike[str]) -> list[tuple[str, Manifest]]:
    """(bundle directory, Manifest) for each subdirectory of ``dir_path`` holding a manifest.toml.

    Raises:
        OSError: ``dir_path`` cannot be listed or a manifest cannot be read.
        tomllib.TOMLDecodeError: a manifest is not valid TOML.
    """
    found: list[tuple[str, Manifest]] = []
    for entry in os.scandir(dir_path):
        if not entry.is_dir():
            continue
        manifest_path = os.path.join(entry.path, "manifest.toml")
        if os.path.exists(manifest_path):
            with open(manifest_path, "rb") as file:
                data = tomllib.load(file)
            found.append(
                (
                    entry.path,
                    Manifest(
                        name=data.get("name", ""),
                        version=data.get("version", "0.0.0"),
                        provides=data.get("provides"),
                    ),
                )
            )
    return found
