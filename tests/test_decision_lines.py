"""The printed decision lines (issue 29 item 22): a kiosk's lines name the item they are about, and a
corrected answer for the same item reads as an update of it, not as another item."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

from edge.core.types import Candidate
from edge.pipeline.factory import assemble_runtime
from edge.pipeline.messages import DecisionLines
from edge.pipeline.vote import Decision
from tests.runtime_helpers import NumpyMatcher, TinyOnnxEncoder, product_image, write_catalog
from tests.test_runtime import SKUS, run_until, settings


def decided(sku: str | None, *, camera: str = "kiosk", view: str = "v1", heartbeat: bool = False) -> Decision:
    cands = (Candidate(sku=sku or "X", name=sku or "X", score=0.9 if sku else 0.2),)
    return Decision(camera=camera, roi="tray", decision="known" if sku else "unknown", candidates=cands, frames=3,
                    agreement=1.0, ts=1.0, heartbeat=heartbeat, view_id=view)


def test_a_corrected_answer_reads_as_an_update_of_the_same_item() -> None:
    lines = DecisionLines(["kiosk"])
    first = lines.line(decided(None), item="item-a")
    corrected = lines.line(decided("OATS"), item="item-a")
    beat = lines.line(decided("OATS", heartbeat=True), item="item-a")
    other = lines.line(decided("COLA", view="v2"), item="item-b")
    assert first.endswith("unknown - frames=3  item 1")
    assert corrected.endswith("known   OATS (0.90) frames=3  item 1 updated")
    assert beat.endswith("heartbeat  item 1") and other.endswith("COLA (0.90) frames=3  item 2")
    assert lines.line(decided("COLA", camera="shelf"), item="s1").endswith("frames=3")  # shelves: plain lines
    assert lines.line(decided(None, view="v3"), item=None).endswith("frames=3")  # the empty tray is no item


def test_a_kiosk_run_prints_one_numbered_line_per_item(tmp_path: Path, tiny_onnx: Path) -> None:
    enc = TinyOnnxEncoder(tiny_onnx)
    matcher = NumpyMatcher(write_catalog(tmp_path / "catalog.json", enc, SKUS), enc)
    frames = tmp_path / "frames"  # a kiosk camera: RED held up for 8 frames, then GREEN
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i, sku in enumerate(["RED"] * 8 + ["GREEN"] * 8):
        cv2.imwrite(str(frames / f"{i:04d}.png"), product_image(sku, rng=rng))
    out = io.StringIO()
    rt = assemble_runtime(settings=settings(tmp_path, frames), encoder=enc, matcher=matcher, out=out)
    rt.start()
    run_until(rt, lambda: False, timeout=20)  # ends with the folder
    rt.shutdown()
    said = [(ln.split()[3], ln.split("  ")[-1]) for ln in out.getvalue().splitlines()]
    # (a runtime with items may also print the item's final answer when the next one starts: same number)
    assert [x for i, x in enumerate(said) if i == 0 or x != said[i - 1]] == [("RED", "item 1"), ("GREEN", "item 2")]
