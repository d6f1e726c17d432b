"""Search by video: a generated tray clip (empty tray, a product shown as two views, empty tray) through
``storelens search --video`` and ``cmd/search``'s ``video``, with the embedded bundle and a real catalog store."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.catalog.store import Store
from edge.cli.main import main
from edge.core.config import ModelSettings
from edge.core.errors import InputError
from edge.models.encoders import load_image_encoder
from edge.pipeline.demo import DEMO_PRODUCTS, light_and_noise, place, reference_images, render_product, tray_background

SHOWN = DEMO_PRODUCTS[2]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config whose catalog holds the demo's rendered products and the empty tray (EMPTY)."""
    root = tmp_path_factory.mktemp("video")
    store = Store(data_dir=root / "data", image_encoder=load_image_encoder(ModelSettings()))
    for p in DEMO_PRODUCTS:
        store.enroll(p.sku, name=p.name, images=reference_images(p))
    rng = np.random.default_rng(1)
    store.enroll("EMPTY", name="Empty tray", images=[light_and_noise(tray_background(), rng) for _ in range(3)])
    store.close()
    cfg = root / "c.toml"
    cfg.write_text(f'[device]\nstore = "s"\nid = "d"\n[catalog]\ndata_dir = "{root / "data"}"\n')
    return cfg


def tray_clip(path: Path) -> Path:
    """An MJPEG AVI: 10 frames of the empty tray, the product in two poses (15 frames each), the empty tray."""
    rng = np.random.default_rng(4)
    bg = tray_background()
    poses = [place(bg, render_product(SHOWN), np.random.default_rng(s)) for s in (11, 12)]
    frames = [bg] * 10 + [poses[0]] * 15 + [poses[1]] * 15 + [bg] * 10
    out = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 15, (bg.shape[1], bg.shape[0]))
    assert out.isOpened()
    for f in frames:
        out.write(light_and_noise(f, rng, jitter=0.1))
    out.release()
    return path


def test_search_video_prints_one_answer_pooled_over_the_views(catalog: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    clip = tray_clip(tmp_path / "tray.avi")
    assert main(["search", "--video", str(clip), "--config", str(catalog), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["decision"], got["sku"], got["items"], got["views"], got["gate"]) == ("known", SHOWN.sku, 1, 2,
                                                                                      "steady")
    assert got["frames_read"] == 50 and got["candidates"][0]["sku"] == SHOWN.sku
    assert "EMPTY" not in [c["sku"] for c in got["candidates"]]
    assert main(["search", "--video", str(clip), "--config", str(catalog)]) == 0
    text = capsys.readouterr().out
    assert f"answer: {SHOWN.name} ({SHOWN.sku}) from 2 view(s)" in text and "not this product?" in text


def test_search_video_refuses_a_file_that_is_not_a_video(catalog: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.avi"
    bad.write_text("not a video")
    assert main(["search", "--video", str(bad), "--config", str(catalog)]) == InputError.exit_code
    err = capsys.readouterr().err
    assert "notes.avi is not a video this box can decode" in err and "MJPEG AVI" in err


def test_cmd_search_accepts_a_clip(catalog: Path, tmp_path: Path) -> None:
    """The same clip as ``cmd/search`` sends it: base64 in the JSON, through the runtime's own handler."""
    import io

    from edge.core.config import load_settings
    from edge.pipeline.factory import assemble_runtime

    settings = load_settings(catalog)
    enc = load_image_encoder(settings.model)
    store = Store.from_settings(settings, image_encoder=enc, text_encoder=None)
    rt = assemble_runtime(settings=settings, encoder=enc, matcher=store, out=io.StringIO())
    try:
        clip = base64.b64encode(tray_clip(tmp_path / "c.avi").read_bytes()).decode()
        reply = rt.router.handle("search", json.dumps({"id": "v1", "video": {"b64": clip}}).encode())
        assert reply["ok"] is True, reply
        assert (reply["result"]["sku"], reply["result"]["items"]) == (SHOWN.sku, 1)
        bad = rt.router.handle("search", json.dumps({"id": "v2", "video": {"b64": "@@"}}).encode())
        assert bad["ok"] is False and "not valid base64" in bad["error"]
    finally:
        rt.outbox.close()
        store.close()


def test_a_clip_that_never_holds_still_is_sampled_with_bounded_memory() -> None:
    """No view ever steady: SAMPLED evenly spaced frames are embedded, whatever the clip's length."""
    from edge.core.types import Candidate
    from edge.pipeline.clip import SAMPLED, decide_clip
    from edge.pipeline.vote import VoteParams

    rng = np.random.default_rng(0)
    frames = (rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(500))  # every frame moves
    seen: list[int] = []

    def match(images: list[np.ndarray], k: int) -> list[list[Candidate]]:
        seen.append(len(images))
        return [[Candidate("A", "A", 0.9), Candidate("B", "B", 0.3)] for _ in images]

    answer = decide_clip(frames, match, VoteParams(threshold=0.5, margin=0.1, min_frames=2))
    assert (answer.gate, answer.frames_read, answer.frames_embedded) == ("sampled", 500, SAMPLED)
    assert answer.decision is not None and answer.decision.sku == "A" and sum(seen) == SAMPLED
