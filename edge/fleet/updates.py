"""A device installing the catalog snapshots its store announces, and returning to the previous one.

:class:`CatalogUpdater` listens on ``storelens/<store>/catalog/available`` (retained, so a
device that was off finds the latest on connect). Its own worker thread, never paho's network
thread nor the frame loop, handles the newest announcement: check its Ed25519 signature against
``fleet.trusted_keys`` (:mod:`edge.fleet.signing`) before anything is downloaded, download it
from a URL under ``fleet.allowed_urls`` within ``fleet.download_timeout_s`` in all
(:mod:`edge.fleet.fetch`), unpack it (bounded, no sparse entries) into
``<data_dir>/snapshots/<id>``, check that its ``snapshot.json`` is the signed one and every file's
hash, the bundle fingerprint and the index dtype (:func:`edge.catalog.snapshot.verify`), then
install through the writer's path (:func:`edge.catalog.install.install`, which checks the
indexes and probes their graphs in a child process before anything is committed). Anything
wrong is refused with an error that says what,
counted, logged and shown in ``status`` (``catalog_update``), and the device keeps serving the
catalog it has. ``rollback`` (command ``cmd/rollback``, or ``storelens catalog rollback``)
re-verifies and reinstalls the previous snapshot; the announcement it rolled back from is not
installed again until a different one is published.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from edge.catalog.install import Installed, install, installed_state
from edge.catalog.snapshot import MANIFEST, SnapshotError, sha256_file, unpack, verify
from edge.catalog.store import Store
from edge.core.errors import StoreLensError
from edge.core.fleet_settings import FleetSettings
from edge.fleet.fetch import SNAPSHOT_ID, Announcement, announce_topic, download
from edge.fleet.local_catalog import is_local, keep_local_catalog
from edge.fleet.signing import check_signature

log = logging.getLogger("storelens.snapshot")

SNAPSHOTS = "snapshots"  # under catalog.data_dir


class CatalogUpdater:
    """Installs announced snapshots into ``store`` (see the module docstring)."""

    def __init__(self, store: Store | Callable[[], Store], *, fleet: FleetSettings, store_id: str,
                 pause: Callable[[], AbstractContextManager[Any]] | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self._store = store  # or a getter: the runtime's current store (a bundle reload opens a new one)
        self.fleet = fleet
        self.topic = announce_topic(store_id)
        self.root = self.store.data_dir / SNAPSHOTS
        self.counts = {"installed": 0, "refused": 0, "rollbacks": 0}
        self.last_error: str | None = None
        self._pause = pause
        self._on_change = on_change
        self._lock = threading.Lock()  # one install or rollback at a time
        self._latest: bytes | None = None
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    @property
    def store(self) -> Store:
        return self._store() if callable(self._store) else self._store

    # -- the worker ---------------------------------------------------------------------------------

    def on_message(self, _topic: str, payload: bytes, _props: Any = None) -> None:
        """paho network-thread entry: keep the newest announcement and wake the worker."""
        self._latest = payload
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="catalog-updates", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop = True
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def _work(self) -> None:
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            payload, self._latest = self._latest, None
            if payload is not None and not self._stop:
                self.handle(payload)

    # -- install, refuse, rollback -------------------------------------------------------------------

    def handle(self, payload: bytes) -> dict[str, Any]:
        """Act on one announcement; never raises (a refusal is counted and reported)."""
        if not payload.strip():
            return {"result": "cleared"}  # a retained announcement was deleted
        try:
            with self._lock:
                result = self._install_announced(Announcement.from_payload(payload))
        except StoreLensError as e:
            result = self._refused(str(e))
        except Exception as e:  # a bug must not stop updates nor the device
            log.exception("catalog update failed")
            result = self._refused(f"{type(e).__name__}: {e}")
        self._changed()
        return result

    def _install_announced(self, a: Announcement) -> dict[str, Any]:
        check_signature(a.signed_bytes(), signer=a.key, signature=a.signature, trusted=self.fleet.trusted_keys)
        if a.manifest_sha256 is None:
            raise SnapshotError(f"announced snapshot {a.snapshot} does not name its manifest's sha256",
                                hint="republish it with this StoreLens version's `storelens catalog publish --key`")
        state = installed_state(self.store.data_dir)
        if state["current"] and state["current"].get("sha256") == a.sha256:
            return {"result": "current", "snapshot": a.snapshot}
        if (state.get("rolled_back_from") or {}).get("sha256") == a.sha256:
            log.info("announced snapshot %s was rolled back on this device: not installed again", a.snapshot)
            return {"result": "rolled-back", "snapshot": a.snapshot}
        current = state["current"] or {}  # the device's own catalog (edge.fleet.local_catalog) is no chain version
        installed = 0 if is_local(current) else int(current.get("catalog_version") or 0)
        if a.version < installed:  # a replayed old announcement: the signature alone would let it through
            raise SnapshotError(f"announced snapshot {a.snapshot} is catalog version {a.version}, older than the "
                                f"installed {installed}", hint="build a new version (in the same build folder, "
                                "versions grow), or return a device with cmd/rollback")
        bundle = self._bundle()
        if a.bundle != bundle:
            raise SnapshotError(f"announced snapshot {a.snapshot} is for image bundle {a.bundle}, this device runs "
                                f"{bundle}", hint="build the catalog with the devices' bundle; the old one is kept")
        if a.size > self.fleet.max_snapshot_bytes:
            raise SnapshotError(f"announced snapshot {a.snapshot} has {a.size} bytes, over fleet.max_snapshot_bytes "
                                f"({self.fleet.max_snapshot_bytes})", hint="raise the bound or build a smaller one")
        archive = self.root / "incoming" / f"{a.sha256}.tar"
        try:
            download(a.url, archive, size=a.size, sha256=a.sha256, timeout_s=self.fleet.download_timeout_s,
                     allowed_dir=self.fleet.snapshot_dir, allowed_urls=self.fleet.allowed_urls)
            folder = self._unpack(archive, a)
        finally:
            archive.unlink(missing_ok=True)
        entry = self._install(folder, sha256=a.sha256, rollback=False)
        self.counts["installed"] += 1
        return {"result": "installed", **entry.to_dict()}

    def _unpack(self, archive: Path, a: Announcement) -> Path:
        partial = self.root / f".{a.snapshot}.partial"  # a.snapshot is a content id (Announcement checks it)
        shutil.rmtree(partial, ignore_errors=True)
        try:
            unpack(archive, partial, max_bytes=self.fleet.max_snapshot_bytes)
            if (partial / MANIFEST).is_file() and sha256_file(partial / MANIFEST) != a.manifest_sha256:
                raise SnapshotError(f"announced snapshot {a.snapshot}: its {MANIFEST} is not the one that was signed",
                                    hint="republish it with `storelens catalog publish --key`")
            m = verify(partial, **self._fits())
            if m.id != a.snapshot:
                raise SnapshotError(f"announced snapshot {a.snapshot} unpacked as snapshot {m.id}",
                                    hint="republish it")
            final = self.root / m.id
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            return final
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def _install(self, folder: Path, *, sha256: str, rollback: bool) -> Installed:
        manifest = verify(folder, **self._fits())
        if not rollback:  # the first snapshot: the device's own catalog becomes the rollback point
            keep_local_catalog(self.store, self.root, **self._fits())
        entry = install(self.store, folder, manifest, sha256=sha256, pause=self._pause, rollback=rollback)
        self._prune()
        return entry

    def rollback(self, _args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Reinstall the newest previous snapshot still on disk (verified again); raises when there is none."""
        with self._lock:
            state = installed_state(self.store.data_dir)
            for prev in state["previous"]:
                folder = self.root / str(prev.get("id"))
                if SNAPSHOT_ID.match(str(prev.get("id"))) and folder.is_dir():
                    entry = self._install(folder, sha256=str(prev.get("sha256")), rollback=True)
                    self.counts["rollbacks"] += 1
                    break
            else:
                raise SnapshotError("no previous catalog snapshot to roll back to on this device",
                                    hint="install a snapshot first; rollback returns to the one before it")
        self._changed()
        return {"result": "rolled-back", **entry.to_dict()}

    def _refused(self, error: str) -> dict[str, Any]:
        self.counts["refused"] += 1
        self.last_error = error
        log.error("catalog snapshot refused; the current catalog keeps serving: %s", error)
        return {"result": "refused", "error": error}

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("catalog update: the after-change hook failed")

    def _bundle(self) -> str:
        enc = self.store.image_encoder
        if enc is None:
            raise SnapshotError("this device has no image encoder loaded to check snapshots against",
                                hint="configure model.image_bundle")
        return enc.fingerprint

    def _fits(self) -> dict[str, Any]:
        text = self.store.text_encoder
        return {"bundle": self._bundle(), "text_bundle": text.fingerprint if text else None,
                "dtype": self.store.dtype}

    def _prune(self) -> None:
        """Keep the current snapshot folder and the newest previous ones (fleet.keep_snapshots in all)."""
        state = installed_state(self.store.data_dir)
        keep = [e.get("id") for e in [state["current"], *state["previous"]] if e][: self.fleet.keep_snapshots]
        for d in self.root.iterdir() if self.root.is_dir() else ():
            if d.is_dir() and not d.name.startswith(".") and d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        """The ``catalog_update`` field of the device's status."""
        cur = installed_state(self.store.data_dir)["current"] or {}
        return {"snapshot": cur.get("id"), "snapshot_version": cur.get("catalog_version"), **self.counts,
                "last_error": self.last_error, "topic": self.topic}


def attach_catalog_updates(rt: Any, store: Store) -> CatalogUpdater | None:
    """Wire a :class:`CatalogUpdater` into a runtime: the announcement topic on its link, ``cmd/rollback`` on its
    router, ``catalog_update`` in its status; after each install the runtime reloads as its ``reload`` command does."""
    if rt.link is None or not rt.settings.fleet.updates:
        return None

    def after_change() -> None:
        reload = rt.router.handlers.get("reload")
        if reload is not None:
            reload({"bundle": False})  # thresholds, label-text profiles, recommender products; publishes status
        else:
            rt.publish_status()

    def current() -> Store:
        return rt.matcher if isinstance(rt.matcher, Store) else store

    if not rt.settings.fleet.trusted_keys:
        log.warning("fleet.trusted_keys is empty: catalog snapshots announced on %s will be refused; put the chain's "
                    "public key (storelens catalog keygen) there to install them", announce_topic(
                        rt.settings.device.store))
    updater = CatalogUpdater(current, fleet=rt.settings.fleet, store_id=rt.settings.device.store,
                             pause=rt.models_paused, on_change=after_change)
    rt.extra_status["catalog_update"] = updater.status
    rt.router.register("rollback", updater.rollback)
    rt.link.add_topic_handler(updater.topic, updater.on_message)
    updater.start()
    return updater
