"""The parity gate (int8 vs fp32) and the retrieval metrics it and the benchmarks share.

A quantized model is admitted only if, on held-out images, its embeddings stay close to the
fp32 ones (mean cosine) *and* it ranks products as well (macro recall@1 drop): measured here,
a model can keep cosine 0.99 and still lose 7 points of recall, so cosine alone is not enough.

Numpy only (no torch): benchmarks/ import the metrics from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge.catalog import ranking
from edge.catalog.ranking import Hits
from edge.core.errors import ParityError

MIN_COSINE = 0.98
MAX_R1_DROP = 0.01


# ------------------------------------------------------------------ retrieval metrics
def product_scores(q: np.ndarray, g: np.ndarray, g_labels: np.ndarray, *,
                   rule: ranking.Aggregate = "max") -> tuple[np.ndarray, np.ndarray]:
    """Score of each query against each product over the product's reference images, by the runtime's
    aggregation ``rule`` (:func:`edge.catalog.ranking.product_scores`): ``max`` = best cosine, ``mean`` =
    mean of its top 3 (exact search: every reference image is a hit).

    Returns ``(products, scores)`` with ``scores[i, j]`` for query i and product ``products[j]``.
    """
    hits = Hits(keys=np.broadcast_to(g_labels, (len(q), len(g_labels))), scores=q @ g.T,
                counts=np.full(len(q), len(g_labels)))
    labels, counts = np.unique(g_labels, return_counts=True)
    per_key = {int(k): int(c) for k, c in zip(labels.tolist(), counts.tolist(), strict=True)}
    return ranking.product_scores(hits, rule=rule, vectors_per_key=per_key)


def average_precision(q: np.ndarray, g: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray) -> np.ndarray:
    """Image-level AP per query over the full gallery ranking (0 where the product has no reference)."""
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")
    rel = g_labels[order] == q_labels[:, None]
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(axis=1)
    return np.where(n_rel > 0, (rel * hits / ranks).sum(axis=1) / np.maximum(n_rel, 1), 0.0)


def retrieval_metrics(q: np.ndarray, q_labels: np.ndarray, g: np.ndarray, g_labels: np.ndarray, *,
                      coarse_of: dict[int, int] | None = None, q_groups: list[str] | None = None,
                      rule: ranking.Aggregate = "max") -> dict[str, Any]:
    """Product-level recall (macro = mean over products, micro = over queries), mAP, coarse and group R@1;
    products ranked by ``rule`` (see :func:`product_scores`; mAP is image-level, the same for both)."""
    products, scores = product_scores(q, g, g_labels, rule=rule)
    order = products[np.argsort(-scores, axis=1, kind="stable")]
    hit1 = order[:, 0] == q_labels
    hit5 = (order[:, :5] == q_labels[:, None]).any(axis=1)
    classes = np.unique(q_labels)
    out: dict[str, Any] = {
        "macro_r1": float(np.mean([hit1[q_labels == c].mean() for c in classes])) if len(classes) else 0.0,
        "micro_r1": float(hit1.mean()) if len(hit1) else 0.0,
        "macro_r5": float(np.mean([hit5[q_labels == c].mean() for c in classes])) if len(classes) else 0.0,
        "map": float(average_precision(q, g, q_labels, g_labels).mean()) if len(q) else 0.0,
        "n_queries": len(q),
        "n_classes": len(classes),
        "n_gallery": len(g),
        "n_products": len(products),
    }
    if coarse_of:
        out["coarse_r1"] = float(np.mean([coarse_of.get(int(a), -1) == coarse_of.get(int(b), -2)
                                          for a, b in zip(order[:, 0], q_labels, strict=True)])) if len(q) else 0.0
    if q_groups is not None:
        groups = np.array(q_groups)
        out["group_r1"] = {str(gname): float(np.mean([hit1[(groups == gname) & (q_labels == c)].mean()
                                                      for c in np.unique(q_labels[groups == gname])]))
                           for gname in sorted(set(q_groups))}
    return out


# ------------------------------------------------------------------ the gate
@dataclass(frozen=True, kw_only=True)
class ParityReport:
    """How a candidate (int8) model compares with its fp32 reference on held-out images."""

    candidate: str
    n_images: int
    mean_cosine: float
    min_cosine: float
    ref_macro_r1: float
    macro_r1: float
    r1_drop: float
    min_cosine_required: float
    max_r1_drop: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def summary(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        return (f"{self.candidate}: {verdict} mean cosine {self.mean_cosine:.4f} (>= {self.min_cosine_required}), "
                f"macro R@1 {self.macro_r1:.4f} vs fp32 {self.ref_macro_r1:.4f}, drop {self.r1_drop * 100:+.2f} "
                f"points (<= {self.max_r1_drop * 100:.1f}) on {self.n_images} embeddings")


def compare(candidate: str, ref_q: np.ndarray, ref_g: np.ndarray, cand_q: np.ndarray, cand_g: np.ndarray,
            q_labels: np.ndarray, g_labels: np.ndarray, *, min_cosine: float = MIN_COSINE,
            max_r1_drop: float = MAX_R1_DROP) -> ParityReport:
    """Cosine of paired embeddings (queries and gallery) and the recall each model gets on its own gallery."""
    if ref_q.shape != cand_q.shape or ref_g.shape != cand_g.shape:
        raise ParityError(f"{candidate}: embedding shapes differ from fp32 ({cand_q.shape} vs {ref_q.shape})",
                          hint="the candidate model is not an export of the same encoder")
    cos = np.concatenate([(ref_q * cand_q).sum(axis=1), (ref_g * cand_g).sum(axis=1)])
    ref_r1 = retrieval_metrics(ref_q, q_labels, ref_g, g_labels)["macro_r1"]
    r1 = retrieval_metrics(cand_q, q_labels, cand_g, g_labels)["macro_r1"]
    mean_cos = float(cos.mean()) if len(cos) else 0.0
    drop = float(ref_r1 - r1)
    return ParityReport(candidate=candidate, n_images=len(cos), mean_cosine=mean_cos,
                        min_cosine=float(cos.min()) if len(cos) else 0.0, ref_macro_r1=float(ref_r1),
                        macro_r1=float(r1), r1_drop=drop, min_cosine_required=min_cosine, max_r1_drop=max_r1_drop,
                        passed=bool(mean_cos >= min_cosine and drop <= max_r1_drop + 1e-9))


def gate(reports: list[ParityReport], *, force: bool = False) -> None:
    """Raise :class:`ParityError` with every figure unless all passed (or ``force``)."""
    failed = [r for r in reports if not r.passed]
    if failed and not force:
        raise ParityError("parity gate failed: " + "; ".join(r.summary() for r in failed),
                          hint="the last good bundle was kept; recalibrate (more/other images, per-channel) or "
                               "pass --force to ship it with the failure recorded in the manifest")
