"""Per-product word profiles, and the idf-weighted coverage score a text query gets against them.

A product's profile holds every normalised word of its catalog text (name, brand, English and
Swedish descriptions, the title and manufacturer lines of a GSD ``*_Information.txt`` and the
Swedish name in its product-page URL) with weight 1 (descriptions 0.5), and every word OCR read
off its own reference photos with weight = the share of those photos it was read on (a
one-off misread weighs little). A query (the words OCR read off the live crop, or typed text)
scores each product by idf-weighted coverage::

    ocr(p) = sum_t idf(t) * sim(t) * w_p(t) / sum_t idf(t)     over query words t matching the vocabulary

with ``idf(t) = log(1 + P / df(t))`` over the P products and ``sim`` 1 for an exact word or
the difflib ratio (>= ``FUZZY_CUTOFF``) for an OCR misread of a word of ``FUZZY_MIN_LEN``+
letters. So ``ocr(p)`` lies in [0, 1]: 1 when the product explains all recognisable text, 0 for
all products when nothing readable matched; words that match nothing are left out.

Compounds: a long profile word also lists its parts when one side is a known word
("apelsinjuice" -> "apelsin", "juice", as a Swedish carton prints them on two lines), and two
query words are rejoined when their join is a known word and one of them is a fragment (OCR's
"mor" "gon" -> "morgon"; "mild" "yoghurt" stays two words).

The profiles of a catalog are built from its rows and extra text (:func:`catalog_profiles`);
:func:`read_reference_photos` adds the OCR'd words of the reference photos as ``ocr`` text.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.catalog.importers.gsd import DESCRIPTION_KEYS, TITLE_KEYS, information_texts
from edge.core.errors import InputError
from edge.models.preprocess import read_image
from edge.text.normalise import tokens
from edge.text.ocr.engine import OcrEngine, OcrResult

if TYPE_CHECKING:
    from edge.catalog.db import Catalog
    from edge.catalog.store import Store

FUZZY_CUTOFF = 0.8
FUZZY_MIN_LEN = 5
COMPOUND_MIN_PART = 4
DESCRIPTION_WEIGHT = 0.5
PHOTOS_PER_PRODUCT = 8  # reference photos OCR reads per product
OCR_SOURCE = "ocr"  # extra-text source of the words read off reference photos


@dataclass(frozen=True, kw_only=True)
class ProductText:
    """What a product's word profile is built from."""

    sku: str
    titles: tuple[str, ...] = ()  # text that names it: name, brand, catalog title, manufacturer line
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

    def to_dict(self) -> dict[str, Any]:
        return {"skus": list(self.skus), "weights": [{w: round(v, 4) for w, v in p.items()} for p in self._weights]}


def _with_compound_parts(profile: Mapping[str, float], vocab: set[str]) -> dict[str, float]:
    """Add the parts of compound words ("apelsinjuice" -> "apelsin", "juice") at the compound's weight.

    Swedish (and German, Dutch...) labels print a compound's parts on separate lines, so OCR reads
    "APELSIN" / "JUICE" while the catalog says "apelsinjuice". A word of 8+ letters is split
    where one side is a word of some product's profile (catalog text or photo reads) and both
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


def photo_text(reads: Sequence[OcrResult]) -> str:
    """The ``ocr`` text of a product: one line of normalised words per reference photo."""
    return "\n".join(" ".join(r.tokens) for r in reads)


def read_reference_photos(store: Store, engine: OcrEngine, *, max_photos: int = PHOTOS_PER_PRODUCT,
                          skus: Sequence[str] | None = None,
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
        store.writer.set_product_text(sku, OCR_SOURCE, text if text.strip() else None)
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
