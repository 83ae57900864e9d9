"""The contract registry: which bundle provides each contract, as handles that outlive reloads.

As in polyplug, a handle is a (slot index, generation) pair: a reload keeps a
contract in its slot, so handles minted before it stay valid; an unload
vacates the slot and bumps its generation, so old handles go stale instead of
naming whatever takes the slot next. The runtime serialises access.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import _checks as check
from ._bundle import Bundle
from .errors import StaleHandle

NOT_FOUND = 0xFFFFFFFF


class GuestContractHandle(NamedTuple):
    """Names a registered contract; ``index == 0xFFFFFFFF`` means not found."""

    index: int  # type: ignore[assignment]  # polyplug's field name; shadows tuple.index
    generation: int

    @property
    def found(self) -> bool:
        return self.index != NOT_FOUND


@dataclass
class _Slot:
    """A registry entry: one contract of one bundle; vacated on unload (generation bumped)."""

    contract_id: int
    major: int
    bundle: Bundle | None
    generation: int = 0


class ContractRegistry:
    """Slots of (contract, bundle) in registration order; ``changed`` runs before every change.

    A publish or unpublish touches only the bundle's own slots and the lowest
    free ones, whatever the number of bundles: a runtime of 1,000 bundles
    scanned every slot at each load and unload (90 ms over a close()).
    """

    def __init__(self, changed: Callable[[], None]) -> None:
        self._slots: list[_Slot] = []
        self._held: dict[Bundle, list[int]] = {}  # the slots each bundle provides
        self._free: list[int] = []  # vacated slots, a heap: the first in order is taken first
        self._changed = changed

    def publish(self, bundle: Bundle, contracts: Iterable[Mapping[str, Any]]) -> None:
        """Points the registry at the contracts ``bundle``'s worker provides now.

        A contract the bundle already provided keeps its slot and generation; a
        contract it no longer provides is vacated; a new one takes the first free slot.
        """
        self._changed()
        fresh = {contract["contract_id"]: contract for contract in contracts}
        held = []
        for index in self._held.pop(bundle, ()):
            slot = self._slots[index]
            contract = fresh.pop(slot.contract_id, None)
            if contract is None:
                self._vacate(index)
            else:
                slot.major = contract["version"][0]
                held.append(index)
        for contract in fresh.values():
            if self._free:
                index = heapq.heappop(self._free)
            else:
                index = len(self._slots)
                self._slots.append(_Slot(0, 0, None))
            vacant = self._slots[index]
            vacant.contract_id = contract["contract_id"]
            vacant.major = contract["version"][0]
            vacant.bundle = bundle
            held.append(index)
        if held:
            self._held[bundle] = held

    def unpublish(self, bundle: Bundle) -> None:
        self._changed()
        for index in self._held.pop(bundle, ()):
            self._vacate(index)

    def _vacate(self, index: int) -> None:
        slot = self._slots[index]
        slot.bundle = None
        slot.generation += 1
        heapq.heappush(self._free, index)

    def find_all(self, owner: str, contract_id: int, min_version: int) -> list[GuestContractHandle]:
        """Every provider of ``contract_id`` (major >= ``min_version``), in registration order."""
        check_lookup(owner, contract_id, min_version)
        return [
            GuestContractHandle(index, slot.generation)
            for index, slot in enumerate(self._slots)
            if slot.bundle is not None and slot.contract_id == contract_id and slot.major >= min_version
        ]

    def provider(self, handle: GuestContractHandle) -> tuple[Bundle, int]:
        """(bundle, contract id) that ``handle`` names.

        Raises:
            StaleHandle: the handle was never found, or its bundle was unloaded.
        """
        if handle.index == NOT_FOUND:
            raise StaleHandle(
                "this handle is find_guest_contract's not-found answer (index 0xFFFFFFFF): no loaded "
                "bundle provided the contract at that version; check handle.found before resolving"
            )
        slot = self._slots[handle.index] if 0 <= handle.index < len(self._slots) else None
        if slot is None or slot.bundle is None or slot.generation != handle.generation:
            raise StaleHandle(
                f"stale plugin handle: index={handle.index} generation={handle.generation} refers to a "
                "vacated or recycled slot (its bundle was unloaded); call find_guest_contract again"
            )
        return slot.bundle, slot.contract_id


def check_lookup(owner: str, contract_id: object, min_version: object) -> None:
    example = f'{owner}(guest_contract_id("test.add", 1), 1)'
    check.integer(owner, "contract_id", contract_id, example, low=0, high=(1 << 64) - 1)
    check.integer(owner, "min_version", min_version, example, low=0, high=(1 << 32) - 1)
