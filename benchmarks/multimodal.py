"""Multimodal accuracy: image-only vs image+OCR vs image+OCR+text, and the catalogue-only gallery.

Protocol (Grocery Store layout; any split files of the same format):

* **gallery** - the image encoder's reference vectors: every train photo except the
  validation carved from train (3 a product, the carve of export/train.py with its seed,
  so the trained encoder never saw those photos); with ``--catalogue-only`` the one iconic
  catalogue image a product instead;
* **word profiles** - each product's catalogue text (name, English/Swedish descriptions,
  title/manufacturer lines) plus the OCR of ``--profile-photos`` gallery photos a product
  (catalogue-only: the OCR of its iconic image);
* **weights** - fitted (edge.text.fusion.fit_weights) on the carved queries only, never on val;
* **report** - macro recall@1/@5 and per coarse group (top-level folder: Fruit, Vegetables,
  Packages) on val and (in-sample for the weights) on the carved queries.

OCR readings come from the cache benchmarks/ocr_cache.py writes; image embeddings are
cached under runs/mm-cache keyed by the encoder fingerprint. Used by benchmarks/accuracy.py
(``--modalities``, ``--catalogue-only``) and runnable alone:

    python -m benchmarks.multimodal --train ../shared/datasets/grocery-store/train.txt \
        --val ../shared/datasets/grocery-store/val.txt --image-bundle edge/bundles/image \
        --modalities image+ocr [--catalogue-only] [--json runs/mm.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks._gsd import gsd_product_text
from benchmarks._ocr_readings import cache_key, cache_settings, latency_summary, load_cache
from benchmarks._results import write_json
from edge.core.config import ModelSettings
from edge.core.errors import InputError, StoreLensError
from edge.models.encoders import load_image_encoder, load_text_encoder
from edge.models.encoders.base import ImageEncoder, TextEncoder
from edge.models.preprocess import read_image
from edge.text.calibration import fit_weights
from edge.text.fusion import FusionWeights, fuse
from edge.text.ocr.engine import OcrResult
from edge.text.profiles import ProductText, TextProfiles
from export.data import ClassInfo, Sample, read_classes, read_split

MODALITIES = ("image", "image+ocr", "image+ocr+text")
GROUPS = ("Fruit", "Vegetables", "Packages")
SEED = 0  # profile photo draw


def semantic_scores(query_vec: np.ndarray | None, product_vecs: np.ndarray) -> np.ndarray:
    """Cosine of the query text embedding with each product's text embedding, clipped at 0."""
    if query_vec is None:
        return np.zeros(len(product_vecs), np.float32)
    return np.clip(product_vecs @ np.asarray(query_vec, np.float32).reshape(-1), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Layout:
    """Who is gallery, who is query, which photos give word profiles."""

    classes: dict[int, ClassInfo]
    gallery: list[Sample]
    carved: list[Sample]
    val: list[Sample]
    profile: dict[int, list[Sample]]


def bundle_training(root: Path) -> dict[str, Any]:
    """The training report recorded in an image bundle's manifest ({} if it has none)."""
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    return dict(manifest.get("provenance", {}).get("training", {}))


def training_of(encoder: ImageEncoder) -> dict[str, Any]:
    """The training report of the encoder's bundle ({} for an encoder without one)."""
    bundle = getattr(encoder, "bundle", None)
    return bundle_training(Path(bundle.root)) if bundle is not None else {}


def layout(train: Path, val: Path, *, profile_photos: int, training: dict[str, Any] | None = None) -> Layout:
    """Carved queries = the carve the encoder was trained with (from its training report), so it never saw them."""
    from export.bundle import parity_split

    samples = read_split(train)
    tr_idx, cv_idx = parity_split(samples, training or {})
    gallery = [samples[i] for i in tr_idx]
    by: dict[int, list[Sample]] = {}
    for s in gallery:
        by.setdefault(s.label, []).append(s)
    rng = np.random.default_rng(SEED)
    profile = {lab: [ss[i] for i in sorted(rng.choice(len(ss), min(profile_photos, len(ss)), replace=False))]
               for lab, ss in sorted(by.items())}
    classes = read_classes(train.parent)
    if not classes:
        raise InputError(f"no classes.csv beside {train}", hint="use the Grocery Store layout (classes.csv + iconic)")
    return Layout(classes=classes, gallery=gallery, carved=[samples[i] for i in cv_idx], val=read_split(val),
                  profile=profile)


def needed_images(train: Path, val: Path, *, profile_photos: int, training: dict[str, Any] | None = None) -> list[Path]:
    """Every image the evaluation OCRs: val + carved queries, profile photos, iconic images."""
    lay = layout(train, val, profile_photos=profile_photos, training=training)
    paths = [s.path for s in lay.val + lay.carved]
    paths += [s.path for ss in lay.profile.values() for s in ss]
    paths += [c.iconic for c in lay.classes.values() if c.iconic is not None]
    return paths


def embed_paths(encoder: ImageEncoder, paths: Sequence[Path], *, cache_dir: Path, batch: int = 64) -> np.ndarray:
    key = hashlib.sha256(("|".join(map(str, paths)) + encoder.fingerprint).encode()).hexdigest()[:16]
    f = cache_dir / f"emb-{key}.npy"
    if f.is_file():
        return np.load(f)
    out = []
    for i in tqdm(range(0, len(paths), batch), desc="embed", unit="batch"):
        out.append(encoder.embed([read_image(p) for p in paths[i:i + batch]]))
    emb = np.concatenate(out) if out else np.zeros((0, encoder.dim), np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(f, emb)
    return emb


def image_scores(queries: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray, n: int) -> np.ndarray:
    """(Q, P) product scores: the max cosine over each product's reference vectors (-1 if it has none)."""
    sims = queries @ gallery.T
    out = np.full((len(queries), n), -1.0, np.float32)
    for p in range(n):
        cols = gallery_labels == p
        if cols.any():
            out[:, p] = sims[:, cols].max(axis=1)
    return out


def recall_report(scores: np.ndarray, labels: np.ndarray, groups: Sequence[str]) -> dict[str, Any]:
    """Macro recall@1/@5 (mean over products) and macro recall@1 per coarse group."""
    order = np.argsort(-scores, axis=1, kind="stable")
    rank = np.argmax(order == labels[:, None], axis=1)
    g = np.asarray(groups)

    def macro(mask: np.ndarray, k: int) -> float:
        per = [float(np.mean(rank[mask & (labels == c)] < k)) for c in np.unique(labels[mask])]
        return round(float(np.mean(per)), 4) if per else float("nan")

    everything = np.ones(len(labels), bool)
    return {"r1": macro(everything, 1), "r5": macro(everything, 5),
            "group_r1": {grp: macro(g == grp, 1) for grp in GROUPS if (g == grp).any()}}


def ocr_of(cache: dict[str, OcrResult], paths: Sequence[Path], root: Path) -> list[OcrResult]:
    missing = [p for p in paths if cache_key(p, root) not in cache]
    if missing:
        raise InputError(f"{len(missing)} image(s) are not in the OCR cache, e.g. {missing[0]}",
                         hint="run `python -m benchmarks.ocr_cache` with the same split files first")
    return [cache[cache_key(p, root)] for p in paths]


def evaluate(*, train: Path, val: Path, image_encoder: ImageEncoder, modalities: str, catalogue_only: bool,
             ocr_cache: Path, text_encoder: TextEncoder | None = None, profile_photos: int = 8, tune_photos: int = 1,
             cache_dir: Path = Path("runs/mm-cache")) -> dict[str, Any]:
    if modalities not in MODALITIES:
        raise InputError(f"unknown modalities {modalities!r}", hint=f"use one of {', '.join(MODALITIES)}")
    if modalities.endswith("+text") and text_encoder is None:
        raise InputError("image+ocr+text needs a text encoder", hint="pass --text-bundle (the MiniLM bundle)")
    lay = layout(train, val, profile_photos=profile_photos, training=training_of(image_encoder))
    root = train.parent
    labels_all = sorted(lay.classes)
    n = max(labels_all) + 1
    if catalogue_only:
        icons = [(c.label, c.iconic) for c in lay.classes.values() if c.iconic is not None]
        g_paths, g_labels = [p for _, p in icons], np.array([lab for lab, _ in icons])
    else:
        g_paths, g_labels = [s.path for s in lay.gallery], np.array([s.label for s in lay.gallery])
    g_emb = embed_paths(image_encoder, g_paths, cache_dir=cache_dir)

    cache = load_cache(ocr_cache) if modalities != "image" else {}
    if modalities != "image" and cache_settings(ocr_cache) is None:
        raise InputError(f"OCR cache {ocr_cache} does not record the engine, version and settings it was read with",
                         hint="re-run `python -m benchmarks.ocr_cache` into a new --out")
    profiles = None
    prod_vecs = None
    if modalities != "image":
        products = []
        for lab in range(n):
            info = lay.classes.get(lab)
            cat = gsd_product_text(info.iconic.parent, info.name, sku=str(lab)) if info and info.iconic else \
                ProductText(sku=str(lab))
            photos = ([info.iconic] if info and info.iconic else []) if catalogue_only else \
                [s.path for s in lay.profile.get(lab, [])]
            reads = tuple(r.tokens for r in ocr_of(cache, photos, root))
            products.append(ProductText(sku=str(lab), titles=cat.titles, texts=cat.texts, photo_reads=reads))
        profiles = TextProfiles.build(products)
        if text_encoder is not None and modalities.endswith("+text"):
            prod_vecs = text_encoder.embed([" ".join(p.titles + p.texts[:2]) for p in products])

    # Tuning gallery: the carved photos come from the same sessions as the training photos the
    # encoder learnt, so against the full gallery vision is near-perfect on them (R@1 0.95 vs 0.46
    # on val) and no weight can show its worth. The weights are therefore fitted against a sparse
    # gallery of ``tune_photos`` photos a product (vision unsure, as on a new store's photos);
    # catalogue-only already has one (iconic) image a product.
    t_emb, t_labels = g_emb, g_labels
    if not catalogue_only and tune_photos > 0:
        t_paths = [s.path for lab in sorted(lay.profile) for s in lay.profile[lab][:tune_photos]]
        t_labels = np.array([lab for lab in sorted(lay.profile) for _ in lay.profile[lab][:tune_photos]])
        t_emb = embed_paths(image_encoder, t_paths, cache_dir=cache_dir)

    def split_scores(samples: list[Sample], *, tune: bool = False
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        q_emb = embed_paths(image_encoder, [s.path for s in samples], cache_dir=cache_dir)
        img = image_scores(q_emb, t_emb, t_labels, n) if tune else image_scores(q_emb, g_emb, g_labels, n)
        if profiles is None:
            return img, None, None
        reads = ocr_of(cache, [s.path for s in samples], root)
        ocr = np.stack([profiles.score(r.tokens) for r in reads])
        txt = None
        if prod_vecs is not None and text_encoder is not None:
            texts = [r.text for r in reads]
            has = [i for i, t in enumerate(texts) if t.strip()]
            txt = np.zeros_like(img)
            if has:
                q = text_encoder.embed([texts[i] for i in has])
                for j, i in enumerate(has):
                    txt[i] = semantic_scores(q[j], prod_vecs)
        return img, ocr, txt

    c_img, c_ocr, c_txt = split_scores(lay.carved)
    f_img, f_ocr, f_txt = split_scores(lay.carved, tune=True)
    c_lab = np.array([s.label for s in lay.carved])
    weights = FusionWeights(fitted_on="none (image only)")
    if modalities != "image":
        sparse = "" if catalogue_only or tune_photos <= 0 else f" vs {tune_photos} gallery photo(s) a product"
        weights = fit_weights(f_img, c_lab, ocr=f_ocr, text=f_txt,
                              fitted_on=f"carved-from-train ({len(c_lab)} queries{sparse})")
    out: dict[str, Any] = {"modalities": modalities, "catalogue_only": catalogue_only,
                           "gallery_vectors": len(g_paths), "weights": {"ocr": weights.ocr, "text": weights.text,
                                                                       "fitted_on": weights.fitted_on,
                                                                       "tuning": weights.metrics}}
    for name, samples, (img, ocr, txt) in (("carved", lay.carved, (c_img, c_ocr, c_txt)),
                                           ("val", lay.val, split_scores(lay.val))):
        qlab = np.array([s.label for s in samples])
        groups = [s.group for s in samples]
        row = {"queries": len(samples), "products": len(np.unique(qlab)), "image": recall_report(img, qlab, groups)}
        if modalities != "image":
            row["fused"] = recall_report(fuse(img, ocr=ocr, text=txt, weights=weights), qlab, groups)
            qreads = ocr_of(cache, [s.path for s in samples], root)
            row["queries_with_text"] = round(float(np.mean([bool(r.tokens) for r in qreads])), 4)
        out[name] = row
    best = out["val"].get("fused", out["val"]["image"])
    out.update(r1=best["r1"], r5=best["r5"], group_r1=best["group_r1"])
    if cache:
        out["ocr_latency"] = latency_summary(cache.values())  # recorded when the cache was read, not live
        out["ocr_settings"] = cache_settings(ocr_cache)
    out["machine"] = {"python": sys.version.split()[0], "platform": platform.platform(),
                      "image_encoder": image_encoder.fingerprint}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--image-bundle", type=Path, default=None, help="image bundle (default: the embedded one)")
    ap.add_argument("--text-bundle", type=Path, default=None, help="text bundle (default: the embedded one)")
    ap.add_argument("--precision", choices=("fp32", "int8"), default="int8")
    ap.add_argument("--modalities", choices=MODALITIES, default="image+ocr")
    ap.add_argument("--catalogue-only", action="store_true", help="gallery = one iconic image + text a product")
    ap.add_argument("--ocr-cache", type=Path, default=Path("runs/ocr-cache/det480.jsonl"))
    ap.add_argument("--profile-photos", type=int, default=8,
                    help="gallery photos a product OCR'd (as `storelens ocr enroll`)")
    ap.add_argument("--tune-photos", type=int, default=1, help="gallery photos a product when fitting weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    args = ap.parse_args(argv)
    model = ModelSettings(image_bundle=args.image_bundle, text_bundle=args.text_bundle, precision=args.precision,
                          threads=args.threads)
    return run_and_report(args, model, train=args.train, val=args.val, prog="multimodal",
                          tune_photos=args.tune_photos)


def run_and_report(args: argparse.Namespace, model: ModelSettings, *, train: Path, val: Path, prog: str,
                   tune_photos: int = 1, check: Callable[[], None] | None = None) -> int:
    """Load the encoders, evaluate, print the table and write ``--json``: both entry points end here."""
    try:
        if check is not None:
            check()
        enc = load_image_encoder(model)
        txt = load_text_encoder(model) if args.modalities.endswith("+text") else None
        res = evaluate(train=train, val=val, image_encoder=enc, text_encoder=txt,
                       modalities=args.modalities, catalogue_only=args.catalogue_only, ocr_cache=args.ocr_cache,
                       profile_photos=args.profile_photos, tune_photos=tune_photos)
    except StoreLensError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    print(table(res))
    if args.json:
        write_json(args.json, res, indent=1)
    return 0


def main_from_accuracy(args: argparse.Namespace) -> int:
    """``benchmarks.accuracy --modalities ... [--catalogue-only]``: its split arguments, this evaluation."""

    def same_folder() -> None:
        if Path(args.root).resolve() != Path(args.gallery).parent.resolve():
            raise InputError(f"--root {args.root} must be the folder of --gallery {args.gallery} here",
                             hint="keep the split files beside classes.csv (Grocery Store layout)")

    model = ModelSettings(image_bundle=args.bundle, text_bundle=args.text_bundle, backend=args.backend,
                          precision=args.precision, threads=args.threads)
    return run_and_report(args, model, train=args.gallery, val=args.queries, prog="benchmarks.accuracy",
                          check=same_folder)


def table(res: dict[str, Any]) -> str:
    lines = [f"modalities={res['modalities']} catalogue_only={res['catalogue_only']} weights={res['weights']}",
             f"{'split':8} {'method':7} {'R@1':>6} {'R@5':>6} " + " ".join(f"{g:>10}" for g in GROUPS)]
    for split in ("carved", "val"):
        for method in ("image", "fused"):
            r = res[split].get(method)
            if r:
                lines.append(f"{split:8} {method:7} {r['r1']:6.3f} {r['r5']:6.3f} "
                             + " ".join(f"{r['group_r1'].get(g, float('nan')):10.3f}" for g in GROUPS))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
