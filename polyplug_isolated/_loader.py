"""IsolatedLoader: the parent-side proxy with the seed's BundleLoader shape."""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ._manifest import ManifestData
from .errors import UnsupportedBundleSource

if TYPE_CHECKING:
    from ._bundle import Bundle
    from ._runtime import Runtime


@dataclass(frozen=True)
class BundleSource:
    """Where a bundle comes from; the native loader only takes ``BundleSource.path``."""

    kind: Literal["path", "code", "bytes"]
    value: object

    @classmethod
    def path(cls, path: str | os.PathLike[str]) -> BundleSource:
        return cls("path", path)

    @classmethod
    def code(cls, code: str) -> BundleSource:
        return cls("code", code)

    @classmethod
    def bytes(cls, data: bytes) -> BundleSource:
        return cls("bytes", data)


class IsolatedLoader:
    """Loads native bundles, each into its own worker process."""

    def __init__(self) -> None:
        self._runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()

    def loader_name(self) -> str:
        return "native"

    def supports_hot_reload(self) -> bool:
        return True

    def load(self, manifest: ManifestData, source: BundleSource, rt: Runtime) -> Bundle:
        """Loads ``manifest`` into ``rt``. Raises UnsupportedBundleSource for code/bytes sources."""
        if source.kind != "path":
            raise UnsupportedBundleSource(
                f"loader 'native' cannot load a bundle from {source.kind}: bundle {manifest.name!r} must "
                "be a directory with manifest.toml and a shared library (BundleSource.path)",
                bundle=manifest.name,
            )
        self._runtimes.add(rt)
        return rt.load_manifest(manifest)

    def reload(self, manifest: ManifestData, rt: Runtime) -> Bundle:
        self._runtimes.add(rt)
        return rt.reload_manifest(manifest)

    def unload(self, bundle_id: int, rt: Runtime) -> None:
        rt.unload_bundle(bundle_id)

    def live_worker_count(self) -> int:
        """Running workers across the runtimes this loader loaded into."""
        return sum(rt.live_worker_count() for rt in self._runtimes)
