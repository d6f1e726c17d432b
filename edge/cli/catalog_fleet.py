"""``storelens catalog build|publish|rollback|keygen``: catalog snapshots for a chain (edge.fleet)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.catalog.importers.gsd import DEFAULT_SPLIT, PHOTOS_PER_PRODUCT, read_grocery_store
from edge.catalog.importers.tables import ImportIssue, ProductRecord, detect_format, read_folder, read_table
from edge.cli.common import open_store, settings_from_args
from edge.core.config import MqttSettings, Settings
from edge.core.errors import InputError

MAX_SHOWN = 20


def register_actions(csub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    b = csub.add_parser("build", help="embed a product table into a catalog snapshot (Ray)", description="Embed a "
                        "product table's photos with the configured bundle on Ray Data (an actor pool of "
                        "fleet.workers encoders; a local Ray, or fleet.ray_address) into a content-addressed "
                        "snapshot folder OUT/<id>/ (catalog.db, indexes, snapshot.json with every file's sha256). "
                        "Resumable: photos embedded by an earlier run (WORKDIR/embeddings.db) are not embedded again. "
                        "Unreadable photos are listed and counted.")
    b.add_argument("source", type=Path, help="product table (.csv/.jsonl), <root>/<sku>/*.jpg folder or GSD folder")
    b.add_argument("--out", type=Path, required=True, help="folder the snapshot is written into")
    b.add_argument("--format", choices=["auto", "table", "folder", "grocery-store"], default="auto")
    b.add_argument("--split", default=DEFAULT_SPLIT, help="grocery-store: split file whose photos are used")
    b.add_argument("--max-images", type=int, default=PHOTOS_PER_PRODUCT, help="grocery-store: photos per product")
    b.add_argument("--assortment", type=Path, default=None, help="the store's skus (one a line, or a CSV with a sku "
                   "column); without it the snapshot is chain-wide")
    b.add_argument("--store", default=None, help="store the assortment belongs to (required with --assortment)")
    b.add_argument("--workdir", type=Path, default=None, help="embedding cache and staging (default OUT/.work)")
    b.add_argument("--engine", choices=["ray", "local"], default="ray", help="ray (default) or one local process")
    b.add_argument("--workers", type=int, default=None, help="encoder actors (overrides fleet.workers)")
    b.add_argument("--batch-size", type=int, default=None, help="photos per batch (overrides fleet.batch_size)")
    b.add_argument("--ray-address", default=None, help="existing Ray cluster (overrides fleet.ray_address)")
    b.add_argument("--no-text", action="store_true", help="no text vectors (image search only)")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--json", action="store_true", help="print the build report as JSON")
    add_common(b)
    b.set_defaults(func=run_build)

    p = csub.add_parser("publish", help="put a snapshot where devices fetch it and announce it",
                        description="Verify a snapshot, pack it as <id>.tar into a folder (local or a shared mount) "
                        "or HTTP PUT it to a URL, and publish the retained announcement {version, url, sha256, size, "
                        "bundle} on storelens/<store>/catalog/available (QoS 1) for each store.")
    p.add_argument("snapshot", type=Path, help="snapshot folder (OUT/<id> of `storelens catalog build`)")
    p.add_argument("--to", required=True, help="destination folder, file:// or http(s):// URL (PUT)")
    p.add_argument("--url", default=None, help="URL devices download it from (default: the destination)")
    p.add_argument("--key", type=Path, default=None, help="Ed25519 private key that signs the announcement "
                   "(`storelens catalog keygen`); devices install only snapshots signed by a key in "
                   "fleet.trusted_keys")
    p.add_argument("--store", action="append", default=[], help="store to announce to (repeat; default: the "
                   "snapshot's assortment store)")
    p.add_argument("--no-announce", action="store_true", help="only put the archive in place")
    p.add_argument("--broker", default=None, metavar="HOST:PORT", help="broker (default: [mqtt] of --config)")
    p.add_argument("--json", action="store_true")
    add_common(p)
    p.set_defaults(func=run_publish)

    k = csub.add_parser("keygen", help="make the key pair that signs catalog snapshots", description="Write a new "
                        "Ed25519 private key to OUT (PEM, mode 0600, never overwritten) and its public key to OUT.pub; "
                        "print the public key line for the devices' fleet.trusted_keys. Keep OUT secret: whoever "
                        "holds it can change every device's catalog.")
    k.add_argument("--out", type=Path, required=True, help="private key file to create (e.g. chain.key)")
    k.set_defaults(func=run_keygen)

    r = csub.add_parser("rollback", help="return to the previous catalog snapshot", description="Re-verify and "
                        "reinstall the previous snapshot kept under <data_dir>/snapshots (a running `storelens run` "
                        "does the same on cmd/rollback; otherwise send it cmd/reload afterwards).")
    add_common(r)
    r.set_defaults(func=run_rollback)


def read_records(args: argparse.Namespace) -> list[ProductRecord | ImportIssue]:
    fmt = detect_format(args.source) if args.format == "auto" else args.format
    if fmt == "table":
        return list(read_table(args.source))
    if fmt == "folder":
        return list(read_folder(args.source))
    return list(read_grocery_store(args.source, split=args.split or None, max_images=args.max_images))


def _build_settings(args: argparse.Namespace) -> Settings:
    s = settings_from_args(args)
    over = {k: v for k, v in (("workers", args.workers), ("batch_size", args.batch_size),
                              ("ray_address", args.ray_address)) if v is not None}
    return s.model_copy(update={"fleet": s.fleet.model_copy(update=over)}) if over else s


def run_build(args: argparse.Namespace) -> int:
    from edge.fleet.build import Assortment, build_snapshot
    from edge.models.encoders import load_image_encoder, load_text_encoder

    if (args.assortment is None) != (args.store is None):
        raise InputError("--assortment and --store go together", hint="give both for a store, neither for the chain")
    settings = _build_settings(args)
    assortment = Assortment.read(args.assortment, store=args.store) if args.assortment else None
    records = read_records(args)
    image = load_image_encoder(settings.model)
    text = None if args.no_text else load_text_encoder(settings.model)
    report = build_snapshot(records, settings=settings, out=args.out, workdir=args.workdir or args.out / ".work",
                            image_encoder=image, text_encoder=text, engine=args.engine, assortment=assortment,
                            progress=not args.no_progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return 0
    for path, err in report.unreadable[:MAX_SHOWN]:
        print(f"unreadable: {path}: {err}")
    for line in report.skipped[:MAX_SHOWN]:
        print(f"skipped: {line}")
    print(f"snapshot {report.snapshot_id} ({report.scope}, catalog version {report.catalog_version}): "
          f"{report.products} products, {report.photos} photos ({report.embedded} embedded now at "
          f"{report.images_per_s} img/s with {report.engine} x{report.workers}, {report.from_cache} from the cache), "
          f"{len(report.unreadable)} unreadable, {len(report.skipped)} skipped -> {report.snapshot}")
    return 0


def mqtt_settings(args: argparse.Namespace) -> MqttSettings:
    m = settings_from_args(args).mqtt
    if args.broker:
        host, _, port = args.broker.rpartition(":")
        if not host or not port.isdigit():
            raise InputError(f"--broker {args.broker!r} is not HOST:PORT", hint="e.g. --broker 127.0.0.1:1883")
        m = m.model_copy(update={"host": host, "port": int(port)})
    return m


def run_publish(args: argparse.Namespace) -> int:
    from edge.catalog.snapshot import read_manifest
    from edge.fleet.publish import announce, publish_snapshot

    stores = list(args.store) or [s for s in [(read_manifest(args.snapshot).assortment or {}).get("store")] if s]
    if not stores and not args.no_announce:
        raise InputError("a chain-wide snapshot needs --store for each store to announce it to",
                         hint="pass --store STORE (repeat), or --no-announce")
    from edge.fleet.signing import load_private_key

    key = load_private_key(args.key) if args.key else None
    if key is None and not args.no_announce:
        print("warning: the announcement is unsigned; devices refuse it (publish with --key chain.key, "
              "see `storelens catalog keygen`)", file=sys.stderr)
    a = publish_snapshot(args.snapshot, to=args.to, url=args.url, key=key)
    topics = [] if args.no_announce else announce(a, stores=stores, settings=mqtt_settings(args))
    if args.json:
        print(json.dumps({"announcement": json.loads(a.to_payload()), "topics": topics}, indent=2))
    else:
        print(f"published snapshot {a.snapshot} (catalog version {a.version}, {a.size} bytes, sha256 {a.sha256}) "
              f"at {a.url}" + (f"; announced on {', '.join(topics)}" if topics else ""))
    if (note := file_url_note(a.url)) is not None:
        print(note, file=sys.stderr)
    return 0


def run_keygen(args: argparse.Namespace) -> int:
    from edge.fleet.signing import write_key_pair

    public = write_key_pair(args.out)
    print(f"private key: {args.out} (keep it secret; `storelens catalog publish --key {args.out}`)")
    print(f"public key:  {args.out}.pub; on every device:\n[fleet]\ntrusted_keys = [\"{public}\"]")
    return 0


def file_url_note(url: str) -> str | None:
    """What a device needs to install a snapshot announced as a file:// URL (None for HTTP(S)): it reads files
    only inside its ``fleet.snapshot_dir``, and refuses the snapshot until that is set."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("", "file"):
        return None
    folder = Path(unquote(parts.path)).parent
    return (f"note: devices install this snapshot only with the folder mounted and set as [fleet] snapshot_dir = "
            f"\"{folder}\" in their config (they refuse file URLs otherwise); or serve the folder over HTTP and "
            "publish with --url http://HOST/...")


def run_rollback(args: argparse.Namespace) -> int:
    from edge.fleet.updates import CatalogUpdater

    settings = settings_from_args(args)
    store = open_store(args, image=True, text=True)
    try:
        result = CatalogUpdater(store, fleet=settings.fleet, store_id=settings.device.store).rollback()
    finally:
        store.close()
    print(f"rolled back to snapshot {result['id']} (catalog version {result['catalog_version']}); "
          "a running `storelens run` picks it up on cmd/reload")
    return 0
