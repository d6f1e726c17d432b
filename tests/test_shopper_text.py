"""Shopper query analysis without a catalog: stems, typo distance, vocabulary look-ups, synonym files, plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.core.errors import ConfigError
from edge.text.lexical import osa_distance, query_words, stem, vocabulary_of
from edge.text.query import plan_query
from edge.text.synonyms import DEFAULT_FILE, SynonymSet, load_synonyms

CATALOG_WORDS = {"citron": 1, "morot": 1, "tomato": 3, "tomat": 1, "kvisttomat": 1, "apples": 2, "vatten": 1,
                 "melon": 4, "honungsmelon": 1, "banana": 1, "grapefruit": 2, "yoghurt": 5, "vaniljyoghurt": 2,
                 "vanilj": 2, "kvist": 1, "mellanmjolk": 3, "mjolk": 4, "standard": 1, "milk": 6, "aubergine": 1}


def vocab(extra: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    return vocabulary_of(CATALOG_WORDS.items(), extra=extra)


def test_stem_lands_english_and_swedish_forms_on_one_key() -> None:
    pairs = [("apples", "apple"), ("äpplen", "apple"), ("citroner", "citron"), ("morötter", "morot"),
             ("tomatoes", "tomato"), ("peppers", "pepper"), ("bananer", "banana"), ("persikor", "persika"),
             ("cherries", "cherry")]
    assert [stem(query_words(a)[0]) == stem(query_words(b)[0]) for a, b in pairs] == [True] * len(pairs)
    assert stem("3") == "3" and stem("kiwi") == "kiwi" and stem("potatis") == "potatis"


def test_osa_distance_counts_a_swap_as_one_edit_and_stops_past_the_limit() -> None:
    assert osa_distance("grapefriut", "grapefruit", 2) == 1
    assert osa_distance("bananna", "banana", 2) == 1
    assert osa_distance("creme", "cream", 2) == 2
    assert osa_distance("apple", "melon", 1) == 2  # limit + 1


def test_vocabulary_maps_query_words_to_catalog_words() -> None:
    v = vocab()
    assert (v.match("citroner").terms, v.match("citroner").how) == (("citron",), "inflection")
    assert v.match("tomater").terms == ("tomat", "kvisttomat")  # same stem, then compounds ending with it
    assert v.match("yoghurt").terms == ("vaniljyoghurt",)
    assert (v.match("appl").prefix, v.match("appl").how) == (True, "prefix")
    split = v.match("vattenmelon")
    assert (split.how, split.terms) == ("split", ("vatten", "melon"))
    assert v.match("kefir").how == "none"


def test_typo_correction_only_for_unknown_words_within_the_budget() -> None:
    v = vocab(extra=("yogurt",))
    assert v.correct("mellon") == ["melon"]
    assert v.correct("bananna") == ["bananna"] and v.match("bananna").terms == ("banana",)  # same stem: not a typo
    assert v.correct("grapefriut") == ["grapefruit"]
    assert v.correct("yougurt") == ["yogurt"]  # a synonym-file word: the synonym layer takes it from there
    assert v.correct("melon") == ["melon"] and v.correct("vattenmelon") == ["vattenmelon"]
    assert v.correct("xyz") == [] and v.correct("qqqqqqq") == []


def test_shipped_synonyms_expand_by_kind(tmp_path: Path) -> None:
    syn = load_synonyms()
    assert syn.files == (DEFAULT_FILE,)
    whole = syn.expand(query_words("whole milk"))
    assert whole.matched == (("whole", "milk"),) and ("standardmjolk",) in whole.same and whole.purpose == ()
    soya = syn.expand(query_words("Soya yoghurt"))  # spelling folded first, then the two-word name matches
    assert soya.matched == (("soy", "yoghurt"),) and ("soyghurt",) in soya.same and ("soja",) in soya.spelling
    cocktail = syn.expand(query_words("something for cocktails"))
    assert cocktail.purpose == (("lime",), ("lemon",), ("mint",)) and cocktail.same == ()
    assert not syn.expand(query_words("granny smith"))


def test_a_store_file_adds_to_the_default_and_bad_files_name_the_problem(tmp_path: Path) -> None:
    own = tmp_path / "own.toml"
    own.write_text('[[same]]\nterms = ["fika bread", "kanelbulle"]\n', encoding="utf-8")
    syn = load_synonyms(own)
    assert syn.files == (DEFAULT_FILE, own)
    assert syn.expand(["fika", "bread"]).same == (("kanelbulle",),)
    assert not syn.changed()
    own.write_text('[[purpose]]\nwhen = ["fika"]\nadd = ["kanelbulle"]\n', encoding="utf-8")
    assert SynonymSet.load([own]).expand(["fika"]).purpose == (("kanelbulle",),)
    bad = tmp_path / "bad.toml"
    for text, message in (('[[same]]\nwords = ["a"]\n', "has keys \\['words'\\]"), ("[[nope]]\n", "unknown section"),
                          ('[[same]]\nterms = "a"\n', "non-empty list"), ("[[same]\n", "not valid TOML")):
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=message):
            SynonymSet.load([bad])
    with pytest.raises(ConfigError, match="synonym file not found"):
        load_synonyms(tmp_path / "missing.toml")


def test_plan_keeps_typed_words_apart_from_expansions() -> None:
    v = vocab(extra=tuple(load_synonyms().words()))
    plan = plan_query("Eggplant", v, load_synonyms())
    assert (plan.typed, plan.every, plan.same) == ("", "", '"aubergine"*')
    assert plan.embed_expansion == "aubergine, brinjal"
    typo = plan_query("grapefriut yoghurt", v, None)
    assert typo.corrections == (("grapefriut", "grapefruit"),)
    assert typo.typed == '"grapefruit"* OR "yoghurt"* OR "vaniljyoghurt"'
    assert typo.every == '("grapefruit"*) AND ("yoghurt"* OR "vaniljyoghurt")'
    assert typo.embed_typed == "grapefruit yoghurt"
    assert plan_query('x" OR (', v, None).typed == ""  # FTS syntax in user input never reaches FTS5 unquoted


def test_product_views_take_each_angle_from_texts_or_attributes() -> None:
    from edge.catalog.views import product_views

    gsd = product_views("Mjölk 3%", "Fresh standard milk.", {"coarse": "Sour-Milk", "brand": "ARLA KO"},
                        {"name_sv": "Mjolk 3procent", "description_sv": "Färsk mjölk.", "information": "Title: x",
                         "ocr": "ARLA MJOLK"})
    assert gsd.fields() == {"name": "Mjölk 3%", "name_sv": "Mjolk 3procent", "brand": "ARLA KO",
                            "category": "Sour Milk", "description": "Fresh standard milk.",
                            "description_sv": "Färsk mjölk.", "other": "ARLA MJOLK"}
    assert gsd.vector_texts() == ["Mjölk 3%", "Mjolk 3procent", "Arla Ko Sour Milk: Mjölk 3%"]
    table = product_views("Oat drink", "", {"name_sv": "Havredryck", "category": "Plant drinks", "coarse": "x"}, {})
    assert (table.name_sv, table.brand, table.category) == ("Havredryck", "", "Plant drinks")
    assert table.vector_texts() == ["Oat drink", "Havredryck", "Plant drinks: Oat drink"]


def test_validate_config_reads_the_stores_synonym_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli.main import main

    own = tmp_path / "synonyms.toml"
    own.write_text('[[same]]\nterms = ["kanelbulle", "cinnamon bun"]\n', encoding="utf-8")
    cfg = tmp_path / "store.toml"
    cfg.write_text(f'[device]\nstore = "s1"\nid = "k1"\n[catalog]\nsynonyms = "{own}"\n', encoding="utf-8")
    assert main(["validate-config", str(cfg)]) == 0
    own.write_text('[[same]]\nterms = "kanelbulle"\n', encoding="utf-8")
    assert main(["validate-config", str(cfg)]) == 2
    assert f"catalog.synonyms -> {own} -> synonym file {own}: [[same]] entry 1: 'terms' must be a non-empty list" \
        in capsys.readouterr().out
