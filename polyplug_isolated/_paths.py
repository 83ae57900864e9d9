"""Where the package's files are: from a source checkout, or installed from a wheel."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SOURCE_TREE = Path(__file__).resolve().parent.parent


def package_dir(package: str, in_source_tree: Path) -> Path:
    """The source tree's directory when there is one, else where the installed subpackage is."""
    if in_source_tree.is_dir():
        return in_source_tree
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else in_source_tree


def cache_dir() -> Path:
    """This user's cache: $XDG_CACHE_HOME/polyplug_isolated (~/.cache/polyplug_isolated by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "polyplug_isolated"


def get_include() -> str:
    """The directory holding ``polyplug_abi.h``, the polyplug v1 ABI header, for ``cc -I``::

    INC=$(python -c 'import polyplug_isolated as p; print(p.get_include())')
    cc -std=c11 -O2 -fPIC -shared -I"$INC" -o libgreeter.so greeter.c
    """
    return str(package_dir("polyplug_isolated.worker", SOURCE_TREE / "worker"))
