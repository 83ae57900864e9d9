"""Bundle signatures (polyplug's §G.8 format), checked in the host before any worker starts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from polyplug_isolated import BundleSignatureError, LoaderError
from polyplug_isolated._signing import (
    Policy,
    SignatureCheck,
    bundle_digest,
    generate_signing_key,
    key_file_bytes,
    sign_bundle,
)


@pytest.fixture
def bundle(bundle_dir, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir("adder"), tmp_path / "adder"))


def test_a_signature_file_is_polyplugs_103_bytes_and_covers_every_file(bundle: Path):
    seed, public = generate_signing_key()
    assert sign_bundle(bundle, seed) == public
    blob = (bundle / "bundle.sig").read_bytes()
    assert len(blob) == 103
    assert blob[:7] == b"PPSIG\x00\x01"
    assert blob[7:39] == public
    digest = bundle_digest(bundle)
    (bundle / "sub").mkdir()
    (bundle / "sub" / "more.txt").write_text("x")
    assert bundle_digest(bundle) != digest  # a file in a subdirectory counts too
    (bundle / "sub" / "more.txt").unlink()
    (bundle / "sub").rmdir()
    assert bundle_digest(bundle) == digest  # bundle.sig itself is left out


def test_key_files_are_39_bytes(bundle: Path):
    seed, public = generate_signing_key()
    assert key_file_bytes(seed, signing=True) == b"PPKEY\x00\x01" + seed
    assert key_file_bytes(public, signing=False) == b"PPKEY\x00\x02" + public
    with pytest.raises(ValueError, match="32 bytes"):
        key_file_bytes(b"short", signing=False)


def test_a_symlink_in_a_signed_bundle_fails_verification(bundle: Path):
    seed, public = generate_signing_key()
    sign_bundle(bundle, seed)
    os.symlink("/etc/hostname", bundle / "link")
    check = SignatureCheck(Policy.Required, [public])
    with pytest.raises(BundleSignatureError, match="signature verification failed .* is a symlink") as caught:
        check.check(bundle, "adder")
    assert isinstance(caught.value, LoaderError) and isinstance(caught.value, RuntimeError)


def test_a_truncated_signature_file_fails_verification(bundle: Path):
    seed, public = generate_signing_key()
    sign_bundle(bundle, seed)
    (bundle / "bundle.sig").write_bytes((bundle / "bundle.sig").read_bytes()[:50])
    with pytest.raises(BundleSignatureError, match="not a version-1 polyplug signature"):
        SignatureCheck(Policy.Required, [public]).check(bundle, "adder")


def test_trust_on_first_use_pins_the_first_key_per_bundle(bundle: Path, tmp_path: Path):
    first, _ = generate_signing_key()
    second, _ = generate_signing_key()
    check = SignatureCheck(Policy.Required)
    sign_bundle(bundle, first)
    check.check(bundle, "adder")
    other = Path(shutil.copytree(bundle, tmp_path / "other"))
    sign_bundle(other, second)
    with pytest.raises(BundleSignatureError, match="pinned .* on first use"):
        check.check(other, "adder")
    check.check(other, "another_bundle")  # pins are per bundle


def test_warn_only_reports_and_continues(bundle: Path):
    warnings: list[tuple[str, str]] = []
    SignatureCheck(Policy.WarnOnly, warn=lambda *w: warnings.append(w)).check(bundle, "adder")
    assert warnings == [
        (
            "adder",
            "signature check failed (WarnOnly — continuing): bundle `adder` is not signed and "
            "signature_policy is Required; sign it (a bundle.sig beside its manifest) or lower the policy",
        )
    ]


def test_off_never_reads_the_bundle(tmp_path: Path):
    SignatureCheck(Policy.Off).check(tmp_path / "does-not-exist", "ghost")


def test_a_trusted_key_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="trusted key 0 must be 32 bytes, got 3"):
        SignatureCheck(Policy.Required, [b"abc"])
