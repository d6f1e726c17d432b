"""Retrieval accuracy of an image bundle on any catalog split (Grocery Store line format).

    python -m benchmarks.accuracy --root DIR --gallery FILE --queries FILE [--bundle DIR]
        [--backend onnxruntime|openvino] [--precision fp32|int8] [--iconic] [--aggregate mean|max] [--json OUT]
    python -m benchmarks.accuracy --root DIR --gallery FILE --carve [...]   # the bundle's sessions carve

The gallery split's images (plus each product's iconic catalogue image with ``--iconic``) are
embedded as the references a store would enroll; the query split's images are the shoppers'
photos. A product ranks as the runtime ranks it: by ``catalog.image_aggregate``'s default (the
mean of its top 3 reference photos), or with ``--aggregate max`` by its best photo. Both rules
are printed side by side; the headline is the one asked for. Nothing is chosen here: the
aggregation default is decided on the sessions carve (``--carve``: the bundle's own training
carve as queries, the rest of the gallery split as gallery), never on the query split. Where a
training-seed spread is recorded for the bundle's recipe (``SEED_SPREAD``), it is printed with
the figure: one run's val figure moves several points with the seed. Paths in split files are
relative to DIR, which also holds classes.csv.

The image-only core is a set of functions (:func:`load_split`, :func:`embed_items`,
:func:`iconic_items`, :func:`evaluate`) so other modality benchmarks (OCR, text fusion) can reuse
the same gallery, queries and metrics and only change how products are scored.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks._results import write_json
from edge.core.config import CatalogSettings, ModelSettings
from edge.core.errors import ImageError, InputError, StoreLensError
from edge.models.encoders import ImageEncoder, load_image_encoder
from edge.models.preprocess import read_image
from export.parity import retrieval_metrics

KEYS = ("macro_r1", "micro_r1", "macro_r5", "map", "coarse_r1", "n_queries", "n_classes")
RUNTIME_AGGREGATE = CatalogSettings().image_aggregate  # how the runtime scores a product's photos by default
AGGREGATES = ("mean", "max")
# Val macro R@1 of the same training recipe with other seeds (the bundle's own run is seed 0), by bundle
# fingerprint: what a single run's val figure is worth. Source: the training reports named.
SEED_SPREAD: dict[str, dict[str, Any]] = {
    "a0d9f1cc9eab0aae": {"val_macro_r1": {"seed 0": 0.6528, "seed 1": 0.5886},
                         "carve_macro_r1": {"seed 0": 0.8375, "seed 1": 0.8317},
                         "note": "torch fp32 without whitening, as each run reports it",
                         "source": "benchmarks/results/training/round6-cpu.json"},
    "bcabb53bd065b72f": {"val_macro_r1": {"seed 0": 0.7928, "seed 1": 0.7697},
                         "carve_macro_r1": {"seed 0": 0.8984, "seed 1": 0.9094},
                         "note": "torch fp32 without whitening, each run's carve-selected epoch",
                         "source": "benchmarks/results/training/lite0-224-s0.json, lite0-224-s1.json"},
    "6590647860499a59": {"val_macro_r1": {"seed 0": 0.8067, "seed 1": 0.8281},
                         "carve_macro_r1": {"seed 0": 0.9106, "seed 1": 0.8989},
                         "note": "torch fp32 without whitening, each run's carve-selected epoch (256 px)",
                         "source": "benchmarks/results/training/lite0-256-s0.json, lite0-256-s1.json"},
}


@dataclass(frozen=True, kw_only=True)
class Item:
    """One labelled image: ``group`` is the top-level folder of the split path (Fruit/Vegetables/Packages)."""

    path: Path
    label: int
    coarse: int
    group: str


def load_split(root: Path, split_file: Path) -> list[Item]:
    """Read ``path, fine[, coarse]`` lines (paths relative to ``root``); InputError names a bad line."""
    if not split_file.is_file():
        raise InputError(f"split file not found: {split_file}", hint="pass an existing split file, e.g. train.txt")
    items = []
    for n, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            label, coarse = int(parts[1]), int(parts[2]) if len(parts) > 2 else -1
        except (IndexError, ValueError) as e:
            raise InputError(f"{split_file}:{n}: expected 'path, fine_label[, coarse_label]', got {line!r}",
                             hint="fix the line") from e
        rel = Path(parts[0])
        group = rel.parts[1] if len(rel.parts) > 2 else ""
        items.append(Item(path=root / rel, label=label, coarse=coarse, group=group))
    if not items:
        raise InputError(f"{split_file} lists no images", hint="pass a non-empty split file")
    return items


def iconic_items(root: Path, labels: set[int]) -> list[Item]:
    """Each product's iconic catalogue image from classes.csv (only products in ``labels``)."""
    f = root / "classes.csv"
    if not f.is_file():
        raise InputError(f"--iconic needs {f}", hint="pass --root of a folder with classes.csv")
    out = []
    with f.open(newline="", encoding="utf-8") as fh:
        rows = csv.reader(fh)
        next(rows, None)
        for row in rows:
            if len(row) > 4 and row[4].strip() and int(row[1]) in labels:
                rel = Path(row[4].strip().lstrip("/"))
                out.append(Item(path=root / rel, label=int(row[1]), coarse=int(row[3]),
                                group=rel.parts[1] if len(rel.parts) > 2 else ""))
    return out


def embed_items(encoder: ImageEncoder, items: Sequence[Item], *, batch: int = 32, desc: str = "embed",
                progress: bool = True) -> tuple[np.ndarray, list[Item], list[tuple[str, str]]]:
    """Embed images in batches; unreadable ones are skipped and returned as (file, reason)."""
    embs: list[np.ndarray] = []
    kept: list[Item] = []
    skipped: list[tuple[str, str]] = []
    for i in tqdm(range(0, len(items), batch), desc=desc, unit="batch", disable=not progress, file=sys.stderr):
        imgs = []
        for it in items[i : i + batch]:
            try:
                imgs.append(read_image(it.path))
                kept.append(it)
            except ImageError as e:
                skipped.append((str(it.path), e.message))
        if imgs:
            embs.append(encoder.embed(imgs))
    out = np.concatenate(embs) if embs else np.zeros((0, encoder.dim), np.float32)
    return out, kept, skipped


def evaluate(q: np.ndarray, q_items: Sequence[Item], g: np.ndarray, g_items: Sequence[Item], *,
             rule: str = RUNTIME_AGGREGATE) -> dict[str, Any]:
    """The accuracy figures (see KEYS) plus ``group_r1`` per top-level folder of the query paths; products
    ranked by ``rule`` (the runtime's aggregation of a product's reference photos unless told otherwise)."""
    coarse_of = {it.label: it.coarse for it in [*g_items, *q_items]}
    return retrieval_metrics(q, np.array([it.label for it in q_items]), g, np.array([it.label for it in g_items]),
                             coarse_of=coarse_of, q_groups=[it.group for it in q_items], rule=rule)  # type: ignore[arg-type]


def bundle_carve(items: Sequence[Item], provenance: dict[str, Any]) -> tuple[list[Item], list[Item]]:
    """(gallery, queries): the bundle's training carve of ``items`` as queries (photos it never trained on, whole
    photo sessions held out), the rest as gallery; reproduced from the training config the manifest records."""
    from export.bundle import parity_split
    from export.data import Sample

    training = provenance.get("training") or {}
    if (training.get("config") or {}).get("carve") in (None, "none"):
        raise InputError("the bundle's training run recorded no carve", hint="run without --carve")
    samples = [Sample(path=it.path, label=it.label, coarse=it.coarse, group=it.group) for it in items]
    gal, queries = parity_split(samples, training)
    return [items[i] for i in gal], [items[i] for i in queries]


def seed_spread(fingerprint: str, provenance: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded training-seed spread of this bundle's recipe (manifest ``seed_spread`` or SEED_SPREAD)."""
    recorded = (provenance.get("training") or {}).get("seed_spread") or SEED_SPREAD.get(fingerprint)
    return dict(recorded) if recorded else None


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime
    import openvino

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__, "numpy": np.__version__}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True,
                   help="folder the split paths are relative to (holds classes.csv)")
    p.add_argument("--gallery", type=Path, required=True, help="split file of the reference images (e.g. train.txt)")
    p.add_argument("--queries", type=Path, help="split file of the query images (e.g. val.txt)")
    p.add_argument("--bundle", type=Path, default=None, help="image bundle folder (default: the embedded one)")
    p.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime")
    p.add_argument("--precision", choices=["fp32", "int8"], default="int8")
    p.add_argument("--iconic", action="store_true", help="add each product's iconic image to the gallery")
    p.add_argument("--aggregate", choices=AGGREGATES, default=RUNTIME_AGGREGATE,
                   help=f"how a product's reference photos score it: mean of its top 3, or its best (max); default "
                   f"the runtime's ({RUNTIME_AGGREGATE}); both are printed")
    p.add_argument("--carve", action="store_true", help="queries = the bundle's training carve of --gallery (sessions "
                   "held out of training), gallery = the rest; --queries is then not used (needs the export extra)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="inference threads (all cores)")
    p.add_argument("--json", type=Path, help="write the figures here")
    # Multimodal evidence (benchmarks/multimodal.py): OCR words and text fused with the image score.
    p.add_argument("--modalities", choices=["image", "image+ocr", "image+ocr+text"], default="image",
                   help="image+ocr / image+ocr+text: fuse label text (weights fitted on the validation carved "
                   "from the gallery split, never on the queries); needs the OCR cache of benchmarks.ocr_cache")
    p.add_argument("--catalogue-only", action="store_true",
                   help="gallery = each product's iconic image + catalogue text only (no shop-floor photos)")
    p.add_argument("--ocr-cache", type=Path, default=Path("runs/ocr-cache/det480.jsonl"),
                   help="OCR cache written by python -m benchmarks.ocr_cache")
    p.add_argument("--text-bundle", type=Path, default=None, help="text bundle for image+ocr+text (default: embedded)")
    p.add_argument("--profile-photos", type=int, default=8,
                   help="gallery photos a product OCR'd for its word profile (as `storelens ocr enroll`)")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edge.models.bundle import default_bundle_path, load_bundle

    enc = load_image_encoder(ModelSettings(image_bundle=args.bundle, backend=args.backend, precision=args.precision,
                                           threads=args.threads))
    provenance = load_bundle(args.bundle or default_bundle_path("image"), modality="image").provenance
    gal_items = load_split(args.root, args.gallery)
    if args.carve:
        gal_items, q_items = bundle_carve(gal_items, provenance)
    elif args.queries is None:
        raise InputError("--queries is needed (or --carve)", hint="e.g. --queries DIR/val.txt")
    else:
        q_items = load_split(args.root, args.queries)
    if args.iconic:
        gal_items += iconic_items(args.root, {it.label for it in gal_items} | {it.label for it in q_items})
    t0 = time.perf_counter()
    g, g_kept, g_skip = embed_items(enc, gal_items, desc="gallery")
    q, q_kept, q_skip = embed_items(enc, q_items, desc="queries")
    secs = time.perf_counter() - t0
    by_rule = {rule: evaluate(q, q_kept, g, g_kept, rule=rule) for rule in AGGREGATES}
    res = dict(by_rule[args.aggregate])
    res.update({"aggregate": args.aggregate, "runtime_aggregate": RUNTIME_AGGREGATE,
                "by_aggregate": {r: {k: m[k] for k in ("macro_r1", "micro_r1", "macro_r5")}
                                 for r, m in by_rule.items()},
                "bundle": str(args.bundle or "embedded default"), "fingerprint": enc.fingerprint,
                "backend": args.backend, "precision": args.precision, "iconic": bool(args.iconic),
                "gallery_file": str(args.gallery),
                "queries_file": "the bundle's training carve of the gallery file" if args.carve else str(args.queries),
                "seed_spread": seed_spread(enc.fingerprint, provenance),
                "skipped": {"count": len(g_skip) + len(q_skip), "files": [list(s) for s in g_skip + q_skip]},
                "embed_seconds": round(secs, 2), "machine": machine()})
    return res


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.queries is None and not (args.carve and args.modalities == "image" and not args.catalogue_only):
        parser.error("--queries is required (--carve replaces it for image-only runs)")
    if args.modalities != "image" or args.catalogue_only:
        from benchmarks.multimodal import main_from_accuracy

        return main_from_accuracy(args)
    try:
        res = run(args)
    except StoreLensError as e:
        print(f"benchmarks.accuracy: error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{res['backend']} {res['precision']} bundle {res['fingerprint']}: "
          f"{res['n_queries']} queries, {res['n_classes']} products queried, {res['n_gallery']} gallery images"
          f"{' (+iconic)' if res['iconic'] else ''}, {res['skipped']['count']} unreadable skipped")
    rule = res["aggregate"]
    how = {"mean": "the mean of its top 3 reference photos", "max": "its best reference photo"}[rule]
    print(f"  a product ranked by {how} ({'the runtime default' if rule == RUNTIME_AGGREGATE else 'not the runtime'})")
    for k in KEYS[:5]:
        print(f"  {k:<10} {res[k]:.4f}")
    for gname, v in res["group_r1"].items():
        print(f"  R@1 {gname:<12} {v:.4f} (macro)")
    for other, m in res["by_aggregate"].items():
        if other != rule:
            print(f"  with {other}: macro_r1 {m['macro_r1']:.4f}, macro_r5 {m['macro_r5']:.4f} (for comparison)")
    spread = res["seed_spread"]
    if spread:
        vals = spread["val_macro_r1"]
        print(f"  training-seed spread of this recipe, val macro R@1: {min(vals.values()):.3f}-"
              f"{max(vals.values()):.3f} over {', '.join(vals)} ({spread.get('note', '')}; {spread['source']})")
    else:
        print("  no training-seed spread is recorded for this bundle's recipe: read one run's figure as +- several "
              "points (the previous recipe's val macro R@1 moved 6.4 points between two seeds)")
    if args.json:
        write_json(args.json, res, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
