"""Search by video: a short clip (a phone recording, a recording of the kiosk tray) through the kiosk's item logic.

The clip's frames go through the same parts as a live kiosk camera — the region gate (steady views
only), the image encoder and the store's search, and :class:`~edge.pipeline.item.ItemVoter` — so
every view of the product pools into one answer, with the same thresholds. The clip's answer is
the item seen on the most embedded frames (a clip normally shows one). A hand-held clip may never
hold still long enough for the gate; then ``SAMPLED`` evenly spaced frames are embedded as one
view instead, and the answer says so (``gate: "sampled"``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.core.config import GateSettings
from edge.core.errors import InputError
from edge.core.types import Candidate
from edge.pipeline.gate import GateVerdict, RegionGate
from edge.pipeline.item import ItemVoter
from edge.pipeline.vote import Decision, VoteParams

MAX_FRAMES = 900  # frames read from one clip (a minute at 15 fps); the rest is ignored and said
MAX_SIDE = 640  # frames are shrunk to this long side before the gate and the encoder (as a camera would deliver)
SAMPLED = 8  # frames embedded when no view of the clip went steady

MatchImages = Callable[[list[np.ndarray], int], list[list[Candidate]]]


@dataclass(frozen=True)
class ClipAnswer:
    """What a clip shows: the answer (None when no frame could be decided) and how it was reached."""

    decision: Decision | None
    frames_read: int
    frames_embedded: int
    items: int
    gate: str  # "steady": views the gate let through; "sampled": no steady view, evenly spaced frames
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        return {"decision": d.decision if d else "unknown", "sku": d.sku if d else None,
                "candidates": [c.to_dict() for c in d.candidates] if d else [], "views": d.views if d else 0,
                "frames_read": self.frames_read, "frames_embedded": self.frames_embedded, "items": self.items,
                "gate": self.gate, "truncated": self.truncated}


def read_clip(path: Path) -> Iterator[np.ndarray]:
    """A video file's frames (BGR), at most :data:`MAX_FRAMES`, shrunk to :data:`MAX_SIDE`; a clear error when
    it is not a video OpenCV can read."""
    if not path.is_file():
        raise InputError(f"video not found: {path}", hint="pass the path of an .mp4/.avi/.mkv clip")
    cap = cv2.VideoCapture(str(path))
    try:
        ok, frame = cap.read()
        if not ok or frame is None:
            raise InputError(f"{path} is not a video this box can decode (or it has no frames)",
                             hint="record an MP4 (H.264) or MJPEG AVI clip; for a single photo use --image")
        n = 0
        while ok and frame is not None and n < MAX_FRAMES:
            yield _shrink(frame)
            n += 1
            ok, frame = cap.read()
    finally:
        cap.release()


def clip_from_bytes(data: bytes) -> Iterator[np.ndarray]:
    """Frames of a clip sent as bytes (``cmd/search``'s ``video``), decoded one at a time through a private
    temporary file (removed when the frames are read or the iterator is dropped)."""
    fd, name = tempfile.mkstemp(suffix=".clip")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield from read_clip(Path(name))
    finally:
        os.unlink(name)


def decide_clip(frames: Sequence[np.ndarray] | Iterator[np.ndarray], match_images: MatchImages, params: VoteParams,
                gate: GateSettings | None = None) -> ClipAnswer:
    """The clip's frames through gate -> embed+search -> item voter; the item seen on the most frames."""
    g = gate or GateSettings()
    rgate = RegionGate(change_threshold=g.change_threshold, steady_frames=g.steady_frames,
                       frames_per_view=g.frames_per_view or params.window, enabled=g.enabled)
    voter = ItemVoter(camera="clip", roi="full", params=params)
    kept: list[np.ndarray] = []  # every `stride`-th frame, for the sampled fallback (at most 2 * SAMPLED)
    stride = 1
    said: list[Decision] = []
    embedded = read = 0
    for frame in frames:
        read += 1
        if (read - 1) % stride == 0:
            kept.append(frame)
            if len(kept) > 2 * SAMPLED:  # thin evenly: memory stays bounded whatever the clip's length
                kept, stride = kept[::2], stride * 2
        verdict = rgate.check(frame)
        if verdict == GateVerdict.NEW_VIEW:
            voter.reset()
        if verdict.passes:
            embedded += 1
            said += voter.add(match_images([frame], params.top_k)[0], ts=read, now=read)
    if read == 0:
        raise InputError("the clip has no frames", hint="record a clip of a second or more")
    mode = "steady"
    if embedded == 0:  # never steady (hand-held): evenly spaced frames as one view
        mode, voter = "sampled", ItemVoter(camera="clip", roi="full", params=params)
        picks = np.linspace(0, len(kept) - 1, min(SAMPLED, len(kept))).round().astype(int)
        for i in picks:
            embedded += 1
            said += voter.add(match_images([kept[i]], params.top_k)[0], ts=float(i), now=float(i))
    items = {d.item_id: d for d in said if d.item_id}  # each item's newest decision
    best = max(items.values(), key=lambda d: (d.views, d.frames), default=None)
    return ClipAnswer(decision=best, frames_read=read, frames_embedded=embedded, items=len(items), gate=mode,
                      truncated=read >= MAX_FRAMES)


def _shrink(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if max(h, w) <= MAX_SIDE:
        return frame
    s = MAX_SIDE / max(h, w)
    return cv2.resize(frame, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
