"""The ``[fleet]`` section: building catalog snapshots on Ray and installing the ones a chain announces.

Kept beside :mod:`edge.core.config` (which puts it on the root :class:`~edge.core.config.Settings`)
so that module stays readable; the same rules apply: unknown keys are errors, values are frozen.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

GIB = 1 << 30
KEY_PREFIX = "ed25519:"


def parse_public_key(text: str) -> bytes:
    """The 32 raw bytes of a public key written ``ed25519:<base64>``; raises ValueError saying what is wrong."""
    body = text.strip().removeprefix(KEY_PREFIX)
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"public key {text!r} is not ed25519:<base64>: {e}") from e
    if len(raw) != 32:
        raise ValueError(f"public key {text!r} has {len(raw)} bytes, an Ed25519 key has 32")
    return raw


class FleetSettings(BaseModel):
    """``storelens catalog build`` (Ray Data) and the device side of catalog distribution."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(2, ge=1, le=1024, description="Catalog build: encoder actors in the Ray actor pool "
                         "(one CPU and one encoder each)")
    batch_size: int = Field(32, ge=1, le=4096, description="Catalog build: photos per map_batches call")
    ray_address: str | None = Field(None, min_length=1, description="Catalog build: an existing Ray cluster "
                                    "(e.g. ray://head:10001 or auto); empty = a local Ray on this machine")
    updates: bool = Field(True, description="Install catalog snapshots announced on "
                          "storelens/<store>/catalog/available (needs [mqtt])")
    snapshot_dir: Path | None = Field(None, description="Mounted folder snapshots may be read from (file URLs "
                                      "outside it are refused); empty = HTTP(S) downloads only")
    download_timeout_s: float = Field(1800.0, gt=0, le=86400, description="Total time a snapshot download may "
                                      "take (connect, every read and redirect together); slower ones are refused")
    max_snapshot_bytes: int = Field(8 * GIB, ge=1 << 20, le=1 << 40, description="Announced snapshots larger than "
                                    "this are refused; also the bound on their unpacked files")
    trusted_keys: tuple[str, ...] = Field((), description="Public keys (ed25519:<base64>, from `storelens catalog "
                                          "keygen`) whose signed snapshot announcements are installed; empty = "
                                          "every announcement is refused")
    allowed_urls: tuple[str, ...] = Field((), description="URL prefixes (https://host[:port]/path/) snapshots may "
                                          "be downloaded from, redirects included; empty = only file URLs in "
                                          "fleet.snapshot_dir")
    keep_snapshots: int = Field(2, ge=2, le=20, description="Installed snapshots kept on the device "
                                "(the current one and those `rollback` can return to)")

    @field_validator("trusted_keys")
    @classmethod
    def _keys(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for key in v:
            parse_public_key(key)  # ValueError -> a config error naming the key
        return v

    @field_validator("allowed_urls")
    @classmethod
    def _urls(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for url in v:
            p = urlsplit(url)
            if p.scheme not in ("http", "https") or not p.hostname or p.username or p.password or p.query \
                    or p.fragment:
                raise ValueError(f"{url!r} is not an http(s)://host[:port]/path/ prefix (no user, query or fragment)")
        return v
