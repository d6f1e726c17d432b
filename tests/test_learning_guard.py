"""Learning that cannot be poisoned (issue 28, finding 10), on a real catalog store and a real runtime loop.

No calibration, no learning (every confirmation held for review, said in the stats); a product
learns at most ``learning.max_learned_per_hour`` photos an hour; and the crop a confirmation
teaches is the one its view was decided on, never a later heartbeat's frame.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.catalog.learning import Learner
from edge.catalog.store import Store
from edge.core.learning_settings import LearningSettings
from edge.core.types import Candidate
from edge.pipeline.capture import Frame
from edge.pipeline.confirm import ViewLog
from edge.pipeline.vote import Decision
from tests.encoders_for_tests import TinyImageEncoder, product_image


@pytest.fixture
def store(tmp_path: Path, tiny_onnx: Path) -> Iterator[Store]:
    s = Store(data_dir=tmp_path / "data", image_encoder=TinyImageEncoder(tiny_onnx), dtype="f32", aggregate="max")
    for i, sku in enumerate(("A", "B", "C")):
        s.enroll(sku, name=f"product {sku}", images=[product_image(i), product_image(i, noise=6)])
    yield s
    s.close()


def test_without_a_calibration_nothing_is_learned(store: Store) -> None:
    """20 wrong taps on an uncalibrated device: all held for review, the catalog searches as before."""
    assert store.calibration is None
    b_look = product_image(1, noise=3)
    before = [r.sku for r in store.search_image([b_look], k=3)[0]]
    version = store.catalog_version
    lrn = Learner(store)  # the defaults a user gets
    results = [lrn.learn("A", product_image(1, noise=10 + i), source="kiosk") for i in range(20)]
    assert [r.outcome for r in results] == ["held"] * 20
    assert {r.reason for r in results} == {"uncalibrated"}
    assert store.catalog_version == version and lrn.learned() == []
    assert [r.sku for r in store.search_image([b_look], k=3)[0]] == before
    stats = lrn.stats()
    assert stats["calibrated"] is False and stats["hold_below"] is None and "storelens calibrate" in stats["holding"]
    assert stats["held"] == 20 and stats["review"] == 20
    lrn.close()


def test_a_product_learns_at_most_so_many_photos_an_hour(store: Store) -> None:
    lrn = Learner(store, LearningSettings(hold_below=-1.0, duplicate_cosine=1.0))  # calibrated-like: all pass
    limit = LearningSettings().max_learned_per_hour
    assert limit is not None
    now = time.time()
    res = [lrn.learn("A", product_image(10 + i, noise=3), source="scan", ts=now + i) for i in range(limit + 2)]
    assert [r.outcome for r in res] == ["learned"] * limit + ["limited"] * 2
    version = store.catalog_version
    assert lrn.learn("A", product_image(40, noise=3), source="scan", ts=now + 10).outcome == "limited"
    assert store.catalog_version == version  # refused: nothing stored, nothing swapped
    assert lrn.learn("B", product_image(41, noise=3), source="scan", ts=now + 10).outcome == "learned"  # per product
    assert lrn.learn("A", product_image(42, noise=3), source="scan", ts=now + 3601).outcome == "learned"
    assert lrn.stats()["limited"] == 3
    lrn.close()


def test_a_heartbeat_never_replaces_the_views_crop() -> None:
    log = ViewLog(empty_sku="EMPTY")
    decided, later = np.full((16, 16, 3), 10, np.uint8), np.full((16, 16, 3), 250, np.uint8)
    msg = {"id": "m1", "view_id": "v1", "camera": "cam", "roi": "tray", "decision": "known", "ts": 1.0,
           "candidates": [{"sku": "A"}]}
    log.on_decision(msg, decided)
    log.on_decision({**msg, "id": "m2", "heartbeat": True, "ts": 31.0}, later)  # e.g. a hand over the tray
    view = log.by_match("m2")
    assert view is not None and view.crop is not None and int(view.crop.mean()) == 10
    log.on_decision({**msg, "id": "m3", "view_id": "v2", "heartbeat": True}, later)  # a view it never saw decide
    v2 = log.by_view("v2")
    assert v2 is not None and v2.crop is None


def test_the_runtime_hands_listeners_the_decided_crop_on_a_heartbeat(tmp_path: Path, tiny_onnx: Path) -> None:
    """The loop itself: a heartbeat's crop is the one its view decided on, not the camera's newest frame."""
    from edge.core.config import load_settings
    from edge.pipeline.factory import assemble_runtime
    from tests.runtime_helpers import NumpyMatcher, TinyOnnxEncoder, write_catalog

    enc = TinyOnnxEncoder(tiny_onnx)
    matcher = NumpyMatcher(write_catalog(tmp_path / "catalog.json", enc, ["RED"]), enc)
    settings = load_settings(None, device={"store": "s1", "id": "d1"}, catalog={"data_dir": str(tmp_path)},
                             cameras=[{"name": "cam", "source": "0", "mode": "kiosk",
                                       "rois": [{"name": "tray", "rect": [0, 0, 1, 1]}]}],
                             mqtt={"enabled": False})
    rt = assemble_runtime(settings=settings, encoder=enc, matcher=matcher, out=io.StringIO())
    got: list[np.ndarray | None] = []
    rt.decision_listeners.append(lambda _msg, crop: got.append(crop))
    try:
        def decide(image_value: int, *, heartbeat: bool, view: str) -> None:
            rt._last_frames["cam"] = Frame(camera="cam", seq=image_value, ts=time.time(),
                                           image=np.full((32, 32, 3), image_value, np.uint8))
            rt._publish(Decision(camera="cam", roi="tray", decision="known", frames=3, agreement=1.0,
                                 candidates=(Candidate(sku="RED", name="RED", score=0.9),), ts=time.time(),
                                 heartbeat=heartbeat, view_id=view))

        decide(10, heartbeat=False, view="v1")
        decide(250, heartbeat=True, view="v1")  # the camera now shows something else
        decide(250, heartbeat=True, view="v0")  # a heartbeat of a view this run never decided
        assert got[0] is not None and got[1] is not None and int(got[1].mean()) == 10 and got[2] is None
    finally:
        rt.shutdown()
