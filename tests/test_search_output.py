"""What `storelens search` prints (issue 29 item 17): "no match" when no product holds the query's words,
score sources in words, rounded thresholds, columns that stay aligned with long skus."""

from __future__ import annotations

import pytest

from edge.catalog.ranking import Ranked
from edge.cli.search import decision_note, print_results
from edge.core.types import Thresholds

MILK = Ranked(sku="ARLA-STD", name="Arla Standard Milk", score=0.8236, scores={"image": 0.8236})


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_a_query_no_product_holds_says_no_match(capsys: pytest.CaptureFixture[str]) -> None:
    nearest = [Ranked(sku="BANANA", name="Banana", score=0.0625, scores={"text": 0.222})]
    print_results(nearest, text="xyzzy", image=False)
    out = lines(capsys)
    assert out[0].startswith("no match: no product has the words of 'xyzzy'") and "BANANA" in out[2]
    print_results([Ranked(sku="OAT", name="Oat Milk", score=0.125, scores={"bm25": 0.972, "text": 0.529})],
                  text="milk", image=False)
    assert not any("no match" in ln for ln in lines(capsys))


def test_scores_are_labelled_in_words_and_columns_stay_aligned(capsys: pytest.CaptureFixture[str]) -> None:
    long_sku = "7310865004703-ECOLOGICAL-MEDIUM-FAT-MILK-1.5L-X"
    ranked = [Ranked(sku=long_sku, name="Milk", score=0.0312, scores={"every": 3.4261, "same": 1.0, "text_x": 0.5}),
              Ranked(sku="OAT", name="Oat Milk", score=0.0301, scores={"purpose": 1.2, "text": 0.5123})]
    print_results(ranked, text="mjölk", image=False)
    header, first, second, *_ = lines(capsys)
    assert "all words 3.426 · synonyms 1.000 · synonym meaning 0.500" in first
    assert "purpose 1.200 · meaning 0.512" in second
    for jargon in ("every=", "same=", "purpose=", "text_x="):
        assert jargon not in first + second
    assert first.index("Milk") == second.index("Oat Milk") == header.index("name")  # aligned under a long sku
    assert "…" in first and long_sku not in first  # cut at 40 characters


def test_a_photo_and_words_that_disagree_say_what_the_photo_alone_ranks(capsys: pytest.CaptureFixture[str]) -> None:
    oat = Ranked(sku="OATLY", name="Oatly Oat Milk", score=0.24, scores={"image": 0.449, "bm25": 3.4})
    milk = Ranked(sku="ARLA-STD", name="Arla Standard Milk", score=0.18, scores={"image": 0.824, "bm25": 0.85})
    print_results([oat, milk], text="oat milk", image=True)
    assert any(ln.startswith("note: the photo alone ranks ARLA-STD first (photo 0.824)") for ln in lines(capsys))


def test_thresholds_print_rounded_and_explained() -> None:
    note = decision_note(True, Thresholds(score=0.5432198765, margin=0.0005123, source="calibrated"))
    assert note == "decision: known (needs score >= 0.543 and lead over the next >= 0.000512; calibrated)"
    assert "run `storelens calibrate`" in decision_note(True, Thresholds())
