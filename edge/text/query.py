"""A shopper's query -> what to ask FTS5 and the text encoder: typed words, synonyms, purposes.

:func:`plan_query` turns the typed text into a :class:`QueryPlan`:

1. normalised words, stop words dropped (:func:`edge.text.lexical.query_words`);
2. typo correction of words that neither the catalog nor the synonym file knows
   (:meth:`edge.text.lexical.Vocabulary.correct`);
3. the synonym layer (:class:`edge.text.synonyms.SynonymSet`): spelling variants join the typed
   words; other names (``same``) and purposes are kept apart, to be searched at a lower weight;
4. each word mapped to catalog words (prefix, inflection, compound) and written as an FTS5
   expression: words OR-ed, every word quoted (no FTS syntax from user input), phrases kept as
   phrases.

The plan says nothing about weights: :mod:`edge.catalog.text_search` runs one ranking a part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge.text.lexical import Vocabulary, query_words
from edge.text.lexical import words as words_of
from edge.text.synonyms import Phrase, SynonymSet

# A synonym's word searched as a prefix only from this length: "söt" (sweet) must not find "sötpotatis".
EXPANSION_MIN_PREFIX = 4
MAX_EXPANSIONS = 12  # phrases of one kind that reach FTS5 (the longest rules stay bounded)
MAX_EMBEDDED = 6  # synonym/purpose phrases in the text embedded for ``text_x`` (encoder time grows with length)


@dataclass(frozen=True)
class QueryPlan:
    """FTS5 expressions (empty: nothing to search) and texts to embed for one query."""

    words: tuple[str, ...]  # query words after typo correction (first candidate of each)
    typed: str  # typed words, their spelling variants, inflections, compounds and typo fixes
    every: str  # every typed word found (AND of each word's alternatives); '' for a one-word query
    same: str  # other names of what was typed (synonym file ``same``)
    purpose: str  # what the stated purpose calls for (synonym file ``purpose``)
    embed_typed: str  # the query text for the encoder (typos corrected)
    embed_expansion: str  # synonyms and purposes as text for the encoder ('' when none)
    corrections: tuple[tuple[str, str], ...] = ()  # (typed word, correction)


def _quote(word: str) -> str:
    return '"' + word.replace('"', '""') + '"'


def word_clause(word: str, vocab: Vocabulary, *, min_prefix: int = 3) -> list[str]:
    """FTS5 alternatives for one query word: itself (as a prefix when it starts catalog words and has at least
    ``min_prefix`` letters) and its relatives."""
    m = vocab.match(word)
    prefix = m.prefix and len(word) >= min_prefix
    out = [_quote(word) + "*"] if prefix else [_quote(word)] if word in vocab else []
    out += [_quote(t) for t in m.terms]
    out += [_quote(p) + "*" for p in m.prefixes]
    return out


def phrase_clause(phrase: Phrase, vocab: Vocabulary) -> list[str]:
    """FTS5 alternatives for a synonym phrase: one word as :func:`word_clause`, several as an FTS5 phrase."""
    if len(phrase) == 1:
        return word_clause(phrase[0], vocab, min_prefix=EXPANSION_MIN_PREFIX)
    parts = [_quote(w) + ("*" if w.isalpha() and len(w) >= EXPANSION_MIN_PREFIX else "") for w in phrase]
    return [" + ".join(parts)]


def _or(clauses: Sequence[str]) -> str:
    return " OR ".join(dict.fromkeys(c for c in clauses if c))


def _correct(words: Sequence[str], vocab: Vocabulary,
             kept: set[str]) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(first-choice words, every other correction candidate, (typed, corrected) pairs); stop words stay."""
    first: list[str] = []
    alternates: list[str] = []
    fixes: list[tuple[str, str]] = []
    for w in words:
        cands = vocab.correct(w) if w in kept else [w]
        if not cands:
            first.append(w)
            continue
        first.append(cands[0])
        alternates.extend(cands[1:])
        if cands[0] != w:
            fixes.append((w, cands[0]))
    return first, alternates, fixes


def plan_query(text: str, vocab: Vocabulary, synonyms: SynonymSet | None) -> QueryPlan:
    """The :class:`QueryPlan` of a shopper's text (see the module docstring)."""
    everything = words_of(text)  # stop words too: synonym phrases may hold them ("with pulp")
    kept = set(query_words(text))
    fixed, alternates, fixes = _correct(everything, vocab, kept)
    exp = synonyms.expand(fixed) if synonyms is not None else None
    words = [w for w, typed in zip(fixed, everything, strict=True) if typed in kept]
    groups = [word_clause(w, vocab) for w in words]
    typed = [c for g in groups for c in g] + [c for w in alternates for c in word_clause(w, vocab)]
    found = [g for g in groups if g]
    every = " AND ".join(f"({_or(g)})" for g in found) if len(found) > 1 else ""
    if exp is not None:
        typed += [c for p in exp.spelling for c in phrase_clause(p, vocab)]
    same = [c for p in (exp.same if exp else ())[:MAX_EXPANSIONS] for c in phrase_clause(p, vocab)]
    purpose = [c for p in (exp.purpose if exp else ())[:MAX_EXPANSIONS] for c in phrase_clause(p, vocab)]
    embed_typed = text.strip() if not fixes else " ".join(words)
    expansion = [" ".join(p) for p in ((*exp.same, *exp.purpose) if exp else ())][:MAX_EMBEDDED]
    return QueryPlan(words=tuple(words), typed=_or(typed), every=every, same=_or(same), purpose=_or(purpose),
                     embed_typed=embed_typed, embed_expansion=", ".join(expansion), corrections=tuple(fixes))
