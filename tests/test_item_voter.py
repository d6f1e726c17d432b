"""The kiosk's item voter on scripted candidate lists: views pooled into one item, updates share the item id,
final when the tray empties, pooling overrules a single view, and the benchmark's replay counts as a shopper would."""

from __future__ import annotations

from edge.core.types import Candidate
from edge.pipeline.item import ItemVoter, pool
from edge.pipeline.vote import Decision, VoteParams

P = VoteParams(threshold=0.7, margin=0.05, min_frames=2, window=5, top_k=4)


def cands(**scores: float) -> list[Candidate]:
    return [Candidate(s, s.title(), v) for s, v in sorted(scores.items(), key=lambda t: -t[1])]


def show(voter: ItemVoter, frames: list[list[Candidate]], t0: float = 0.0) -> list[Decision]:
    """A new view held for ``frames``: reset, then each frame voted."""
    voter.reset()
    out: list[Decision] = []
    for i, c in enumerate(frames):
        out += voter.add(c, ts=t0 + i, now=t0 + i)
    return out


def test_pool_averages_views_and_bounds_missing_products() -> None:
    got = dict(pool([{"A": 0.9, "B": 0.5}, {"A": 0.7, "C": 0.6}]))
    assert got == {"A": 0.8, "B": (0.5 + 0.6) / 2, "C": (0.5 + 0.6) / 2}  # missing: that view's lowest score


def test_an_unsure_first_view_firms_up_with_a_second_view_under_the_same_item() -> None:
    v = ItemVoter(camera="k", roi="t", params=P)
    first = show(v, [cands(A=0.74, B=0.72)] * 2)  # lead 0.02 < margin: unknown, with A first in the pick list
    assert [(d.decision, d.candidates[0].sku) for d in first] == [("unknown", "A")]
    second = show(v, [cands(A=0.86, B=0.6)] * 2, t0=10)  # pooled A 0.80 vs B 0.66: known
    assert [(d.decision, d.sku, d.views) for d in second] == [("known", "A", 2)]
    assert second[0].item_id == first[0].item_id
    third = show(v, [cands(A=0.84, B=0.62)] * 3, t0=20)  # same answer: nothing new to publish
    assert third == []
    end = show(v, [cands(EMPTY=0.95, A=0.3)] * 2, t0=30)
    assert [(d.sku, d.final, d.item_id) for d in end] == [("A", True, first[0].item_id), ("EMPTY", False, None)]
    assert end[0].views == 3


def test_a_confident_wrong_single_view_is_outvoted_by_the_item() -> None:
    """Two views say A, one turned view leans to B: the item stays A (a per-view answer would have said B)."""
    v = ItemVoter(camera="k", roi="t", params=P)
    show(v, [cands(A=0.9, B=0.6)] * 2)
    show(v, [cands(A=0.88, B=0.62)] * 2, t0=10)
    out = show(v, [cands(B=0.76, A=0.74)] * 2, t0=20)  # alone: unknown (lead 0.02)
    assert out == [] and v.current is not None and v.current.sku == "A"


def test_replay_counts_one_item_per_session() -> None:
    from benchmarks.kiosk_sessions import Step, Trace, replay

    steps = [Step(i, i in (0, 4), tuple(cands(A=0.74, B=0.72) if i < 4 else cands(A=0.9, B=0.5)), 5.0)
             for i in range(8)]
    steps += [Step(9, True, tuple(cands(EMPTY=0.97, A=0.2)), 5.0), Step(10, False, tuple(cands(EMPTY=0.97)), 5.0)]
    o = replay(Trace("A", "Packages", 2, 0, tuple(steps)), P, fps=10.0, candidates=3)
    assert (o.correct, o.wrong, o.unknown, o.picklist_hit, o.items) == (True, False, False, True, 1)
    assert o.first_answer_ms == 105.0  # frame 1 at 10 fps, plus its 5 ms of embedding and search
    wrong = replay(Trace("B", "Packages", 2, 0, tuple(steps)), P, fps=10.0, candidates=3)
    assert (wrong.correct, wrong.wrong, wrong.picklist_hit) == (False, True, True)  # B was in the pick list


def test_ceiling_finds_the_pair_that_keeps_the_wrong_session_unnamed() -> None:
    """Two sessions: right at 0.9, wrong at 0.8; the ceiling names the first and leaves the second unknown."""
    import argparse

    from benchmarks.kiosk_sessions import Step, Trace, ceiling

    def session(truth: str, top: float) -> Trace:
        steps = [Step(i, i == 0, tuple(cands(A=top, B=0.3)), 5.0) for i in range(4)]
        return Trace(truth, "Packages", 1, 0, tuple(steps))

    c = ceiling([session("A", 0.9), session("B", 0.8)], argparse.Namespace(fps=10.0, candidates=3), max_wrong=0.0)
    assert (c["correct"], c["wrong"], c["margin"]) == (0.5, 0.0, 0.0)
    assert 0.8 < c["score"] <= 0.9
    assert c["every_item_named"] == {"correct": 0.5, "wrong": 0.5}
