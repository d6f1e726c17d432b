"""The event model: one kiosk item per product held up (views pooled, updates share its item_id), shelf events
on change; thresholds said when
uncalibrated. Real loop, tiny ONNX encoder, image-folder cameras, JSONL out (what MQTT would carry)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.pipeline.factory import assemble_runtime
from tests.runtime_helpers import NumpyMatcher, TinyOnnxEncoder, product_image, write_catalog
from tests.test_runtime import SKUS, run_until, settings


@pytest.fixture
def parts(tmp_path: Path, tiny_onnx: Path) -> tuple[TinyOnnxEncoder, NumpyMatcher]:
    enc = TinyOnnxEncoder(tiny_onnx)
    return enc, NumpyMatcher(write_catalog(tmp_path / "catalog.json", enc, SKUS), enc)


def shown(folder: Path, items: list[tuple[str, int]], per_item: int = 8) -> Path:
    """An image-folder camera: each (sku, stripe shift) held up for ``per_item`` noisy frames, one after another."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    i = 0
    for sku, shift in items:
        for _ in range(per_item):
            cv2.imwrite(str(folder / f"{i:04d}.png"), product_image(sku, rng=rng, shift=shift))
            i += 1
    return folder


def decisions(tmp_path: Path, parts: tuple[TinyOnnxEncoder, NumpyMatcher], frames: Path, **over: Any) -> list[dict]:
    jsonl = tmp_path / "d.jsonl"
    s = settings(tmp_path, frames, jsonl_out=str(jsonl), **over)
    rt = assemble_runtime(settings=s, encoder=parts[0], matcher=parts[1], out=io.StringIO())
    rt.start()
    run_until(rt, lambda: False, timeout=20)  # ends with the folder
    rt.shutdown()
    return [json.loads(x) for x in jsonl.read_text().splitlines()] if jsonl.exists() else []


def items(got: list[dict]) -> list[tuple[str, str, bool]]:
    """(decision, top sku, final) of the non-heartbeat messages that are about an item."""
    return [(m["decision"], m["candidates"][0]["sku"], m["final"]) for m in got if m["item_id"] and not m["heartbeat"]]


def test_the_same_product_shown_twice_is_two_kiosk_items(tmp_path: Path,
                                                         parts: tuple[TinyOnnxEncoder, NumpyMatcher]) -> None:
    """Two cartons of milk at a self-checkout, the tray emptied in between: same sku, two items."""
    frames = shown(tmp_path / "frames", [("RED", 0), ("EMPTY", 0), ("RED", 16), ("EMPTY", 0), ("GREEN", 0)])
    got = decisions(tmp_path, parts, frames)
    assert items(got) == [("known", "RED", False), ("known", "RED", True), ("known", "RED", False),
                          ("known", "RED", True), ("known", "GREEN", False)]
    ids = [m["item_id"] for m in got if m["item_id"]]
    assert len(set(ids)) == 3 and ids[0] == ids[1] and ids[2] == ids[3]
    assert [m["candidates"][0]["sku"] for m in got if m["item_id"] is None] == ["EMPTY", "EMPTY"]


def test_two_views_of_one_item_are_one_item_event(tmp_path: Path, parts: tuple[TinyOnnxEncoder, NumpyMatcher]) -> None:
    """A shopper turning the product shows the gate a second view: one item, one event (it was two before)."""
    frames = shown(tmp_path / "frames", [("RED", 0), ("RED", 16), ("EMPTY", 0)])
    got = decisions(tmp_path, parts, frames)
    assert items(got) == [("known", "RED", False), ("known", "RED", True)]
    assert len({m["item_id"] for m in got if m["item_id"]}) == 1
    final = next(m for m in got if m["final"])
    assert final["views"] == 2 and final["agreement"] == 1.0
    assert len({m["view_id"] for m in got}) == 3  # two views of the item, one of the empty tray


def test_a_swap_without_emptying_the_tray_stays_one_item_and_never_names_the_old_product_for_the_new(
        tmp_path: Path, parts: tuple[TinyOnnxEncoder, NumpyMatcher]) -> None:
    frames = shown(tmp_path / "frames", [("RED", 0), ("GREEN", 0), ("GREEN", 16), ("GREEN", 8), ("EMPTY", 0)])
    got = [m for m in decisions(tmp_path, parts, frames, decision={"threshold": 0.5, "margin": 0.02})
           if m["item_id"]]
    assert len({m["item_id"] for m in got}) == 1
    answers = [(m["decision"], m["candidates"][0]["sku"] if m["decision"] == "known" else None) for m in got]
    # RED, then views that disagree: unknown (pooled red + green would crown YELLOW, which no view showed), then
    # GREEN once its views are the majority; the final update names GREEN
    assert answers == [("known", "RED"), ("unknown", None), ("known", "GREEN"), ("known", "GREEN")]
    assert got[-1]["final"] and got[-1]["views"] == 4


def test_two_unknown_products_in_a_row_are_two_kiosk_items(tmp_path: Path,
                                                           parts: tuple[TinyOnnxEncoder, NumpyMatcher]) -> None:
    frames = shown(tmp_path / "frames", [("RED", 0), ("EMPTY", 0), ("GREEN", 0)])
    got = decisions(tmp_path, parts, frames, decision={"threshold": 1.0, "margin": 0.5})  # nothing clears it
    assert [(d, f) for d, _, f in items(got)] == [("unknown", False), ("unknown", True), ("unknown", False)]
    assert got[0]["item_id"] != got[-1]["item_id"] and got[0]["candidates"][0]["sku"] == "RED"


def test_shelf_regions_publish_on_change_only(tmp_path: Path, parts: tuple[TinyOnnxEncoder, NumpyMatcher]) -> None:
    frames = shown(tmp_path / "frames", [("RED", 0), ("RED", 16), ("GREEN", 0)])
    cams = [{"name": "cam", "source": str(frames), "fps": 30, "mode": "shelf"}]
    got = decisions(tmp_path, parts, frames, cameras=cams)
    assert [m["candidates"][0]["sku"] for m in got] == ["RED", "GREEN"]  # the second RED view is no change


@pytest.mark.parametrize("remember", [4, 0])
def test_a_shelf_view_that_comes_back_after_a_shopper_gets_its_decision_back_without_a_new_vote(
        tmp_path: Path, parts: tuple[TinyOnnxEncoder, NumpyMatcher], remember: int) -> None:
    frames = shown(tmp_path / "frames", [("RED", 0), ("GREEN", 0), ("RED", 0)])  # GREEN: a shopper's coat
    cams = [{"name": "cam", "source": str(frames), "fps": 30, "mode": "shelf"}]
    got = decisions(tmp_path, parts, frames, cameras=cams, shelf={"remember_views": remember})
    assert [m["candidates"][0]["sku"] for m in got] == ["RED", "GREEN", "RED"]
    assert (got[2]["view_id"] == got[0]["view_id"]) is (remember > 0)  # the old view's decision, not a new vote


def test_a_heartbeat_repeats_the_decision_of_its_own_view(tmp_path: Path,
                                                          parts: tuple[TinyOnnxEncoder, NumpyMatcher]) -> None:
    frames = shown(tmp_path / "frames", [("RED", 0)], per_item=40)
    cams = [{"name": "cam", "source": str(frames), "fps": 20}]
    got = decisions(tmp_path, parts, frames, cameras=cams, decision={"heartbeat_s": 0.5})
    assert [m["heartbeat"] for m in got][:2] == [False, True]
    assert {m["view_id"] for m in got} == {got[0]["view_id"]}


def test_uncalibrated_thresholds_are_said_at_start_and_in_status(
        tmp_path: Path, parts: tuple[TinyOnnxEncoder, NumpyMatcher], caplog: pytest.LogCaptureFixture) -> None:
    frames = shown(tmp_path / "frames", [("RED", 0)])
    rt = assemble_runtime(settings=settings(tmp_path, frames), encoder=parts[0], matcher=parts[1], out=io.StringIO())
    with caplog.at_level(logging.WARNING, logger="storelens.runtime"):
        rt.start()
    rt.shutdown()
    th = rt.status()["thresholds"]
    assert (th["source"], th["calibrated"], th["threshold"], th["margin"]) == ("uncalibrated", False, 0.85, 0.02)
    assert "not calibrated" in th["note"] and "storelens calibrate" in th["note"]
    assert any("not calibrated" in r.getMessage() and "storelens calibrate" in r.getMessage() for r in caplog.records)


def test_configured_thresholds_are_not_warned_about(tmp_path: Path, parts: tuple[TinyOnnxEncoder, NumpyMatcher],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    frames = shown(tmp_path / "frames", [("RED", 0)])
    s = settings(tmp_path, frames, decision={"threshold": 0.9, "margin": 0.05})
    rt = assemble_runtime(settings=s, encoder=parts[0], matcher=parts[1], out=io.StringIO())
    with caplog.at_level(logging.WARNING, logger="storelens.runtime"):
        rt.start()
    rt.shutdown()
    th = rt.status()["thresholds"]
    assert (th["source"], th["calibrated"], th["note"]) == ("config", True, None)
    assert not any("not calibrated" in r.getMessage() for r in caplog.records)


def test_a_stored_calibration_counts_and_a_stale_one_does_not(tmp_path: Path, tiny_onnx: Path) -> None:
    from edge.catalog.store import Store
    from edge.core.types import Calibration
    from edge.pipeline.vote import VoteParams

    enc = TinyOnnxEncoder(tiny_onnx)
    store = Store(data_dir=tmp_path / "data", image_encoder=enc, dtype="f32")
    cal = dict(score=0.8, margin=0.04, target=0.95, known_queries=10, unknown_queries=5, known_accept_rate=0.95,
               known_top1_accuracy=0.9, accepted_precision=0.97, false_accept_rate=0.1, held_out=("X",),
               catalog_version=1)
    s = settings(tmp_path, tmp_path).decision
    store.save_calibration(Calibration(**cal, fingerprint=enc.fingerprint))  # type: ignore[arg-type]
    assert VoteParams.from_settings(s, store.thresholds).source == "calibrated"
    store.save_calibration(Calibration(**cal, fingerprint="another-encoder"))  # type: ignore[arg-type]
    stale = VoteParams.from_settings(s, store.thresholds)
    assert (stale.source, stale.calibrated, stale.threshold) == ("stale-calibration", False, 0.85)
    store.close()
