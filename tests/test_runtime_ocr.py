"""OCR in the frame loop: label text read off the ROI (on its own thread) decides between look-alikes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.core.types import Candidate
from edge.pipeline.factory import assemble_runtime
from edge.pipeline.messages import ocr_stats
from edge.text.fusion import FusionWeights, LabelTextReranker
from edge.text.ocr.engine import OcrEngine
from edge.text.ocr.worker import OcrWorker
from edge.text.profiles import ProductText, TextProfiles
from tests.runtime_helpers import TinyOnnxEncoder
from tests.test_ocr import label
from tests.test_runtime import run_until, settings


class LookAlikes:
    """A matcher for two cartons the camera cannot tell apart: every crop ties, image-wise."""

    catalog_version = "v1"

    def match_vectors(self, embs: np.ndarray, k: int) -> list[list[Candidate]]:
        tie = [Candidate(sku="arla-mjolk", name="Arla Mjölk", score=0.8),
               Candidate(sku="oatly-havregurt", name="Oatly Havregurt", score=0.8)]
        return [tie[:k] for _ in range(len(embs))]

    def reload(self) -> object:
        return None


def top_skus(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["candidates"][0]["sku"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("gate", [True, False], ids=["gated", "every-frame"])
def test_label_text_breaks_an_image_tie_in_the_running_loop(tmp_path: Path, tiny_onnx: Path, gate: bool) -> None:
    """Gated: the gate stops embedding the unchanged view before OCR is done; the reading still counts."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(40):
        cv2.imwrite(str(frames / f"{i:03d}.png"), label("OATLY", "HAVREGURT"))
    profiles = TextProfiles.build([ProductText(sku="arla-mjolk", titles=("Arla Mellanmjölk",)),
                                   ProductText(sku="oatly-havregurt", titles=("Oatly Havregurt",))])
    reranker = LabelTextReranker(worker=OcrWorker(engine=OcrEngine(threads=1), nice=0), profiles=profiles,
                                 weights=FusionWeights(ocr=0.3), names={})
    out = io.StringIO()
    s = settings(tmp_path, frames, cameras=[{"name": "cam", "source": str(frames), "fps": 10, "loop": True}],
                 gate={"steady_frames": 0, "enabled": gate}, jsonl_out=str(tmp_path / "d.jsonl"))
    rt = assemble_runtime(settings=s, encoder=TinyOnnxEncoder(tiny_onnx), matcher=LookAlikes(), out=out,
                          reranker=reranker)
    rt.start()
    run_until(rt, lambda: top_skus(tmp_path / "d.jsonl")[-1:] == ["oatly-havregurt"], timeout=60)
    summary = rt.shutdown()
    decisions = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert decisions[-1]["candidates"][0]["sku"] == "oatly-havregurt"
    assert decisions[-1]["decision"] == "known"
    assert summary["ocr"]["fused"] >= 1 and summary["ocr"]["reads"] >= 1
    assert summary["ocr"]["enabled"] is True and set(summary["ocr"]) == set(ocr_stats(None))  # one shape, on or off
    if gate:
        assert summary["gate"]["skipped_unchanged"] > 0  # the reading arrived while the gate skipped frames
