"""Frame sources (folder, glob, video file, loop), start errors, drop-and-return, and the gate."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.core.config import CameraSettings
from edge.core.errors import CaptureError
from edge.pipeline.capture import CameraThread, ImageFolderSource, VideoCaptureSource, open_source
from edge.pipeline.gate import GateVerdict, RegionGate
from tests.runtime_helpers import product_image, write_frames


def cam(source: str, **kw: object) -> CameraSettings:
    return CameraSettings(name="cam1", source=source, **kw)  # type: ignore[arg-type]


def write_video(path: Path, n: int) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (64, 48))
    for i in range(n):
        w.write(np.full((48, 64, 3), i * 20, np.uint8))
    w.release()
    return path


def test_folder_glob_and_end(tmp_path: Path) -> None:
    write_frames(tmp_path / "f", ["RED", "GREEN"], per_sku=2)
    (tmp_path / "f" / "notes.txt").write_text("ignored")
    src = open_source(cam(str(tmp_path / "f")))
    assert isinstance(src, ImageFolderSource) and len(src.paths) == 4
    assert [src.read() is not None for _ in range(5)] == [True, True, True, True, False]
    g = open_source(cam(str(tmp_path / "f" / "0000[01].png")))
    assert isinstance(g, ImageFolderSource) and len(g.paths) == 2


def test_folder_loop_and_unreadable_frame_is_skipped_and_counted(tmp_path: Path) -> None:
    write_frames(tmp_path / "f", ["RED"], per_sku=2)
    (tmp_path / "f" / "00001.png").write_bytes(b"not a png")
    src = open_source(cam(str(tmp_path / "f"), loop=True))
    assert all(src.read() is not None for _ in range(4))
    assert isinstance(src, ImageFolderSource) and src.skipped == 3  # reads 2..4 each skip the bad file once


def test_video_file_and_loop(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", 3)
    once = open_source(cam(str(video)))
    assert isinstance(once, VideoCaptureSource)
    assert [once.read() is not None for _ in range(4)] == [True, True, True, False]
    looped = open_source(cam(str(video), loop=True))
    assert all(looped.read() is not None for _ in range(7))


@pytest.mark.parametrize("source", ["/nonexistent/clip.mp4", "no-such-dir/*.jpg", "not a source"])
def test_missing_source_names_the_camera(tmp_path: Path, source: str) -> None:
    with pytest.raises(CaptureError, match="cam1"):
        open_source(cam(source))


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptureError, match=r"cam1.*no images"):
        open_source(cam(str(tmp_path / "empty")))


class FlakySource:
    """Serves frames, then fails: the stand-in for a camera that drops."""

    def __init__(self, fail_after: int) -> None:
        self.n = 0
        self.fail_after = fail_after

    def read(self) -> np.ndarray | None:
        self.n += 1
        if self.n > self.fail_after:
            raise CaptureError("stream read failed")
        return product_image("RED")

    def close(self) -> None:
        pass


def test_camera_drops_and_returns_with_backoff_and_reports_outage() -> None:
    opens = {"n": 0}

    def factory() -> FlakySource:
        opens["n"] += 1
        if opens["n"] in (2, 3):  # the first two reopen attempts fail: the camera is still away
            raise CaptureError("cannot open")
        return FlakySource(fail_after=5 if opens["n"] == 1 else 10_000)

    t = CameraThread(settings=cam("x", fps=100), factory=factory, backoff_min_s=0.05, backoff_max_s=0.2)
    t.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (t.stats.outages == 1 and t.stats.frames >= 15):
        time.sleep(0.02)
    t.stop()
    assert t.stats.outages == 1
    assert t.stats.state == "ok"
    assert t.stats.frames >= 15
    assert opens["n"] == 4
    assert t.stats.reopen_attempts == 3
    assert t.stats.outage_s >= 0.05 + 0.1  # two failed waits then a successful one
    assert t.stats.to_dict()["outages"] == 1


def test_camera_thread_keeps_only_newest_frame(tmp_path: Path) -> None:
    write_frames(tmp_path / "f", ["RED", "GREEN", "BLUE"], per_sku=3)
    t = CameraThread(settings=cam(str(tmp_path / "f"), fps=120))
    t.start()
    deadline = time.monotonic() + 5
    while not t.ended and time.monotonic() < deadline:
        time.sleep(0.01)
    f = t.latest()
    assert f is not None and f.seq == 9 and t.latest() is None
    t.stop()


def test_resize_width(tmp_path: Path) -> None:
    write_frames(tmp_path / "f", ["RED"], per_sku=1, size=200)
    t = CameraThread(settings=cam(str(tmp_path / "f"), resize_width=100))
    t.start()
    deadline = time.monotonic() + 5
    while not t.ended and time.monotonic() < deadline:
        time.sleep(0.01)
    f = t.latest()
    assert f is not None and f.image.shape == (100, 100, 3)
    t.stop()


def test_gate_skips_unchanged_after_frames_per_view() -> None:
    g = RegionGate(change_threshold=0.02, steady_frames=0, frames_per_view=2)
    rng = np.random.default_rng(0)
    red = [product_image("RED", rng=rng) for _ in range(4)]
    blue = product_image("BLUE", rng=rng)
    got = [g.check(x) for x in [*red, blue, blue, blue]]
    assert got == [GateVerdict.NEW_VIEW, GateVerdict.EMBED, GateVerdict.UNCHANGED, GateVerdict.UNCHANGED,
                   GateVerdict.NEW_VIEW, GateVerdict.EMBED, GateVerdict.UNCHANGED]
    assert g.stats.to_dict() == {"seen": 7, "embedded": 4, "skipped_unchanged": 3, "skipped_unsteady": 0,
                                 "skip_ratio": 0.4286}


def test_a_shelf_gate_remembers_views_whose_vote_completed_and_knows_them_when_they_come_back() -> None:
    g = RegionGate(change_threshold=0.02, steady_frames=0, frames_per_view=2, remember=2)
    rng = np.random.default_rng(0)
    red, blue, green = (lambda: product_image("RED", rng=rng)), product_image("BLUE"), product_image("GREEN")
    assert [g.check(red()), g.check(red())] == [GateVerdict.NEW_VIEW, GateVerdict.EMBED]
    g.view_key = "red-view"  # the caller names the view (the runtime: its vote's view id)
    assert g.check(blue) == GateVerdict.NEW_VIEW  # a shopper in front, gone before its vote completed
    g.view_key = "jacket"
    assert g.check(red()) == GateVerdict.RETURNED and g.returned_key == g.view_key == "red-view"
    assert g.check(red()) == GateVerdict.UNCHANGED  # nothing of it is embedded again
    assert g.check(green) == GateVerdict.NEW_VIEW  # never seen: a new vote; blue was never complete, so not known
    g.view_key = "green"
    assert g.check(green) == GateVerdict.EMBED  # green's vote completes
    assert g.check(blue) == GateVerdict.NEW_VIEW
    g.view_key = "blue"
    assert g.check(red()) == GateVerdict.RETURNED and g.returned_key == "red-view"
    assert g.check(green) == GateVerdict.RETURNED and g.returned_key == "green"
    assert g.check(red()) == GateVerdict.RETURNED and g.returned_key == "red-view"  # remembered once, the newest
    plain = RegionGate(change_threshold=0.02, steady_frames=0, frames_per_view=1)  # remember=0: the kiosk's gate
    plain.view_key = "x"
    assert [plain.check(v) for v in (red(), blue, red())] == [GateVerdict.NEW_VIEW] * 3


def test_kiosk_gate_waits_for_steady_view() -> None:
    g = RegionGate(change_threshold=0.02, steady_frames=2, frames_per_view=1)
    red, blue = product_image("RED"), product_image("BLUE")
    got = [g.check(x) for x in [red, blue, red, red, red, red]]
    assert got == [GateVerdict.UNSTEADY, GateVerdict.UNSTEADY, GateVerdict.UNSTEADY, GateVerdict.UNSTEADY,
                   GateVerdict.NEW_VIEW, GateVerdict.UNCHANGED]
    assert g.stats.skipped_unsteady == 4


def test_gate_disabled_embeds_everything() -> None:
    g = RegionGate(change_threshold=0.02, steady_frames=2, frames_per_view=1, enabled=False)
    red = product_image("RED")
    assert [g.check(red) for _ in range(3)] == [GateVerdict.EMBED] * 3
