"""Shopper text search: several lexical and embedding rankings of one query, fused by weighted RRF.

For a query (plan in :mod:`edge.text.query`) the rankings are:

=============  ======================================================================  ========
ranking        what                                                                    weight
=============  ======================================================================  ========
``bm25``       typed words + spelling variants, inflections, compounds, typo fixes      1.0
               over the per-angle FTS5 fields (:mod:`edge.catalog.views`)
``every``      products holding every typed word (AND), multi-word queries only        1.0
``text``       the (typo-corrected) query embedded; nearest vectors of the              1.0
               ``text-views`` index (name + description, name, Swedish name,
               brand + category + name), best per product
``same``       other names of the typed words (synonym file ``same``)                  0.7
``purpose``    what a stated purpose calls for (synonym file ``purpose``)              0.7
``text_x``     the first six synonyms and purposes embedded as one text, only when      0.5
               no typed word is a catalog word or a purpose was stated
=============  ======================================================================  ========

Expansions weigh less than typed words (a product matching what was typed outranks one
matching a synonym only). When the typed words match no FTS5 field but the synonym file
expanded them, the typed embedding drops to ``text_unmatched`` (0.3) (the encoder's guess for a word the
catalog lacks, like "kefir", is noise next to the synonym's answer). RRF's constant is 15,
not 60: with six rankings a rank-1 agreement of two must beat rank-10 presence in four.
``text_x`` costs a second encoder run; where the typed words already reach the catalog, the
lexical ``same`` ranking carries the synonyms and the embedding of a list of translations adds
little (tuning half: top-3 0.993 either way, top-1 0.876 vs 0.891, thread CPU p50 2.6 vs
5.0 ms on the loaded dev box).
Weights and constant were chosen on the tuning half of ``benchmarks/data/search_queries.tsv``
(``python -m benchmarks.search``; figures in docs/decisions.md).

An exact product name (the query equal to a product's name, case and accents aside) is
ranked as before this module existed - FTS5 BM25 over name/description/extra and the
name + description embedding, RRF k=60 - so what works today stays exactly as it was.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from edge.core.errors import ConfigError
from edge.text.lexical import Vocabulary, vocabulary_of, words
from edge.text.query import QueryPlan, plan_query
from edge.text.synonyms import SynonymSet, load_synonyms

log = logging.getLogger("storelens.search")

Ranking = list[tuple[int, float]]
# Lookups over more catalog words than this are rebuilt in the background after a change (a 30k-word
# vocabulary takes ~2 s to index for typos; a few thousand words, a few tens of ms).
BACKGROUND_WORDS = 20_000


@dataclass(frozen=True)
class SearchWeights:
    """RRF weight of each ranking (module docstring), the RRF constant and the candidate pool per ranking."""

    bm25: float = 1.0
    every: float = 1.0
    text: float = 1.0
    same: float = 0.7
    purpose: float = 0.7
    text_x: float = 0.5
    text_unmatched: float = 0.3
    rrf_k: int = 15
    pool: int = 20

    def for_plan(self, rankings: Mapping[str, Ranking], plan: QueryPlan) -> dict[str, float]:
        w = {k: v for k, v in asdict(self).items() if k not in ("rrf_k", "pool", "text_unmatched")}
        if not rankings.get("bm25") and (plan.same or plan.purpose):
            w["text"] = self.text_unmatched
        return w


class SearchCatalog(Protocol):
    """What shopper search reads from the catalog (:class:`edge.catalog.db.Catalog`)."""

    @property
    def version(self) -> int: ...

    def search_fields(self, match: str, k: int) -> Ranking: ...

    def search_vocabulary(self) -> list[tuple[str, int]]: ...

    def product_names(self) -> dict[int, str]: ...


@dataclass(frozen=True)
class _Lookups:
    """What a query is planned against, for one catalog version and one synonym set."""

    version: int
    synonyms: SynonymSet
    vocab: Vocabulary
    names: dict[str, int]  # name_key(product name) -> product key


def name_key(text: str) -> str:
    """How a query is compared with product names for the exact-name rule: words only, case and accents folded."""
    return " ".join(words(text))


class ShopperSearch:
    """Synonyms plus the catalog's vocabulary and names, rebuilt when the catalog version changes."""

    def __init__(self, catalog: SearchCatalog, *, synonyms_file: Path | None = None, default_synonyms: bool = True,
                 weights: SearchWeights | None = None) -> None:
        self.catalog = catalog
        self.weights = weights or SearchWeights()
        self.synonyms_file = synonyms_file
        self.default_synonyms = default_synonyms
        self.synonyms: SynonymSet = load_synonyms(synonyms_file, default=default_synonyms)
        self._lock = threading.Lock()
        self._cache: _Lookups | None = None
        self._rebuilding = False

    def reload(self) -> bool:
        """Re-read the synonym files when one changed on disk (True if they did; a broken file keeps the old
        set), and bring the lookups up to the catalog as it is now, so the next query does not wait for them."""
        changed = self._reload_synonyms()
        self._state()
        return changed

    def _reload_synonyms(self) -> bool:
        if not self.synonyms.changed():
            return False
        try:
            fresh = load_synonyms(self.synonyms_file, default=self.default_synonyms)
        except ConfigError as e:
            log.error("synonyms not reloaded, the previous ones stay in use: %s (%s)", e, e.hint)
            return False
        with self._lock:
            self.synonyms = fresh
        log.info("synonyms reloaded: %d rules from %s", len(fresh.rules), ", ".join(map(str, fresh.files)))
        return True

    def _state(self) -> _Lookups:
        """The lookups for the current catalog version and synonyms. A small catalog's are rebuilt on the
        spot when either changed; a large one's (over :data:`BACKGROUND_WORDS` words) in the background,
        the previous ones answering meanwhile (a product enrolled a moment ago is then found by its
        name but not yet by its typos, compounds and exact-name rule)."""
        version = self.catalog.version
        with self._lock:
            cache, syn = self._cache, self.synonyms
            if cache is not None and cache.version == version and cache.synonyms is syn:
                return cache
            if cache is not None and len(cache.vocab.counts) > BACKGROUND_WORDS:
                if not self._rebuilding:
                    self._rebuilding = True
                    threading.Thread(target=self._rebuild, args=(version, syn), name="search-vocabulary",
                                     daemon=True).start()
                return cache
        return self._rebuild(version, syn)

    def _rebuild(self, version: int, syn: SynonymSet) -> _Lookups:
        vocab = vocabulary_of(self.catalog.search_vocabulary(), extra=syn.words())
        names = {name_key(n): key for key, n in sorted(self.catalog.product_names().items())}
        built = _Lookups(version=version, synonyms=syn, vocab=vocab, names=names)
        with self._lock:
            self._cache = built
            self._rebuilding = False
        return built

    def exact_name(self, query: str) -> int | None:
        """The key of the product whose name the query is (case, accents and punctuation aside), else None."""
        return self._state().names.get(name_key(query))

    def plan(self, query: str) -> QueryPlan:
        state = self._state()
        return plan_query(query, state.vocab, state.synonyms)

    def rankings(self, plan: QueryPlan, *, nearest: Callable[[str, int], Ranking] | None,
                 pool: int | None = None) -> tuple[dict[str, Ranking], dict[str, float]]:
        """Every ranking of the plan (``pool`` products each), and their weights (``nearest``: text ->
        nearest products; None: no text encoder)."""
        pool = pool or self.weights.pool
        out: dict[str, Ranking] = {}
        for name, match in (("bm25", plan.typed), ("every", plan.every), ("same", plan.same),
                            ("purpose", plan.purpose)):
            if match:
                out[name] = self.catalog.search_fields(match, pool)
        if nearest is not None:
            out["text"] = nearest(plan.embed_typed, pool)
            if plan.embed_expansion and (not plan.typed or plan.purpose):  # see the module docstring
                out["text_x"] = nearest(plan.embed_expansion, pool)
        return out, self.weights.for_plan(out, plan)
