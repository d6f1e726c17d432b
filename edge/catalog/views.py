"""A product's text from several angles, for shopper search: FTS5 fields and embedded views.

Angles (:class:`TextViews`), each filled from what the catalog already keeps:

* ``name`` - the product name;
* ``name_sv`` - the shop-language name, extra text ``name_sv`` (the GSD importer keeps the name
  of the product-page URL there: "Citron Klass 1"), else attribute ``name_sv`` (a table column);
* ``brand`` - attribute ``brand`` (GSD: the manufacturer line, "ARLA KO");
* ``category`` - attribute ``category`` (else GSD ``coarse``; ``-`` read as a space);
* ``description`` / ``description_sv`` - the description and extra text ``description_sv``;
* ``other`` - any other extra text (OCR words of reference photos, ...) except the raw GSD
  ``information`` file, whose product lines the fields above already hold (and whose
  nutrition table would only add noise).

The FTS5 table ``search_fts`` holds one column per angle with its own BM25 weight
(:data:`FIELD_WEIGHTS`); the embedded views (:meth:`TextViews.vector_texts`) are the extra
vectors of a product in the ``text-views`` index, beside the name + description vector of the
``text`` index.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

FIELDS = ("name", "name_sv", "brand", "category", "description", "description_sv", "other")
# BM25 weight of a word in each field: names and brand say most, descriptions least.
FIELD_WEIGHTS: dict[str, float] = {"name": 5.0, "name_sv": 4.0, "brand": 4.0, "category": 3.0,
                                   "description": 1.0, "description_sv": 1.0, "other": 0.5}
VIEWS_MODALITY = "text-views"
SCHEMA = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS search_fts USING fts5(
    {", ".join(FIELDS)}, tokenize='unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE IF NOT EXISTS search_vocab USING fts5vocab(search_fts, 'row');
"""
_OWN_FIELDS = ("information", "description_sv", "name_sv")  # extra-text sources not in ``other``


@dataclass(frozen=True, kw_only=True)
class TextViews:
    """One product's text by angle (empty string: the catalog has nothing for it)."""

    name: str
    name_sv: str = ""
    brand: str = ""
    category: str = ""
    description: str = ""
    description_sv: str = ""
    other: str = ""

    def fields(self) -> dict[str, str]:
        return asdict(self)

    def vector_texts(self) -> list[str]:
        """The extra embedded views: name alone, shop-language name, brand + category + name (distinct, non-empty)."""
        label = " ".join(x for x in (self.brand.title(), self.category) if x)
        texts = [self.name, self.name_sv, f"{label}: {self.name}" if label else ""]
        return [t for t in dict.fromkeys(t.strip() for t in texts) if t]


def product_views(name: str, description: str, attributes: Mapping[str, Any], texts: Mapping[str, str]) -> TextViews:
    """The :class:`TextViews` of a product from its row and its extra texts (by source)."""
    category = str(attributes.get("category") or attributes.get("coarse") or "")
    other = [t for s, t in sorted(texts.items()) if s not in _OWN_FIELDS]
    name_sv = texts.get("name_sv") or str(attributes.get("name_sv") or "")  # a table import: a name_sv column
    return TextViews(name=name, name_sv=name_sv, brand=str(attributes.get("brand") or ""),
                     category=category.replace("-", " "), description=description,
                     description_sv=texts.get("description_sv", ""), other=" \n".join(other))


def refresh(db: sqlite3.Connection, key: int) -> None:
    """Rewrite a product's ``search_fts`` row from its stored row and texts (none once it is deleted)."""
    db.execute("DELETE FROM search_fts WHERE rowid = ?", (key,))
    row = db.execute("SELECT name, description, attributes FROM products WHERE key = ?", (key,)).fetchone()
    if row is None:
        return
    texts = {str(s): str(t) for s, t in db.execute("SELECT source, text FROM product_text WHERE key = ?", (key,))}
    values = product_views(row[0], row[1] or "", json.loads(row[2] or "{}"), texts).fields()
    db.execute(f"INSERT INTO search_fts(rowid, {', '.join(FIELDS)}) VALUES(?{', ?' * len(FIELDS)})",
               (key, *[values[f] for f in FIELDS]))


def missing(db: sqlite3.Connection) -> list[int]:
    """Products without a ``search_fts`` row (a catalog made before the table existed)."""
    return [int(r[0]) for r in db.execute("SELECT key FROM products WHERE key NOT IN (SELECT rowid FROM search_fts)")]


def backfill(db: sqlite3.Connection) -> int:
    """Fill the missing ``search_fts`` rows inside the caller's write transaction; return how many."""
    keys = missing(db)
    for key in keys:
        refresh(db, key)
    return len(keys)


def search(db: sqlite3.Connection, match: str, k: int,
           weights: Mapping[str, float] = FIELD_WEIGHTS) -> list[tuple[int, float]]:
    """(product key, BM25 relevance) best first for an FTS5 ``match`` expression over every field."""
    if not match or k <= 0:
        return []
    w = [float(weights.get(f, 1.0)) for f in FIELDS]
    rows = db.execute(f"SELECT rowid, bm25(search_fts, {', '.join('?' * len(FIELDS))}) AS s FROM search_fts "
                      "WHERE search_fts MATCH ? ORDER BY s LIMIT ?", (*w, match, int(k))).fetchall()
    return [(int(r[0]), -float(r[1])) for r in rows]


def vocabulary_rows(db: sqlite3.Connection) -> list[tuple[str, int]]:
    """(word, number of products containing it) over every field of ``search_fts``."""
    return [(str(t), int(n)) for t, n in db.execute("SELECT term, doc FROM search_vocab")]
