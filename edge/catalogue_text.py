"""Product text of a catalogue in the Grocery Store (GSD) layout: what names and describes each product.

Separate from :mod:`edge.fusion` (which scores text) because it parses one dataset's files:
the ``*_Information.txt`` lines that are product text, the shop-language name in a product
page's URL, and a product folder's descriptions. Used by the GSD importer's catalog text
(:mod:`edge.product_text`) and by catalogue-only enrollment in the benchmarks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from edge.errors import CatalogError

if TYPE_CHECKING:  # edge.fusion pulls in numpy, OpenCV and OCR; the importer needs none of them
    from edge.fusion import ProductText

# Lines of a GSD *_Information.txt that are product text (nutrition tables are not):
# title-like lines name the product (full weight), the others describe it (fusion.DESCRIPTION_WEIGHT).
# A URL line counts for the product name its page slug carries (see :func:`url_product_name`).
TITLE_KEYS = ("title", "manufacturer and volume", "url")
DESCRIPTION_KEYS = ("description", "ingredients")


def information_texts(info: str, keys: Sequence[str] = TITLE_KEYS + DESCRIPTION_KEYS) -> list[str]:
    """The product-text lines with one of ``keys`` of a GSD ``*_Information.txt`` (not nutrition).

    A ``URL`` line gives the product name of its page slug (:func:`url_product_name`), not the URL.
    """
    out = []
    for line in info.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if not sep or key not in keys or not value:
            continue
        if key == "url":
            name = url_product_name(value)
            if name:
                out.append(name)
        else:
            out.append(value)
    return out


_SLUG_ID = re.compile(r"[-_](?:id[-_]p[-_])?\d{5,}(?:_[A-Za-z]+)?$")  # article number (+unit): -100145594_ST


def url_product_name(url: str) -> str | None:
    """The product name in a shop page's slug, in the shop's language; None if the URL has none.

    Why: the GSD catalogue's titles are partly English, but the store's shelf signs and labels
    are Swedish, and the page slug keeps the Swedish name ("Ananas-Klass-1-100145594_ST" ->
    "Ananas Klass 1", "Purjolok-Klass-1-..." -> "Purjolok Klass 1"). Loose fruit has no
    Swedish description, so its sign words ("ananas", "apelsiner") matched nothing before.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    segments = [seg for seg in parts.path.split("/") if seg]
    if not segments:
        return None
    slug = _SLUG_ID.sub("", unquote(segments[-1]))
    name = " ".join(w for w in re.split(r"[-_+]+", slug) if w)
    return name if any(ch.isalpha() for ch in name) else None


def description_lines(raw: str) -> list[str]:
    """The text lines of a description file; the source-page URL lines some of them end with are left out."""
    return [ln.strip() for ln in raw.splitlines() if ln.strip() and not ln.strip().startswith("http")]


def gsd_product_text(product_dir: Path, name: str, *, sku: str | None = None) -> ProductText:
    """The catalogue text of one GSD product folder (catalogue-only enrollment needs nothing else).

    Titles: the folder name and the Information file's title and manufacturer lines;
    texts: the English and Swedish descriptions and the Information description and
    ingredients. Missing files are absent (fruit has no Swedish description); a file that is
    not UTF-8 is a :class:`CatalogError` naming it.
    """
    from edge.fusion import ProductText

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
