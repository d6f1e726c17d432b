"""Shopper text search over the real Grocery Store catalog: real SQLite FTS5, USearch and the MiniLM bundle.

The catalog (81 products, text only) is imported once per module; each test opens its own
:class:`Store` on it with the settings it needs.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.catalog.importers.gsd import read_grocery_store
from edge.catalog.store import Store
from edge.catalog.views import VIEWS_MODALITY
from edge.core.config import ModelSettings, load_settings
from edge.models.encoders import load_text_encoder
from edge.models.encoders.base import TextEncoder
from edge.pipeline.factory import assemble_runtime
from tests.conftest import shared_dir
from tests.encoders_for_tests import TinyImageEncoder

GSD = shared_dir() / "datasets" / "grocery-store"


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return load_text_encoder(ModelSettings(threads=1))


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory, minilm: TextEncoder) -> Path:
    data = tmp_path_factory.mktemp("gsd") / "data"
    store = Store(data_dir=data, text_encoder=minilm)
    report = store.import_records(read_grocery_store(GSD, split=None, iconic=False), progress=False)
    assert (report.products_added, report.rows_skipped) == (81, 0)
    store.close()
    return data


@pytest.fixture
def store(catalog_dir: Path, minilm: TextEncoder) -> Iterator[Store]:
    s = Store(data_dir=catalog_dir, text_encoder=minilm)
    yield s
    s.close()


def top(store: Store, query: str, k: int = 3) -> list[str]:
    return [r.sku for r in store.search_text(query, k=k)]


def test_exact_product_names_rank_exactly_as_the_plain_search(catalog_dir: Path, minilm: TextEncoder) -> None:
    shopper = Store(data_dir=catalog_dir, text_encoder=minilm)
    plain = Store(data_dir=catalog_dir, text_encoder=minilm, text_search="plain")
    names = {p.sku: p.name for p in plain.catalog.products()}
    assert len(names) == 81
    for name in names.values():
        for query in (name, name.upper()):
            got = [r.to_dict() for r in shopper.search_text(query, k=5)]
            assert got == [r.to_dict() for r in plain.search_text(query, k=5)], query
    assert sum(top(plain, name, 1) == [sku] for sku, name in names.items()) == 77  # as it was
    shopper.close()
    plain.close()


def test_every_product_has_its_angles_as_fields_and_vectors(store: Store) -> None:
    key = store.catalog.get("Arla-Standard-Milk").key  # type: ignore[union-attr]
    row = store.catalog._db.execute("SELECT name, name_sv, brand, category FROM search_fts WHERE rowid = ?",
                                    (key,)).fetchone()
    assert tuple(row) == ("Mjölk 3%", "Mjolk 3procent", "ARLA KO", "Milk")
    meta = store.index_meta(VIEWS_MODALITY)
    # name + description, name, Swedish name, brand + category + name; an empty or repeated view is left out
    assert meta is not None and (meta.products, meta.vectors) == (81, 320)


def test_shopper_words_find_products(store: Store) -> None:
    assert top(store, "courgettes", 1) == ["Zucchini"]  # British name (synonym file)
    assert top(store, "citroner", 1) == ["Lemon"]  # Swedish plural of the URL name "Citron"
    assert top(store, "vattenmelon", 1) == ["Watermelon"]  # compound split: vatten + melon
    assert top(store, "grapefriut", 1) == ["Red-Grapefruit"]  # a swap of two letters
    assert top(store, "kefir", 1) == ["Arla-Sour-Milk"]  # known only to the synonym file
    assert set(top(store, "arla yoghurt")) == {"Arla-Natural-Mild-Low-Fat-Yoghurt", "Arla-Mild-Vanilla-Yoghurt",
                                               "Arla-Natural-Yoghurt"}
    assert set(top(store, "semi skimmed milk")) <= {"Arla-Medium-Fat-Milk", "Arla-Lactose-Medium-Fat-Milk",
                                                    "Garant-Ecological-Medium-Fat-Milk",
                                                    "Arla-Ecological-Medium-Fat-Milk"}
    scores = store.search_text("mandarins", k=3)[1].scores
    # typed "mandarin" names a juice; the satsumas come from the synonym file and the encoder
    assert (store.search_text("mandarins", k=3)[1].sku, set(scores)) == ("Satsumas", {"same", "text"})
    # a word the catalog lacks: its synonyms are embedded too (text_x); the typed embedding does not find it
    assert set(store.search_text("kefir", k=1)[0].scores) == {"same", "text_x"}


def test_a_stores_own_synonym_takes_effect_on_the_runtime_reload_command(
        catalog_dir: Path, minilm: TextEncoder, tmp_path: Path, tiny_onnx: Path) -> None:
    own = tmp_path / "synonyms.toml"
    own.write_text('[[same]]\nterms = ["kanelbulle", "cinnamon bun"]\n', encoding="utf-8")
    settings = load_settings(None, device={"store": "s1", "id": "d1"}, mqtt={"enabled": False},
                             catalog={"data_dir": str(catalog_dir), "synonyms": str(own)})
    store = Store.from_settings(settings, image_encoder=TinyImageEncoder(tiny_onnx), text_encoder=minilm)
    rt = assemble_runtime(settings=settings, encoder=store.image_encoder, matcher=store,  # type: ignore[arg-type]
                          out=io.StringIO())

    def search(text: str) -> list[str]:
        reply = rt.router.handle("search", json.dumps({"text": text, "k": 3}).encode())
        return [c["sku"] for c in reply["result"]["candidates"]]

    try:
        assert search("guldäpple")[0] != "Golden-Delicious"
        own.write_text('[[same]]\nterms = ["kanelbulle", "cinnamon bun"]\n[[same]]\n'
                       'terms = ["guldäpple", "golden delicious"]\n', encoding="utf-8")
        assert rt.router.handle("reload", b"{}")["ok"] is True
        assert search("guldäpple")[0] == "Golden-Delicious"
        assert search("Guldäpplen")[0] == "Golden-Delicious"  # case, accents and the plural ending aside
        own.write_text("[[same]\n", encoding="utf-8")  # broken: logged, the previous synonyms stay
        assert rt.router.handle("reload", b"{}")["ok"] is True
        assert search("guldäpple")[0] == "Golden-Delicious"
    finally:
        rt.shutdown()
        store.close()


def test_a_catalog_from_before_shopper_search_gets_its_fields_on_open(catalog_dir: Path, minilm: TextEncoder,
                                                                       tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(catalog_dir, old)
    store = Store(data_dir=old, text_encoder=minilm)
    store.catalog._db.execute("DELETE FROM search_fts")  # as a catalog.db written before the table existed
    store.close()
    reopened = Store(data_dir=old, text_encoder=minilm)
    assert reopened.catalog._db.execute("SELECT COUNT(*) FROM search_fts").fetchone()[0] == 81
    assert top(reopened, "citroner", 1) == ["Lemon"]
    reopened.close()


def test_the_frozen_held_out_query_set_is_unchanged_and_all_held_out() -> None:
    """benchmarks/data/search_queries_v2.tsv is frozen: its sha256 is the one docs/benchmarks.md recorded."""
    import hashlib

    from benchmarks.search import QUERIES_V2, QUERIES_V2_SHA256, read_queries

    assert hashlib.sha256(QUERIES_V2.read_bytes()).hexdigest() == QUERIES_V2_SHA256
    docs = (QUERIES_V2.parents[2] / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert QUERIES_V2_SHA256 in docs
    queries = read_queries(QUERIES_V2)
    assert len(queries) >= 150 and {q.half for q in queries} == {"held-out"}
