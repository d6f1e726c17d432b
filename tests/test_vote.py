"""Voting: per-frame labels, window agreement, score aggregation, change/heartbeat, planogram states."""

from __future__ import annotations

from edge.core.types import Candidate
from edge.pipeline.vote import RegionVoter, VoteParams, frame_label


def c(*pairs: tuple[str, float]) -> list[Candidate]:
    return [Candidate(s, s.lower(), sc) for s, sc in pairs]


P = VoteParams(window=4, min_frames=2, agreement=0.6, threshold=0.5, margin=0.1, heartbeat_s=10.0, top_k=3)


def test_frame_label_threshold_and_margin() -> None:
    assert frame_label(c(("A", 0.9), ("B", 0.7)), 0.5, 0.1) == "A"
    assert frame_label(c(("A", 0.9), ("B", 0.85)), 0.5, 0.1) is None  # margin too small
    assert frame_label(c(("A", 0.4), ("B", 0.1)), 0.5, 0.1) is None  # below threshold
    assert frame_label(c(("A", 0.9), ("A", 0.89), ("B", 0.5)), 0.5, 0.1) == "A"  # margin is to the next *other* sku
    assert frame_label([], 0.5, 0.1) is None


def test_decides_after_min_frames_and_publishes_only_on_change() -> None:
    v = RegionVoter(camera="cam", roi="r", params=P)
    assert v.add(c(("A", 0.9), ("B", 0.6)), ts=1.0, now=0.0) is None  # 1 < min_frames
    d = v.add(c(("A", 0.8), ("B", 0.5)), ts=2.0, now=0.1)
    assert d is not None and d.decision == "known" and d.sku == "A" and d.frames == 2 and d.ts == 2.0
    assert [(x.sku, x.score) for x in d.candidates] == [("A", 0.85), ("B", 0.55)]  # mean aggregation
    assert v.add(c(("A", 0.9), ("B", 0.6)), ts=3.0, now=0.2) is None  # unchanged: no publish


def test_agreement_needed_and_unknown_decision() -> None:
    v = RegionVoter(camera="cam", roi="r", params=P)
    v.add(c(("A", 0.9), ("B", 0.1)), ts=1, now=0)
    assert v.add(c(("B", 0.9), ("A", 0.1)), ts=2, now=0) is None  # 1/2 < 0.6
    v2 = RegionVoter(camera="cam", roi="r", params=P)
    v2.add(c(("A", 0.3)), ts=1, now=0)
    d = v2.add(c(("B", 0.2)), ts=2, now=0)
    assert d is not None and d.decision == "unknown" and d.sku is None
    assert [x.sku for x in d.candidates] == ["A", "B"]


def test_change_of_product_after_window_turns_over() -> None:
    v = RegionVoter(camera="cam", roi="r", params=P)
    for t in range(4):
        v.add(c(("A", 0.9), ("B", 0.2)), ts=t, now=t * 0.1)
    out = [v.add(c(("B", 0.9), ("A", 0.2)), ts=10 + t, now=1 + t * 0.1) for t in range(4)]
    changed = [d for d in out if d is not None]
    assert len(changed) == 1 and changed[0].sku == "B"
    assert [x.sku for x in changed[0].candidates] == ["B", "A"]


def test_reset_clears_window_so_new_view_decides_quickly() -> None:
    v = RegionVoter(camera="cam", roi="r", params=P)
    for t in range(4):
        v.add(c(("A", 0.9), ("B", 0.2)), ts=t, now=0)
    v.reset()
    assert v.add(c(("B", 0.9), ("A", 0.2)), ts=5, now=0) is None
    d = v.add(c(("B", 0.9), ("A", 0.2)), ts=6, now=0)
    assert d is not None and d.sku == "B"


def test_heartbeat_republishes_unchanged_decision() -> None:
    v = RegionVoter(camera="cam", roi="r", params=P)
    v.add(c(("A", 0.9)), ts=1, now=0)
    assert v.add(c(("A", 0.9)), ts=2, now=0) is not None
    assert v.heartbeat(now=9.9) is None
    hb = v.heartbeat(now=10.0)
    assert hb is not None and hb.heartbeat and not hb.changed and hb.sku == "A"
    assert v.heartbeat(now=15.0) is None
    assert v.heartbeat(now=20.0) is not None


def test_max_and_median_aggregation() -> None:
    for how, want in (("max", 0.9), ("median", 0.8)):
        p = VoteParams(window=3, min_frames=3, agreement=0.6, threshold=0.5, margin=0.0, aggregate=how)  # type: ignore[arg-type]
        v = RegionVoter(camera="cam", roi="r", params=p)
        v.add(c(("A", 0.9)), ts=1, now=0)
        v.add(c(("A", 0.6)), ts=2, now=0)
        d = v.add(c(("A", 0.8)), ts=3, now=0)
        assert d is not None and d.candidates[0].score == want


def test_planogram_states() -> None:
    def run(top: str | None) -> str | None:
        v = RegionVoter(camera="cam", roi="slot", params=P, expected_sku="MILK")
        cands = c((top, 0.9), ("ZZZ", 0.1)) if top else c(("ZZZ", 0.2))
        v.add(cands, ts=1, now=0)
        d = v.add(cands, ts=2, now=0)
        assert d is not None and d.planogram_changed
        return d.planogram

    assert run("MILK") == "ok"
    assert run("EMPTY") == "empty"
    assert run("JUICE") == "misplaced"
    assert run(None) == "unknown"


def test_planogram_change_flag_only_when_state_changes() -> None:
    v = RegionVoter(camera="cam", roi="slot", params=P, expected_sku="MILK")
    v.add(c(("JUICE", 0.9)), ts=1, now=0)
    d1 = v.add(c(("JUICE", 0.9)), ts=2, now=0)
    assert d1 is not None and d1.planogram == "misplaced" and d1.planogram_changed
    v.reset()
    v.add(c(("SODA", 0.9)), ts=3, now=0)
    d2 = v.add(c(("SODA", 0.9)), ts=4, now=0)  # new product, still misplaced
    assert d2 is not None and d2.changed and d2.planogram == "misplaced" and not d2.planogram_changed


def test_recall_brings_a_views_decision_back_as_of_the_frame_that_showed_it_again() -> None:
    import pytest

    v = RegionVoter(camera="cam", roi="r", params=P, expected_sku="MILK")
    milk = v.reset()
    for t in (0.0, 1.0):
        v.add(c(("MILK", 0.9), ("B", 0.3)), ts=t, now=t)
    v.reset()  # a shopper's coat, read as another product
    coat = [v.add(c(("COAT", 0.9), ("B", 0.3)), ts=t, now=t) for t in (10.0, 11.0)]
    assert coat[-1] is not None and coat[-1].planogram == "misplaced"
    d = v.recall(milk, ts=20.0, now=20.0)  # the coat left: the facing looks as it did
    assert d is not None and (d.sku, d.ts, d.view_id, d.planogram, d.planogram_changed) == ("MILK", 20.0, milk, "ok",
                                                                                             True)
    assert v.recall(milk, ts=21.0, now=21.0) is None  # no change: nothing to publish
    with pytest.raises(KeyError):
        v.recall("never-decided", ts=22.0, now=22.0)
