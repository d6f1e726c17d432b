"""Ed25519 keys and signatures for catalog snapshot announcements.

A chain signs each announcement with its private key (``storelens catalog keygen`` makes the
pair; ``storelens catalog publish --key chain.key`` signs). Devices pin the public keys they
trust in ``fleet.trusted_keys`` and check the signature before they download anything: an
announcement that is unsigned, signed by a key they do not pin, or altered after signing is
refused. The signature covers everything that decides what gets installed (snapshot id,
catalog version, the archive's sha256 and size, the sha256 of its ``snapshot.json``, bundles,
dtype); not the download URL, which ``fleet.allowed_urls`` bounds instead (mirrors may move).

Public keys are written ``ed25519:<base64 of the 32 raw bytes>``; a key's id is the first 16
hex digits of the sha256 of those bytes (announcements name the key they were signed with).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.catalog.snapshot import SnapshotError
from edge.core.errors import InputError
from edge.core.fleet_settings import KEY_PREFIX, parse_public_key

KEY_ID_CHARS = 16


class SignatureError(SnapshotError):
    """An announcement that is unsigned, signed by an untrusted key, or altered after signing."""


def public_key_text(key: Ed25519PublicKey) -> str:
    return KEY_PREFIX + base64.b64encode(key.public_bytes_raw()).decode()


def key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_CHARS]


def write_key_pair(path: Path) -> str:
    """Create a new private key at ``path`` (PEM, mode 0600; never overwrites) and ``path.pub``; the public key."""
    if path.exists():
        raise InputError(f"{path} already exists", hint="choose another file; a key is never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = public_key_text(key.public_key())
    path.with_name(path.name + ".pub").write_text(public + "\n", encoding="utf-8")
    return public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise InputError(f"cannot read the signing key {path}: {e}",
                         hint="make one with `storelens catalog keygen --out chain.key`") from e
    except (ValueError, TypeError) as e:
        raise InputError(f"{path} is not an unencrypted PEM private key: {e}",
                         hint="make one with `storelens catalog keygen --out chain.key`") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path} holds a {type(key).__name__}, not an Ed25519 key",
                         hint="make one with `storelens catalog keygen --out chain.key`")
    return key


def sign(message: bytes, key: Ed25519PrivateKey) -> tuple[str, str]:
    """``(key id, base64 signature)`` of ``message``."""
    return key_id(key.public_key().public_bytes_raw()), base64.b64encode(key.sign(message)).decode()


def check_signature(message: bytes, *, signer: str | None, signature: str | None, trusted: Iterable[str]) -> str:
    """Raise :class:`SignatureError` unless ``signature`` is a valid signature of ``message`` by one of the
    ``trusted`` public keys (``ed25519:<base64>``) whose id is ``signer``; returns the key id."""
    keys = {key_id(raw): raw for raw in (parse_public_key(t) for t in trusted)}
    how = ("put the chain's public key (the .pub file `storelens catalog keygen` wrote) in fleet.trusted_keys, "
           "and publish with `storelens catalog publish --key chain.key`")
    if not keys:
        raise SignatureError("fleet.trusted_keys is empty: this device installs only catalog snapshots signed by a "
                             "key it trusts", hint=how)
    if not signature or not signer:
        raise SignatureError("the announcement is not signed", hint=how)
    raw = keys.get(signer)
    if raw is None:
        raise SignatureError(f"the announcement is signed by key {signer!r}, which is not in fleet.trusted_keys "
                             f"({', '.join(sorted(keys))})", hint=how)
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, binascii.Error, ValueError) as e:
        raise SignatureError(f"the announcement's signature by key {signer} does not match its content (altered "
                             "after signing)", hint="republish it with `storelens catalog publish --key`") from e
    return signer
