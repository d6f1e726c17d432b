"""The ``[fleet]`` section: building catalog snapshots on Ray and installing the ones a chain announces.

Kept beside :mod:`edge.core.config` (which puts it on the root :class:`~edge.core.config.Settings`)
so that module stays readable; the same rules apply: unknown keys are errors, values are frozen.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

GIB = 1 << 30


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
    download_timeout_s: float = Field(120.0, gt=0, le=3600, description="Socket timeout of a snapshot download")
    max_snapshot_bytes: int = Field(8 * GIB, ge=1 << 20, le=1 << 40,
                                    description="Announced snapshots larger than this are refused")
    keep_snapshots: int = Field(2, ge=2, le=20, description="Installed snapshots kept on the device "
                                "(the current one and those `rollback` can return to)")
