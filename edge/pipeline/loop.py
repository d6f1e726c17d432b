"""The edge loop: capture threads -> gate -> batched embed -> match -> vote -> publish.

One camera thread per source keeps its newest frame; the loop wakes when any camera has a
new frame (no polling), crops each region, lets the gate drop unchanged/unsteady crops,
embeds what is left in *one* batch across all regions and cameras, searches the index in one
batched call, votes per region and publishes decisions when they change (plus heartbeats).

Every decision goes through the outbox: published over MQTT when a broker is configured and
reachable, kept on disk for later delivery when not, printed to stdout, and appended to a
JSONL file when ``jsonl_out`` is set. Commands (reload, enroll, remove, search, snapshot)
run on the command worker; the model lock makes a reload an atomic swap between two batches.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import cv2
import numpy as np

from edge import __version__
from edge.comms.commands import CommandRouter, load_images, require_str
from edge.comms.mqtt import MqttLink
from edge.comms.outbox import Outbox
from edge.core.config import CameraSettings, RoiSettings, Settings
from edge.core.errors import CommandError
from edge.core.types import Candidate
from edge.models.encoders.base import ImageEncoder
from edge.pipeline.capture import CameraThread, Frame, SourceFactory
from edge.pipeline.gate import GateStats, GateVerdict, RegionGate
from edge.pipeline.vote import Decision, RegionVoter, VoteParams
from edge.recommend.service import Recommender, attach
from edge.text.fusion import LabelTextReranker
from edge.text.profiles import catalog_profiles

log = logging.getLogger("storelens.runtime")

MATCH_SCHEMA = "storelens.match/1"
PLANOGRAM_SCHEMA = "storelens.planogram/1"
DEFAULT_THRESHOLD = 0.5
DEFAULT_MARGIN = 0.02


@runtime_checkable
class Matcher(Protocol):
    """What the loop needs from search: batched nearest products, a catalog version, an atomic reload."""

    @property
    def catalog_version(self) -> int | str: ...

    def match_vectors(self, embs: np.ndarray, k: int) -> list[list[Candidate]]: ...

    def reload(self) -> object: ...


@dataclass(frozen=True, slots=True)
class _Region:
    camera: CameraSettings
    roi: RoiSettings
    gate: RegionGate
    voter: RegionVoter


def _key(region: _Region) -> str:
    return f"{region.camera.name}/{region.roi.name}"


def crop(image: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
    """The normalised ``(x, y, w, h)`` region of ``image`` (a view, at least 1x1 pixel)."""
    h, w = image.shape[:2]
    x0, y0 = int(rect[0] * w), int(rect[1] * h)
    x1, y1 = max(x0 + 1, round((rect[0] + rect[2]) * w)), max(y0 + 1, round((rect[1] + rect[3]) * h))
    return image[y0:min(y1, h), x0:min(x1, w)]


def vote_params(settings: Settings, matcher: Any) -> VoteParams:
    """Config thresholds win; else the matcher's calibrated ones (``matcher.thresholds``); else defaults."""
    d = settings.decision
    cal = getattr(matcher, "thresholds", None)
    cal_t, cal_m = getattr(cal, "score", None), getattr(cal, "margin", None)
    return VoteParams(window=d.window, min_frames=d.min_frames, agreement=d.agreement,
                      threshold=_first(d.threshold, cal_t, DEFAULT_THRESHOLD),
                      margin=_first(d.margin, cal_m, DEFAULT_MARGIN),
                      top_k=d.top_k, heartbeat_s=d.heartbeat_s, aggregate=d.aggregate, empty_sku=d.empty_sku)


def _first(*values: float | None) -> float:
    return float(next(v for v in values if v is not None))


class Runtime:
    """The running device. ``start()`` opens everything, ``run(stop)`` loops, ``shutdown()`` drains and flushes."""

    def __init__(self, *, settings: Settings, encoder: ImageEncoder, matcher: Matcher,
                 sources: dict[str, SourceFactory] | None = None,
                 encoder_loader: Callable[[], ImageEncoder] | None = None,
                 matcher_loader: Callable[[ImageEncoder], Matcher] | None = None,
                 out: IO[str] | None = None, outbox_path: Path | None = None,
                 recommender: Recommender | None = None,
                 reranker: LabelTextReranker | None = None) -> None:
        self.settings = settings
        self.reranker = reranker  # label text (OCR) fused into the image candidates; None = image only
        self._awaiting_text: dict[str, tuple[np.ndarray, list[Candidate], int]] = {}
        self.encoder = encoder
        self.matcher = matcher
        self.prefix = settings.topic_prefix
        self._encoder_loader = encoder_loader
        self._matcher_loader = matcher_loader
        self._out = out if out is not None else sys.stdout
        self._wake = threading.Event()
        self._model_lock = threading.Lock()
        self.cameras = [CameraThread(settings=c, factory=(sources or {}).get(c.name), on_frame=self._wake.set)
                        for c in settings.cameras]
        params = vote_params(settings, matcher)
        fpv = settings.gate.frames_per_view or settings.decision.window
        self.regions: dict[str, list[_Region]] = {
            c.name: [_Region(c, r, RegionGate(change_threshold=settings.gate.change_threshold,
                                              steady_frames=settings.gate.steady_frames if c.mode == "kiosk" else 0,
                                              frames_per_view=fpv, enabled=settings.gate.enabled),
                             RegionVoter(camera=c.name, roi=r.name, params=params,
                                         expected_sku=r.expected_sku if c.mode == "shelf" else None))
                     for r in c.rois]
            for c in settings.cameras}
        m = settings.mqtt
        self.outbox = Outbox(path=outbox_path or settings.catalog.data_dir / "outbox.db",
                             max_messages=m.outbox_max_messages, max_age_s=m.outbox_max_age_s,
                             durability=m.outbox_durability)
        self.link: MqttLink | None = None
        if m.enabled:
            self.link = MqttLink(settings=m, prefix=self.prefix, outbox=self.outbox,
                                 client_id=f"storelens-{settings.device.store}-{settings.device.id}")
        self.router = CommandRouter(prefix=self.prefix, reply=self._reply, max_bytes=m.command_max_bytes,
                                    token=m.command_token.get_secret_value() if m.command_token else None)
        for verb, fn in (("reload", self._cmd_reload), ("enroll", self._cmd_enroll), ("remove", self._cmd_remove),
                         ("search", self._cmd_search), ("snapshot", self._cmd_snapshot)):
            self.router.register(verb, fn)
        self.recommender = recommender
        if recommender is not None:  # events/basket in, cmd/recommend, `recommendations` in match messages
            attach(recommender, link=self.link, router=self.router)
        self._jsonl: IO[str] | None = None
        self._last_frames: dict[str, Frame] = {}
        self.latencies: deque[float] = deque(maxlen=2000)
        self.counts = {"frames": 0, "embedded": 0, "batches": 0, "decisions": 0, "unknown": 0, "planogram": 0,
                       "heartbeats": 0, "errors": 0, "crops_failed": 0}
        self._started = time.monotonic()
        self._next_stats = 0.0
        self._last_states: tuple[str, ...] = ()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Open every camera first (a wrong source is a CaptureError naming it), then the broker link."""
        for cam in self.cameras:
            cam.open()
        if self.settings.jsonl_out:
            self.settings.jsonl_out.parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = self.settings.jsonl_out.open("a", encoding="utf-8")
        if self.link:
            self.link.add_topic_handler(self.router.topic_filter, self.router.on_message)
            self.link.set_status(self.status())
            self.link.start()
        else:
            log.info("mqtt disabled: decisions are printed and kept in the outbox",
                     extra={"outbox": str(self.outbox.path), "depth": self.outbox.stats().depth})
        self.router.start()
        for cam in self.cameras:
            cam.start()
        self._next_stats = time.monotonic() + self.settings.mqtt.stats_interval_s

    def run(self, stop: threading.Event, *, max_seconds: float | None = None) -> None:
        """Loop until ``stop`` is set, ``max_seconds`` pass, or every (finite) source has ended."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self._wake.wait(0.25)
            self._wake.clear()
            self.step()
            if self.cameras and all(c.ended for c in self.cameras):
                self.step()
                log.info("all sources ended")
                return

    def shutdown(self) -> dict[str, Any]:
        """Stop capture, decide on the frames already captured, flush the outbox (bounded), go offline."""
        for cam in self.cameras:
            cam.stop()
        self.step()
        self.router.stop()
        if self.reranker is not None:
            self.reranker.worker.close()
        if self.link:
            self.link.set_status(self.status())  # the retained status ends with the final camera states
        left = self.link.stop(flush_timeout_s=self.settings.mqtt.flush_timeout_s) if self.link else \
            self.outbox.stats().depth
        summary = {**self.stats(), "outbox_left": left}
        self.outbox.close()
        if self._jsonl:
            self._jsonl.close()
        log.info("stopped", extra={k: summary[k] for k in ("frames", "embedded", "decisions", "outbox_left")})
        return summary

    # -- the loop ----------------------------------------------------------------------------------

    def step(self) -> int:
        """One round over the cameras' newest frames; returns how many crops were embedded."""
        batch: list[tuple[_Region, Frame, np.ndarray]] = []
        late: list[tuple[_Region, Frame]] = []  # unchanged views whose label text may have been read since
        for cam in self.cameras:
            frame = cam.latest()
            if frame is None:
                continue
            self._last_frames[cam.name] = frame
            self.counts["frames"] += 1
            for region in self.regions[cam.name]:
                c = crop(frame.image, region.roi.rect)
                verdict = region.gate.check(c)
                if verdict == GateVerdict.NEW_VIEW:
                    region.voter.reset()
                    self._awaiting_text.pop(_key(region), None)
                if verdict.passes:
                    batch.append((region, frame, c))
                elif _key(region) in self._awaiting_text:
                    late.append((region, frame))
        now = time.monotonic()
        for region, frame in late:
            self._vote_late_text(region, frame, now)
        if batch:
            try:
                with self._model_lock:
                    embs = self.encoder.embed([c for _, _, c in batch])
                    results = self.matcher.match_vectors(embs, self.settings.decision.top_k)
            except Exception:  # a failing backend/index must not stop the cameras: counted, logged, retried
                self.counts["errors"] += 1
                self.counts["crops_failed"] += len(batch)
                log.exception("embedding or search failed; these crops are skipped", extra={"crops": len(batch)})
                return 0
            self.counts["embedded"] += len(batch)
            self.counts["batches"] += 1
            for (region, frame, c), cands in zip(batch, results, strict=True):
                if self.reranker is not None:  # OCR runs on its own thread; this never waits for it
                    image_cands, cands = cands, self.reranker.rerank(_key(region), c, cands)
                    if self.reranker.worker.request(_key(region), c) is None:  # still reading: vote it later
                        self._awaiting_text[_key(region)] = (c.copy(), list(image_cands), self.settings.decision.window)
                if (d := region.voter.add(cands, ts=frame.ts, now=now)) is not None:
                    self._emit(d)
        for regions in self.regions.values():  # heartbeats of regions that saw no frame this round
            for region in regions:
                if (d := region.voter.heartbeat(now)) is not None:
                    self._emit(d)
        if now >= self._next_stats:
            self._next_stats = now + self.settings.mqtt.stats_interval_s
            self._publish_stats()
        return len(batch)

    def _vote_late_text(self, region: _Region, frame: Frame, now: float) -> None:
        """A frame the gate skipped (same view) votes again once that view's label text is read.

        The gate stops embedding an unchanged view after a few frames, usually before OCR (hundreds
        of ms) has finished; without this, label text could never change a kiosk decision.
        """
        if self.reranker is None:  # only queued when a reranker exists
            return
        key = _key(region)
        c, image_cands, left = self._awaiting_text[key]
        if self.reranker.worker.request(key, c) is None:
            return
        if left <= 1:
            del self._awaiting_text[key]
        else:
            self._awaiting_text[key] = (c, image_cands, left - 1)
        if (d := region.voter.add(self.reranker.rerank(key, c, image_cands), ts=frame.ts, now=now)) is not None:
            self._emit(d)

    def _emit(self, d: Decision) -> None:
        self.counts["decisions"] += 1
        self.counts["heartbeats"] += int(d.heartbeat)
        self.counts["unknown"] += int(d.decision == "unknown")
        msg = self._match_message(d)
        self._send(f"{d.camera}/match", msg)
        if d.planogram is not None and (d.planogram_changed or d.heartbeat):
            self.counts["planogram"] += 1
            self._send(f"{d.camera}/planogram", self._planogram_message(d, match_id=msg["id"]))
        if not d.heartbeat:  # a heartbeat re-sends an old frame's decision: not a latency sample
            self.latencies.append(max(0.0, (time.time() - d.ts) * 1000))
        self._print(d)

    def _send(self, suffix: str, msg: dict[str, Any]) -> None:
        body = json.dumps(msg, separators=(",", ":")).encode()
        topic = f"{self.prefix}/{suffix}"
        if self.link:
            self.link.send(topic, body, msg_id=msg["id"])
        else:
            self.outbox.put(msg_id=msg["id"], topic=topic, payload=body, qos=self.settings.mqtt.qos)
        if self._jsonl:
            self._jsonl.write(json.dumps({"topic": topic, **msg}) + "\n")
            self._jsonl.flush()

    def _match_message(self, d: Decision) -> dict[str, Any]:
        msg = self._match_fields(d)
        if self.recommender is not None and d.decision == "known" and d.candidates:
            recs = self.recommender.for_match(d.candidates[0].sku)  # None unless recommend.in_match_messages
            if recs is not None:
                msg["recommendations"] = recs
        return msg

    def _match_fields(self, d: Decision) -> dict[str, Any]:
        return {"schema": MATCH_SCHEMA, "id": uuid.uuid4().hex, "ts": round(d.ts, 6),
                "device": self.settings.device.id, "camera": d.camera, "roi": d.roi, "decision": d.decision,
                "candidates": [c.to_dict() for c in d.candidates], "frames": d.frames, "agreement": d.agreement,
                "heartbeat": d.heartbeat, "latency_ms": round((time.time() - d.ts) * 1000, 2),
                "bundle": self.encoder.fingerprint, "catalog_version": self.matcher.catalog_version}

    def _planogram_message(self, d: Decision, *, match_id: str) -> dict[str, Any]:
        return {"schema": PLANOGRAM_SCHEMA, "id": uuid.uuid4().hex, "match_id": match_id, "ts": round(d.ts, 6),
                "device": self.settings.device.id, "camera": d.camera, "roi": d.roi, "event": d.planogram,
                "expected_sku": d.expected_sku, "observed_sku": d.sku, "heartbeat": d.heartbeat,
                "candidates": [c.to_dict() for c in d.candidates[:3]], "catalog_version": self.matcher.catalog_version}

    def _print(self, d: Decision) -> None:
        top = f"{d.candidates[0].sku} ({d.candidates[0].score:.2f})" if d.decision == "known" else "-"
        extra = f" planogram={d.planogram}" if d.planogram else ""
        hb = " heartbeat" if d.heartbeat else ""
        stamp = time.strftime("%H:%M:%S", time.localtime(d.ts))
        print(f"{stamp} {d.camera}/{d.roi} {d.decision:7s} {top} frames={d.frames}{extra}{hb}", file=self._out,
              flush=True)

    # -- stats and status --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        gate = GateStats()
        for regions in self.regions.values():
            for r in regions:
                gate.add(r.gate.stats)
        lat = sorted(self.latencies)
        up = max(1e-9, time.monotonic() - self._started)
        return {
            "ts": round(time.time(), 3), "uptime_s": round(up, 1), **self.counts,
            "fps": round(self.counts["frames"] / up, 2),
            "latency_ms": {"p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99)},
            "unknown_rate": round(self.counts["unknown"] / self.counts["decisions"], 4) if self.counts["decisions"]
            else 0.0,
            "gate": gate.to_dict(), "outbox": self.outbox.stats().to_dict(),
            "mqtt": self.link.stats.to_dict() if self.link else {"enabled": False},
            "cameras": {c.name: c.stats.to_dict() for c in self.cameras},
            "commands": {**self.router.counts, "queued": self.router.queued},
            "ocr": ({**self.reranker.worker.stats().to_dict(), "fused": self.reranker.fused}
                    if self.reranker is not None else {"enabled": False}),
        }

    def status(self) -> dict[str, Any]:
        return {"schema": "storelens.status/1", "version": __version__, "device": self.settings.device.id,
                "store": self.settings.device.store, "bundle": self.encoder.fingerprint,
                "catalog_version": self.matcher.catalog_version,
                "cameras": {c.name: {"state": c.stats.state, "outages": c.stats.outages, "mode": c.settings.mode,
                                     "rois": [r.name for r in c.settings.rois]} for c in self.cameras}}

    def _publish_stats(self) -> None:
        s = self.stats()
        states = tuple(c.stats.state for c in self.cameras)
        if self.link:
            self.link.publish_now(f"{self.prefix}/stats", json.dumps(s, separators=(",", ":")))
            if states != self._last_states:
                self.link.set_status(self.status())
        else:
            log.info("stats", extra={"frames": s["frames"], "decisions": s["decisions"],
                                     "outbox_depth": s["outbox"]["depth"], "gate_skip": s["gate"]["skip_ratio"]})
        self._last_states = states

    # -- commands (run on the command worker thread) -----------------------------------------------

    def _reply(self, topic: str, body: bytes) -> None:
        if self.link:
            self.link.publish_now(topic, body, qos=1)

    def _cmd_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        """Catalog/index: the matcher reopens the newest generation. Bundle: when its fingerprint changed, a new
        encoder *and* a matcher opened with it (its index must be built by that encoder) are swapped in together.
        Everything is loaded before the swap, so frames wait at most one batch and a failure keeps the old state."""
        new_encoder = self._encoder_loader() if self._encoder_loader and args.get("bundle", True) else None
        if new_encoder is not None and new_encoder.fingerprint == self.encoder.fingerprint:
            new_encoder = None
        if new_encoder is not None:
            if self._matcher_loader is None:
                raise CommandError("the bundle changed but this runtime cannot reopen the index for it",
                                   hint="restart storelens run")
            new_matcher = self._matcher_loader(new_encoder)
        else:
            self.matcher.reload()  # atomic reference swap inside; frames in flight finish on the old index
            new_matcher = self.matcher
        with self._model_lock:
            if new_encoder is not None:
                self.encoder, self.matcher = new_encoder, new_matcher
            params = vote_params(self.settings, self.matcher)
            for regions in self.regions.values():
                for r in regions:
                    r.voter.set_params(params)
        if self.recommender is not None:
            self.recommender.reload_products(self.matcher)
        if self.reranker is not None and hasattr(self.matcher, "catalog"):  # new products' label words
            self.reranker.profiles = catalog_profiles(self.matcher.catalog)
        if self.link:
            self.link.set_status(self.status())
        return {"catalog_version": self.matcher.catalog_version, "bundle": self.encoder.fingerprint}

    def _images(self, args: dict[str, Any]) -> list[np.ndarray]:
        return load_images(args.get("images"), allowed_dir=self.settings.mqtt.enroll_dir)

    def _cmd_enroll(self, args: dict[str, Any]) -> dict[str, Any]:
        sku = require_str(args, "sku")
        name = args.get("name", sku)
        if not isinstance(name, str) or len(name) > 256:
            raise CommandError("'name' must be a string of at most 256 characters")
        images = self._images(args)
        # The matcher embeds, writes the next index generation beside the current one and swaps it in;
        # the frame loop keeps matching on the old generation meanwhile (no model lock held here).
        result = _optional(self.matcher, "enroll")(sku, name=name, images=images)
        return {"sku": sku, "images": len(images), "catalog_version": self.matcher.catalog_version,
                **_as_dict(result)}

    def _cmd_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        sku = require_str(args, "sku")
        removed = _optional(self.matcher, "remove")(sku)
        if removed is False:
            raise CommandError(f"sku {sku!r} is not in the catalog", hint="check the sku (storelens catalog list)")
        return {"sku": sku, "removed": True, "catalog_version": self.matcher.catalog_version}

    def _cmd_search(self, args: dict[str, Any]) -> dict[str, Any]:
        k = args.get("k", 5)
        if not isinstance(k, int) or not 1 <= k <= 100:
            raise CommandError("'k' must be an integer in 1..100")
        if "text" in args:
            text = require_str(args, "text", max_len=1000)
            cands: Sequence[Any] = _optional(self.matcher, "search_text")(text, k)
        elif "images" in args:
            images = self._images(args)[:1]
            with self._model_lock:
                cands = self.matcher.match_vectors(self.encoder.embed(images), k)[0]
        else:
            raise CommandError("search needs 'text' or 'images'", hint='e.g. {"text": "oat milk"}')
        return {"candidates": [c.to_dict() for c in cands], "catalog_version": self.matcher.catalog_version}

    def _cmd_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        camera = require_str(args, "camera", max_len=64)
        frame = self._last_frames.get(camera)
        if frame is None:
            raise CommandError(f"no frame from camera {camera!r} yet",
                               hint=f"cameras: {[c.name for c in self.cameras]}")
        img = frame.image
        if img.shape[1] > 640:
            img = cv2.resize(img, (640, max(1, round(img.shape[0] * 640 / img.shape[1]))), interpolation=cv2.INTER_AREA)
        ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            raise CommandError("could not encode the snapshot")
        return {"camera": camera, "ts": frame.ts, "jpeg_b64": base64.b64encode(jpg.tobytes()).decode()}


def _optional(matcher: Any, name: str) -> Any:
    fn = getattr(matcher, name, None)
    if fn is None:
        raise CommandError(f"this device's catalog does not support {name!r}",
                           hint="use a catalog/search backend with enroll/remove/text search")
    return fn


def _as_dict(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if hasattr(result, "to_dict"):
        return dict(result.to_dict())
    return dict(result) if isinstance(result, dict) else {"result": result}


def _pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 2)
