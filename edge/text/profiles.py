"""Label text and the catalog: OCR words of reference photos, word profiles, stored fusion weights.

Glue between :mod:`edge.text.fusion` (pure scoring) and :class:`edge.catalog.store.Store` (the catalog):

* :func:`read_reference_photos` OCRs up to N reference photos a product and stores the words
  as the product's ``ocr`` text (one line a photo, so a word's share of photos is kept); the
  words also become FTS5-searchable through the catalog's extra-text column;
* :func:`catalog_profiles` builds the :class:`~edge.text.fusion.TextProfiles` of every product from
  its name, description, ``information`` text (GSD title/manufacturer lines) and ``ocr`` lines;
* :func:`calibrate_fusion` fits the fusion weights on labelled images (``storelens calibrate``)
  and :func:`save_weights` / :func:`load_weights` keep them in the catalog's ``meta`` table,
  next to the unknown-product thresholds. A catalog without stored weights fuses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.catalog.importers.gsd import DESCRIPTION_KEYS, TITLE_KEYS, description_lines, information_texts
from edge.core.errors import CatalogError, InputError
from edge.models.preprocess import read_image
from edge.text.fusion import FusionWeights, ProductText, TextProfiles, fit_weights
from edge.text.normalise import tokens
from edge.text.ocr.engine import OcrEngine, OcrResult

if TYPE_CHECKING:
    from edge.catalog.db import Catalog
    from edge.catalog.store import Store

OCR_SOURCE = "ocr"
WEIGHTS_META = "fusion_weights"


def photo_text(reads: Sequence[OcrResult]) -> str:
    """The ``ocr`` text of a product: one line of normalised words per reference photo."""
    return "\n".join(" ".join(r.tokens) for r in reads)


def read_reference_photos(store: Store, engine: OcrEngine, *, max_photos: int = 8, skus: Sequence[str] | None = None,
                          progress: bool = True) -> dict[str, int]:
    """OCR up to ``max_photos`` reference images of each product into its ``ocr`` text; return counts.

    Unreadable image files are counted (``unreadable``) and skipped; a product whose photos
    carry no text gets no ``ocr`` text.
    """
    from tqdm import tqdm

    from edge.core.errors import ImageError

    wanted = list(skus) if skus is not None else [p.sku for p in store.catalog.products()]
    counts = {"products": 0, "photos": 0, "unreadable": 0, "with_text": 0}
    for sku in tqdm(wanted, desc="ocr photos", unit="product", disable=not progress):
        reads = []
        for path in store.catalog.images(sku)[:max_photos]:
            try:
                reads.append(engine.read(read_image(path)))
            except ImageError:
                counts["unreadable"] += 1
        counts["products"] += 1
        counts["photos"] += len(reads)
        text = photo_text(reads)
        counts["with_text"] += int(bool(text.strip()))
        store.set_product_text(sku, OCR_SOURCE, text if text.strip() else None)
    return counts


def product_text_of(catalog: Catalog, key: int, sku: str, name: str, description: str) -> ProductText:
    """A product's :class:`~edge.text.fusion.ProductText` from its catalog row and extra text sources."""
    titles, texts = [name], [description] if description else []
    reads: tuple[tuple[str, ...], ...] = ()
    for source, text in catalog.texts(key).items():
        if source == OCR_SOURCE:
            reads = tuple(tuple(tokens(line)) for line in text.splitlines())
        elif source == "information" and ":" in text:
            titles += information_texts(text, TITLE_KEYS)
            texts += information_texts(text, DESCRIPTION_KEYS)
        else:
            texts.append(text)
    return ProductText(sku=sku, titles=tuple(titles), texts=tuple(texts), photo_reads=reads)


def catalog_profiles(catalog: Catalog) -> TextProfiles:
    """Word profiles of every product in the catalog (ordered by sku)."""
    return TextProfiles.build(product_text_of(catalog, p.key, p.sku, p.name, p.description)
                              for p in catalog.products())


def save_weights(catalog: Catalog, weights: FusionWeights) -> None:
    import json
    from dataclasses import asdict

    catalog.set_meta(WEIGHTS_META, json.dumps(asdict(weights)))


def load_weights(catalog: Catalog) -> FusionWeights:
    """The stored weights, or zero weights (image only) when ``storelens calibrate`` has not fitted any."""
    import json

    raw = catalog.get_meta(WEIGHTS_META)
    if not raw:
        return FusionWeights(fitted_on="not calibrated: image only")
    try:
        d: dict[str, Any] = json.loads(raw)
        return FusionWeights(ocr=float(d["ocr"]), text=float(d["text"]), fitted_on=str(d.get("fitted_on", "")),
                             metrics={str(k): float(v) for k, v in d.get("metrics", {}).items()})
    except (ValueError, KeyError, TypeError) as e:
        raise CatalogError(f"stored fusion weights are unreadable ({e})",
                           hint="re-run `storelens calibrate` to fit them again") from e


def image_score_matrix(store: Store, images: Sequence[np.ndarray], skus: Sequence[str]) -> np.ndarray:
    """(Q, P) image scores over ``skus``; a product outside a query's ranking gets that ranking's floor."""
    col = {s: i for i, s in enumerate(skus)}
    out = np.zeros((len(images), len(skus)), np.float32)
    for q, ranking in enumerate(store.search_image(images, k=len(skus))):
        floor = min((r.score for r in ranking), default=0.0)
        out[q] = floor
        for r in ranking:
            if r.sku in col:
                out[q, col[r.sku]] = r.score
    return out


def calibrate_fusion(store: Store, images: Sequence[np.ndarray], labels: Sequence[str], engine: OcrEngine, *,
                     source: str = "labelled images") -> FusionWeights:
    """Fit the OCR weight on labelled BGR images (their skus in ``labels``) and store it with the catalog."""
    profiles = catalog_profiles(store.catalog)
    col = {s: i for i, s in enumerate(profiles.skus)}
    unknown = sorted({lab for lab in labels if lab not in col})
    if unknown:
        raise InputError(f"{len(unknown)} label(s) are not catalog skus, e.g. {unknown[0]!r}",
                         hint="label calibration images with skus that are enrolled")
    if len(images) != len(labels):
        raise InputError("one label per calibration image is needed", hint="pass images and labels of equal length")
    img = image_score_matrix(store, images, profiles.skus)
    ocr = np.stack([profiles.score(engine.read(im).tokens) for im in images]) if len(images) else img * 0
    weights = fit_weights(img, np.array([col[lab] for lab in labels]), ocr=ocr,
                          fitted_on=f"{source} ({len(labels)} queries, catalog v{store.catalog_version})")
    save_weights(store.catalog, weights)
    return weights


def gsd_product_text(product_dir: Path, name: str, *, sku: str | None = None) -> ProductText:
    """The catalogue text of one GSD product folder (catalogue-only enrollment needs nothing else).

    Titles: the folder name and the Information file's title and manufacturer lines;
    texts: the English and Swedish descriptions and the Information description and
    ingredients. Missing files are absent (fruit has no Swedish description); a file that is
    not UTF-8 is a :class:`CatalogError` naming it.
    """
    titles, texts = [name.replace("-", " ")], []
    for suffix in ("_Description.txt", "_Description_Swedish.txt", "_Information.txt"):
        path = product_dir / f"{name}{suffix}"
        if not path.is_file():
            continue
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CatalogError(f"{path}: not UTF-8 text", hint="re-save the file as UTF-8") from e
        if suffix == "_Information.txt":
            titles.extend(information_texts(raw, TITLE_KEYS))
            texts.extend(information_texts(raw, DESCRIPTION_KEYS))
        else:
            texts.extend(description_lines(raw))
    return ProductText(sku=sku or name, titles=tuple(titles), texts=tuple(dict.fromkeys(texts)))
