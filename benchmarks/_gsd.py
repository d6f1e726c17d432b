"""The catalog text of one Grocery Store dataset product folder, for catalog-only enrollment in benchmarks.

Never imported by edge/: a store's catalog text comes from its import (:mod:`edge.catalog.importers.gsd`).
"""

from __future__ import annotations

from pathlib import Path

from edge.catalog.importers.gsd import DESCRIPTION_KEYS, TITLE_KEYS, description_lines, information_texts
from edge.core.errors import CatalogError
from edge.text.profiles import ProductText


def gsd_product_text(product_dir: Path, name: str, *, sku: str | None = None) -> ProductText:
    """The catalog text of one GSD product folder (catalog-only enrollment needs nothing else).

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
