"""Everything about a snapshot's indexes that must hold before it is installed: checked before COMMIT.

:func:`edge.catalog.snapshot.verify` proves the files are the ones the manifest lists; this
module proves they make a catalog this device can open and search, so that an install is
either complete or refused with the device's catalog untouched (never committed, then found
broken on the next start):

- each index sidecar agrees with the manifest (modality, data file, dtype, bundle fingerprint,
  catalog version) and with the device (the encoder's fingerprint and dimension, the index dtype);
- its data file has the size and CRC-32 the sidecar records, and the vector and product counts
  of the snapshot's own ``vectors`` rows;
- the graph loads and answers a probe search **in a child process** (:func:`probe_graph`): a
  damaged USearch graph can crash the process that searches it (a segfault), which must be the
  child, never the device's runtime. The probe searches some of the snapshot's own vectors and
  checks that every hit names a product of the snapshot.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge.catalog import index as ix
from edge.catalog.snapshot import CATALOG_DB, SnapshotError, SnapshotManifest
from edge.core.errors import CatalogError

IMAGE = "image"
PROBE_QUERIES = 8
PROBE_BASE_S = 60.0  # a child's time limit: this plus a second per 50 MB of graph
_REPUBLISH = "rebuild and republish the snapshot with `storelens catalog build` and `publish`"


class Encoder(Protocol):
    @property
    def fingerprint(self) -> str: ...

    @property
    def dim(self) -> int: ...


def check_snapshot(folder: Path, manifest: SnapshotManifest, *, dtype: str,
                   encoders: Mapping[str, Encoder | None]) -> None:
    """Raise :class:`SnapshotError` unless every index of the snapshot in ``folder`` fits the manifest, the
    device (``dtype``, ``encoders`` by modality) and the snapshot's rows, and its graph survives a probe."""
    db = sqlite3.connect(f"file:{folder / CATALOG_DB}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        if row is None or str(row[0]) != str(manifest.catalog_version):
            raise SnapshotError(f"snapshot {manifest.id}: its catalog.db is at version {row and row[0]}, the manifest "
                                f"says {manifest.catalog_version}", hint=_REPUBLISH)
        for modality in manifest.modalities():
            meta = _sidecar(folder, manifest, modality, dtype=dtype, enc=encoders.get(modality))
            stored, products = db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM vectors WHERE modality = ? "
                                          "AND fingerprint = ?", (modality, meta.fingerprint)).fetchone()
            if (meta.vectors, meta.products) != (stored, products):
                raise SnapshotError(f"snapshot {manifest.id}: its {modality} index holds {meta.vectors} vectors of "
                                    f"{meta.products} products, its rows {stored} of {products}", hint=_REPUBLISH)
            probe_graph(folder, meta)
    except sqlite3.Error as e:
        raise SnapshotError(f"snapshot {manifest.id}: its catalog.db cannot be read: {e}", hint=_REPUBLISH) from e
    finally:
        db.close()


def _sidecar(folder: Path, m: SnapshotManifest, modality: str, *, dtype: str, enc: Encoder | None) -> ix.IndexMeta:
    try:
        meta = ix.read_meta(folder, modality)
    except CatalogError as e:
        raise SnapshotError(f"snapshot {m.id}: {e.message}", hint=_REPUBLISH) from e
    if meta is None:
        raise SnapshotError(f"snapshot {m.id}: {modality}.index.json is missing", hint=_REPUBLISH)
    want = m.bundle if modality == IMAGE else m.text_bundle
    problems = [p for bad, p in (
        (meta.modality != modality, f"it is the sidecar of {meta.modality!r}"),
        (meta.file not in m.files, f"its data file {meta.file!r} is not in the manifest"),
        (meta.dtype != m.dtype or meta.dtype != dtype, f"its dtype {meta.dtype} is not the manifest's {m.dtype} "
                                                       f"and this device's {dtype}"),
        (meta.fingerprint != want, f"its encoder {meta.fingerprint} is not the manifest's {want}"),
        (meta.catalog_version != m.catalog_version, f"it is of catalog version {meta.catalog_version}, the "
                                                    f"manifest's is {m.catalog_version}"),
        (enc is not None and meta.fingerprint != enc.fingerprint, f"this device's {modality} encoder is "
                                                                  f"{enc and enc.fingerprint}"),
        (enc is not None and meta.ndim != enc.dim, f"its dimension {meta.ndim} is not this device's "
                                                   f"{enc and enc.dim}"),
    ) if bad]
    if not problems:
        path = folder / meta.file
        if meta.file_bytes and path.stat().st_size != meta.file_bytes:
            problems.append(f"its data file has {path.stat().st_size} bytes, the sidecar says {meta.file_bytes}")
        elif meta.file_crc32 and ix.file_crc32(path) != meta.file_crc32:
            problems.append("its data file's CRC-32 is not the sidecar's")
    if problems:
        raise SnapshotError(f"snapshot {m.id}: the {modality} index sidecar contradicts it: " + "; ".join(problems),
                            hint=_REPUBLISH)
    return meta


def probe_graph(folder: Path, meta: ix.IndexMeta) -> None:
    """Load the index and search it in a child process; raise :class:`SnapshotError` when that fails or crashes."""
    timeout = PROBE_BASE_S + meta.file_bytes / 50e6
    cmd = [sys.executable, "-m", "edge.catalog.snapshot_checks", str(folder), json.dumps(meta.to_dict())]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise SnapshotError(f"the {meta.modality} index graph did not answer a probe search in {timeout:.0f} s",
                            hint=_REPUBLISH) from e
    if r.returncode != 0:
        how = f"crashed (signal {-r.returncode})" if r.returncode < 0 else f"failed (exit {r.returncode})"
        last = r.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise SnapshotError(f"the {meta.modality} index graph is damaged: loading and searching it {how} in a "
                            f"child process {last[0][:200]}".rstrip(), hint=_REPUBLISH)


def _probe(folder: Path, meta: ix.IndexMeta) -> dict[str, Any]:
    """The child's side: load, count, search some of the snapshot's own vectors, check the hits' keys."""
    index = ix.new_usearch(meta)
    index.load(str(folder / meta.file))
    if len(index) != meta.vectors:
        raise SystemExit(f"the graph holds {len(index)} vectors, its sidecar says {meta.vectors}")
    db = sqlite3.connect(f"file:{folder / CATALOG_DB}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT data FROM vectors WHERE modality = ? AND fingerprint = ? ORDER BY id LIMIT ?",
                          (meta.modality, meta.fingerprint, PROBE_QUERIES)).fetchall()
        keys = {int(k) for (k,) in db.execute("SELECT key FROM products")}
    finally:
        db.close()
    if not rows or len(index) == 0:
        return {"vectors": len(index), "searched": 0}
    q = np.stack([np.frombuffer(r[0], dtype=np.float32) for r in rows])
    if q.shape[1] != meta.ndim:
        raise SystemExit(f"the stored vectors have dim {q.shape[1]}, the sidecar says {meta.ndim}")
    m = index.search(ix.quantize(q, dtype=meta.dtype, i8_scale=meta.i8_scale), min(3, len(index)))
    hits = np.atleast_2d(np.asarray(m.keys))
    counts = np.atleast_1d(np.asarray(getattr(m, "counts", hits.shape[1])))
    found = {int(k) for row, n in zip(hits, counts, strict=True) for k in row[: int(n)].tolist()}
    if int(counts.min()) < 1 or not found <= keys:
        raise SystemExit(f"the probe search returned keys {sorted(found - keys)[:5]} that name no product")
    return {"vectors": len(index), "searched": len(q)}


if __name__ == "__main__":
    print(json.dumps(_probe(Path(sys.argv[1]), ix.IndexMeta.from_dict(json.loads(sys.argv[2])))))
