"""Text scores and the fusion rule: real OCR on drawn labels, exact rankings, weights that round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks._gsd import gsd_product_text
from edge.catalog.importers.gsd import information_texts, url_product_name
from edge.core.errors import CatalogError, InputError
from edge.core.types import Candidate
from edge.text.calibration import fit_weights, macro_recall_at_1
from edge.text.fusion import FusionWeights, fuse, fuse_candidates
from edge.text.normalise import tokens
from edge.text.ocr.engine import OcrEngine
from edge.text.profiles import ProductText, TextProfiles
from tests.test_ocr import label

CATALOG = [
    ProductText(sku="arla-graddfil", titles=("Arla Gräddfil 12%", "ARLA KO"), texts=("Syrad grädde",)),
    ProductText(sku="arla-mjolk", titles=("Arla Mellanmjölk 1,5%",), texts=("Svensk mjölk från Arla",)),
    ProductText(sku="oatly-havregurt", titles=("Havregurt Naturell", "OATLY, 1kg")),
    ProductText(sku="banana", titles=("Banana",), texts=("Yellow and sweet",)),
]
SKUS = [p.sku for p in CATALOG]


@pytest.fixture(scope="module")
def profiles() -> TextProfiles:
    return TextProfiles.build(CATALOG)


def test_ocr_of_a_drawn_label_finds_the_right_product(profiles: TextProfiles) -> None:
    read = OcrEngine(threads=1).read(label("ARLA", "GRADDFIL"))
    scores = profiles.score(read.tokens)
    assert SKUS[int(np.argmax(scores))] == "arla-graddfil"
    assert scores[SKUS.index("arla-graddfil")] == pytest.approx(1.0)
    assert scores[SKUS.index("banana")] == 0.0 and scores[SKUS.index("oatly-havregurt")] == 0.0
    # "arla" alone is shared by two products: both get the same partial credit
    assert 0 < scores[SKUS.index("arla-mjolk")] < 0.5


def test_fusion_ranks_the_product_with_matching_label_text_first_when_images_tie(profiles: TextProfiles) -> None:
    image = np.array([0.71, 0.71, 0.71, 0.2], np.float32)  # three cartons look alike
    ocr = profiles.score(["oatly", "havregurt"])
    fused = fuse(image, ocr=ocr, weights=FusionWeights(ocr=0.2))
    assert SKUS[int(np.argmax(fused))] == "oatly-havregurt"
    assert fused[SKUS.index("oatly-havregurt")] == pytest.approx(0.91)
    shortlist = [Candidate(sku=s, name=s, score=0.71) for s in ("arla-graddfil", "arla-mjolk", "oatly-havregurt")]
    ranked = fuse_candidates(shortlist, skus=SKUS, names={}, ocr=ocr, weights=FusionWeights(ocr=0.2))
    assert [c.sku for c in ranked] == ["oatly-havregurt", "arla-graddfil", "arla-mjolk"]


def test_a_frame_without_text_leaves_the_image_ranking_exactly_unchanged(profiles: TextProfiles) -> None:
    blank = OcrEngine(threads=1).read(np.full((200, 300, 3), 90, np.uint8))
    ocr = profiles.score(blank.tokens)
    assert not ocr.any()
    image = np.random.default_rng(0).uniform(-1, 1, (50, len(SKUS))).astype(np.float32)
    weights = FusionWeights(ocr=0.5, text=0.3)
    fused = fuse(image, ocr=np.broadcast_to(ocr, image.shape), text=np.zeros(4, np.float32),
                 weights=weights)
    assert np.array_equal(fused, image)
    shortlist = [Candidate(sku="banana", name="Banana", score=0.4), Candidate(sku="arla-mjolk", name="M", score=0.3)]
    assert fuse_candidates(shortlist, skus=SKUS, names={}, ocr=ocr, weights=weights) == shortlist
    # words that match no product are no evidence either
    assert not profiles.score(["qqq", "zz", "xylofon"]).any()


def test_a_product_named_by_text_but_missing_from_the_image_shortlist_enters_at_the_floor(
        profiles: TextProfiles) -> None:
    shortlist = [Candidate(sku="banana", name="Banana", score=0.5), Candidate(sku="arla-mjolk", name="M", score=0.3)]
    ranked = fuse_candidates(shortlist, skus=SKUS, names={"oatly-havregurt": "Havregurt"},
                             ocr=profiles.score(["havregurt"]), weights=FusionWeights(ocr=0.25), k=2)
    assert [(c.sku, c.name) for c in ranked] == [("oatly-havregurt", "Havregurt"), ("banana", "Banana")]
    assert [c.score for c in ranked] == pytest.approx([0.55, 0.5])


def test_ocr_misreads_and_diacritics_still_match(profiles: TextProfiles) -> None:
    s = profiles.score(tokens("GRADDFLL"))  # one letter misread
    assert SKUS[int(np.argmax(s))] == "arla-graddfil" and 0.8 < s.max() < 1.0
    assert SKUS[int(np.argmax(profiles.score(tokens("mellanmjolk"))))] == "arla-mjolk"
    assert not profiles.score(tokens("gra")).any()  # short fragments are not fuzzy-matched


def test_words_read_off_reference_photos_weigh_by_the_share_of_photos() -> None:
    p = TextProfiles.build([ProductText(sku="a", photo_reads=(("bravo", "apelsin"), ("bravo",), ("bravo", "xq"),
                                                                ("bravo",))),
                            ProductText(sku="b", titles=("Tropicana",), texts=("orange juice",))])
    assert p.score(["bravo"]).tolist() == [1.0, 0.0]
    assert p.score(["apelsin"]).tolist() == [0.25, 0.0]
    assert p.score(["tropicana"]).tolist() == [0.0, 1.0]
    assert p.score(["orange"]).tolist() == [0.0, 0.5]  # a description word says less than a title word


def test_compound_label_words_split_across_lines_still_match() -> None:
    """Labels print "APELSIN" over "JUICE"; the catalogue says "Apelsinjuice"; OCR splits "MOR GON"."""
    p = TextProfiles.build([ProductText(sku="orange", titles=("Bravo Apelsinjuice",)),
                            ProductText(sku="apple", titles=("Bravo Äpple Juice",), photo_reads=(("mor", "gon"),)),
                            ProductText(sku="morgon", titles=("God Morgon Juice",))])
    s = p.score(["apelsin", "juice", "bravo"])
    assert s.argmax() == 0 and s[0] == pytest.approx(1.0) and s[1] < s[0]  # "apelsin" is a part of the compound
    assert p.score(["god", "mor", "gon"]).tolist() == [0.0, 0.0, 1.0]  # rejoined, though "mor", "gon" are known
    assert p.score(["apple"]).tolist() == [0.0, 1.0, 0.0]  # "apple" is no part of "apelsinjuice"
    assert "sinj" not in p.to_dict()["weights"][0]  # parts need a known side; others are not invented


def test_two_whole_words_are_not_rejoined_into_a_compound() -> None:
    """OCR's "MILD" / "YOGHURT" are two words: joining them lost both on a val photo."""
    p = TextProfiles.build([ProductText(sku="mild", titles=("Arla Mild Vanilla Yoghurt",)),
                            ProductText(sku="other", titles=("Valio Vanilla Yoghurt",),
                                        photo_reads=(("mildyoghurt",),) + (("valio",),) * 7)])  # a one-off read
    s = p.score(["mild", "yoghurt"])
    assert s[0] == pytest.approx(1.0) and s[1] < 0.6  # joined, only the one-off read would have matched
    assert p.score(["mildyog", "hurt"]).argmax() == 1  # a piece that is no known word still rejoins


def test_weights_fitted_on_labelled_scores_round_trip(tmp_path: Path, profiles: TextProfiles) -> None:
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(4), 10)
    image = rng.normal(0.5, 0.02, (40, 4)).astype(np.float32)
    image[labels == 3, 3] += 0.3  # banana is easy for vision; the cartons are a coin toss
    ocr = np.stack([profiles.score(CATALOG[c].titles[0].split()) if i % 2 == 0 else np.zeros(4, np.float32)
                    for i, c in enumerate(labels)])  # half the frames have readable text
    w = fit_weights(image, labels, ocr=ocr, fitted_on="unit-test")
    assert w.ocr > 0 and w.text == 0.0
    assert w.metrics["fused_r1"] > w.metrics["image_r1"]
    assert macro_recall_at_1(fuse(image, ocr=ocr, weights=w), labels) == pytest.approx(w.metrics["fused_r1"], abs=1e-4)
    assert FusionWeights.from_json(w.to_json()) == w
    assert fit_weights(image, labels).ocr == 0.0  # no text evidence: nothing to weigh


def test_likelihood_fit_keeps_misleading_text_out_and_weighs_helpful_text_in() -> None:
    """Vision right on every query: recall cannot tell weights apart, likelihood can."""
    labels = np.repeat(np.arange(4), 5)
    image = np.full((20, 4), 0.5, np.float32)
    image[np.arange(20), labels] = 0.6  # vision picks the right product every time, by a thin margin
    wrong = np.eye(4, dtype=np.float32)[(labels + 1) % 4]  # the text names the next product
    right = np.eye(4, dtype=np.float32)[labels]
    assert fit_weights(image, labels, ocr=wrong).ocr == 0.0
    w = fit_weights(image, labels, ocr=right)
    assert w.ocr > 0  # it only widens the right product's lead (the smallest weight at which the likelihood saturates)
    assert w.metrics["image_r1"] == w.metrics["fused_r1"] == 1.0
    assert w.metrics["fused_log_likelihood"] > w.metrics["image_log_likelihood"]


def test_fit_and_load_fail_clearly() -> None:
    with pytest.raises(InputError, match="one label a query"):
        fit_weights(np.zeros((3, 2), np.float32), np.zeros(2, int))
    with pytest.raises(CatalogError, match=">= 0"):
        FusionWeights.from_json('{"ocr": -1, "text": 0}')
    for junk in ("{not json", "[]", '{"ocr": 1}'):
        with pytest.raises(CatalogError, match="calibrate"):
            FusionWeights.from_json(junk)


def test_catalogue_text_of_a_gsd_product_folder(tmp_path: Path) -> None:
    d = tmp_path / "Arla-Sour-Cream"
    d.mkdir()
    (d / "Arla-Sour-Cream_Description.txt").write_text("Sour cream for dips.\n", encoding="utf-8")
    (d / "Arla-Sour-Cream_Description_Swedish.txt").write_text(
        "Gräddfil till dipp.\n\nhttps://www.ica.se/x\n", encoding="utf-8")
    (d / "Arla-Sour-Cream_Information.txt").write_text(
        "Title: Gräddfil 12% \nManufacturer and volume: ARLA KO , 5dl \nManufacturing country: Sverige \n"
        "Description: Gräddfil till dipp.\nNutrition values per 100 gram: \n   fett ca 12 gram \nURL: https://x\n",
        encoding="utf-8")
    assert gsd_product_text(d, "Arla-Sour-Cream", sku="7") == ProductText(
        sku="7", titles=("Arla Sour Cream", "Gräddfil 12%", "ARLA KO , 5dl"),
        texts=("Sour cream for dips.", "Gräddfil till dipp."))
    assert information_texts("Title: A\nDescription:   \nURL: u") == ["A"]
    (d / "Arla-Sour-Cream_Information.txt").write_text(
        "Title: Sour Cream 12% \nURL: https://www.hemkop.se/produkt/Graddfil-12procent-100480800_ST\n",
        encoding="utf-8")
    assert gsd_product_text(d, "Arla-Sour-Cream").titles == ("Arla Sour Cream", "Sour Cream 12%", "Graddfil 12procent")
    (d / "Arla-Sour-Cream_Description.txt").write_bytes(b"caf\xe9")
    with pytest.raises(CatalogError, match="not UTF-8"):
        gsd_product_text(d, "Arla-Sour-Cream")


@pytest.mark.parametrize(("url", "name"), [
    ("https://www.hemkop.se/produkt/Ananas-Klass-1-100145594_ST", "Ananas Klass 1"),
    ("https://www.hemkop.se/produkt/Mellanmjolk-Ekologisk-1-5procent-101123632_ST", "Mellanmjolk Ekologisk 1 5procent"),
    ("https://www.ica.se/handla/produkt/Gr%C3%A4ddfil-12-id_p_7310865001818/", "Gräddfil 12"),
    ("https://www.hemkop.se/", None),  # no slug
    ("https://shop.example/p/100145594", None),  # an article number only
    ("Ananas-Klass-1", None),  # not a URL
])
def test_product_page_urls_give_the_name_in_the_shops_language(url: str, name: str | None) -> None:
    assert url_product_name(url) == name


def test_runtime_reranker_fuses_once_the_worker_has_read_the_view(profiles: TextProfiles) -> None:
    from edge.text.fusion import LabelTextReranker
    from edge.text.ocr.worker import OcrWorker

    shortlist = [Candidate(sku=s, name=s, score=0.7) for s in ("arla-mjolk", "arla-graddfil", "banana")]
    crop = label("ARLA", "GRADDFIL")
    with OcrWorker(engine=OcrEngine(threads=1)) as worker:
        rr = LabelTextReranker(worker=worker, profiles=profiles, weights=FusionWeights(ocr=0.2), names={})
        assert rr.rerank("kiosk", crop, shortlist) == shortlist  # no reading yet: the image ranking as is
        worker.wait("kiosk", timeout=120)
        ranked = rr.rerank("kiosk", crop, shortlist)
        blank = np.full_like(crop, 200)
        assert rr.rerank("kiosk", blank, shortlist) == shortlist  # new view, not read yet
        worker.wait("kiosk", timeout=120)
        assert rr.rerank("kiosk", blank, shortlist) == shortlist  # read: no text, no change
    assert [c.sku for c in ranked] == ["arla-graddfil", "arla-mjolk", "banana"]
    assert ranked[0].score == pytest.approx(0.9)
    assert rr.fused == 1
