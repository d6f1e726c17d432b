"""The Grocery Store dataset (GSD) layout: its importer and the parsing of its product text files.

What names and describes a GSD product: the ``*_Information.txt`` lines that are product text
(not nutrition), the shop-language name in a product page's URL, and a product folder's
descriptions. The word profiles (:mod:`edge.text.profiles`) reuse the same parsing.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edge.catalog.importers.tables import ImportIssue, ProductRecord, read_text_file
from edge.core.errors import CatalogError

DEFAULT_SPLIT = "train.txt"  # the split whose photos become reference images
PHOTOS_PER_PRODUCT = 10  # reference photos per product (besides the iconic image)
SWEDISH_DESCRIPTION = "description_sv"  # extra-text source of a GSD product's *_Description_Swedish.txt
SWEDISH_NAME = "name_sv"  # extra-text source of the shop-language names in its product-page URLs

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

    Why: the GSD catalog's titles are partly English, but the store's shelf signs and labels
    are Swedish, and the page slug keeps the Swedish name ("Ananas-Klass-1-100145594_ST" ->
    "Ananas Klass 1", "Purjolok-Klass-1-..." -> "Purjolok Klass 1"). Loose fruit has no
    Swedish description, so the slug is where its sign words ("ananas", "apelsiner") come from.
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


def manufacturer(info: str) -> str:
    """The maker in a GSD ``Manufacturer and volume: ARLA KO , 1l`` line, without the volume ('' if none)."""
    for line in information_texts(info, ("manufacturer and volume",)):
        maker = line.replace("\xa0", " ").split(",")[0].strip()
        if maker:
            return maker
    return ""


def description_lines(raw: str) -> list[str]:
    """The text lines of a description file; the source-page URL lines some of them end with are left out."""
    return [ln.strip() for ln in raw.splitlines() if ln.strip() and not ln.strip().startswith("http")]


def read_grocery_store(root: Path, *, split: str | None = DEFAULT_SPLIT, max_images: int | None = PHOTOS_PER_PRODUCT,
                       iconic: bool = True) -> Iterator[ProductRecord | ImportIssue]:
    """The Grocery Store dataset: one product per fine class (sku = class name).

    Name: the ``Title:`` of ``*_Information.txt`` (else the class name); description from
    ``*_Description.txt``; the whole information text and the Swedish description (the store's
    language, what labels and OCR read) are kept as extra text (``information``,
    ``description_sv``) for lexical search and the word profiles, as the benchmarks build them;
    the Swedish names of its product-page URLs as extra text ``name_sv`` and the manufacturer as
    attribute ``brand`` (angles of shopper search, :mod:`edge.catalog.views`).
    Images: the iconic image and up to ``max_images`` photos of the class from ``split`` (paths
    relative to ``root``; ``None`` = iconic only).
    """
    classes = root / "classes.csv"
    if not classes.is_file():
        raise CatalogError(f"{root} has no classes.csv", hint="pass the grocery-store dataset folder")
    photos: dict[int, list[Path]] = {}
    if split:
        for _line, fields in _split_lines(root / split):
            if isinstance(fields, ImportIssue):
                yield fields
                continue
            photos.setdefault(int(fields[1]), []).append(root / fields[0])
    with classes.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            line = reader.line_num
            if len(row) < 6:
                yield ImportIssue(source=str(classes), line=line, message="expected 6 columns")
                continue
            name_cls, cid, coarse = row[0].strip(), int(row[1]), row[2].strip()
            iconic_path = root / row[4].strip().lstrip("/")
            info = read_text_file(iconic_path.parent / f"{name_cls}_Information.txt")
            title = next(iter(information_texts(info, ("title",))), "")
            images = ([iconic_path] if iconic else []) + photos.get(cid, [])[: max_images or None]
            swedish = "\n".join(description_lines(
                read_text_file(iconic_path.parent / f"{name_cls}_Description_Swedish.txt")))
            name_sv = "\n".join(dict.fromkeys(information_texts(info, ("url",))))
            extra = {k: v for k, v in (("information", info), (SWEDISH_DESCRIPTION, swedish),
                                       (SWEDISH_NAME, name_sv)) if v}
            brand = {"brand": maker} if (maker := manufacturer(info)) else {}
            yield ProductRecord(
                sku=name_cls, name=title or name_cls.replace("-", " "),
                description=read_text_file(root / row[5].strip().lstrip("/")),
                attributes={"class_id": cid, "coarse": coarse, **brand}, images=tuple(images),
                extra_text=extra, source=str(classes), line=line)


def _split_lines(path: Path) -> Iterator[tuple[int, list[str] | ImportIssue]]:
    if not path.is_file():
        raise CatalogError(f"split file not found: {path}", hint="pass --split with a file beside classes.csv")
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = [f.strip() for f in text.split(",")]
        if not text.strip():
            continue
        if len(fields) < 2 or not fields[1].isdigit():
            yield line, ImportIssue(source=str(path), line=line, message="expected `path, fine_label, coarse_label`")
            continue
        yield line, fields
