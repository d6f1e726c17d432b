"""Frame sources and the capture thread that keeps each camera's newest frame.

A source is anything with ``read() -> image | None`` (None = end of stream) and ``close()``:
a camera index, an RTSP/HTTP URL or a video file (OpenCV ``VideoCapture``), or an image
folder / glob / file (sorted, optionally looping, each image shown ``hold_frames`` frames: a
kiosk's gate waits for still frames, so an image shown once would never be recognised).
:func:`open_source` picks one from the config string and raises :class:`CaptureError` naming the
camera when it cannot be opened at start.

:class:`CameraThread` reads a source at its fps cap and keeps only the newest frame (a slow
consumer skips frames instead of building a backlog). When a stream drops (read error,
end of a live stream) it reopens the source with exponential backoff and reports the outage
(log line, ``state``/``outages``/``outage_s`` in stats and status) — it never gives up on a
camera, and never spins.
"""

from __future__ import annotations

import glob
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.core.config import CameraSettings
from edge.core.errors import CaptureError, ImageError
from edge.models.preprocess import IMAGE_SUFFIXES, read_image

log = logging.getLogger("storelens.capture")

REOPEN_MIN_S = 0.5  # first delay before reopening a dropped source; doubles up to REOPEN_MAX_S
REOPEN_MAX_S = 30.0



class FrameSource(Protocol):
    """A stream of BGR uint8 frames. ``read`` returns None at end of stream, raises CaptureError on failure."""

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Frame:
    camera: str
    seq: int
    ts: float  # wall-clock capture time (time.time()): match messages carry it, latency is measured from it
    image: np.ndarray
    decode_s: float = 0.0  # read + decode + resize (a live source's read also waits for its next frame)


class VideoCaptureSource:
    """OpenCV VideoCapture: camera index, RTSP/HTTP URL or video file (``loop`` rewinds files)."""

    def __init__(self, *, name: str, source: str, loop: bool = False) -> None:
        self.name = name
        self.loop = loop
        self._is_file = Path(source).is_file()
        target: int | str = int(source) if source.isdigit() else source
        self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            raise CaptureError(f"camera {name!r}: cannot open source {source!r}",
                               hint="check the device index / URL / file path in [[cameras]] source")

    def read(self) -> np.ndarray | None:
        ok, frame = self._cap.read()
        if ok and frame is not None:
            return frame
        if self._is_file and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
            if ok and frame is not None:
                return frame
        if self._is_file:
            return None
        raise CaptureError(f"camera {self.name!r}: stream read failed", hint="check the camera / network")

    def close(self) -> None:
        self._cap.release()


class ImageFolderSource:
    """The images of a folder or glob pattern in name order, each repeated ``hold_frames`` times (a still
    view, as a product held up to a camera is); an unreadable image is skipped and counted."""

    def __init__(self, *, name: str, paths: list[Path], loop: bool = False, hold_frames: int = 1) -> None:
        if not paths:
            raise CaptureError(f"camera {name!r}: no images found",
                               hint=f"put {'/'.join(IMAGE_SUFFIXES)} files in the folder or fix the glob")
        self.name = name
        self.paths = paths
        self.loop = loop
        self.hold_frames = max(1, hold_frames)
        self.skipped = 0
        self._i = 0
        self._held: tuple[np.ndarray, int] | None = None  # the image being shown, and how often it was

    def read(self) -> np.ndarray | None:
        if self._held is not None and self._held[1] < self.hold_frames:
            self._held = (self._held[0], self._held[1] + 1)
            return self._held[0].copy()  # a copy: the consumer may draw on or keep the frame
        image = self._next()
        self._held = None if image is None else (image, 1)
        return image

    def _next(self) -> np.ndarray | None:
        for _ in range(len(self.paths)):
            if self._i >= len(self.paths):
                if not self.loop:
                    return None
                self._i = 0
            p = self.paths[self._i]
            self._i += 1
            try:
                return read_image(p)
            except ImageError as e:
                self.skipped += 1
                log.warning("skipping unreadable frame image", extra={"camera": self.name, "error": str(e)})
        raise CaptureError(f"camera {self.name!r}: none of {len(self.paths)} images is readable",
                           hint="check the image files")

    def close(self) -> None:
        pass


def _image_paths(source: str) -> list[Path] | None:
    p = Path(source)
    if p.is_dir():
        return sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        return [p]  # one photo: a still view the kiosk can decide on, held like a folder's images
    if any(ch in source for ch in "*?["):
        return sorted(Path(q) for q in glob.glob(source) if Path(q).suffix.lower() in IMAGE_SUFFIXES)
    return None


def source_problem(source: str) -> str | None:
    """What is wrong with a camera source string without opening a device (None: looks usable).

    Camera indexes and URLs are only opened by ``run``; a file, folder or glob must exist and hold images."""
    src = source.strip()
    if src.isdigit() or "://" in src:
        return None
    paths = _image_paths(src)
    if paths == []:
        return "no images in it (jpg/png/...): put photos there or fix the glob"
    if paths is None and not Path(src).is_file():
        return ("no such file or folder, and not a camera index or URL (e.g. 0, rtsp://host/stream, clip.mp4, "
                "photos/, 'shots/*.jpg')")
    return None


def open_source(cam: CameraSettings) -> FrameSource:
    """Open the source named in config, or raise CaptureError naming the camera and what to fix."""
    src = cam.source.strip()
    paths = _image_paths(src)
    if paths is not None:
        return ImageFolderSource(name=cam.name, paths=paths, loop=cam.loop, hold_frames=cam.hold_frames)
    is_url = "://" in src
    if not (src.isdigit() or is_url or Path(src).is_file()):
        raise CaptureError(f"camera {cam.name!r}: source {src!r} is not a camera index, URL, file, folder or glob",
                           hint="fix [[cameras]] source (e.g. 0, rtsp://host/stream, clip.mp4, frames/, 'shots/*.jpg')")
    return VideoCaptureSource(name=cam.name, source=src, loop=cam.loop)


SourceFactory = Callable[[], FrameSource]


@dataclass(slots=True)
class CaptureStats:
    frames: int = 0
    state: str = "starting"  # starting | ok | down | ended
    outages: int = 0
    outage_s: float = 0.0  # total time spent down
    down_since: float | None = None
    last_error: str | None = None
    reopen_attempts: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        down = self.outage_s + (time.monotonic() - self.down_since if self.down_since else 0.0)
        return {"frames": self.frames, "state": self.state, "outages": self.outages, "outage_s": round(down, 1),
                "last_error": self.last_error}


def _resize(image: np.ndarray, width: int | None) -> np.ndarray:
    if width is None or image.shape[1] == width:
        return image
    h = max(1, round(image.shape[0] * width / image.shape[1]))
    return cv2.resize(image, (width, h), interpolation=cv2.INTER_AREA)


class CameraThread:
    """Reads one camera at its fps cap; ``latest()`` gives the newest frame not yet taken."""

    def __init__(self, *, settings: CameraSettings, factory: SourceFactory | None = None,
                 backoff_min_s: float = REOPEN_MIN_S, backoff_max_s: float = REOPEN_MAX_S,
                 on_frame: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.name = settings.name
        self.stats = CaptureStats()
        self._factory = factory or (lambda: open_source(settings))
        self._backoff = (backoff_min_s, backoff_max_s)
        self._on_frame = on_frame
        self._lock = threading.Lock()
        self._latest: Frame | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source: FrameSource | None = None

    def open(self) -> None:
        """Open the source now so that a wrong source fails at start with a clear error."""
        self._source = self._factory()
        self.stats.state = "ok"

    def start(self) -> None:
        if self._source is None:
            self.open()
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
        if self._source:
            self._source.close()

    @property
    def ended(self) -> bool:
        return self.stats.state == "ended"

    def latest(self) -> Frame | None:
        """Take the newest frame (None if no new frame since the last call)."""
        with self._lock:
            f, self._latest = self._latest, None
            return f

    def _run(self) -> None:
        period = 1.0 / self.settings.fps
        next_t = time.monotonic()
        seq = 0
        while not self._stop.is_set():
            t_read = time.perf_counter()
            try:
                if self._source is None:  # only after a failed close; reopen below
                    raise CaptureError(f"camera {self.name!r}: source not open")
                image = self._source.read()
            except Exception as e:
                self._outage(str(e))
                if not self._reopen():
                    return
                next_t = time.monotonic()
                continue
            if image is None:
                self.stats.state = "ended"
                log.info("source ended", extra={"camera": self.name})
                return
            seq += 1
            ts, image = time.time(), _resize(image, self.settings.resize_width)
            frame = Frame(self.name, seq, ts, image, time.perf_counter() - t_read)
            with self._lock:
                self._latest = frame
            self.stats.frames += 1
            if self._on_frame:
                self._on_frame()
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_t = time.monotonic()  # running late: do not try to catch up with a burst

    def _outage(self, error: str) -> None:
        self.stats.state = "down"
        self.stats.outages += 1
        self.stats.down_since = time.monotonic()
        self.stats.last_error = error
        log.warning("camera down; reopening with backoff", extra={"camera": self.name, "error": error})
        if self._source:
            try:
                self._source.close()
            except Exception:
                pass
            self._source = None

    def _reopen(self) -> bool:
        delay = self._backoff[0]
        while not self._stop.wait(delay):
            self.stats.reopen_attempts += 1
            try:
                self._source = self._factory()
            except Exception as e:
                self.stats.last_error = str(e)
                delay = min(delay * 2, self._backoff[1])
                continue
            down = time.monotonic() - (self.stats.down_since or time.monotonic())
            self.stats.outage_s += down
            self.stats.down_since = None
            self.stats.state = "ok"
            log.info("camera back", extra={"camera": self.name, "outage_s": round(down, 2)})
            return True
        return False
