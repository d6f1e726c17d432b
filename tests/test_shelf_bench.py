"""benchmarks.shelf's scoring on a scripted facing: alerts matched to true periods, occlusions counted."""

from __future__ import annotations

from benchmarks._shelf_scenes import Truth
from benchmarks.shelf import Facing, choose, meets, score
from edge.core.types import Candidate
from edge.pipeline.vote import VoteParams

PARAMS = VoteParams(threshold=0.5, margin=0.05, window=4, min_frames=3, agreement=0.6)


def frames(sku: str, start: float, n: int = 5, key: str | None = None
           ) -> list[tuple[float, str | None, list[Candidate] | None]]:
    """The frames the gate lets through for one view (2 fps): the first carries the new view's key."""
    key = key or f"{sku}@{start}"
    return [(start + i / 2, key if i == 0 else None, [Candidate(sku, sku, 0.9), Candidate("OTHER", "o", 0.3)])
            for i in range(n)]


def scripted() -> Facing:
    steps = frames("MILK", 0) + frames("EMPTY", 100) + frames("MILK", 400) + frames("JACKET", 600) \
        + frames("MILK", 612) + frames("JUICE", 1000) + frames("MILK", 1500)
    truth = [Truth("empty", 100, 400), Truth("ok", 400, 1000), Truth("misplaced", 1000, 1500),
             Truth("ok", 1500, 3600)]
    return Facing("s0-f0", "MILK", [], truth, [(600.0, 612.0)], steps)


def test_alerts_are_matched_to_the_true_periods_and_the_occlusion_does_not_alert() -> None:
    r = score([scripted()], PARAMS, None, 20.0, 1.0)
    assert (r["empty_precision"], r["empty_recall"], r["misplaced_precision"], r["misplaced_recall"]) == (1, 1, 1, 1)
    assert (r["ok_precision"], r["ok_recall"], r["occlusion_alerts"], r["false_alerts"]) == (1, 1, 0, 0)
    assert r["empty_time_s"]["p50"] == 21.0  # the third frame decides (1 s), then the 20 s hold
    assert meets(r, 20.0)


def test_a_hold_shorter_than_the_occlusion_turns_it_into_a_false_alert() -> None:
    r = score([scripted()], PARAMS, None, 5.0, 1.0)
    assert (r["occlusion_alerts"], r["false_alerts"], r["misplaced_precision"]) == (1, 1, 0.5)
    assert not meets(r, 5.0)
    grid = [{"alert_after_s": 5.0, **r, "meets": False},
            {"alert_after_s": 20.0, **score([scripted()], PARAMS, None, 20.0, 1.0), "meets": True}]
    assert choose(grid)["alert_after_s"] == 20.0


def test_a_remembered_view_that_comes_back_keeps_its_decision_and_its_frames_are_not_voted() -> None:
    """The shopper leaves and the gate knows the view: the frames recorded after the marker (here read as JUICE,
    a misreading a new vote could make) count only when the voter had no decision to bring back."""
    back = [(612.0, "MILK@400", None), *[(t, None, c) for t, _, c in frames("JUICE", 612)]]
    steps = frames("MILK", 0) + frames("EMPTY", 100) + frames("MILK", 400) + frames("JACKET", 600) + back
    truth = [Truth("empty", 100, 400), Truth("ok", 400, 3600)]
    r = score([Facing("s0-f0", "MILK", [], truth, [(600.0, 612.0)], steps)], PARAMS, None, 20.0, 1.0)
    assert (r["false_alerts"], r["misplaced_counts"]["alerts"], r["empty_recall"], r["ok_recall"]) == (0, 0, 1, 1)
    unknown = [(612.0, "NEVER-DECIDED", None), *[(t, None, c) for t, _, c in frames("JUICE", 612)]]
    steps = frames("MILK", 0) + frames("JACKET", 600) + unknown  # no decision to bring back: voted anew
    r = score([Facing("s0-f0", "MILK", [], [], [(600.0, 612.0)], steps)], PARAMS, None, 20.0, 1.0)
    assert r["misplaced_counts"]["alerts"] == 1 and r["false_alerts"] == 1
