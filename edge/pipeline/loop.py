"""The frame loop: capture threads -> gate -> batched embed -> match -> vote -> publish.

One camera thread per source keeps its newest frame; the loop wakes when any camera has a
new frame (no polling), crops each region, lets the gate drop unchanged/unsteady crops,
embeds what is left in *one* batch across all regions and cameras, searches the index in one
batched call, votes per region and publishes decisions (a kiosk: one event per item shown; a
shelf: on change; both: heartbeats).

Every decision goes through the outbox: published over MQTT when a broker is configured and
reachable, kept on disk for later delivery when not, printed, and appended to a JSONL file
when ``jsonl_out`` is set. The parts are built by :mod:`edge.pipeline.factory`; commands
(:mod:`edge.pipeline.handlers`) run on the command worker, and the model lock makes a reload
an atomic swap between two batches.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Protocol, runtime_checkable

import numpy as np

from edge.comms.commands import CommandRouter
from edge.comms.mqtt import MqttLink
from edge.comms.outbox import Outbox
from edge.core.config import CameraSettings, RoiSettings, Settings
from edge.core.types import Candidate
from edge.models.encoders.base import ImageEncoder
from edge.ops.hooks import RuntimeHooks
from edge.pipeline import messages
from edge.pipeline.capture import CameraThread, Frame
from edge.pipeline.crops import DecidedCrops, crop
from edge.pipeline.gate import GateVerdict, RegionGate
from edge.pipeline.item import ItemVoter
from edge.pipeline.label_text import LabelTextVotes
from edge.pipeline.vote import Decision, RegionVoter, VoteParams, recall_view
from edge.recommend.service import Recommender
from edge.text.fusion import LabelTextReranker
from edge.text.profiles import TextProfiles

log = logging.getLogger("storelens.runtime")

LATENCY_SAMPLES = 2000  # decision latencies kept for the p50 / p99 in stats
WAKE_TIMEOUT_S = 0.25  # the loop also wakes this often without frames (heartbeats, stats, ended sources)


@runtime_checkable
class Matcher(Protocol):
    """What the loop needs from search: batched nearest products, a catalog version, an atomic reload."""

    @property
    def catalog_version(self) -> int | str: ...

    def match_vectors(self, embs: np.ndarray, k: int) -> list[list[Candidate]]: ...

    def reload(self) -> object: ...


class DecisionScreen(Protocol):
    """A display fed every published match message: the kiosk screen (:mod:`edge.kiosk`)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def on_decision(self, msg: dict[str, Any], *, crop: np.ndarray | None = None,
                    view_id: str | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class Region:
    """One region of interest of one camera, with its gate and its voter."""

    camera: CameraSettings
    roi: RoiSettings
    gate: RegionGate
    voter: RegionVoter | ItemVoter  # ItemVoter at a kiosk (one answer per item), RegionVoter on a shelf

    @property
    def key(self) -> str:
        return f"{self.camera.name}/{self.roi.name}"


def vote_params(settings: Settings, matcher: Any) -> VoteParams:
    """The voting parameters for ``matcher``: its stored thresholds (``matcher.thresholds``) under the config's."""
    return VoteParams.from_settings(settings.decision, getattr(matcher, "thresholds", None))


class Runtime:
    """The running device. ``start()`` opens everything, ``run(stop)`` loops, ``shutdown()`` drains and flushes."""

    def __init__(self, *, settings: Settings, encoder: ImageEncoder, matcher: Matcher,
                 cameras: list[CameraThread], regions: dict[str, list[Region]], wake: threading.Event,
                 outbox: Outbox, link: MqttLink | None, router: CommandRouter, out: IO[str],
                 recommender: Recommender | None = None, reranker: LabelTextReranker | None = None,
                 hooks: RuntimeHooks | None = None) -> None:
        self.settings = settings
        self.hooks = hooks or RuntimeHooks()  # metrics, HA discovery, health heartbeat, systemd (edge.ops)
        self.encoder = encoder
        self.matcher = matcher
        self.prefix = settings.topic_prefix
        self.cameras = cameras
        self.regions = regions
        self.outbox = outbox
        self.link = link
        self.router = router
        self.recommender = recommender
        self.reranker = reranker  # label text (OCR) fused into the image candidates; None = image only
        self.screen: DecisionScreen | None = None  # the kiosk screen (edge.kiosk), attached by the factory
        self._send_lock = threading.Lock()  # results are published from the screen's threads too (confirm)
        self._out = out
        self._lines = messages.DecisionLines(c.name for c in settings.cameras if c.mode == "kiosk")
        self._wake = wake
        self._model_lock = threading.RLock()  # encoder, matcher and label-text profiles: one snapshot per batch
        self._text = LabelTextVotes(reranker, revotes=settings.decision.window)
        self._jsonl: IO[str] | None = None
        self._last_frames: dict[str, Frame] = {}
        self._crops = DecidedCrops()  # the crop each region's view was decided on
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.counts = {"frames": 0, "embedded": 0, "batches": 0, "decisions": 0, "unknown": 0, "planogram": 0,
                       "heartbeats": 0, "errors": 0, "crops_failed": 0}
        self._started = time.monotonic()
        self._next_stats = 0.0
        self._last_states: tuple[str, ...] = ()
        self.extra_status: dict[str, Callable[[], Any]] = {}  # more status fields (catalog_update: edge.fleet)
        self.decision_listeners: list[Callable[[dict[str, Any], np.ndarray | None], None]] = []  # msg, crop

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Open every camera first (a wrong source is a CaptureError naming it), then the broker link."""
        self.hooks.starting(self)
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
        if (note := messages.thresholds_note(vote_params(self.settings, self.matcher))) is not None:
            log.warning(note)
        if self.screen is not None:
            self.screen.start()
        for cam in self.cameras:
            cam.start()
        self._next_stats = time.monotonic() + self.settings.mqtt.stats_interval_s
        self.hooks.started(self)

    def run(self, stop: threading.Event, *, max_seconds: float | None = None) -> None:
        """Loop until ``stop`` is set, ``max_seconds`` pass, or every (finite) source has ended."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self._wake.wait(WAKE_TIMEOUT_S)
            self._wake.clear()
            self.step()
            self.hooks.tick(self)
            if self.cameras and all(c.ended for c in self.cameras):
                self.step()
                log.info("all sources ended")
                return

    def shutdown(self) -> dict[str, Any]:
        """Stop capture, decide on the frames already captured, flush the outbox (bounded), go offline."""
        self.hooks.stopping()
        for cam in self.cameras:
            cam.stop()
        self.step()
        if self.screen is not None:
            self.screen.stop()
        self.router.stop()
        if self.reranker is not None:
            self.reranker.worker.close()
        if self.link:
            self.link.set_status(self.status())  # the retained status ends with the final camera states
        left = self.link.stop(flush_timeout_s=self.settings.mqtt.flush_timeout_s) if self.link else \
            self.outbox.stats().depth
        summary = {**self.stats(), "outbox_left": left}
        self.hooks.stopped(self)
        self.outbox.close()
        if self._jsonl:
            self._jsonl.close()
        log.info("stopped", extra={k: summary[k] for k in ("frames", "embedded", "decisions", "outbox_left")})
        return summary

    # -- the loop ----------------------------------------------------------------------------------

    def step(self) -> int:
        """One round over the cameras' newest frames; returns how many crops were embedded."""
        batch, late = self._gate_frames()
        now = time.monotonic()
        for region, frame in late:  # unchanged views whose label text was read since they were voted
            if (cands := self._guarded(region, self._text.late, region.key)) is not None:
                self._guarded(region, self._vote, region, cands, frame.ts, now)
        if batch and not self._embed_and_vote(batch, now):
            return 0
        for regions in self.regions.values():  # heartbeats of regions that saw no frame this round
            for region in regions:
                if (d := region.voter.heartbeat(now)) is not None:
                    self._guarded(region, self._emit, d)  # a heartbeat's failure (a full disk) never stops the loop
        if now >= self._next_stats:
            self._next_stats = now + self.settings.mqtt.stats_interval_s
            self._publish_stats()
        return len(batch)

    def _gate_frames(self) -> tuple[list[tuple[Region, Frame, np.ndarray]], list[tuple[Region, Frame]]]:
        """Crops the gate lets through, and unchanged views whose label text may have been read since."""
        batch: list[tuple[Region, Frame, np.ndarray]] = []
        late: list[tuple[Region, Frame]] = []
        for cam in self.cameras:
            frame = cam.latest()
            if frame is None:
                continue
            self._last_frames[cam.name] = frame
            self.counts["frames"] += 1
            self.hooks.frame(frame)
            for region in self.regions[cam.name]:
                c = crop(frame.image, region.roi.rect)
                verdict = region.gate.check(c)
                if verdict == GateVerdict.RETURNED and isinstance(region.voter, RegionVoter):
                    if (d := self._guarded(region, recall_view, region.gate, region.voter, frame.ts, time.monotonic())):
                        self._emit(d)  # a facing's earlier view came back: its decision again, no new vote
                elif verdict == GateVerdict.NEW_VIEW:
                    region.gate.view_key = region.voter.reset()  # a new view: a new vote (and view id)
                if verdict in (GateVerdict.NEW_VIEW, GateVerdict.RETURNED):
                    self._text.forget(region.key)  # a pending reading is of the view just left
                if verdict.passes:
                    batch.append((region, frame, c))
                elif self._text.waiting(region.key):
                    late.append((region, frame))
        return batch, late

    def _embed_and_vote(self, batch: list[tuple[Region, Frame, np.ndarray]], now: float) -> bool:
        """Embed, match and fuse label text under the model lock (one snapshot of encoder, index and word
        profiles), then vote every crop. A failed batch costs the batch (False), a failed crop that crop."""
        with self._model_lock:
            try:
                results = self.match_images([c for _, _, c in batch], self.settings.decision.top_k)
            except Exception:  # a failing backend/index must not stop the cameras: counted, logged, retried
                self.counts["errors"] += 1
                self.counts["crops_failed"] += len(batch)
                log.exception("embedding or search failed; these crops are skipped", extra={"crops": len(batch)})
                return False
            fused = [self._guarded(region, self._text.fuse, region.key, c, cands)
                     for (region, _, c), cands in zip(batch, results, strict=True)]
        self.counts["embedded"] += len(batch)
        self.counts["batches"] += 1
        for (region, frame, _), cands in zip(batch, fused, strict=True):
            if cands is not None:
                self._guarded(region, self._vote, region, cands, frame.ts, now)
        return True

    def _vote(self, region: Region, cands: list[Candidate], ts: float, now: float) -> None:
        with self.hooks.stage("vote"):
            out = region.voter.add(cands, ts=ts, now=now)
        for d in out if isinstance(out, list) else [out] if out is not None else []:
            self._emit(d)

    def _guarded(self, region: Region, fn: Callable[..., Any], *args: Any) -> Any:
        """One crop's step; an exception costs that crop (counted and logged), never the loop."""
        try:
            return fn(*args)
        except Exception:
            self.counts["errors"] += 1
            self.counts["crops_failed"] += 1
            log.exception("a crop failed after search; skipped", extra={"region": region.key})
            return None

    def _emit(self, d: Decision) -> None:
        with self.hooks.stage("publish"):
            self._publish(d)
        self.hooks.decision(d)

    def _publish(self, d: Decision) -> None:
        self.counts["decisions"] += 1
        self.counts["heartbeats"] += int(d.heartbeat)
        self.counts["unknown"] += int(d.decision == "unknown")
        msg = messages.match_message(d, device=self.settings.device.id, bundle=self.encoder.fingerprint,
                                     catalog_version=self.matcher.catalog_version)
        if self.recommender is not None and d.decision == "known" and d.candidates:
            recs = self.recommender.for_match(d.candidates[0].sku)  # None unless recommend.in_match_messages
            if recs is not None:
                msg["recommendations"] = recs
        self._send(f"{d.camera}/match", msg)
        view_crop = self._view_crop(d) if self.screen is not None or self.decision_listeners else None
        for listener in self.decision_listeners:  # the views confirmations name (edge.pipeline.confirm)
            listener(msg, view_crop)
        if self.screen is not None:
            self.screen.on_decision(msg, crop=view_crop, view_id=msg["view_id"])
        if d.planogram is not None and (d.planogram_changed or d.heartbeat):
            self.counts["planogram"] += 1
            self._send(f"{d.camera}/planogram", messages.planogram_message(
                d, match_id=msg["id"], device=self.settings.device.id, catalog_version=self.matcher.catalog_version))
        if not d.heartbeat:  # a heartbeat re-sends an old frame's decision: not a latency sample
            self.latencies.append(max(0.0, (time.time() - d.ts) * 1000))
        item = msg["item_id"] if "item_id" in msg else d.view_id  # a runtime with items: the empty tray has none
        print(self._lines.line(d, item=item), file=self._out, flush=True)

    def _send(self, suffix: str, msg: dict[str, Any]) -> None:
        body = json.dumps(msg, separators=(",", ":")).encode()
        topic = f"{self.prefix}/{suffix}"
        with self._send_lock:
            if self.link:
                self.link.send(topic, body, msg_id=msg["id"])
            else:
                self.outbox.put(msg_id=msg["id"], topic=topic, payload=body, qos=self.settings.mqtt.qos)
            if self._jsonl:
                self._jsonl.write(json.dumps({"topic": topic, **msg}) + "\n")
                self._jsonl.flush()

    def publish_result(self, suffix: str, msg: dict[str, Any]) -> None:
        """Publish ``<prefix>/<suffix>`` like a decision (outbox first, QoS ``mqtt.qos``); from any thread."""
        self._send(suffix, msg)

    def _view_crop(self, d: Decision) -> np.ndarray | None:
        """The crop ``d``'s view was decided on; a heartbeat's is kept, never its newest frame (edge.pipeline.crops)."""
        frame = self._last_frames.get(d.camera)
        region = next((r for r in self.regions.get(d.camera, ()) if r.roi.name == d.roi), None)
        newest = None if frame is None or region is None else crop(frame.image, region.roi.rect)
        return self._crops.for_decision(d, newest)

    # -- what command handlers use (on the command worker thread) -----------------------------------

    def match_images(self, images: Sequence[np.ndarray], k: int) -> list[list[Candidate]]:
        """Embed and match under the model lock, so a reload never splits an encoder from its index."""
        with self._model_lock:
            with self.hooks.stage("embed"):
                embs = self.encoder.embed(list(images))
            with self.hooks.stage("search"):
                return self.matcher.match_vectors(embs, k)

    def swap_models(self, encoder: ImageEncoder, matcher: Matcher, *, reload: bool = False,
                    text: tuple[TextProfiles, Mapping[str, str]] | None = None) -> None:
        """Swap in an encoder and the matcher built for it (``reload``: reopen the same matcher in place) and
        its catalog's label-text profiles, as one snapshot between two batches."""
        with self._model_lock:
            if reload:
                matcher.reload()
            self.encoder, self.matcher = encoder, matcher
            if text is not None and self.reranker is not None:
                self.reranker.swap_text(*text)
            params = vote_params(self.settings, matcher)
            for regions in self.regions.values():
                for r in regions:
                    r.voter.set_params(params)

    @contextmanager
    def models_paused(self) -> Iterator[None]:
        """No batch is embedded or matched inside this block (a catalog snapshot's commit and index swap)."""
        with self._model_lock:
            yield

    def last_frame(self, camera: str) -> Frame | None:
        return self._last_frames.get(camera)

    # -- stats and status --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        ocr = messages.ocr_stats(self.reranker)
        return messages.stats_message(
            counts=self.counts, uptime_s=time.monotonic() - self._started, latencies_ms=self.latencies,
            gates=(r.gate.stats for regions in self.regions.values() for r in regions),
            outbox=self.outbox.stats(), mqtt=self.link.stats.to_dict() if self.link else {"enabled": False},
            cameras=self.cameras, commands={**self.router.counts, "queued": self.router.queued}, ocr=ocr)

    def status(self) -> dict[str, Any]:
        return {**messages.status_message(device=self.settings.device, bundle=self.encoder.fingerprint,
                                          catalog_version=self.matcher.catalog_version, cameras=self.cameras,
                                          thresholds=vote_params(self.settings, self.matcher),
                                          repairs=getattr(self.matcher, "repairs", None)),
                **{k: f() for k, f in self.extra_status.items()}}

    def publish_status(self) -> None:
        if self.link:
            self.link.set_status(self.status())

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
