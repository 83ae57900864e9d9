"""polyplug's identifiers: FNV-1a 64 over UTF-8, with the contract prefixes."""

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


def fnv1a64(text: str | bytes) -> int:
    """The FNV-1a 64 hash polyplug uses for every id."""
    data = text.encode() if isinstance(text, str) else text
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def bundle_id(name: str) -> int:
    """The id a bundle named ``name`` must declare in its manifest."""
    return fnv1a64(name)


def guest_contract_id(name: str, major: int) -> int:
    """The id of guest contract ``name@major`` (``test.add@1`` -> 0x40244DF59FCBECB6)."""
    return fnv1a64(f"guest_contract:{name}@{major}")
