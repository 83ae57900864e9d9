"""polyplug's ids: FNV-1a 64 over UTF-8, bundle ids and guest contract ids (ABI.md)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polyplug_isolated._ids import bundle_id, fnv1a64, guest_contract_id

# Any str that encodes to UTF-8 (lone surrogates do not).
TEXT = st.text(st.characters(exclude_categories=("Cs",)))


def reference_fnv1a64(data: bytes) -> int:
    """FNV-1a 64 written out from its definition, independently of the package."""
    offset_basis = 14695981039346656037  # 0xcbf29ce484222325
    prime = 1099511628211  # 0x100000001b3
    h = offset_basis
    for octet in data:
        h ^= octet
        h = (h * prime) % 2**64
    return h


# Published FNV-1a 64 test vectors (Fowler/Noll/Vo reference test suite).
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", 0xCBF29CE484222325, id="empty-is-offset-basis"),
        pytest.param("a", 0xAF63DC4C8601EC8C, id="a"),
        pytest.param("foobar", 0x85944171F73967E8, id="foobar"),
    ],
)
def test_fnv1a64_known_vectors(text: str, expected: int) -> None:
    assert fnv1a64(text) == expected
    assert fnv1a64(text.encode()) == expected


def test_guest_contract_id_matches_abi_md() -> None:
    assert guest_contract_id("test.add", 1) == 0x40244DF59FCBECB6
    assert fnv1a64("guest_contract:test.add@1") == 0x40244DF59FCBECB6


def test_bundle_id_matches_abi_md() -> None:
    assert bundle_id("test_plugin") == 11175554700064995833
    assert bundle_id("test_plugin") > 2**63  # needs the full unsigned range


def test_host_and_guest_prefixes_differ() -> None:
    assert guest_contract_id("test.add", 1) != fnv1a64("host_contract:test.add@1")
    assert guest_contract_id("test.add", 1) != guest_contract_id("test.add", 2)


def test_str_is_hashed_as_utf8() -> None:
    assert fnv1a64("é") == fnv1a64(b"\xc3\xa9") == reference_fnv1a64("é".encode())
    assert fnv1a64("é") != fnv1a64(b"\xe9")


@given(TEXT)
def test_fnv1a64_str_matches_reference(text: str) -> None:
    value = fnv1a64(text)
    assert value == reference_fnv1a64(text.encode("utf-8"))
    assert 0 <= value < 2**64


@given(st.binary())
def test_fnv1a64_bytes_matches_reference(data: bytes) -> None:
    assert fnv1a64(data) == reference_fnv1a64(data)


@given(TEXT)
def test_bundle_id_is_fnv_of_name(name: str) -> None:
    assert bundle_id(name) == reference_fnv1a64(name.encode("utf-8"))


@given(TEXT, st.integers(min_value=0, max_value=2**32 - 1))
def test_guest_contract_id_matches_reference(name: str, major: int) -> None:
    expected = reference_fnv1a64(f"guest_contract:{name}@{major}".encode())
    assert guest_contract_id(name, major) == expected
