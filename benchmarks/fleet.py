"""Chain-scale benchmarks (issue 19): Ray catalog build vs the single-process importer; snapshot shipping.

    python -m benchmarks.fleet build --root ../shared/datasets/grocery-store [--photos 2640] [--repeat N] \\
        [--rounds 3] [--configs importer,local1,ray1,ray2] [--json OUT]
    python -m benchmarks.fleet snapshot [--photos 250000] [--json OUT]

``build``: the same photos (the GSD train split, ``--photos`` of them, each listed ``--repeat``
times) built end to end by every configuration: ``storelens catalog import`` (CatalogWriter, one
process), the build's local engine (one process) and the Ray engine with 1 and 2 workers (a local
Ray started for each run). Every row is the wall time from the call to a finished catalog or
snapshot (decode, embed, SQLite, index, snapshot; Ray's start-up included), so rows compare like
with like; the engines' embedding-only figures are kept beside it. ``--rounds`` (3) runs of each,
the order reversed every other round, the page cache warmed before the first; median and spread
per configuration. Every photo's vector is compared with the first run's (cosine).
The load average is recorded before each run: on a shared 2-core box other jobs take cores.

``snapshot``: a catalog of ``--photos`` synthetic photo vectors (256-d clustered unit vectors,
10 a product, i8 index; no photo is decoded) is snapshotted and published to a folder served
by a stdlib HTTP server on 127.0.0.1; a device store downloads, verifies and installs it (into
an empty catalog, then the next version over the first), timing each step and how long frames
would be paused (the model lock: commit and index reload).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._results import write_json
from edge.catalog.importers.tables import ProductRecord
from edge.core.config import Settings, load_settings

PHOTOS_PER_PRODUCT = 10


def gsd_records(root: Path, photos: int, *, repeat: int = 1, links: Path | None = None) -> list[ProductRecord]:
    """Products of the GSD train split (sku = class), ``photos`` photos in all, in split order.

    ``repeat`` > 1 lists every photo that many times, copies 2.. as symbolic links under ``links``
    (distinct paths, so neither the importer nor the build's cache takes them for the same photo):
    a longer job on the same real photos, which amortises an engine's start-up as a chain's
    million-photo build would.
    """
    by: dict[str, list[Path]] = {}
    for line in (root / "train.txt").read_text().splitlines()[:photos]:
        rel = line.split(",")[0].strip()
        by.setdefault(rel.split("/")[-2], []).append(root / rel)
        for k in range(1, repeat):
            if links is None:
                raise ValueError("repeat > 1 needs a links folder")
            link = links / f"r{k}" / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((root / rel).resolve())
            by[rel.split("/")[-2]].append(link)
    return [ProductRecord(sku=c, name=c.replace("-", " "), images=tuple(ps), source="bench", line=i)
            for i, (c, ps) in enumerate(by.items(), start=1)]


def _settings(workers: int, batch: int) -> Settings:
    return load_settings(None, device={"store": "bench", "id": "builder"}, fleet={"workers": workers,
                                                                              "batch_size": batch})


def photo_vectors(db_path: Path) -> dict[str, np.ndarray]:
    """Each catalog photo's stored image vector, by path (to compare two builds photo by photo)."""
    import sqlite3

    db = sqlite3.connect(db_path)
    try:
        rows = db.execute("SELECT i.path, v.data FROM images i JOIN vectors v ON v.image_id = i.id "
                          "WHERE v.modality = 'image'").fetchall()
    finally:
        db.close()
    return {str(p): np.frombuffer(d, np.float32) for p, d in rows}


CONFIGS = ("importer", "local1", "ray1", "ray2")  # the importer, the build's local engine, Ray with 1 and 2 workers


def _warm_page_cache(records: list[ProductRecord]) -> None:
    """Read every photo once, so no configuration is the one that pays for a cold page cache."""
    for r in records:
        for p in r.images:
            Path(p).read_bytes()


def _one_build(config: str, records: list[ProductRecord], *, batch: int, out: Path, enc: Any) -> dict[str, Any]:
    """One end-to-end run of ``config``: wall time from the call to a finished catalog (importer) or snapshot
    (engines; a local Ray's start-up included), with the engine's own embedding-only figures beside it."""
    from edge.catalog.store import Store
    from edge.fleet.build import build_snapshot

    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    if config == "importer":
        store = Store(data_dir=out / "imported", image_encoder=enc, text_encoder=None)
        store.import_records(records, progress=False)
        store.close()
        wall, extra, db = time.perf_counter() - t, {}, out / "imported" / "catalog.db"
    else:
        engine, workers = config[:-1], int(config[-1])
        rep = build_snapshot(records, settings=_settings(workers, batch), out=out / "snap", workdir=out / "work",
                             image_encoder=enc, text_encoder=None, engine=engine, progress=False)  # type: ignore[arg-type]
        wall = time.perf_counter() - t
        extra = {"embedding_only_s": rep.embed_s, "embedding_only_images_per_s": rep.images_per_s,
                 "startup_s": rep.first_batch_s}
        db = Path(rep.snapshot) / "catalog.db"
    n = sum(len(r.images) for r in records)
    return {"config": config, "photos": n, "end_to_end_s": round(wall, 2), "images_per_s": round(n / wall, 2),
            "load_avg_before": round(load, 2), "vectors": photo_vectors(db), **extra}


def bench_build(root: Path, photos: int, batch: int, work: Path, repeat: int = 1, rounds: int = 3,
                configs: tuple[str, ...] = CONFIGS) -> dict[str, Any]:
    """Every configuration end to end, ``rounds`` times, the order reversed every other round (ABCD DCBA ABCD):
    a drift in the box's load or caches falls on every configuration alike. Median and spread per config."""
    from edge.models.encoders import load_image_encoder

    records = gsd_records(root, photos, repeat=repeat, links=work / "links")
    enc = load_image_encoder(_settings(1, batch).model)
    _warm_page_cache(records)
    runs: list[dict[str, Any]] = []
    reference: dict[str, np.ndarray] | None = None
    for k in range(rounds):
        for config in (configs if k % 2 == 0 else tuple(reversed(configs))):
            row = _one_build(config, records, batch=batch, out=work / "runs" / config, enc=enc)
            got = row.pop("vectors")
            reference = reference or got
            row["min_cosine_vs_first_run"] = round(min(float(v @ reference[p] / (np.linalg.norm(v) * np.linalg.norm(
                reference[p]))) for p, v in got.items()), 6)
            runs.append({"round": k, **row})
            print(runs[-1], flush=True)
    summary = {}
    for config in configs:
        ips = sorted(r["images_per_s"] for r in runs if r["config"] == config)
        summary[config] = {"median_images_per_s": round(float(np.median(ips)), 2), "min": ips[0], "max": ips[-1],
                           "spread": round((ips[-1] - ips[0]) / float(np.median(ips)), 3)}
    ratios = {}
    if {"ray2", "importer"} <= set(configs):
        ratios["ray2_vs_importer_end_to_end"] = round(summary["ray2"]["median_images_per_s"]
                                                      / summary["importer"]["median_images_per_s"], 2)
    if {"ray2", "ray1"} <= set(configs):
        ratios["ray2_vs_ray1_end_to_end"] = round(summary["ray2"]["median_images_per_s"]
                                                  / summary["ray1"]["median_images_per_s"], 2)
    return {"runs": runs, "summary": summary, **ratios, "rounds": rounds, "order": "alternated (ABCD DCBA ...)",
            "page_cache": "warmed (every photo read once) before the first run"}


def _stored_vectors(fingerprint: str, dim: int) -> Any:
    from edge.fleet.build import StoredVectors

    return StoredVectors(fingerprint=fingerprint, dim=dim)


def make_catalog(data_dir: Path, photos: int, *, dim: int = 256, fingerprint: str = "synthetic-256") -> None:
    from benchmarks.index import clustered
    from edge.catalog.db import Product
    from edge.catalog.store import Store

    vecs = clustered(photos, dim=dim, seed=7)
    store = Store(data_dir=data_dir, image_encoder=_stored_vectors(fingerprint, dim), text_encoder=None,
                  open_indexes=False)
    try:
        with store.catalog.transaction() as db:
            for p in range(0, photos, PHOTOS_PER_PRODUCT):
                key = store.catalog.upsert_product(db, Product(key=0, sku=f"SKU{p // PHOTOS_PER_PRODUCT:07d}",
                                                               name=f"product {p // PHOTOS_PER_PRODUCT}"))
                for i in range(p, min(photos, p + PHOTOS_PER_PRODUCT)):
                    image_id = store.catalog.add_image(db, key, f"/photos/{i:07d}.jpg")
                    store.catalog.add_vector(db, key, modality="image", fingerprint=fingerprint, vector=vecs[i],
                                             image_id=image_id)
        t = time.perf_counter()
        store.writer.rebuild_indexes()
        print(f"  index of {photos:,} vectors built in {time.perf_counter() - t:.0f}s", flush=True)
    finally:
        store.close()


@contextlib.contextmanager
def _serve(folder: Path) -> Iterator[str]:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _TimedLock:
    """The pause an install takes (the runtime's model lock): how long it was held."""

    def __init__(self) -> None:
        self.held_s = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.held_s += time.perf_counter() - t


def bench_snapshot(photos: int, work: Path) -> dict[str, Any]:
    from edge.catalog import index as ix
    from edge.catalog.db import Catalog
    from edge.catalog.install import install
    from edge.catalog.snapshot import unpack, verify, write_snapshot
    from edge.catalog.store import Store
    from edge.fleet.fetch import download
    from edge.fleet.publish import publish_snapshot

    stage, fp = work / "stage", "synthetic-256"
    t = time.perf_counter()
    if not (stage / "image.index.json").is_file():  # a kept --workdir reuses its catalog
        make_catalog(stage, photos, fingerprint=fp)
    catalog_s = time.perf_counter() - t
    for old in ("snapshots", "pub", "device", "incoming"):
        shutil.rmtree(work / old, ignore_errors=True)
    snaps = []
    for version in (1, 2):
        with ix.writer_lock(stage):  # the same rows and index as the next catalog version
            cat = Catalog(stage / "catalog.db")
            cat.set_meta("version", str(version))
            cat.close()
            ix.restamp(stage, version)
        snaps.append(write_snapshot(stage, work / "snapshots", bundle=fp, text_bundle=None, dtype="i8",
                                    counts={"photos": photos}, assortment=None))
    device = Store(data_dir=work / "device", image_encoder=_stored_vectors(fp, 256), text_encoder=None)
    reload_s: list[float] = []
    plain_reload = device.reload

    def timed_reload() -> bool:  # the part of the pause spent reopening the index
        t0 = time.perf_counter()
        try:
            return plain_reload()
        finally:
            reload_s.append(time.perf_counter() - t0)

    device.reload = timed_reload  # type: ignore[method-assign]
    rows = []
    (work / "pub").mkdir()
    with _serve(work / "pub") as base:
        for folder, manifest in snaps:
            a = publish_snapshot(folder, to=str(work / "pub"), url=f"{base}/{manifest.id}.tar")
            before = device.catalog.count()
            times: dict[str, float] = {}
            t = time.perf_counter()
            archive = work / "incoming" / f"{a.sha256}.tar"
            download(a.url, archive, size=a.size, sha256=a.sha256, timeout_s=120, allowed_dir=None)
            times["download_and_sha256_s"] = time.perf_counter() - t
            t = time.perf_counter()
            target = work / "device" / "snapshots" / manifest.id
            unpack(archive, target)
            archive.unlink()
            times["unpack_s"] = time.perf_counter() - t
            t = time.perf_counter()
            m = verify(target, bundle=fp, dtype="i8")
            times["verify_files_s"] = time.perf_counter() - t
            pause = _TimedLock()
            t = time.perf_counter()
            install(device, target, m, sha256=a.sha256, pause=pause)
            times["install_s"] = time.perf_counter() - t
            times["frames_paused_s"] = pause.held_s
            times["of_which_index_reload_s"] = reload_s[-1]
            total = sum(v for k, v in times.items() if k not in ("frames_paused_s", "of_which_index_reload_s"))
            rows.append({"version": manifest.catalog_version, "products_before": before,
                         "products_after": device.catalog.count(), "archive_bytes": a.size,
                         **{k: round(v, 3) for k, v in times.items()}, "total_s": round(total, 2)})
            print(rows[-1], flush=True)
    hits = device.match_vectors(np.ones((1, 256), np.float32), 3)
    device.close()
    return {"photos": photos, "catalog_build_s": round(catalog_s, 1), "rows": rows, "search_after": len(hits[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    b = sub.add_parser("build", help="Ray build vs the single-process importer")
    b.add_argument("--root", type=Path, required=True, help="the grocery-store dataset folder")
    b.add_argument("--photos", type=int, default=2640, help="photos of the train split (default: all 2640)")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--rounds", type=int, default=3, help="end-to-end runs of every configuration (order alternated)")
    b.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    b.add_argument("--repeat", type=int, default=1, help="list every photo N times (as links: a longer job on "
                   "the same photos, to amortise start-up)")
    s = sub.add_parser("snapshot", help="download + verify + swap of a synthetic catalog snapshot")
    s.add_argument("--photos", type=int, default=250_000)
    for p in (b, s):
        p.add_argument("--json", type=Path, default=None)
        p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="storelens-fleet-"))
    env = {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M")}
    try:
        if args.what == "build":
            result = bench_build(args.root, args.photos, args.batch_size, work, repeat=args.repeat,
                                 rounds=args.rounds, configs=tuple(c for c in args.configs.split(",") if c))
        else:
            result = bench_snapshot(args.photos, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    out = {"environment": {**env, "load_avg_at_end": os.getloadavg()}, **result}
    print(json.dumps(out, indent=2))
    if args.json:
        write_json(args.json, out, indent=2)


if __name__ == "__main__":
    main()
