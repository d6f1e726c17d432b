"""Catalog in real SQLite files and the importers: bad rows are reported with file and line and skipped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.catalog.db import Catalog, Product, fts_query
from edge.catalog.importers.gsd import SWEDISH_DESCRIPTION, read_grocery_store
from edge.catalog.importers.tables import ImportIssue, ProductRecord, detect_format, read_folder, read_table
from edge.catalog.store import Store
from edge.core.errors import CatalogError
from tests.encoders_for_tests import TinyImageEncoder, TrigramTextEncoder, product_image, write_jpeg


@pytest.fixture
def store(tmp_path: Path, tiny_onnx: Path) -> Iterator[Store]:
    s = Store(data_dir=tmp_path / "data", image_encoder=TinyImageEncoder(tiny_onnx),
              text_encoder=TrigramTextEncoder(), dtype="f16")
    yield s
    s.close()


def test_catalog_is_wal_and_versions_every_write(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.db")
    assert cat._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert cat.version == 0
    with cat.transaction() as db:
        key = cat.upsert_product(db, Product(key=0, sku="A1", name="Oat milk", description="Creamy oat drink",
                                             price=1.5, attributes={"brand": "Oatly"}))
    with cat.transaction() as db:
        cat.set_text(db, key, "ocr", "HAVREDRYCK barista")
    assert cat.version == 2
    got = cat.get("A1")
    assert got is not None and (got.name, got.price, dict(got.attributes)) == ("Oat milk", 1.5, {"brand": "Oatly"})
    assert [k for k, _ in cat.fts_search("havre", 5)] == [key]  # extra text is searchable, prefix match
    assert [k for k, _ in cat.fts_search('creamy" OR (', 5)] == [key]  # FTS syntax in user input is harmless
    with cat.transaction() as db:
        assert cat.delete_product(db, "A1") == key
    assert cat.fts_search("oat", 5) == [] and cat.count() == 0
    cat.close()


def test_fts_query_quotes_words() -> None:
    assert fts_query('Red "apple" apple*') == '"red"* OR "apple"*'


def test_csv_import_reports_bad_rows_with_file_and_line(tmp_path: Path, store: Store) -> None:
    img = tmp_path / "imgs"
    write_jpeg(img / "a.jpg", product_image(1))
    write_jpeg(img / "b.jpg", product_image(2))
    good = (img / "b.jpg").read_bytes()
    (img / "trunc.jpg").write_bytes(good[:-2])  # cut short: end-of-image marker gone
    (img / "junk.jpg").write_bytes(b"not an image at all")
    rows = [
        b"sku,name,description,price,images,brand",
        b"A,Apple juice,Cloudy apple juice,2.5,imgs/a.jpg,Bravo",  # line 2 ok
        b"B,Banana,Yellow fruit,0.3,imgs/missing.jpg",  # 3 missing image -> skipped
        b"C,Carrot,,,imgs/trunc.jpg;imgs/b.jpg",  # 4 truncated image skipped, row kept with b.jpg
        b"A,Apple again,,,imgs/a.jpg",  # 5 duplicate sku
        "D,Caf\xe9 latte,,1,imgs/a.jpg".encode("latin-1"),  # 6 not UTF-8
        b"E,Eggs,,abc,imgs/a.jpg",  # 7 bad price
        b"F,Figs,,,imgs/junk.jpg",  # 8 not an image
        b",Nameless,,,imgs/a.jpg",  # 9 no sku
        b"G,Grapes,Green grapes,,",  # 10 text-only product is fine
    ]
    table = tmp_path / "products.csv"
    table.write_bytes(b"\n".join(rows) + b"\n")
    report = store.import_records(read_table(table), progress=False)

    assert (report.rows, report.products_added, report.rows_skipped, report.images_added) == (9, 3, 6, 2)
    where = sorted((i.line, i.message.split(":")[0]) for i in report.issues)
    assert [line for line, _ in where] == [3, 3, 4, 5, 6, 7, 8, 8, 9]
    text = "\n".join(str(i) for i in report.issues)
    assert f"{table}:3: image skipped: image not found" in text
    assert f"{table}:3: no readable image for sku 'B'" in text
    assert f"{table}:4: image skipped: {img}/trunc.jpg: not a readable image" in text  # this OpenCV rejects cut JPEGs
    assert f"{table}:5: duplicate sku 'A'" in text
    assert f"{table}:6: text is not valid UTF-8" in text
    assert f"{table}:7: price 'abc' is not a number" in text
    assert f"{table}:8: no readable image for sku 'F'" in text
    assert f"{table}:9: missing sku" in text
    assert [p.sku for p in store.catalog.products()] == ["A", "C", "G"]
    assert dict(store.catalog.get("A").attributes) == {"brand": "Bravo"}  # type: ignore[union-attr]
    assert store.catalog.images("C") == [str(img / "b.jpg")]
    assert store.index_meta("image").vectors == 2  # type: ignore[union-attr]
    assert store.index_meta("text").products == 3  # type: ignore[union-attr]


def test_jsonl_import_and_existing_sku_needs_replace(tmp_path: Path, store: Store) -> None:
    write_jpeg(tmp_path / "x.jpg", product_image(3))
    lines = [json.dumps({"sku": "X", "name": "Xylitol gum", "images": ["x.jpg"], "location": "aisle 3"}),
             "{broken", json.dumps(["not", "an", "object"]), ""]
    table = tmp_path / "p.jsonl"
    table.write_text("\n".join(lines), encoding="utf-8")
    first = store.import_records(read_table(table), progress=False)
    assert (first.products_added, first.rows_skipped) == (1, 2)
    assert [i.line for i in first.issues] == [2, 3]
    again = store.import_records(read_table(table), progress=False)
    assert (again.products_added, again.products_replaced) == (0, 0)
    assert "already in the catalog (pass --replace" in str(again.issues[0])
    replaced = store.import_records(read_table(table), replace=True, progress=False)
    assert replaced.products_replaced == 1
    assert store.index_meta("image").vectors == 1  # type: ignore[union-attr]  # old vector removed, new added
    assert store.catalog.get("X").location == "aisle 3"  # type: ignore[union-attr]


def test_folder_import(tmp_path: Path, store: Store) -> None:
    root = tmp_path / "shots"
    for sku in ("s1", "s2"):
        for j in range(2):
            write_jpeg(root / sku / f"{j}.jpg", product_image(int(sku[1]) * 10 + j))
    (root / "s2" / "name.txt").write_text("Sparkling water")
    (root / "empty").mkdir()
    recs = list(read_folder(root))
    assert detect_format(root) == "folder"
    assert isinstance(recs[0], ImportIssue) and "no images" in recs[0].message
    report = store.import_records(recs, progress=False)
    assert (report.products_added, report.images_added, report.rows_skipped) == (2, 4, 1)
    assert store.catalog.get("s2").name == "Sparkling water"  # type: ignore[union-attr]


def test_grocery_store_layout(tmp_path: Path) -> None:
    """A miniature of the dataset's layout (split file + classes.csv + iconic folder)."""
    root = tmp_path / "gs"
    ic = root / "iconic-images-and-descriptions" / "Fruit" / "Apple" / "Pink-Lady"
    write_jpeg(ic / "Pink-Lady_Iconic.jpg", product_image(1))
    (ic / "Pink-Lady_Description.txt").write_text("Crisp and sweet.")
    (ic / "Pink-Lady_Information.txt").write_text(
        "Title: Äpple Pink Lady Klass 1\nManufacturer and volume: FRUKTKOMPANIET\xa0,\xa01kg\nCountry: Chile\n"
        "URL: https://www.hemkop.se/produkt/Apple-Pink-Lady-Klass-1-100145594_ST\n")
    (ic / "Pink-Lady_Description_Swedish.txt").write_text("Krispigt och sött.\n\nhttps://www.ica.se/x\n")
    for j in range(3):
        write_jpeg(root / "train" / "Fruit" / "Apple" / "Pink-Lady" / f"p{j}.jpg", product_image(1, noise=5))
    (root / "classes.csv").write_text(
        "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),Iconic Image Path (str),"
        "Product Description Path (str)\n"
        "Pink-Lady,2,Apple,0,/iconic-images-and-descriptions/Fruit/Apple/Pink-Lady/Pink-Lady_Iconic.jpg,"
        "/iconic-images-and-descriptions/Fruit/Apple/Pink-Lady/Pink-Lady_Description.txt\n")
    (root / "train.txt").write_text("".join(f"train/Fruit/Apple/Pink-Lady/p{j}.jpg, 2, 0\n" for j in range(3))
                                    + "garbage line\n")
    assert detect_format(root) == "grocery-store"
    recs = list(read_grocery_store(root, split="train.txt", max_images=2))
    issue, rec = recs
    assert isinstance(issue, ImportIssue) and issue.line == 4
    assert isinstance(rec, ProductRecord)
    assert (rec.sku, rec.name, rec.description) == ("Pink-Lady", "Äpple Pink Lady Klass 1", "Crisp and sweet.")
    assert [p.name for p in rec.images] == ["Pink-Lady_Iconic.jpg", "p0.jpg", "p1.jpg"]
    assert "Chile" in rec.extra_text["information"]
    assert rec.extra_text[SWEDISH_DESCRIPTION] == "Krispigt och sött."  # the source URL line left out
    assert rec.extra_text["name_sv"] == "Apple Pink Lady Klass 1"  # the shop-language name of its page URL
    assert rec.attributes == {"class_id": 2, "coarse": "Apple", "brand": "FRUKTKOMPANIET"}


def test_missing_table_and_header_are_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not found"):
        list(read_table(tmp_path / "nope.csv"))
    (tmp_path / "h.csv").write_text("name,price\nA,1\n")
    with pytest.raises(CatalogError, match="no 'sku' column"):
        list(read_table(tmp_path / "h.csv"))


def test_product_vectors_are_unit_means(store: Store) -> None:
    store.enroll("M", name="Mango", images=[product_image(5), product_image(5, noise=30)])
    assert store.image_encoder is not None and store.text_encoder is not None
    emb = store.catalog.product_vectors("image", store.image_encoder.fingerprint)
    assert list(emb) == ["M"]
    assert float(np.linalg.norm(emb["M"])) == pytest.approx(1.0, abs=1e-5)
    assert store.catalog.product_vectors("text", store.text_encoder.fingerprint)["M"].shape == (64,)
