"""Fitting the fusion weights on labelled photos (``storelens calibrate --fusion``).

Maximum likelihood of the true product under a softmax of the fused scores, over a grid of
weights and softmax scales, products weighted equally; ties keep the smallest weights.

The weight is fitted on half of each product's photos and checked on the other half
(:func:`checked_weights`): one that names fewer photos right than the image alone there is not
stored (weight 0, image only, and the reason in ``fitted_on``). A product with one photo only
is fitted on; with no photo left to check, the weight must at least not lose on the photos it
was fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edge.core.errors import InputError
from edge.text.fusion import FusionWeights, fuse, save_weights
from edge.text.ocr.engine import OcrEngine
from edge.text.profiles import catalog_profiles

if TYPE_CHECKING:
    from edge.catalog.store import Store


def macro_recall_at_1(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes present in ``labels`` of the share of their queries ranked first."""
    hit = np.argmax(scores, axis=1) == labels
    classes = np.unique(labels)
    return float(np.mean([hit[labels == c].mean() for c in classes])) if len(classes) else 0.0


OCR_GRID = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.18, 0.25, 0.35, 0.5, 0.7, 1.0)
TEXT_GRID = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
SCALE_GRID = (5.0, 10.0, 20.0, 30.0, 50.0, 80.0)  # softmax sharpness over products, fitted with the weights


def class_balanced_log_likelihood(scores: np.ndarray, labels: np.ndarray, scale: float) -> float:
    """Mean over products of the mean log-probability of the true product under softmax(scale * scores)."""
    z = scale * np.asarray(scores, np.float64)
    z -= z.max(axis=1, keepdims=True)
    lp = z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(axis=1))
    return float(np.mean([lp[labels == c].mean() for c in np.unique(labels)])) if len(labels) else 0.0


def fit_weights(image: np.ndarray, labels: np.ndarray, *, ocr: np.ndarray | None = None,
                text: np.ndarray | None = None, fitted_on: str = "",
                ocr_grid: Sequence[float] = OCR_GRID, text_grid: Sequence[float] = TEXT_GRID) -> FusionWeights:
    """Fit the weights by maximum likelihood on labelled queries (Q, P): grid over weights and a softmax scale.

    Why likelihood and not recall@1: the labelled photos a store has are mostly easy for vision,
    so recall@1 flips on a handful of queries and the best weight is a coin toss. The
    log-probability of the true product under ``softmax(scale * fused)`` counts every query's
    margin, so a text score that widens the right product's lead is rewarded even where vision
    was already right, and one that misleads is punished. Products are weighted equally (macro),
    as recall is reported. Ties keep the
    smallest weights; with no text evidence the weights are 0 (nothing to weigh).
    """
    if image.ndim != 2 or len(labels) != len(image):
        raise InputError(f"image scores must be (queries, products) with one label a query, got {image.shape} and "
                         f"{len(labels)} labels", hint="score every labelled query against every product")
    labels = np.asarray(labels)
    grid = [(wo, wt) for wo in (ocr_grid if ocr is not None else (0.0,))
            for wt in (text_grid if text is not None else (0.0,))]
    best: tuple[float, float, float, float] | None = None  # (log-likelihood, scale, w_ocr, w_text)
    best_fused = image
    for wo, wt in sorted(grid, key=lambda g: (g[0] + g[1], g)):
        fused = fuse(image, ocr=ocr, text=text, weights=FusionWeights(ocr=wo, text=wt))
        for scale in SCALE_GRID:
            ll = class_balanced_log_likelihood(fused, labels, scale)
            if best is None or ll > best[0] + 1e-9:
                best, best_fused = (ll, scale, wo, wt), fused
    ll, scale, wo, wt = best if best is not None else (0.0, SCALE_GRID[0], 0.0, 0.0)
    image_ll = max(class_balanced_log_likelihood(image, labels, s) for s in SCALE_GRID) if len(labels) else 0.0
    fused_r1 = macro_recall_at_1(best_fused, labels)
    return FusionWeights(ocr=wo, text=wt, fitted_on=fitted_on,
                         metrics={"image_r1": round(macro_recall_at_1(image, labels), 4),
                                  "fused_r1": round(fused_r1, 4),
                                  "image_log_likelihood": round(image_ll, 4), "fused_log_likelihood": round(ll, 4),
                                  "scale": scale, "queries": len(labels)})


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
                     source: str = "labelled images", progress: bool = True) -> FusionWeights:
    """Fit the OCR weight on labelled BGR images (their skus in ``labels``), check it on held-out photos
    (:func:`checked_weights`) and store it with the catalog; ``progress`` shows the OCR pass on stderr."""
    profiles = catalog_profiles(store.catalog)
    col = {s: i for i, s in enumerate(profiles.skus)}
    unknown = sorted({lab for lab in labels if lab not in col})
    if unknown:
        raise InputError(f"{len(unknown)} label(s) are not catalog skus, e.g. {unknown[0]!r}",
                         hint="label calibration images with skus that are enrolled")
    if len(images) != len(labels):
        raise InputError("one label per calibration image is needed", hint="pass images and labels of equal length")
    from tqdm import tqdm

    img = image_score_matrix(store, images, profiles.skus)
    reads = tqdm(images, desc="fusion: reading labels (OCR)", unit="photo", disable=not progress)
    ocr = np.stack([profiles.score(engine.read(im).tokens) for im in reads]) if len(images) else img * 0
    weights = checked_weights(img, np.array([col[lab] for lab in labels]), ocr=ocr,
                              fitted_on=f"{source} ({len(labels)} queries, catalog v{store.catalog_version})")
    save_weights(store.catalog, weights)
    return weights


def split_for_check(labels: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit, check) boolean masks: half of each product's photos (rounded down) checked, the rest fitted on."""
    rng = np.random.default_rng(seed)
    check = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        check[rows[: len(rows) // 2]] = True
    return ~check, check


def checked_weights(image: np.ndarray, labels: np.ndarray, *, ocr: np.ndarray, fitted_on: str,
                    seed: int = 0) -> FusionWeights:
    """Weights fitted on one half of the photos, kept only if they do not lose recall@1 on the other half.

    ``metrics`` gain ``check_image_r1``, ``check_fused_r1`` and ``check_queries`` (0 when no product had
    two photos: then the fit photos are the check, and the result is in-sample)."""
    labels = np.asarray(labels)
    fit, check = split_for_check(labels, seed=seed)
    w = fit_weights(image[fit], labels[fit], ocr=ocr[fit], fitted_on=fitted_on)
    rows = check if check.any() else fit
    fused = fuse(image[rows], ocr=ocr[rows], weights=w)
    image_r1, fused_r1 = macro_recall_at_1(image[rows], labels[rows]), macro_recall_at_1(fused, labels[rows])
    metrics = {**w.metrics, "check_image_r1": round(image_r1, 4), "check_fused_r1": round(fused_r1, 4),
               "check_queries": int(check.sum())}
    if w.ocr and fused_r1 < image_r1:
        where = "held-out" if check.any() else "fit"
        return FusionWeights(fitted_on=f"{fitted_on}; not used: OCR weight {w.ocr} lost on the {where} photos "
                             f"(R@1 {image_r1:.3f} image only -> {fused_r1:.3f} fused): image only", metrics=metrics)
    return FusionWeights(ocr=w.ocr, text=w.text, fitted_on=w.fitted_on, metrics=metrics)
