"""Change while running: reload with OCR on, a bad crop, OCR requests per crop, a bundle change on reload."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.catalog.store import Store
from edge.core.types import Candidate
from edge.pipeline.factory import assemble_runtime
from edge.pipeline.loop import Runtime
from edge.text.fusion import FusionWeights, LabelTextReranker
from edge.text.ocr.engine import OcrEngine, OcrLine, OcrResult
from edge.text.ocr.worker import OcrWorker
from edge.text.profiles import catalog_profiles
from tests.runtime_helpers import NumpyMatcher, TinyOnnxEncoder, write_catalog, write_frames
from tests.test_ocr import label
from tests.test_runtime import SKUS, settings


class FixedReader:
    """An OCR reader that reads the same words off every crop (the label of the product shown)."""

    def __init__(self, *words: str) -> None:
        self.result = OcrResult(lines=tuple(OcrLine(w, 0.99) for w in words), latency_ms=1.0)

    def read(self, image_bgr: np.ndarray) -> OcrResult:
        return self.result


def start_loop(rt: Runtime, seconds: float = 60) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    stop = threading.Event()
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            rt.run(stop, max_seconds=seconds)
        except BaseException as e:  # the thread dying is what the tests look for
            crashed.append(e)
            raise

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, stop, crashed


def wait_for(cond: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def test_reload_with_ocr_on_after_the_catalog_grew_keeps_deciding(tmp_path: Path, tiny_onnx: Path) -> None:
    """The reranker's cached reading was scored against the old profiles; a reload must not fuse it against new ones."""
    enc = TinyOnnxEncoder(tiny_onnx)
    data = tmp_path / "data"
    store = Store(data_dir=data, image_encoder=enc, dtype="f32")
    store.enroll("arla-mjolk", name="Arla Mellanmjolk", images=[label("ARLA", "MELLANMJOLK")])
    store.enroll("oatly-havregurt", name="Oatly Havregurt", images=[label("OATLY", "HAVREGURT")])
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(20):
        cv2.imwrite(str(frames / f"{i:03d}.png"), label("OATLY", "HAVREGURT"))
    reranker = LabelTextReranker(worker=OcrWorker(engine=FixedReader("OATLY", "HAVREGURT"), nice=0),
                                 profiles=catalog_profiles(store.catalog), weights=FusionWeights(ocr=0.3),
                                 names={p.sku: p.name for p in store.catalog.products()})
    s = settings(tmp_path, frames, cameras=[{"name": "cam", "source": str(frames), "fps": 20, "loop": True}],
                 gate={"enabled": False}, decision={"heartbeat_s": 0.2}, catalog={"data_dir": str(data)})
    rt = assemble_runtime(settings=s, encoder=enc, matcher=store, out=io.StringIO(), reranker=reranker)
    rt.start()
    loop, stop, crashed = start_loop(rt)
    try:
        assert wait_for(lambda: reranker.fused >= 2)  # the reading is cached and fused on every frame
        other = Store(data_dir=data, image_encoder=enc, dtype="f32")  # another process adds a product
        other.enroll("oatly-ikaffe", name="Oatly iKaffe", images=[label("OATLY", "IKAFFE")])
        other.close()
        reply = rt.router.handle("reload", b"{}")
        assert reply["ok"], reply
        assert reply["result"]["catalog_version"] == store.catalog_version
        before = (rt.counts["embedded"], rt.counts["decisions"])
        assert wait_for(lambda: (rt.counts["embedded"] > before[0] + 5 and rt.counts["decisions"] > before[1])
                        or not loop.is_alive())
        assert loop.is_alive() and not crashed, crashed
        assert rt.counts["errors"] == 0
        assert len(reranker.profiles.skus) == 3
    finally:
        stop.set()
        loop.join(10)
        rt.shutdown()
        store.close()


class OneBadCrop(NumpyMatcher):
    """Returns candidates the reranker cannot take for one batch (a bug that must cost one crop only)."""

    poison = 2

    def match_vectors(self, embs: np.ndarray, k: int) -> list[list[Candidate]]:
        out = super().match_vectors(embs, k)
        self.poison -= 1
        if self.poison == 0:
            return [[Candidate("RED", "Red", float("nan"))] + [None] * 2 for _ in out]  # type: ignore[list-item]
        return out


def test_a_crop_that_fails_after_search_costs_that_crop_not_the_loop(tmp_path: Path, tiny_onnx: Path) -> None:
    enc = TinyOnnxEncoder(tiny_onnx)
    matcher = OneBadCrop(write_catalog(tmp_path / "catalog.json", enc, SKUS), enc)
    frames = write_frames(tmp_path / "frames", ["RED", "GREEN"], per_sku=8)
    reranker = LabelTextReranker(worker=OcrWorker(engine=FixedReader("nothing", "known"), nice=0),
                                 profiles=_profiles(SKUS), weights=FusionWeights(ocr=0.3))
    s = settings(tmp_path, frames, gate={"enabled": False})
    rt = assemble_runtime(settings=s, encoder=enc, matcher=matcher, out=io.StringIO(), reranker=reranker)
    rt.start()
    loop, _stop, crashed = start_loop(rt, seconds=20)
    loop.join(30)
    summary = rt.shutdown()
    assert not crashed, crashed
    assert summary["crops_failed"] == 1 and summary["errors"] == 1
    assert summary["decisions"] >= 2  # RED and GREEN were still decided


def test_ocr_is_requested_once_per_embedded_crop(tmp_path: Path, tiny_onnx: Path) -> None:
    enc = TinyOnnxEncoder(tiny_onnx)
    matcher = NumpyMatcher(write_catalog(tmp_path / "catalog.json", enc, SKUS), enc)
    frames = write_frames(tmp_path / "frames", ["RED", "GREEN"], per_sku=6)
    reranker = LabelTextReranker(worker=OcrWorker(engine=FixedReader("red"), nice=0), profiles=_profiles(SKUS),
                                 weights=FusionWeights(ocr=0.3))
    rt = assemble_runtime(settings=settings(tmp_path, frames, gate={"enabled": False}), encoder=enc, matcher=matcher,
                          out=io.StringIO(), reranker=reranker)
    rt.start()
    loop, _stop, crashed = start_loop(rt, seconds=20)
    loop.join(30)
    summary = rt.shutdown()
    assert not crashed
    assert summary["ocr"]["requests"] == summary["embedded"] > 0  # not twice per crop


def test_reload_with_a_new_bundle_swaps_encoder_and_matcher_together(tmp_path: Path, tiny_onnx: Path) -> None:
    """The bundle-change branch: the loader returns an encoder with another fingerprint (and dimension)."""
    from tests.tiny_model import build_tiny_encoder

    enc = TinyOnnxEncoder(tiny_onnx)
    path2 = tmp_path / "tiny2.onnx"
    build_tiny_encoder(path2, input_size=32, dim=16, seed=7)
    enc2 = TinyOnnxEncoder(path2)
    assert enc2.fingerprint != enc.fingerprint
    old = NumpyMatcher(write_catalog(tmp_path / "catalog.json", enc, SKUS, version="v1"), enc)
    opened: list[TinyOnnxEncoder] = []

    def open_matcher(e: Any) -> NumpyMatcher:
        opened.append(e)
        return NumpyMatcher(write_catalog(tmp_path / "catalog2.json", e, SKUS, version="v2"), e)

    frames = write_frames(tmp_path / "frames", ["RED"], per_sku=4)
    s = settings(tmp_path, frames, cameras=[{"name": "cam", "source": str(frames), "fps": 20, "loop": True}])
    rt = assemble_runtime(settings=s, encoder=enc, matcher=old, out=io.StringIO(), encoder_loader=lambda: enc2,
                          matcher_loader=open_matcher)
    reply = rt.router.handle("reload", b'{"id": "b1"}')
    assert reply == {"id": "b1", "ok": True, "result": {"catalog_version": "v2", "bundle": enc2.fingerprint}}
    assert opened == [enc2] and rt.encoder is enc2 and rt.matcher is not old and old.reloads == 0
    assert rt.status()["bundle"] == enc2.fingerprint
    # the same bundle again: no new matcher, the current one reloads in place
    reply = rt.router.handle("reload", b"{}")
    assert reply["ok"] and len(opened) == 1 and rt.matcher.reloads == 1  # type: ignore[attr-defined]
    rt.outbox.close()


def _profiles(skus: list[str]) -> Any:
    from edge.text.profiles import ProductText, TextProfiles

    return TextProfiles.build([ProductText(sku=s, titles=(s.lower(),)) for s in skus])


@pytest.fixture(autouse=True)
def _no_real_ocr_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read with FixedReader; loading the real OCR models would only cost time."""
    monkeypatch.setattr(OcrEngine, "read", lambda self, img: FixedReader().result)
