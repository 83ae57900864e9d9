"""``[[dependency]]`` in manifest.toml: what a bundle needs from other bundles, and what follows.

::

    needs_reinit_on_dep_reload = true
    [[dependency]]
    kind = "bundle"                  # required, free text (polyplug does not read it either)
    contract = "cross.target@1"      # required: the guest contract
    min_version = "1.0"              # required: its major is the floor
    contract_id = 0x...              # optional: must be guest_contract_id(contract, major)
    bundle = "cross_target"          # optional: only this bundle counts as the provider
    bundle_id = 0x...                # optional: must be fnv1a64(bundle)

As in polyplug 0.1.3 (spec §E, §G): a bundle whose dependency no loaded bundle
satisfies does not load; a bundle others depend on cannot be unloaded; a
reload of it re-initialises the dependers that set
``needs_reinit_on_dep_reload``, in load order; during its ``polyplug_init`` a
bundle sees its dependencies through ``get_dependencies`` and finds only
those contracts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._ids import bundle_id, guest_contract_id

if TYPE_CHECKING:
    from ._bundle import Bundle

_VERSION = re.compile(r"([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?")
_KEYS = ("kind", "contract", "min_version", "contract_id", "bundle", "bundle_id")


@dataclass(frozen=True)
class Dependency:
    """One validated ``[[dependency]]``; ``bundle_id`` 0 means any provider."""

    kind: str
    contract: str
    min_version: int  # the major floor
    contract_id: int
    bundle: str = ""
    bundle_id: int = 0

    def describe(self) -> str:
        provider = f" from bundle {self.bundle!r}" if self.bundle else ""
        return f"{self.contract}@{self.min_version}{provider}"

    def satisfied_by(self, bundle: Bundle) -> bool:
        if self.bundle_id and bundle.id != self.bundle_id:
            return False
        return any(
            c.contract_id == self.contract_id and c.version[0] >= self.min_version for c in bundle.contracts
        )

    def as_info(self) -> dict[str, int]:
        """What get_dependencies shows (polyplug's DependencyInfo)."""
        return {"contract_id": self.contract_id, "min_version": self.min_version, "bundle_id": self.bundle_id}


def parse_dependencies(raw: Any, fail: Callable[[str], Exception]) -> tuple[Dependency, ...]:
    """Validates the manifest's ``[[dependency]]`` array; ``fail(message)`` makes the error to raise."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
        raise fail("`dependency` must be an array of tables ([[dependency]])")
    return tuple(_one(entry, i, fail) for i, entry in enumerate(raw))


def _one(entry: dict[str, Any], index: int, fail: Callable[[str], Exception]) -> Dependency:
    where = f"[[dependency]] #{index}"
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
        raise fail(f"{where}: unknown key `{unknown[0]}` (known: {', '.join(_KEYS)})")
    kind, contract, version = entry.get("kind"), entry.get("contract"), entry.get("min_version")
    if not isinstance(kind, str) or not kind:
        raise fail(f'{where}: `kind` is required (a string such as "contract" or "bundle")')
    if not isinstance(contract, str) or not contract.split("@", 1)[0]:
        raise fail(f'{where}: `contract` is required (a guest contract name such as "test.add@1")')
    name = contract.split("@", 1)[0]
    match = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        raise fail(
            f'{where} ({contract!r}): `min_version` is required: "major.minor[.patch]", not {version!r}'
        )
    major = int(match.group(1))
    if major >= 1 << 32:
        raise fail(f"{where} ({contract!r}): min_version major {major} does not fit a u32")
    canonical = guest_contract_id(name, major)
    declared = _u64(entry.get("contract_id", 0), f"{where}: `contract_id`", fail)
    if declared and declared != canonical:
        raise fail(
            f"dependency {contract!r} declares contract_id 0x{declared:016X} but the canonical id for "
            f"contract {name!r} at major {major} is 0x{canonical:016X} "
            f'(fnv1a64 of "guest_contract:{name}@{major}")'
        )
    provider = entry.get("bundle", "")
    if not isinstance(provider, str):
        raise fail(f"{where} ({contract!r}): `bundle` must be a bundle name")
    declared_bundle = _u64(entry.get("bundle_id", 0), f"{where}: `bundle_id`", fail)
    if declared_bundle and not provider:
        raise fail(f"{where} ({contract!r}): `bundle_id` needs `bundle`, the name it is the id of")
    if provider and declared_bundle and declared_bundle != bundle_id(provider):
        raise fail(
            f"dependency {contract!r} declares bundle_id 0x{declared_bundle:016X} but bundle {provider!r} "
            f"has id 0x{bundle_id(provider):016X} (fnv1a64 of its name)"
        )
    return Dependency(kind, name, major, canonical, provider, bundle_id(provider) if provider else 0)


def _u64(value: Any, what: str, fail: Callable[[str], Exception]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise fail(f"{what} must be an unsigned 64-bit integer, not {value!r}")
    return value


def missing(dependencies: Iterable[Dependency], loaded: Iterable[Bundle]) -> list[Dependency]:
    """The dependencies no loaded bundle satisfies."""
    bundles = list(loaded)
    return [dep for dep in dependencies if not any(dep.satisfied_by(b) for b in bundles)]


def dependers(target: Bundle, loaded: Iterable[Bundle]) -> list[Bundle]:
    """The loaded bundles (in load order) with a dependency that ``target`` satisfies."""
    return [
        bundle
        for bundle in loaded
        if bundle is not target and any(dep.satisfied_by(target) for dep in bundle.manifest.dependencies)
    ]
