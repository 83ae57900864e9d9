"""Bundle signatures as polyplug 0.1.3 checks them (POLYPLUG_V1_SPEC.md §G.8).

The digest covers every regular file of the bundle directory except
``bundle.sig``, sorted by their ``/``-separated relative paths::

    SHA-256( "polyplug-bundle-sig\\0" || 0x01 || u64le(count)
             || for each file: path (UTF-8) || 0x00 || SHA-256(contents) )

and ``bundle.sig`` (103 bytes) is ``"PPSIG\\0" || 0x01 || public key (32) ||
Ed25519 signature of the digest (64)``. A symlink, fifo or other special file
anywhere in the bundle, or an empty bundle, cannot be signed or verified.

The check runs in the host before any worker sees the bundle. Ed25519 comes
from ``cryptography`` (pyca: maintained, audited OpenSSL bindings, wheels for
every platform polyplug targets), installed by the ``polyplug`` extra; a host
that asks for signatures without it is refused when the runtime is created.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import BundleSignatureError

SIGNATURE_FILE = "bundle.sig"
_DOMAIN = b"polyplug-bundle-sig\x00"
_DIGEST_VERSION = b"\x01"
_SIG_MAGIC = b"PPSIG\x00"
_SIG_VERSION = b"\x01"
_SIG_SIZE = len(_SIG_MAGIC) + 1 + 32 + 64
_KEY_MAGIC = b"PPKEY\x00"
_KEY_SIGNING = 1
_KEY_VERIFYING = 2
_logger = logging.getLogger("polyplug_isolated")


class Policy(enum.IntEnum):
    """polyplug's SignaturePolicy values."""

    Off = 0
    WarnOnly = 1
    Required = 2


class _Unverified(Exception):
    """Why a bundle's signature does not hold (worded as polyplug words it)."""


def bundle_digest(directory: str | os.PathLike[str]) -> bytes:
    """The 32-byte digest a bundle's signature covers.

    Raises:
        ValueError: the bundle holds a symlink or special file, or no file at all.
    """
    root = Path(directory)
    files: list[tuple[bytes, Path]] = []
    _collect(root, b"", files)
    files.sort()
    if not files:
        raise ValueError(f"bundle directory {root} holds no file to sign")
    buffer = bytearray(_DOMAIN + _DIGEST_VERSION + struct.pack("<Q", len(files)))
    for relative, path in files:
        buffer += relative + b"\x00" + hashlib.sha256(path.read_bytes()).digest()
    return hashlib.sha256(buffer).digest()


def _collect(directory: Path, prefix: bytes, files: list[tuple[bytes, Path]]) -> None:
    for entry in os.scandir(directory):
        relative = prefix + entry.name.encode("utf-8", "surrogateescape")
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            _collect(Path(entry.path), relative + b"/", files)
        elif stat.S_ISREG(mode):
            if relative != SIGNATURE_FILE.encode():
                files.append((relative, Path(entry.path)))
        else:
            kind = "a symlink" if stat.S_ISLNK(mode) else "a special file"
            raise ValueError(f"{entry.path} is {kind}; a signed bundle holds only regular files")


def sign_bundle(directory: str | os.PathLike[str], signing_key: bytes) -> bytes:
    """Writes ``bundle.sig`` for the bundle with a 32-byte Ed25519 seed; returns the public key."""
    ed25519 = _ed25519()
    private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(signing_key))
    public = _public_bytes(private.public_key())
    signature = private.sign(bundle_digest(directory))
    (Path(directory) / SIGNATURE_FILE).write_bytes(_SIG_MAGIC + _SIG_VERSION + public + signature)
    return public


def generate_signing_key() -> tuple[bytes, bytes]:
    """A fresh (32-byte seed, 32-byte public key) pair."""
    ed25519 = _ed25519()
    private = ed25519.Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return bytes(seed), _public_bytes(private.public_key())


def key_file_bytes(key: bytes, *, signing: bool) -> bytes:
    """A polyplug key file (39 bytes): ``"PPKEY\\0"``, 1 (signing seed) or 2 (verifying key), the key."""
    if len(key) != 32:
        raise ValueError(f"an Ed25519 key is 32 bytes, not {len(key)}")
    return _KEY_MAGIC + bytes([_KEY_SIGNING if signing else _KEY_VERIFYING]) + bytes(key)


class SignatureCheck:
    """A runtime's policy, allowlist and trust-on-first-use pins.

    ``warn(bundle, message)`` reports a WarnOnly failure (default: logging).

    With an empty allowlist the first key that verifies a bundle is pinned for
    that bundle (by name) for the runtime's lifetime: a later load or reload
    signed by another key is refused.
    """

    def __init__(
        self,
        policy: int,
        trusted_keys: Iterable[bytes] = (),
        warn: Callable[[str, str], None] | None = None,
    ):
        self.policy = Policy(int(policy))
        self.trusted = [bytes(k) for k in trusted_keys]
        for i, key in enumerate(self.trusted):
            if len(key) != 32:
                raise ValueError(f"trusted key {i} must be 32 bytes, got {len(key)}")
        self._warn = warn or _log_warning
        self._pins: dict[str, bytes] = {}
        self._lock = threading.Lock()
        if self.policy is not Policy.Off:
            _ed25519()  # fail now, not at the first load, when the library is missing

    def check(self, directory: Path, bundle: str) -> None:
        """Raises BundleSignatureError (Required) or warns (WarnOnly) when the bundle fails."""
        if self.policy is Policy.Off:
            return
        try:
            self._verify(directory, bundle)
        except _Unverified as why:
            if self.policy is Policy.Required:
                raise BundleSignatureError(f"{why}", bundle=bundle) from None
            self._warn(bundle, f"signature check failed (WarnOnly — continuing): {why}")

    def _verify(self, directory: Path, bundle: str) -> None:
        sig_path = directory / SIGNATURE_FILE
        try:
            blob = sig_path.read_bytes()
        except FileNotFoundError:
            raise _Unverified(
                f"bundle `{bundle}` is not signed and signature_policy is Required; "
                f"sign it (a {SIGNATURE_FILE} beside its manifest) or lower the policy"
            ) from None
        except OSError as exc:
            raise _Unverified(f"signature verification failed for bundle `{bundle}`: {exc}") from None
        if len(blob) != _SIG_SIZE or not blob.startswith(_SIG_MAGIC + _SIG_VERSION):
            raise _Unverified(
                f"signature verification failed for bundle `{bundle}`: {SIGNATURE_FILE} is not a "
                f"version-1 polyplug signature ({len(blob)} bytes; expected {_SIG_SIZE})"
            )
        public, signature = blob[7:39], blob[39:]
        try:
            digest = bundle_digest(directory)
        except (OSError, ValueError) as exc:
            raise _Unverified(f"signature verification failed for bundle `{bundle}`: {exc}") from None
        ed25519 = _ed25519()
        from cryptography.exceptions import InvalidSignature

        try:
            ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, digest)
        except (InvalidSignature, ValueError):
            raise _Unverified(
                f"signature verification failed for bundle `{bundle}`: the signature does not match "
                "the bundle's files (a file was changed, added or removed after signing); re-sign it"
            ) from None
        if self.trusted:
            if public not in self.trusted:
                raise _Unverified(
                    f"bundle `{bundle}` is signed by a key that is not in the host's trusted-key "
                    f"allowlist ({public.hex()}); add the key to trusted_keys or re-sign the bundle"
                )
            return
        with self._lock:
            pinned = self._pins.setdefault(bundle, public)
        if pinned != public:
            raise _Unverified(
                f"bundle `{bundle}` is signed by key {public.hex()}, but this runtime pinned "
                f"{pinned.hex()} for it on first use; sign it with the pinned key or pass trusted_keys"
            )


def _log_warning(bundle: str, message: str) -> None:
    _logger.warning("bundle `%s`: %s", bundle, message)


def _public_bytes(public: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _ed25519() -> ModuleType:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ImportError(
            "bundle signatures need the `cryptography` package: pip install 'polyplug_isolated[polyplug]'"
        ) from None
    return ed25519
