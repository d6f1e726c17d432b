"""Catalog importers: product tables (CSV / JSONL) and ``<root>/<sku>/*.jpg`` folders.

Each importer yields :class:`ProductRecord` (a product and its image paths, with the file and
line it came from) or :class:`ImportIssue` (a bad row, with file and line and what to fix).
Problems never stop an import: the caller skips the row, counts it, and reports it at the end.
Images are only *listed* here; :class:`edge.catalog.store.Store` reads them and reports unreadable or
truncated files against the same file and line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.catalog.db import ProductFields
from edge.core.errors import CatalogError
from edge.models.preprocess import IMAGE_SUFFIXES

_CORE = ("sku", "name", "description", "price", "location", "barcode")
_IMAGE_COLUMNS = ("images", "image", "image_paths", "image_path")


@dataclass(frozen=True, kw_only=True)
class ProductRecord(ProductFields):
    """One product to enroll, as read from an import source."""

    images: tuple[Path, ...] = ()
    extra_text: Mapping[str, str] = field(default_factory=dict)
    source: str = ""  # file the row came from
    line: int = 0  # 1-based line (0: not line-based)


@dataclass(frozen=True, kw_only=True)
class ImportIssue:
    """A bad row or image, skipped: where it is and what is wrong."""

    source: str
    line: int
    message: str
    sku: str | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.message}"


def detect_format(path: Path) -> str:
    """``table`` (.csv/.jsonl), ``grocery-store`` (a folder with classes.csv) or ``folder``."""
    if path.is_dir():
        return "grocery-store" if (path / "classes.csv").is_file() else "folder"
    if path.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
        return "table"
    raise CatalogError(f"cannot tell the import format of {path}",
                       hint="give a .csv/.jsonl product table, a <root>/<sku>/*.jpg folder, or pass --format")


def read_table(path: Path) -> Iterator[ProductRecord | ImportIssue]:
    """Rows of a CSV (header line) or JSONL product table; image paths relative to the table's folder.

    Columns: ``sku``, ``name`` (required), ``description``, ``price``, ``location``, ``barcode``,
    ``images`` (several separated by ``;``; JSONL may give a list); any other column becomes a
    free attribute.
    """
    if not path.is_file():
        raise CatalogError(f"product table not found: {path}", hint="check the path")
    raw = path.read_bytes()
    rows = _jsonl_rows(path, raw) if path.suffix.lower() in (".jsonl", ".ndjson") else _csv_rows(path, raw)
    seen: set[str] = set()
    for line, row in rows:
        if isinstance(row, ImportIssue):
            yield row
            continue
        rec = _record(path, line, row)
        if isinstance(rec, ProductRecord):
            if rec.sku in seen:
                yield ImportIssue(source=str(path), line=line, sku=rec.sku,
                                  message=f"duplicate sku {rec.sku!r} (first row kept)")
                continue
            seen.add(rec.sku)
        yield rec


def _csv_rows(path: Path, raw: bytes) -> Iterator[tuple[int, dict[str, Any] | ImportIssue]]:
    # surrogateescape keeps undecodable bytes visible per row, so one bad row does not sink the file.
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "sku" not in [f.strip().lower() for f in reader.fieldnames]:
        raise CatalogError(f"{path}: the header line has no 'sku' column",
                           hint="the first line must name the columns: sku,name,description,...,images")
    start = 2
    for row in reader:
        line = start
        start = reader.line_num + 1
        if None in row:
            yield line, ImportIssue(source=str(path), line=line, message="more fields than header columns")
            continue
        clean = {str(k).strip().lower(): (v or "").strip() for k, v in row.items()}
        if any(_has_bad_bytes(v) for v in clean.values()):
            yield line, ImportIssue(source=str(path), line=line, sku=_printable(clean.get("sku")),
                                    message="text is not valid UTF-8 (save the table as UTF-8)")
            continue
        yield line, clean


def _jsonl_rows(path: Path, raw: bytes) -> Iterator[tuple[int, dict[str, Any] | ImportIssue]]:
    for line, chunk in enumerate(raw.splitlines(), start=1):
        if not chunk.strip():
            continue
        try:
            obj = json.loads(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            yield line, ImportIssue(source=str(path), line=line, message="text is not valid UTF-8")
            continue
        except ValueError as e:
            yield line, ImportIssue(source=str(path), line=line, message=f"not valid JSON: {e}")
            continue
        if not isinstance(obj, dict):
            yield line, ImportIssue(source=str(path), line=line, message="a line must be a JSON object")
            continue
        yield line, {str(k).strip().lower(): v for k, v in obj.items()}


def _record(path: Path, line: int, row: dict[str, Any]) -> ProductRecord | ImportIssue:
    def issue(msg: str) -> ImportIssue:
        return ImportIssue(source=str(path), line=line, sku=_printable(row.get("sku")), message=msg)

    sku = str(row.get("sku") or "").strip()
    name = str(row.get("name") or "").strip()
    if not sku:
        return issue("missing sku")
    if not name:
        return issue(f"missing name for sku {sku!r}")
    price: float | None = None
    if row.get("price") not in (None, ""):
        try:
            price = float(row["price"])
        except (TypeError, ValueError):
            return issue(f"price {row['price']!r} is not a number")
    images_raw: Any = next((row[c] for c in _IMAGE_COLUMNS if row.get(c) not in (None, "")), [])
    paths = images_raw if isinstance(images_raw, list) else [p for p in str(images_raw).split(";")]
    images = tuple(_resolve(path.parent, str(p).strip()) for p in paths if str(p).strip())
    attrs = {k: v for k, v in row.items() if k not in _CORE and k not in _IMAGE_COLUMNS and v not in (None, "")}
    return ProductRecord(sku=sku, name=name, description=str(row.get("description") or ""), price=price,
                         location=_opt(row.get("location")), barcode=_opt(row.get("barcode")), attributes=attrs,
                         images=images, source=str(path), line=line)


def read_folder(root: Path) -> Iterator[ProductRecord | ImportIssue]:
    """``<root>/<sku>/*.jpg``: one product per sub-folder, named after it (``name.txt`` /
    ``description.txt`` inside the folder, when present, give name and description)."""
    if not root.is_dir():
        raise CatalogError(f"image folder not found: {root}", hint="pass a folder laid out as <root>/<sku>/*.jpg")
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        images = tuple(sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        if not images:
            yield ImportIssue(source=str(sub), line=0, sku=sub.name, message="no images (.jpg/.png) in the folder")
            continue
        name = read_text_file(sub / "name.txt") or sub.name.replace("_", " ").replace("-", " ")
        yield ProductRecord(sku=sub.name, name=name.strip(), description=read_text_file(sub / "description.txt"),
                            images=images, source=str(sub))


def _resolve(base: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else base / path


def read_text_file(path: Path) -> str:
    """A small text file's stripped content; empty when it is missing or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def _opt(v: Any) -> str | None:
    return None if v in (None, "") else str(v)


def _has_bad_bytes(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def _printable(v: Any) -> str | None:
    return None if v is None else str(v).encode("utf-8", "replace").decode("utf-8")
