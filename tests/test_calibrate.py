"""Unknown-product calibration: the threshold rule, and rejection of products held out of a real catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.catalog.calibration import (
    QueryScores,
    choose_thresholds,
    pick_held_out,
    query_scores,
    read_labelled,
    run_calibration,
    summarise,
)
from edge.catalog.store import Store
from edge.core.errors import InputError
from edge.core.types import Calibration, Candidate, Thresholds
from tests.encoders_for_tests import TinyImageEncoder, product_image, write_jpeg


def c(sku: str, score: float) -> Candidate:
    return Candidate(sku=sku, name=sku, score=score)


def test_thresholds_accept_on_score_and_margin() -> None:
    t = Thresholds(score=0.8, margin=0.1, source="calibrated")
    assert t.accepts([c("a", 0.9), c("b", 0.7)]) is True
    assert t.accepts([c("a", 0.9), c("b", 0.85)]) is False  # too close to the runner-up
    assert t.accepts([c("a", 0.7)]) is False  # too low
    assert t.accepts([c("a", 0.81)]) is True  # a single candidate has margin against -1
    assert t.accepts([]) is False
    assert Thresholds().accepts([c("a", -0.5), c("b", -0.5)]) is True  # uncalibrated: everything is known


def test_query_scores_drop_held_out_candidates() -> None:
    q = query_scores([[c("a", 0.9), c("b", 0.6)], [c("h", 0.95), c("a", 0.5), c("b", 0.4)]], ["a", "h"], {"h"})
    assert q.top1.tolist() == [0.9, 0.5]
    assert q.margin.tolist() == pytest.approx([0.3, 0.1])
    assert q.correct.tolist() == [True, False]
    assert q.known.tolist() == [True, False]


def test_choose_thresholds_meets_target_with_fewest_false_accepts() -> None:
    # 10 known queries: scores 0.90..0.99, margins 0.2; 4 unknowns: high score but tiny margin
    known_top = np.linspace(0.90, 0.99, 10)
    q = QueryScores(top1=np.concatenate([known_top, [0.97, 0.96, 0.95, 0.5]]),
                    margin=np.concatenate([np.full(10, 0.2), [0.01, 0.02, 0.01, 0.3]]),
                    correct=np.array([True] * 10 + [False] * 4), known=np.array([True] * 10 + [False] * 4))
    score, margin = choose_thresholds(q, target=0.8)
    s = summarise(q, score=score, margin=margin)
    assert s["known_accept_rate"] == pytest.approx(0.8)
    assert s["false_accept_rate"] == 0.0  # the margin rule removes the confident-but-ambiguous unknowns
    assert score == pytest.approx(0.92)
    assert margin > 0.02
    with pytest.raises(InputError, match="outside"):
        choose_thresholds(q, target=1.5)


def test_pick_held_out_is_deterministic() -> None:
    skus = [f"s{i}" for i in range(10)] * 3
    assert pick_held_out(skus, fraction=0.2, seed=3) == pick_held_out(skus, fraction=0.2, seed=3)
    assert len(pick_held_out(skus, fraction=0.2)) == 2
    assert pick_held_out(skus, fraction=0.0) == set()


def tiny_catalog(tmp_path: Path, tiny_onnx: Path, *, noise: int) -> tuple[Store, Path, np.random.Generator]:
    """12 products enrolled (2 photos each) + 4 never enrolled; 4 labelled photos of each of the 16 at ``noise``."""
    store = Store(data_dir=tmp_path / "data", image_encoder=TinyImageEncoder(tiny_onnx), dtype="f32")
    rng = np.random.default_rng(5)
    for i in range(12):
        store.enroll(f"p{i}", name=f"product {i}", images=[product_image(i), product_image(i, noise=8, rng=rng)])
    labelled_dir = tmp_path / "labelled"
    for i in range(16):
        for j in range(4):
            write_jpeg(labelled_dir / f"p{i}" / f"{j}.jpg", product_image(i, noise=noise, rng=rng))
    return store, labelled_dir, rng


def test_calibration_rejects_products_held_out_of_a_real_catalog(tmp_path: Path, tiny_onnx: Path) -> None:
    """12 products enrolled (2 photos each) + 4 never enrolled; labelled photos of all 16."""
    store, labelled_dir, rng = tiny_catalog(tmp_path, tiny_onnx, noise=10)
    labelled = read_labelled(labelled_dir)
    assert len(labelled) == 64

    cal, problems = run_calibration(store, labelled, target=0.9, max_wrong=None, holdout=0.25, seed=1,
                                    progress=False)  # the acceptance mode
    assert problems == []
    assert (cal.known_queries, cal.unknown_queries) == (36, 28)  # 9 known, 3 simulated + 4 never enrolled
    assert len(cal.held_out) == 7
    assert cal.known_accept_rate >= 0.9
    assert cal.known_top1_accuracy == 1.0
    assert cal.false_accept_rate == 0.0
    store.save_calibration(cal)
    assert store.thresholds == cal.thresholds()
    assert Calibration.from_json(cal.to_json()) == cal

    # the decision rule in use: a never-enrolled product's photo is rejected more often than accepted
    th = store.thresholds
    never = [product_image(i, noise=10, rng=rng) for i in (12, 13, 14, 15) for _ in range(3)]
    known = [product_image(i, noise=10, rng=rng) for i in range(12)]
    never_acc = np.mean([th.accepts([r.candidate() for r in row]) for row in store.search_image(never, k=3)])
    known_acc = np.mean([th.accepts([r.candidate() for r in row]) for row in store.search_image(known, k=3)])
    assert never_acc == 0.0
    assert known_acc > 0.5  # calibrated with 3 products fewer (tighter margins), still mostly accepted
    store.close()


def test_config_thresholds_override_calibration(tmp_path: Path, tiny_onnx: Path) -> None:
    """A stored calibration is used until the config sets a value; each configured value wins on its own."""
    encoder = TinyImageEncoder(tiny_onnx)
    calibrated = Store(data_dir=tmp_path / "d", image_encoder=encoder)
    cal = Calibration(score=0.7, margin=0.05, target=0.9, known_queries=10, unknown_queries=4,
                      known_accept_rate=0.9, known_top1_accuracy=1.0, accepted_precision=1.0, false_accept_rate=0.0,
                      held_out=("x",), catalog_version=calibrated.catalog_version, fingerprint=encoder.fingerprint)
    calibrated.save_calibration(cal)
    assert calibrated.thresholds == Thresholds(score=0.7, margin=0.05, source="calibrated")
    calibrated.close()
    score_set = Store(data_dir=tmp_path / "d", image_encoder=encoder, threshold=0.5)
    assert score_set.calibration == cal  # still stored, but the configured score wins; the margin stays calibrated
    assert score_set.thresholds == Thresholds(score=0.5, margin=0.05, source="config")
    score_set.close()
    both_set = Store(data_dir=tmp_path / "d", image_encoder=encoder, threshold=0.5, margin=0.2)
    assert both_set.thresholds == Thresholds(score=0.5, margin=0.2, source="config")
    both_set.close()


def test_read_labelled_split_file(tmp_path: Path) -> None:
    (tmp_path / "classes.csv").write_text("Class Name (str),Class ID (int),c,d,e,f\nApple,0,x,0,i,d\nPear,1,y,0,i,d\n")
    (tmp_path / "val.txt").write_text("val/a.jpg, 0, 0\nval/b.jpg, 1, 0\n")
    assert read_labelled(tmp_path / "val.txt") == [(tmp_path / "val/a.jpg", "Apple"), (tmp_path / "val/b.jpg", "Pear")]
    (tmp_path / "bad.txt").write_text("val/a.jpg, 7, 0\n")
    with pytest.raises(InputError, match=r"bad\.txt:1"):
        read_labelled(tmp_path / "bad.txt")


def test_max_wrong_never_exceeds_it_on_the_half_it_was_not_chosen_on() -> None:
    """Risk mode on scores where accepting most photos names many wrongly: the chosen pair keeps wrong answers
    (another enrolled product or a product not enrolled) at or under the target on the check half."""
    from edge.catalog.calibration import QueryScores, choose_for_risk, choose_thresholds, named_figures, split_halves
    from edge.catalog.calibration import subset as take

    rng = np.random.default_rng(3)
    n = 2000
    correct = rng.random(n) < 0.85
    known = rng.random(n) < 0.85
    top1 = np.where(correct & known, rng.normal(0.75, 0.08, n), rng.normal(0.6, 0.08, n))
    margin = np.where(correct & known, rng.gamma(2, 0.04, n), rng.gamma(1.2, 0.02, n))
    q = QueryScores(top1, margin, correct, known)
    old = choose_thresholds(q, target=0.95)  # the acceptance recipe names ~1 in 10 wrongly here
    assert named_figures(q, score=old[0], margin=old[1])["wrong_among_named"] > 0.08
    fit, check = split_halves(n, seed=0)
    named = []
    for max_wrong in (0.01, 0.02, 0.05):
        score, m, fig = choose_for_risk(take(q, fit), take(q, check), max_wrong=max_wrong)
        assert named_figures(take(q, check), score=score, margin=m)["wrong_among_named"] <= max_wrong
        assert fig["check_wrong_among_named"] <= max_wrong and fig["fit_wrong_among_named"] <= max_wrong
        named.append(fig["check_named_correct"])
    assert 0.1 < named[0] < named[1] < named[2]  # a looser target names more, never nothing


def test_calibrate_max_wrong_is_the_default_and_is_stored(tmp_path: Path, tiny_onnx: Path) -> None:
    store, labelled_dir, _ = tiny_catalog(tmp_path, tiny_onnx, noise=30)
    cal, problems = run_calibration(store, read_labelled(labelled_dir), holdout=0.25, seed=1, progress=False)
    assert cal.max_wrong == 0.02 and cal.risk is not None
    assert cal.risk["check_wrong_among_named"] <= 0.02 and cal.risk["fit_wrong_among_named"] <= 0.02
    assert any("only 64 labelled photos" in p for p in problems)
    store.save_calibration(cal)
    assert Calibration.from_json(cal.to_json()) == cal
    store.close()

