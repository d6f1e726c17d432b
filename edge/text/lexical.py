"""Lexical robustness for shopper queries: inflections, compounds and typos, against the catalog's own words.

Nothing here changes how the catalog is indexed: a query word is mapped to *catalog words*
(the vocabulary of the FTS5 index), and the search asks FTS5 for those. So a shopper's word
matches when it, or one of these relatives, is a word of some product:

* **prefix** - the word begins a catalog word ("nectarin" -> "nectarine", "apple" -> "apples");
* **inflection** - same light stem (:func:`stem`, English and Swedish plural/definite endings):
  "citroner" -> "citron", "morötter" -> "morot", "tomatoes" -> "tomato", "äpplen" -> "apple";
* **compound tail** - a Swedish compound of a known first part and this word:
  "yoghurt" -> "vaniljyoghurt", "mjölk" -> "mellanmjölk";
* **compound split** - an unknown word made of two known parts: "vattenmelon" -> "vatten" + "melon";
* **typo** (:meth:`Vocabulary.correct`, before synonyms) - an unknown word within Damerau
  (optimal string alignment) distance 1 of a catalog word (2 from 7 letters on): "papya" ->
  "papaya", "grapefriut" -> "grapefruit". Candidates come from a deletion index (SymSpell), so
  a lookup does not scan the vocabulary. ("bananna" needs no correction: its stem is banana's.)

Words are compared normalised (:func:`edge.text.normalise.normalise_text`: case and accents
folded), as FTS5's ``unicode61 remove_diacritics 2`` tokenizer stores them.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from edge.text.normalise import normalise_text

_WORD = re.compile(r"[^\W_]+")
# Words that say nothing about which product (English and Swedish); dropped from queries.
STOPWORDS = frozenset(
    "a an the and or of for to with without in on at by from my some something any anything i we you want "
    "need looking buy get please have do does is are it its this that these those good best "
    "en ett och eller av till med pa som att jag vill ha nagot nagon det den de".split())
# Ending -> replacement, longest first: plural, definite and a few derived forms (en + sv).
_ENDINGS: tuple[tuple[str, str], ...] = (
    ("ornas", ""), ("arnas", ""), ("ernas", ""), ("orna", ""), ("arna", ""), ("erna", ""),
    ("ies", "y"), ("oes", "o"), ("ches", "ch"), ("shes", "sh"), ("xes", "x"),
    ("ar", ""), ("er", ""), ("or", ""), ("en", ""), ("et", ""), ("s", ""),
)
_VOWEL_ENDINGS = ("e", "a")
MIN_STEM = 3
MAX_TYPO_CANDIDATES = 2


def words(text: str) -> list[str]:
    """Normalised word tokens (letters and digits) in order, stop words included."""
    return _WORD.findall(normalise_text(text))


def query_words(text: str) -> list[str]:
    """Normalised query words without stop words (all of them when the query is only stop words)."""
    ws = words(text)
    kept = [w for w in ws if w not in STOPWORDS]
    return kept or ws


@functools.lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """A light bilingual stem: plural/definite endings, then a final e/a, then a doubled consonant.

    Only a key for finding catalog words of the same stem, never stored or shown: over-stemming
    ("pepper" -> "pepp") is harmless while both forms land on the same key ("peppers" -> "pepp").
    """
    if len(word) <= MIN_STEM or any(ch.isdigit() for ch in word):
        return word
    w = word
    for _ in range(2):
        for end, repl in _ENDINGS:
            if w.endswith(end) and len(w) - len(end) + len(repl) >= MIN_STEM and not w.endswith(("ss", "us", "is")):
                w = w[: len(w) - len(end)] + repl
                break
        else:
            break
    if w.endswith(_VOWEL_ENDINGS) and len(w) > MIN_STEM + 1:
        w = w[:-1]
    if len(w) > MIN_STEM + 1 and w[-1] == w[-2] and w[-1] not in "aeiouy":
        w = w[:-1]
    return w


def osa_distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (edits + adjacent swaps), or ``limit + 1`` once it exceeds ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


def typo_budget(word: str) -> int:
    """Edits allowed for a typo: none under 4 letters, 1 up to 6, 2 from 7."""
    return 0 if len(word) < 4 else 1 if len(word) < 7 else 2


def _deletes(word: str, depth: int) -> set[str]:
    out = {word}
    frontier = {word}
    for _ in range(depth):
        frontier = {w[:i] + w[i + 1:] for w in frontier for i in range(len(w))}
        out |= frontier
    return out


@dataclass(frozen=True)
class WordMatch:
    """What one query word maps to: catalog words (searched as typed) and how they were found."""

    word: str
    terms: tuple[str, ...]  # catalog words to search for this query word; empty: nothing found
    prefix: bool  # True: search ``word*`` too (the word begins at least one catalog word)
    how: str  # exact | prefix | inflection | split | none
    prefixes: tuple[str, ...] = ()  # split: the parts that begin catalog words (searched as ``part*``)


@dataclass
class Vocabulary:
    """The catalog's words (with document counts) and the indexes the look-ups need."""

    counts: Mapping[str, int]
    extra: frozenset[str] = frozenset()  # words known from elsewhere (synonym file): typo targets, not FTS terms
    _sorted: list[str] = field(init=False, repr=False)
    _by_stem: dict[str, list[str]] = field(init=False, repr=False)
    _tails: dict[str, list[str]] = field(init=False, repr=False)
    _deletes: dict[str, set[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._sorted = sorted(self.counts)
        self._by_stem = {}
        for w in self._sorted:
            self._by_stem.setdefault(stem(w), []).append(w)
        self._tails = self._compound_tails()
        self._deletes = {}
        for w in set(self.counts) | self.extra:
            if w.isalpha():
                for d in _deletes(w, typo_budget(w)):
                    self._deletes.setdefault(d, set()).add(w)

    def __contains__(self, word: object) -> bool:
        return word in self.counts

    def begins(self, word: str) -> bool:
        """True when ``word`` is the start of some catalog word (itself included)."""
        i = bisect.bisect_left(self._sorted, word)
        return i < len(self._sorted) and self._sorted[i].startswith(word)

    def _known_part(self, part: str) -> bool:
        return len(part) >= MIN_STEM and (part in self.counts or stem(part) in self._by_stem)

    def _compound_tails(self) -> dict[str, list[str]]:
        """tail -> catalog compounds ending with it, whose head is itself a catalog word (or + linking s)."""
        tails: dict[str, list[str]] = {}
        for w in self._sorted:
            for i in range(MIN_STEM, len(w) - 3):
                head, tail = w[:i], w[i:]
                if tail in self.counts and (self._known_part(head) or
                                            (head.endswith("s") and self._known_part(head[:-1]))):
                    tails.setdefault(tail, []).append(w)
        return tails

    def relatives(self, word: str) -> list[str]:
        """Catalog words of the same stem, and compounds ending with the word (or a same-stem word)."""
        same = [w for w in self._by_stem.get(stem(word), []) if w != word]
        out = list(dict.fromkeys(same))
        for base in [word, *same]:
            out.extend(t for t in self._tails.get(base, []) if t != word)
        return list(dict.fromkeys(out))

    def split(self, word: str) -> tuple[str, str] | None:
        """An unknown compound as two known parts (longest head first), linking s allowed."""
        for i in range(len(word) - MIN_STEM, MIN_STEM - 1, -1):
            head, tail = word[:i], word[i:]
            if not (self._known_part(tail) or (len(tail) >= 4 and self.begins(tail))):
                continue
            if self._known_part(head) or (len(head) >= 4 and self.begins(head)):
                return head, tail
            if head.endswith("s") and self._known_part(head[:-1]):
                return head[:-1], tail
        return None

    def corrections(self, word: str) -> list[str]:
        """Known words closest to an unknown word (at most :data:`MAX_TYPO_CANDIDATES`), most frequent first."""
        budget = typo_budget(word)
        if not budget or not word.isalpha():
            return []
        found: dict[str, int] = {}
        for d in _deletes(word, budget):
            for cand in self._deletes.get(d, ()):
                if cand not in found:
                    found[cand] = osa_distance(word, cand, budget)
        best = min((d for d in found.values()), default=budget + 1)
        if best > budget:
            return []
        ranked = sorted((c for c, d in found.items() if d == best), key=lambda c: (-self.counts.get(c, 0), c))
        return ranked[:MAX_TYPO_CANDIDATES]

    def known(self, word: str) -> bool:
        """A catalog word, the start of one, a word of the same stem as one, or a word of the synonym file."""
        return word in self.counts or word in self.extra or self.begins(word) or stem(word) in self._by_stem

    def correct(self, word: str) -> list[str]:
        """The word itself when known (or a compound of known parts), else its typo corrections (may be [])."""
        if self.known(word) or not word.isalpha() or self.split(word) is not None:
            return [word]
        return self.corrections(word)

    def match(self, word: str) -> WordMatch:
        """Map one normalised query word to catalog words (no typo correction: see :meth:`correct`)."""
        prefix = word.isalpha() and len(word) >= MIN_STEM and self.begins(word)
        rel = self.relatives(word) if word.isalpha() else []
        if word in self.counts or prefix or rel:
            how = "exact" if word in self.counts else "prefix" if prefix else "inflection"
            return WordMatch(word=word, terms=tuple(rel), prefix=prefix, how=how)
        parts = self.split(word) if word.isalpha() else None
        if parts is not None:
            terms = [t for p in parts for t in ([p] if p in self.counts else []) + self.relatives(p)]
            return WordMatch(word=word, terms=tuple(dict.fromkeys(terms)), prefix=False, how="split",
                             prefixes=tuple(p for p in parts if self.begins(p)))
        return WordMatch(word=word, terms=(), prefix=False, how="none")


def vocabulary_of(rows: Iterable[tuple[str, int]], *, extra: Iterable[str] = ()) -> Vocabulary:
    """A :class:`Vocabulary` from (word, document count) rows, e.g. an ``fts5vocab`` table."""
    counts: dict[str, int] = {}
    for w, n in rows:
        counts[w] = counts.get(w, 0) + int(n)
    return Vocabulary(counts=counts, extra=frozenset(w for w in extra if w not in counts))
