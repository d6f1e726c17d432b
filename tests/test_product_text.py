"""Label text with a real catalog: OCR words of reference photos, profiles, weights fitted and stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.catalog.store import Store
from edge.core.errors import CatalogError, InputError
from edge.text.calibration import calibrate_fusion
from edge.text.fusion import FusionWeights, load_weights, save_weights
from edge.text.ocr.engine import OcrEngine
from edge.text.profiles import OCR_SOURCE, catalog_profiles, read_reference_photos
from tests.encoders_for_tests import TinyImageEncoder
from tests.test_ocr import label

CARTON = np.full((240, 420, 3), 235, np.uint8)  # the same plain carton photo for every product: images tie


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    return OcrEngine(threads=1)


@pytest.fixture
def store(tmp_path: Path, tiny_onnx: Path) -> Iterator[Store]:
    s = Store(data_dir=tmp_path / "data", image_encoder=TinyImageEncoder(tiny_onnx), dtype="f32")
    s.enroll("graddfil", name="Arla Gräddfil 12%", description="Syrad grädde", images=[CARTON])
    s.enroll("mjolk", name="Arla Mellanmjölk", description="Svensk mjölk", images=[CARTON])
    s.enroll("havregurt", name="Havregurt Naturell", images=[label("OATLY"), label("OATLY", "HAVRE")])
    yield s
    s.close()


def test_words_read_off_reference_photos_join_the_product_profile(store: Store, engine: OcrEngine) -> None:
    counts = read_reference_photos(store, engine, progress=False)
    assert counts == {"products": 3, "photos": 4, "unreadable": 0, "with_text": 1}
    key = store.catalog.get("havregurt").key  # type: ignore[union-attr]
    assert store.catalog.texts(key) == {OCR_SOURCE: "oatly\noatly havre"}
    profiles = catalog_profiles(store.catalog)
    assert profiles.skus == ("graddfil", "havregurt", "mjolk")
    assert profiles.score(["oatly"]).tolist() == [0.0, 1.0, 0.0]
    assert profiles.score(["havre"]).tolist() == [0.0, 1.0, 0.0]  # read on 1 photo of 2, but a part of "havregurt"
    assert [r.sku for r in store.search_text("oatly", k=1)] == ["havregurt"]  # FTS5 finds photo words too


def test_the_swedish_name_in_a_product_page_url_matches_a_shelf_sign(store: Store) -> None:
    """Loose fruit has an English title only; its page URL (kept in the information text) says "Ananas"."""
    store.enroll("pineapple", name="Pineapple", images=[CARTON])
    store.writer.set_product_text("pineapple", "information",
                           "Title: Pineapple Klass 1\nURL: https://www.hemkop.se/produkt/Ananas-Klass-1-100145594_ST")
    profiles = catalog_profiles(store.catalog)
    scores = profiles.score(["ananas", "varje", "dag"])  # what OCR reads off the price sign above the fruit
    assert profiles.skus[int(scores.argmax())] == "pineapple" and scores.max() == pytest.approx(1.0)
    assert profiles.score(["100145594"]).max() == 0.0  # the article number is not a product word


def test_calibrate_fits_the_ocr_weight_and_stores_it_with_the_catalog(store: Store, engine: OcrEngine) -> None:
    assert load_weights(store.catalog) == FusionWeights(fitted_on="not calibrated: image only")
    queries = [label("ARLA", "GRADDFIL"), label("MELLANMJOLK"), label("HAVREGURT")]
    w = calibrate_fusion(store, queries, ["graddfil", "mjolk", "havregurt"], engine, source="unit test")
    assert w.metrics["image_r1"] == pytest.approx(1 / 3, abs=1e-4)  # tied images: only the first sku wins
    assert w.metrics["fused_r1"] == 1.0
    # every weight 0.01..1.0 breaks the ties; 0.5 (with its softmax scale) makes the labelled cartons most probable
    assert w.ocr == 0.5
    assert load_weights(store.catalog) == w
    assert w.fitted_on.startswith("unit test (3 queries, catalog v")


def test_calibration_inputs_and_stored_weights_fail_clearly(store: Store, engine: OcrEngine) -> None:
    with pytest.raises(InputError, match="not catalog skus"):
        calibrate_fusion(store, [CARTON], ["nope"], engine)
    with pytest.raises(InputError, match="one label per"):
        calibrate_fusion(store, [CARTON, CARTON], ["mjolk"], engine)
    save_weights(store.catalog, FusionWeights(ocr=0.1))
    assert load_weights(store.catalog).ocr == 0.1
    store.catalog.set_meta("fusion_weights", "{broken")
    with pytest.raises(CatalogError, match="calibrate"):
        load_weights(store.catalog)


def test_cli_reads_a_label_and_enrolls_photo_text(store: Store, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import cv2

    from edge.cli.main import main

    data = store.data_dir
    assert main(["ocr", "enroll", "--data-dir", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"products": 3, "photos": 4, "unreadable": 0, "with_text": 1}
    img = tmp_path / "query.png"
    cv2.imwrite(str(img), label("OATLY"))
    assert main(["ocr", "read", str(img), "--data-dir", str(data), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["tokens"] == ["oatly"] and row["products"] == [{"sku": "havregurt", "text_score": 1.0}]
    assert main(["ocr", "enroll", "--data-dir", str(tmp_path / "none")]) == 7  # CatalogError: no catalog
    assert "no catalog" in capsys.readouterr().err


def test_storelens_calibrate_fusion_stores_the_ocr_weight(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end with the embedded image bundle: enroll plain cartons, calibrate on labelled label photos."""
    import json

    import cv2

    from edge.catalog.db import Catalog
    from edge.cli.main import main

    data, photos = tmp_path / "data", tmp_path / "labelled"
    carton = tmp_path / "carton.png"
    cv2.imwrite(str(carton), CARTON)
    words = {"graddfil": ("ARLA", "GRADDFIL"), "mjolk": ("MELLANMJOLK",), "havregurt": ("HAVREGURT",)}
    names = {"graddfil": "Arla Gräddfil", "mjolk": "Arla Mellanmjölk", "havregurt": "Oatly Havregurt"}
    for sku, name in names.items():
        assert main(["catalog", "add", sku, "--name", name, "--image", str(carton), "--data-dir", str(data)]) == 0
        (photos / sku).mkdir(parents=True)
        cv2.imwrite(str(photos / sku / "1.png"), label(*words[sku]))
    capsys.readouterr()
    assert main(["calibrate", str(photos), "--holdout", "0", "--fusion", "--json", "--data-dir", str(data)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert ("fusion: OCR weight 0.5; recall@1 on the 3 photos it was fitted on (none held out): image only 0.333 "
            "-> with label text 1.000") in out["problems"]
    cat = Catalog(data / "catalog.db")
    try:
        assert load_weights(cat).ocr == 0.5
    finally:
        cat.close()
