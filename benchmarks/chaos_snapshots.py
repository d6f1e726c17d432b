"""Malicious catalog snapshots (issue 28, trust findings 1-6), made from a good one, for tests and chaos drills.

Use::

    from benchmarks.chaos_snapshots import malicious_snapshots, slow_http_server

    cases = malicious_snapshots(good_snapshot_folder, work, key=chain_key, data_dir=device_data_dir,
                                url_base="http://127.0.0.1:8000")  # serves work/"pub"; None: file URLs
    for case in cases:
        publish case.payload (retained, QoS 1) on storelens/<store>/catalog/available, wait for the
        device's catalog_update to count it, then check:
          case.refused True  -> catalog_update.refused grew, last_error contains case.expect, and the
                                device's catalog version, products and search answers are unchanged;
          case.refused False -> the snapshot is installed and case.expect holds (see each case);
          case.victim        -> that path (outside data_dir) must still exist afterwards.

``good`` is a snapshot folder ``storelens catalog build`` (or :func:`snapshot_of`, a device's own
catalog) wrote for the device's bundle and dtype; ``key``
the Ed25519 private key the device trusts (``fleet.trusted_keys``): every case but the
signature ones is signed with it, to show that the device's checks hold even against a
snapshot the chain's own key blessed (a stolen key, a broken build). The device needs
``fleet.allowed_urls = [url_base + "/"]`` (or ``fleet.snapshot_dir = work/"pub"`` for file
URLs) and, for the ``slow-download`` case (only made when ``slow_url_base`` is given: serve
``work/"pub"`` with :func:`slow_http_server`), a small ``fleet.download_timeout_s``.

Cases (finding -> name): 1 ``unsigned``, ``other-key``, ``altered`` (refused before any
download) and ``meta-overwrite`` (installed; the device's ``calibration`` and ``fusion_weights``
meta are unchanged); 2 ``sidecar-contradicts`` (the index sidecar names another encoder:
refused, nothing committed); 3 ``damaged-graph`` (a USearch graph whose bytes are damaged
behind fresh checksums: refused by the child-process probe); 4 ``learned-paths`` (learned-photo
and review rows naming a file outside ``data_dir``: installed, the rows not imported, the file
kept); 5 ``path-traversal`` (a ``snapshot`` field of ``/../..``: refused, the folder it names
kept); 6 ``sparse-tar`` (a 10 KiB archive holding a 2 GiB sparse file: refused before it is
written), ``url-outside`` (a URL not under ``fleet.allowed_urls``: refused without a
connection), ``slow-download`` (a server trickling bytes: refused after the total time).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import shutil
import sqlite3
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.catalog import index as ix
from edge.catalog.learning import SCHEMA as LEARNING_SCHEMA
from edge.catalog.snapshot import CATALOG_DB, MANIFEST, content_id, read_manifest, sha256_file, write_snapshot
from edge.core.types import Calibration
from edge.fleet.fetch import Announcement
from edge.fleet.publish import publish_snapshot

SPARSE_BYTES = 2 << 30


@dataclass(frozen=True, kw_only=True)
class MaliciousSnapshot:
    """One malicious announcement and what a safe device does with it (see the module docstring)."""

    finding: int
    name: str
    payload: bytes
    refused: bool
    expect: str
    victim: Path | None = None


def malicious_snapshots(good: Path, work: Path, *, key: Ed25519PrivateKey, data_dir: Path,
                        url_base: str | None = None, internal_url: str = "http://127.0.0.1:9/internal.tar",
                        slow_url_base: str | None = None) -> list[MaliciousSnapshot]:
    """Every malicious case of findings 1-6 built from the snapshot ``good`` into ``work`` (archives in
    ``work/"pub"``, victims in ``work/"victims"``); see the module docstring."""
    pub, victims = work / "pub", work / "victims"
    for d in (pub, victims, work / "staging"):
        d.mkdir(parents=True, exist_ok=True)

    def publish(folder: Path, signer: Ed25519PrivateKey | None = key) -> Announcement:
        url = None if url_base is None else f"{url_base}/{folder.name}.tar"
        return publish_snapshot(folder, to=str(pub), url=url, key=signer)

    def variant(name: str) -> Path:
        dst = work / "staging" / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(good, dst)
        return dst

    plain = publish(good, None)
    cases = [
        MaliciousSnapshot(finding=1, name="unsigned", payload=plain.to_payload(), refused=True, expect="not signed"),
        MaliciousSnapshot(finding=1, name="other-key", payload=publish(good, Ed25519PrivateKey.generate())
                          .to_payload(), refused=True, expect="not in fleet.trusted_keys"),
        MaliciousSnapshot(finding=1, name="altered", payload=dataclasses.replace(
            publish(good), version=plain.version + 1000).to_payload(), refused=True, expect="does not match"),
        MaliciousSnapshot(finding=1, name="meta-overwrite", payload=publish(_meta_overwrite(variant("meta")))
                          .to_payload(), refused=False, expect="the device's calibration and fusion_weights meta "
                          "are unchanged"),
        MaliciousSnapshot(finding=2, name="sidecar-contradicts", payload=publish(_contradicting_sidecar(
            variant("sidecar"))).to_payload(), refused=True, expect="sidecar contradicts"),
        MaliciousSnapshot(finding=3, name="damaged-graph", payload=publish(_damaged_graph(variant("graph")))
                          .to_payload(), refused=True, expect="graph is damaged"),
    ]
    victim4 = victims / "victim-4.jpg"
    victim4.write_bytes(b"a file a snapshot must never make the device delete")
    cases.append(MaliciousSnapshot(finding=4, name="learned-paths", payload=publish(_learned_paths(
        variant("learned"), victim4)).to_payload(), refused=False, expect="no learned photo names the victim",
        victim=victim4))
    victim5 = victims / "victim5.partial"
    victim5.mkdir(exist_ok=True)
    (victim5 / "keep.txt").write_text("a folder outside data_dir")
    rel = os.path.relpath(victims, data_dir / "snapshots")
    evil = {**json.loads(publish(good).to_payload()), "snapshot": f"/{rel}/victim5"}  # the old code removed
    evil_signed = _sign_raw(evil, key)  # <data_dir>/snapshots/.<snapshot>.partial: here, the victim folder
    cases.append(MaliciousSnapshot(finding=5, name="path-traversal", payload=evil_signed, refused=True,
                                   expect="not a snapshot id", victim=victim5))
    cases.append(MaliciousSnapshot(finding=6, name="sparse-tar", payload=_sparse_announcement(
        good, pub, plain, url_base, key), refused=True, expect="sparse"))
    cases.append(MaliciousSnapshot(finding=6, name="url-outside", payload=dataclasses.replace(
        publish(good), url=internal_url).to_payload(), refused=True, expect="not under fleet.allowed_urls"))
    if slow_url_base is not None:
        cases.append(MaliciousSnapshot(finding=6, name="slow-download", payload=dataclasses.replace(
            publish(good), url=f"{slow_url_base}/{good.name}.tar").to_payload(), refused=True,
            expect="took longer than fleet.download_timeout_s"))
    return cases


def snapshot_of(data_dir: Path, out: Path, *, bundle: str, text_bundle: str | None = None,
                dtype: str = "i8") -> Path:
    """A good snapshot of the catalog in ``data_dir`` (nobody writing it: copy a running device's first) made
    with the image ``bundle`` (and ``text_bundle``) fingerprints and ``dtype`` a device runs; its folder."""
    folder, _ = write_snapshot(data_dir, out, bundle=bundle, text_bundle=text_bundle, dtype=dtype, counts={},
                               assortment=None)
    return folder


def _sign_raw(fields: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """``fields`` signed as an announcement would be, even where they do not parse as one (the snapshot field)."""
    from edge.fleet.signing import sign

    canon = {k: v for k, v in fields.items() if k not in ("url", "key", "signature")}
    signer, sig = sign(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode(), key)
    return json.dumps({**fields, "key": signer, "signature": sig}, separators=(",", ":")).encode()


def rebless(folder: Path) -> Path:
    """Recompute the manifest of an altered snapshot folder (hashes, sizes, id) and rename it to its new id:
    what a careless or hostile build would publish. Returns the new folder."""
    m = read_manifest(folder)
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    sid = content_id(files, bundle=m.bundle, text_bundle=m.text_bundle, dtype=m.dtype)
    d = {**m.to_dict(), "files": files, "id": sid}
    (folder / MANIFEST).write_text(json.dumps(d, indent=2), encoding="utf-8")
    final = folder.parent / sid
    shutil.rmtree(final, ignore_errors=True)
    folder.rename(final)
    return final


def _edit_db(folder: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    db = sqlite3.connect(folder / CATALOG_DB)
    try:
        with db:
            for sql, args in statements:
                db.execute(sql, args)
    finally:
        db.close()


def _meta_overwrite(folder: Path) -> Path:
    m = read_manifest(folder)
    evil = Calibration(score=0.01, margin=0.0, target=0.5, known_queries=1, unknown_queries=0, known_accept_rate=1.0,
                       known_top1_accuracy=1.0, accepted_precision=1.0, false_accept_rate=1.0, held_out=(),
                       catalog_version=m.catalog_version, fingerprint=m.bundle, learn_floor=0.0)  # accept anything
    _edit_db(folder, *[("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                        "excluded.value", (k, v)) for k, v in (("calibration", evil.to_json()),
                                                               ("fusion_weights", "{}"))])
    return rebless(folder)


def _contradicting_sidecar(folder: Path) -> Path:
    side = folder / "image.index.json"
    d = json.loads(side.read_text())
    d["fingerprint"] = "0123456789abcdef"  # the manifest says the device's bundle; the index says another
    side.write_text(json.dumps(d, indent=2))
    return rebless(folder)


def _damaged_graph(folder: Path) -> Path:
    meta = ix.read_meta(folder, "image")
    assert meta is not None
    path = folder / meta.file
    data = bytearray(path.read_bytes())
    itemsize = {"i8": 1, "f16": 2}.get(meta.dtype, 4)
    # USearch's file: the vectors (8-byte shape, then rows), the graph's 64-byte header, a level a node, then
    # the nodes' neighbour lists. Damaged neighbour ids pass load() and crash the first search (a segfault).
    nodes = 8 + meta.vectors * meta.ndim * itemsize + 64 + 2 * meta.vectors + 64
    for i in range(min(nodes, len(data) - 1), len(data), 7):
        data[i] = 0xFF
    path.write_bytes(bytes(data))
    side = folder / "image.index.json"  # fresh checksums: only a probe can tell
    d = json.loads(side.read_text())
    d.update(file_bytes=len(data), file_crc32=ix.file_crc32(path))
    side.write_text(json.dumps(d, indent=2))
    return rebless(folder)


def _learned_paths(folder: Path, victim: Path) -> Path:
    db = sqlite3.connect(folder / CATALOG_DB)
    try:
        db.executescript(LEARNING_SCHEMA)
        key = int(db.execute("SELECT key FROM products ORDER BY key LIMIT 1").fetchone()[0])
        with db:
            image_id = int(db.execute("INSERT INTO images(key, path) VALUES(?, ?)", (key, str(victim))).lastrowid
                           or 0)
            db.execute("INSERT INTO learned_images(image_id, key, path, source, ref, learned_ts, cosine) "
                       "VALUES(?, ?, ?, 'scan', NULL, 0, 0.5)", (image_id, key, str(victim)))
            db.execute("INSERT INTO learning_review(id, ts, sku, source, ref, cosine, threshold, file) "
                       "VALUES('evil', 0, 'x', 'scan', NULL, 0, 0, ?)", (str(victim),))
    finally:
        db.close()
    return rebless(folder)


def _sparse_announcement(good: Path, pub: Path, plain: Announcement, url_base: str | None,
                         key: Ed25519PrivateKey) -> bytes:
    """A tar of the good snapshot whose catalog.db is a sparse entry of :data:`SPARSE_BYTES` (10 KiB on the wire)."""
    archive = pub / f"sparse-{good.name}.tar"
    sparse_map = b"1\n0\n1\n"
    block = sparse_map + b"\0" * (512 - len(sparse_map)) + b"x"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(good.iterdir()):
            if p.name == CATALOG_DB:
                info = tarfile.TarInfo(CATALOG_DB)
                info.size = len(block)
                info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": CATALOG_DB,
                                    "GNU.sparse.realsize": str(SPARSE_BYTES)}
                tar.addfile(info, io.BytesIO(block))
            else:
                tar.add(p, arcname=p.name)
    url = archive.resolve().as_uri() if url_base is None else f"{url_base}/{archive.name}"
    a = dataclasses.replace(plain, url=url, sha256=sha256_file(archive), size=archive.stat().st_size)
    return a.signed(key).to_payload()


class _Slow(SimpleHTTPRequestHandler):
    """Serves files a few bytes at a time (``delay_s`` between writes): a download that never ends in time."""

    delay_s = 0.05

    def log_message(self, format: str, *args: object) -> None:
        pass

    def copyfile(self, source: Any, outputfile: Any) -> None:
        while chunk := source.read(64):
            try:
                outputfile.write(chunk)
                outputfile.flush()
            except OSError:
                return
            time.sleep(self.delay_s)


@contextmanager
def slow_http_server(folder: Path, *, delay_s: float = 0.05) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 at 64 bytes per ``delay_s``; yields the base URL."""
    handler = functools.partial(type("Slow", (_Slow,), {"delay_s": delay_s}), directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
