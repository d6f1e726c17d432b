"""The device's own catalog, kept as the rollback point before the first fleet snapshot replaces it.

A device that was loaded by hand (``storelens catalog import``, MQTT ``enroll``) and then joins a
fleet would lose that catalog to the first snapshot it installs: until now ``rollback`` had
nothing to return to ("no previous catalog snapshot"). Before the first install the local
catalog is copied as a snapshot folder beside the downloaded ones (the same format, verified
the same way on the way back), recorded as the current snapshot, and a warning says so; the
install then moves it to the history, where ``cmd/rollback`` / ``storelens catalog rollback``
finds it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from edge.catalog import index as ix
from edge.catalog.install import SNAPSHOT_META, Installed, installed_state
from edge.catalog.snapshot import write_snapshot
from edge.catalog.store import Store

log = logging.getLogger("storelens.snapshot")

LOCAL_SHA = "local"  # the sha256 field of a kept local catalog: it was never an announced archive


def is_local(entry: dict[str, Any] | None) -> bool:
    """Whether a ``meta.snapshot`` entry is a kept local catalog (its version is the device's own count, not
    the chain's: a chain snapshot of a lower version must still install after a rollback to it)."""
    return str((entry or {}).get("sha256", "")).startswith(f"{LOCAL_SHA}-")


def keep_local_catalog(store: Store, root: Path, *, bundle: str, text_bundle: str | None,
                       dtype: str) -> Installed | None:
    """Before the first snapshot install: the store's own catalog as a snapshot under ``root`` and as the
    current entry of ``meta.snapshot`` (None when a snapshot was installed before or the catalog is empty)."""
    if installed_state(store.data_dir)["current"] is not None:
        return None
    products = store.catalog.count()
    if products == 0:
        return None
    with ix.writer_lock(store.data_dir):  # no write (enroll, learning) while the rows and indexes are copied
        folder, manifest = write_snapshot(store.data_dir, root, bundle=bundle, text_bundle=text_bundle, dtype=dtype,
                                          counts={"products": products}, assortment={"source": "local catalog"})
    entry = Installed(id=manifest.id, sha256=f"{LOCAL_SHA}-{manifest.id}", catalog_version=manifest.catalog_version,
                      bundle=bundle, installed_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    state: dict[str, Any] = {"current": entry.to_dict(), "previous": []}
    store.catalog.set_meta(SNAPSHOT_META, json.dumps(state))
    log.warning("first catalog snapshot: it replaces this device's own catalog (%d products, catalog version %d); "
                "that catalog is kept as snapshot %s in %s: `storelens catalog rollback` or cmd/rollback returns to it",
                products, manifest.catalog_version, manifest.id, folder)
    return entry
