"""Retrieval accuracy of an image bundle on any catalog split (Grocery Store line format).

    python -m benchmarks.accuracy --root DIR --gallery FILE --queries FILE [--bundle DIR]
        [--backend onnxruntime|openvino] [--precision fp32|int8] [--iconic] [--json OUT]

The gallery split's images (plus each product's iconic catalogue image with ``--iconic``) are
embedded as the references a store would enroll; the query split's images are the shoppers'
photos. A product ranks by its best reference image (max cosine), as the runtime does with
``catalog.image_aggregate = "max"`` (its default, the mean of a product's top 3 hits, scored 0.654
against 0.673 on the val split with the shipped bundle, and 0.845 against 0.843 on the sessions
carve). Paths in split files are relative to DIR, which also holds classes.csv.

The image-only core is a set of functions (:func:`load_split`, :func:`embed_items`,
:func:`iconic_items`, :func:`evaluate`) so other modality benchmarks (OCR, text fusion) can reuse
the same gallery, queries and metrics and only change how products are scored.
"""

from __future__ import annotations

import argparse
import csv
import json
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

from edge.core.config import ModelSettings
from edge.core.errors import ImageError, InputError, StoreLensError
from edge.models.encoders import ImageEncoder, load_image_encoder
from edge.models.preprocess import read_image
from export.parity import retrieval_metrics

KEYS = ("macro_r1", "micro_r1", "macro_r5", "map", "coarse_r1", "n_queries", "n_classes")


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


def evaluate(q: np.ndarray, q_items: Sequence[Item], g: np.ndarray, g_items: Sequence[Item]) -> dict[str, Any]:
    """The accuracy figures (see KEYS) plus ``group_r1`` per top-level folder of the query paths."""
    coarse_of = {it.label: it.coarse for it in [*g_items, *q_items]}
    return retrieval_metrics(q, np.array([it.label for it in q_items]), g, np.array([it.label for it in g_items]),
                             coarse_of=coarse_of, q_groups=[it.group for it in q_items])


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
    p.add_argument("--queries", type=Path, required=True, help="split file of the query images (e.g. val.txt)")
    p.add_argument("--bundle", type=Path, default=None, help="image bundle folder (default: the embedded one)")
    p.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime")
    p.add_argument("--precision", choices=["fp32", "int8"], default="int8")
    p.add_argument("--iconic", action="store_true", help="add each product's iconic image to the gallery")
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
    gal_items = load_split(args.root, args.gallery)
    q_items = load_split(args.root, args.queries)
    if args.iconic:
        gal_items += iconic_items(args.root, {it.label for it in gal_items} | {it.label for it in q_items})
    enc = load_image_encoder(ModelSettings(image_bundle=args.bundle, backend=args.backend, precision=args.precision,
                                           threads=args.threads))
    t0 = time.perf_counter()
    g, g_kept, g_skip = embed_items(enc, gal_items, desc="gallery")
    q, q_kept, q_skip = embed_items(enc, q_items, desc="queries")
    secs = time.perf_counter() - t0
    res = evaluate(q, q_kept, g, g_kept)
    res.update({"bundle": str(args.bundle or "embedded default"), "fingerprint": enc.fingerprint,
                "backend": args.backend, "precision": args.precision, "iconic": bool(args.iconic),
                "gallery_file": str(args.gallery), "queries_file": str(args.queries),
                "skipped": {"count": len(g_skip) + len(q_skip), "files": [list(s) for s in g_skip + q_skip]},
                "embed_seconds": round(secs, 2), "machine": machine()})
    return res


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    for k in KEYS[:5]:
        print(f"  {k:<10} {res[k]:.4f}")
    for gname, v in res["group_r1"].items():
        print(f"  R@1 {gname:<12} {v:.4f} (macro)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
