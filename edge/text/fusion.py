"""Fusing label text with vision: per-product text scores and the one documented fusion rule.

**Text score (lexical).** Each product has a *word profile*: every normalised word of its
catalog text (name, brand, English and Swedish descriptions, the title and manufacturer
lines of the GSD ``*_Information.txt`` and the Swedish name in its product-page URL, read by
:mod:`edge.catalog.importers.gsd`) with weight 1 (descriptions 0.5), and every word OCR read off its
own reference photos with weight = the share of those photos it was read on (a word read on 6
of 8 photos weighs 0.75; a one-off misread weighs little). A query (the words OCR read off
the live crop, or typed text) scores each product by idf-weighted coverage::

    ocr(p) = sum_t idf(t) * sim(t) * w_p(t) / sum_t idf(t)     over query words t matching the vocabulary

with ``idf(t) = log(1 + P / df(t))`` over the P products and ``sim`` 1 for an exact word or
the difflib ratio (>= 0.8) for an OCR misread of a word of 5+ letters. So ``ocr(p)`` lies in
[0, 1]: 1 when the product explains all recognisable text, 0 for all products when nothing
readable matched. Words that match nothing carry no information and are left out.
Compounds: a profile word of 8+ letters also lists its parts when one side is a known word
("apelsinjuice" -> "apelsin", "juice", as a Swedish carton prints them on two lines), and two
query words are rejoined when their join is a known word and one of them is a fragment (OCR's
"mor" "gon" -> "morgon"; "mild" "yoghurt" stays two words).
Measured on the sessions-carved Packages photos (OCR alone, top-1 right, eight photos' reads a
product): 0.671 with compound parts, 0.677 with rejoining too (catalogue-only profiles: 0.584,
0.602). Leaving short photo reads ("mor", "gon") out of profiles lost on the carve (0.596) and
was dropped, though it gained on val.

**Text score (semantic, optional).** The cosine between the MiniLM embedding of the query
text and of each product's catalog text, clipped at 0; zero when there is no query text.

**Fusion rule.** ``fused(p) = image(p) + w_ocr * ocr(p) + w_text * text(p)`` where
``image(p)`` is the product's image cosine (max over its reference vectors). Weights are
fitted by :func:`fit_weights` (maximum likelihood of the true product under a softmax of the
fused scores, on labelled images, products weighted equally; smallest weights on ties) in
``storelens calibrate`` and stored with the catalog (:class:`FusionWeights` JSON). Without
text evidence both text terms are 0 for every product, so the fused ranking is *exactly*
the image ranking: fusion can never be worse than image-only on unreadable products.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import CatalogError, InputError
from edge.core.types import Candidate
from edge.text.normalise import tokens
from edge.text.ocr.engine import OcrResult
from edge.text.ocr.worker import OcrWorker

FUZZY_CUTOFF = 0.8
FUZZY_MIN_LEN = 5
COMPOUND_MIN_PART = 4
DESCRIPTION_WEIGHT = 0.5


@dataclass(frozen=True, kw_only=True)
class ProductText:
    """What a product's word profile is built from."""

    sku: str
    titles: tuple[str, ...] = ()  # text that names it: name, brand, catalogue title, manufacturer line
    texts: tuple[str, ...] = ()  # text that describes it: descriptions (any language), ingredients
    photo_reads: tuple[tuple[str, ...], ...] = ()  # OCR'd word tokens of each reference photo


class TextProfiles:
    """Per-product word profiles and the idf-weighted coverage score (see the module docstring)."""

    def __init__(self, *, skus: Sequence[str], weights: Sequence[Mapping[str, float]]) -> None:
        if len(skus) != len(weights):
            raise InputError("one word profile per sku is needed", hint="pass skus and weights of equal length")
        self.skus = tuple(skus)
        self._weights = [dict(w) for w in weights]
        postings: dict[str, list[tuple[int, float]]] = {}
        for i, prof in enumerate(self._weights):
            for word, weight in prof.items():
                postings.setdefault(word, []).append((i, weight))
        self._postings = postings
        n = max(1, len(self.skus))
        self._idf = {w: math.log(1.0 + n / len(p)) for w, p in postings.items()}
        self._vocab = sorted(postings)
        self._fuzzy_cache: dict[str, tuple[str, float] | None] = {}

    @classmethod
    def build(cls, products: Iterable[ProductText], *, description_weight: float = DESCRIPTION_WEIGHT
              ) -> TextProfiles:
        """Word profiles: title words 1, description words ``description_weight``, photo words their share."""
        skus: list[str] = []
        profiles: list[dict[str, float]] = []
        for p in products:
            prof: dict[str, float] = {}
            if p.photo_reads:
                counts: dict[str, int] = {}
                for read in p.photo_reads:
                    for w in set(read):
                        counts[w] = counts.get(w, 0) + 1
                prof = {w: c / len(p.photo_reads) for w, c in counts.items()}
            for texts, weight in ((p.texts, description_weight), (p.titles, 1.0)):
                for w in (w for text in texts for w in tokens(text)):
                    prof[w] = max(prof.get(w, 0.0), weight)
            skus.append(p.sku)
            profiles.append(prof)
        vocab = {w for prof in profiles for w in prof}
        return cls(skus=skus, weights=[_with_compound_parts(prof, vocab) for prof in profiles])

    def _match(self, word: str) -> tuple[str, float] | None:
        if word in self._postings:
            return word, 1.0
        if len(word) < FUZZY_MIN_LEN:
            return None
        if word not in self._fuzzy_cache:
            close = difflib.get_close_matches(word, self._vocab, n=1, cutoff=FUZZY_CUTOFF)
            self._fuzzy_cache[word] = (
                (close[0], difflib.SequenceMatcher(None, word, close[0]).ratio()) if close else None)
        return self._fuzzy_cache[word]

    def score(self, query_tokens: Iterable[str]) -> np.ndarray:
        """(P,) scores in [0, 1] aligned with :attr:`skus`; all zeros when no query word matches."""
        out = np.zeros(len(self.skus), np.float32)
        total = 0.0
        for word in dict.fromkeys(self._join_split_words(list(query_tokens))):  # unique, in order
            m = self._match(word)
            if m is None:
                continue
            vocab_word, sim = m
            idf = self._idf[vocab_word]
            total += idf
            for i, weight in self._postings[vocab_word]:
                out[i] += idf * sim * weight
        return out / total if total > 0 else out

    def _join_split_words(self, words: list[str]) -> list[str]:
        """Rejoin a word OCR read in two pieces ("mor" "gon" -> "morgon") when the join is a known word.

        Two whole words stay apart ("mild" "yoghurt" is not "mildyoghurt"): a join needs a piece
        that is no known word or is shorter than a compound part, the mirror of
        :func:`_with_compound_parts`, which already lets the parts match the compound.
        """
        out: list[str] = []
        i = 0
        while i < len(words):
            if i + 1 < len(words):
                a, b = words[i], words[i + 1]
                whole_words = min(len(a), len(b)) >= COMPOUND_MIN_PART and a in self._postings \
                    and b in self._postings
                if a + b in self._postings and not whole_words:
                    out.append(a + b)
                    i += 2
                    continue
            out.append(words[i])
            i += 1
        return out

    def score_text(self, text: str) -> np.ndarray:
        return self.score(tokens(text))

    def to_dict(self) -> dict[str, Any]:
        return {"skus": list(self.skus), "weights": [{w: round(v, 4) for w, v in p.items()} for p in self._weights]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TextProfiles:
        return cls(skus=d["skus"], weights=d["weights"])

    def save(self, path: Path) -> None:
        _atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> TextProfiles:
        return cls.from_dict(_read_json(path, what="text profiles"))


def _with_compound_parts(profile: Mapping[str, float], vocab: set[str]) -> dict[str, float]:
    """Add the parts of compound words ("apelsinjuice" -> "apelsin", "juice") at the compound's weight.

    Swedish (and German, Dutch...) labels print a compound's parts on separate lines, so OCR reads
    "APELSIN" / "JUICE" while the catalogue says "apelsinjuice". A word of 8+ letters is split
    where one side is a word of some product's profile (catalogue text or photo reads) and both
    sides have 4+ letters.
    """
    out = dict(profile)
    for word, weight in profile.items():
        for k in range(COMPOUND_MIN_PART, len(word) - COMPOUND_MIN_PART + 1):
            head, tail = word[:k], word[k:]
            if head in vocab or tail in vocab:
                for part in (head, tail):
                    out[part] = max(out.get(part, 0.0), weight)
                break
    return out


def semantic_scores(query_vec: np.ndarray | None, product_vecs: np.ndarray) -> np.ndarray:
    """Cosine of the query text embedding with each product's text embedding, clipped at 0."""
    if query_vec is None:
        return np.zeros(len(product_vecs), np.float32)
    return np.clip(product_vecs @ np.asarray(query_vec, np.float32).reshape(-1), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class FusionWeights:
    """Weights of the fusion rule, fitted by ``storelens calibrate`` and stored beside the catalog."""

    ocr: float = 0.0
    text: float = 0.0
    fitted_on: str = ""  # what labelled data chose them (never the evaluation split)
    metrics: dict[str, float] = field(default_factory=dict)  # image-only vs fused recall@1 on that data

    def save(self, path: Path) -> None:
        _atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> FusionWeights:
        d = _read_json(path, what="fusion weights")
        try:
            w = cls(ocr=float(d["ocr"]), text=float(d["text"]), fitted_on=str(d.get("fitted_on", "")),
                    metrics={str(k): float(v) for k, v in d.get("metrics", {}).items()})
        except (KeyError, TypeError, ValueError) as e:
            raise CatalogError(f"{path}: not a fusion weights file ({e})",
                               hint="re-run `storelens calibrate` to write it again") from e
        if w.ocr < 0 or w.text < 0:
            raise CatalogError(f"{path}: fusion weights must be >= 0, got ocr={w.ocr} text={w.text}",
                               hint="re-run `storelens calibrate`")
        return w


def fuse(image: np.ndarray, *, ocr: np.ndarray | None = None, text: np.ndarray | None = None,
         weights: FusionWeights) -> np.ndarray:
    """Fused scores (..., P) = image + w_ocr * ocr + w_text * text; missing evidence adds nothing."""
    out = np.array(image, np.float32, copy=True)
    if ocr is not None and weights.ocr:
        out += weights.ocr * np.asarray(ocr, np.float32)
    if text is not None and weights.text:
        out += weights.text * np.asarray(text, np.float32)
    return out


def fuse_candidates(image: Sequence[Candidate], *, skus: Sequence[str], names: Mapping[str, str],
                    ocr: np.ndarray | None = None, text: np.ndarray | None = None,
                    weights: FusionWeights, k: int | None = None) -> list[Candidate]:
    """Re-rank an image shortlist with text evidence over ``skus`` (the profiles' order).

    A product that the text evidence names but that is not on the image shortlist enters it
    with the shortlist's lowest image score (it was at most that similar). With no evidence
    the output is the input shortlist, in the same order with the same scores.
    """
    image_score = {c.sku: c.score for c in image}
    name_of = {**names, **{c.sku: c.name for c in image}}
    floor = min(image_score.values(), default=0.0)
    evidence = np.zeros(len(skus), np.float32)
    if ocr is not None and weights.ocr:
        evidence += weights.ocr * np.asarray(ocr, np.float32)
    if text is not None and weights.text:
        evidence += weights.text * np.asarray(text, np.float32)
    bonus = {s: float(e) for s, e in zip(skus, evidence, strict=True) if e > 0}
    if not bonus:
        return list(image[:k] if k else image)
    pool = dict.fromkeys([c.sku for c in image] + [s for s in skus if s in bonus])
    fused = [Candidate(sku=s, name=name_of.get(s, s), score=image_score.get(s, floor) + bonus.get(s, 0.0))
             for s in pool]
    fused.sort(key=lambda c: -c.score)  # stable: ties keep the image order
    return fused[:k] if k else fused


class LabelTextReranker:
    """The runtime's one call for label text: OCR off the capture thread, then fuse if there is a reading.

    ``rerank(roi, crop, candidates)`` asks the :class:`~edge.text.ocr.worker.OcrWorker` for the reading of
    this view (never blocks; the first frames of a new view have none yet) and re-ranks the
    image candidates with :func:`fuse_candidates`. No reading, or no word that matches the
    catalog, returns the image candidates unchanged.
    """

    def __init__(self, *, worker: OcrWorker, profiles: TextProfiles, weights: FusionWeights,
                 names: Mapping[str, str] | None = None) -> None:
        self.worker = worker
        self.profiles = profiles
        self.weights = weights
        self.names = dict(names or {})
        self.fused = 0  # decisions where text evidence was added
        self._memo: tuple[OcrResult, np.ndarray] | None = None

    def rerank(self, roi: str, crop: np.ndarray, candidates: Sequence[Candidate], *,
               k: int | None = None) -> list[Candidate]:
        reading = self.worker.request(roi, crop)
        if reading is None or not reading.tokens or not self.weights.ocr:
            return list(candidates)
        if self._memo is None or self._memo[0] is not reading:  # a cached reading is scored once
            self._memo = (reading, self.profiles.score(reading.tokens))
        ranked = fuse_candidates(candidates, skus=self.profiles.skus, names=self.names, ocr=self._memo[1],
                                 weights=self.weights, k=k or len(candidates))
        self.fused += int(ranked != list(candidates))
        return ranked


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

    Why likelihood and not recall@1: the labelled photos a store (or our carve) has are easy for
    vision, so recall@1 flips on a handful of queries and the best weight is a coin toss (0, 0.35
    or 0.7 on the same carve with different galleries). The log-probability of the true product
    under ``softmax(scale * fused)`` counts every query's margin, so a text score that widens the
    right product's lead is rewarded even where vision was already right, and one that misleads
    is punished. Products are weighted equally (macro), as recall is reported. Ties keep the
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


def _atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


def _read_json(path: Path, *, what: str) -> Any:
    if not path.is_file():
        raise CatalogError(f"{what} not found: {path}", hint="run `storelens calibrate` for this catalog first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CatalogError(f"{path}: {what} file is not valid JSON ({e})", hint="re-run `storelens calibrate`") from e
