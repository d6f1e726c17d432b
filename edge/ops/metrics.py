"""Prometheus metrics of the runtime, served at ``/metrics`` (``[metrics]`` config section, off by default).

Two kinds of metric, so the frame loop pays as little as possible:

* **Observed on the path** (histograms and decision counters): per-stage latency (decode,
  embed, search, vote, publish), time to decision, decisions by kind. One ``observe`` or
  ``inc`` per stage, a microsecond each.
* **Read at scrape time** (:class:`RuntimeCollector`): everything the runtime already counts
  (camera frames and states, gate verdicts, outbox, MQTT link, OCR worker, catalog and bundle
  versions) is read from those counters when Prometheus scrapes, so it costs the loop nothing.

Names follow the Prometheus conventions: ``storelens_`` prefix, base units (seconds),
``_total`` on counters, ``_info`` on info metrics. Each runtime has its own
:class:`~prometheus_client.CollectorRegistry` (several runtimes in one process, as in tests, do
not collide). The server answers at most :data:`MAX_CONNECTIONS` connections at once and closes
one that has not sent its headers within :data:`HEADER_TIMEOUT_S` (issue 28, finding 9).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, SummaryMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from edge import __version__
from edge.comms.mqtt import MqttLink
from edge.comms.outbox import Outbox
from edge.core.errors import ConfigError
from edge.pipeline.capture import CameraThread
from edge.pipeline.gate import RegionGate
from edge.text.ocr.worker import OcrStats

log = logging.getLogger("storelens.metrics")

STAGES = ("decode", "embed", "search", "vote", "publish")
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DECISION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
FPS_WINDOW_S = 5.0  # camera fps gauges: frames over about this long
MAX_CONNECTIONS = 16  # scrapers served at once (Prometheus needs one); more are closed on arrival
HEADER_TIMEOUT_S = 10.0  # a connection must send its request line and headers within this long


class RegionView(Protocol):
    """What the collector reads of a region (the loop's ``Region``)."""

    @property
    def gate(self) -> RegionGate: ...


class OcrWorkerView(Protocol):
    def stats(self) -> OcrStats: ...


class RerankerView(Protocol):
    """The label-text reranker: only its OCR worker's counters are read."""

    @property
    def worker(self) -> OcrWorkerView: ...


class RuntimeView(Protocol):
    """What operations read of the running device (``edge.pipeline.loop.Runtime`` has all of it)."""

    @property
    def cameras(self) -> Sequence[CameraThread]: ...

    @property
    def regions(self) -> Mapping[str, Sequence[RegionView]]: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def link(self) -> MqttLink | None: ...

    @property
    def counts(self) -> Mapping[str, int]: ...

    @property
    def reranker(self) -> RerankerView | None: ...

    def status(self) -> dict[str, Any]: ...


class FrameRate:
    """Frames per camera (counted by the loop) and their rate over the last ~:data:`FPS_WINDOW_S` seconds."""

    def __init__(self, window_s: float = FPS_WINDOW_S) -> None:
        self.window_s = window_s
        self.frames: dict[str, int] = {}
        self.fps: dict[str, float] = {}
        self._mark: tuple[float, dict[str, int]] = (time.monotonic(), {})

    def add(self, camera: str) -> None:
        self.frames[camera] = self.frames.get(camera, 0) + 1

    def update(self, now: float) -> None:
        """Called from the loop's tick: roll the window once it is ``window_s`` old."""
        t0, counts0 = self._mark
        if now - t0 < self.window_s:
            return
        snap = dict(self.frames)
        self.fps = {c: round((n - counts0.get(c, 0)) / (now - t0), 3) for c, n in snap.items()}
        self._mark = (now, snap)


class RuntimeMetrics:
    """The metrics one runtime observes on its path, plus the scrape-time collector over its state."""

    def __init__(self, cameras: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stage_seconds = Histogram(
            "storelens_stage_seconds", "Time spent in one frame-path stage (decode is per frame and camera, "
            "embed and search per batch, vote per crop, publish per decision)", ["stage"],
            buckets=STAGE_BUCKETS, registry=self.registry)
        self.stages = {s: self.stage_seconds.labels(s) for s in STAGES}
        self.time_to_decision = Histogram(
            "storelens_time_to_decision_seconds", "Capture of the newest frame voted to the decision's publish "
            "(changed decisions; heartbeats excluded)", buckets=DECISION_BUCKETS, registry=self.registry)
        self.decisions = Counter("storelens_decisions", "Published decisions that changed a region's state",
                                 ["camera", "kind"], registry=self.registry)
        self.planogram = Counter("storelens_planogram_events", "Shelf slot state changes by new state",
                                 ["camera", "state"], registry=self.registry)
        self.heartbeats = Counter("storelens_heartbeats", "Re-published unchanged decisions",
                                  ["camera"], registry=self.registry)
        self.rate = FrameRate()
        for cam in cameras:  # series exist from the first scrape, so rate() has a start point
            for kind in ("known", "unknown"):
                self.decisions.labels(cam, kind)
            self.heartbeats.labels(cam)
            self.rate.frames[cam] = 0
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def attach(self, view: RuntimeView) -> None:
        """Read ``view``'s own counters at every scrape (call once, when the runtime starts)."""
        self.registry.register(RuntimeCollector(view, self.rate))

    def observe_decision(self, camera: str, kind: str, *, heartbeat: bool, planogram: str | None,
                         planogram_changed: bool, age_s: float) -> None:
        if heartbeat:
            self.heartbeats.labels(camera).inc()
            return
        self.decisions.labels(camera, kind).inc()
        self.time_to_decision.observe(max(0.0, age_s))
        if planogram is not None and planogram_changed:
            self.planogram.labels(camera, planogram).inc()


def _counter(name: str, doc: str, value: float, labels: Mapping[str, str] | None = None) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=list(labels or {}))
    fam.add_metric(list((labels or {}).values()), value)
    return fam


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class RuntimeCollector:
    """Scrape-time metrics read from the runtime's own counters (no work on the frame path)."""

    def __init__(self, view: RuntimeView, rate: FrameRate) -> None:
        self.view = view
        self.rate = rate

    def describe(self) -> list[Metric]:
        return []  # names depend on the runtime's state; nothing to check at register time

    def collect(self) -> Iterator[Metric]:
        yield from self._info()
        yield from self._cameras()
        yield from self._gate()
        yield from self._loop()
        yield from self._outbox()
        yield from self._mqtt()
        yield from self._ocr()

    def _info(self) -> Iterator[Metric]:
        status = self.view.status()
        for name, doc, key, value in (
                ("storelens_build", "StoreLens software version", "version", __version__),
                ("storelens_catalog", "Catalog version in use (changes on enroll, remove and reload)",
                 "catalog_version", str(status.get("catalog_version", ""))),
                ("storelens_bundle", "Image encoder bundle fingerprint in use", "bundle",
                 str(status.get("bundle", "")))):
            fam = InfoMetricFamily(name, doc, labels=[])
            fam.add_metric([], {key: value})
            yield fam

    def _cameras(self) -> Iterator[Metric]:
        captured = CounterMetricFamily("storelens_camera_frames", "Frames read from the camera source",
                                       labels=["camera"])
        processed = CounterMetricFamily("storelens_frames", "Frames the frame loop took from the camera",
                                        labels=["camera"])
        fps = GaugeMetricFamily("storelens_camera_fps", f"Frames per second the loop took (last ~{FPS_WINDOW_S:g} s)",
                                labels=["camera"])
        up = GaugeMetricFamily("storelens_camera_up", "1 while the camera delivers frames, 0 when down or ended",
                               labels=["camera"])
        outages = CounterMetricFamily("storelens_camera_outages", "Times the camera went down", labels=["camera"])
        for cam in self.view.cameras:
            captured.add_metric([cam.name], cam.stats.frames)
            processed.add_metric([cam.name], self.rate.frames.get(cam.name, 0))
            fps.add_metric([cam.name], self.rate.fps.get(cam.name, 0.0))
            up.add_metric([cam.name], 1.0 if cam.stats.state in ("ok", "starting") else 0.0)
            outages.add_metric([cam.name], cam.stats.outages)
        yield from (captured, processed, fps, up, outages)

    def _gate(self) -> Iterator[Metric]:
        crops = CounterMetricFamily("storelens_gate_crops", "Region crops the gate saw, by verdict",
                                    labels=["camera", "verdict"])
        ratio = GaugeMetricFamily("storelens_gate_skip_ratio", "Share of region crops the gate did not embed",
                                  labels=["camera"])
        for camera, regions in self.view.regions.items():
            seen = embedded = unchanged = unsteady = 0
            for r in regions:
                s = r.gate.stats
                seen, embedded = seen + s.seen, embedded + s.embedded
                unchanged, unsteady = unchanged + s.skipped_unchanged, unsteady + s.skipped_unsteady
            for verdict, n in (("embedded", embedded), ("unchanged", unchanged), ("unsteady", unsteady)):
                crops.add_metric([camera, verdict], n)
            ratio.add_metric([camera], 1 - embedded / seen if seen else 0.0)
        yield from (crops, ratio)

    def _loop(self) -> Iterator[Metric]:
        c = self.view.counts
        yield _counter("storelens_embedded_crops", "Region crops embedded and searched", c.get("embedded", 0))
        yield _counter("storelens_embed_batches", "Embedding batches (one per loop round with crops)",
                       c.get("batches", 0))
        yield _counter("storelens_errors", "Embedding or search failures (the crops of that batch are skipped)",
                       c.get("errors", 0))

    def _outbox(self) -> Iterator[Metric]:
        ob = self.view.outbox
        s = ob.stats()
        yield _gauge("storelens_outbox_depth", "Messages stored and not yet acknowledged by the broker", s.depth)
        yield _gauge("storelens_outbox_capacity", "Outbox bound (mqtt.outbox_max_messages)", ob.max_messages)
        yield _counter("storelens_outbox_written", "Messages written to the outbox", s.written)
        yield _counter("storelens_outbox_delivered", "Messages the broker acknowledged", s.delivered)
        dropped = CounterMetricFamily("storelens_outbox_dropped", "Messages dropped to stay in bounds",
                                      labels=["reason"])
        dropped.add_metric(["full"], s.dropped_full)
        dropped.add_metric(["age"], s.dropped_age)
        yield dropped
        yield _gauge("storelens_outbox_in_memory", "Messages held in memory because the disk refused them "
                     "(full disk); saved when it has room", s.in_memory)
        yield _counter("storelens_outbox_write_errors", "Outbox writes the disk refused (full disk, I/O error)",
                       s.write_errors)

    def _mqtt(self) -> Iterator[Metric]:
        link = self.view.link
        if link is None:
            return
        st = link.stats
        yield _gauge("storelens_mqtt_connected", "1 while connected to the broker", 1.0 if st.connected else 0.0)
        yield _counter("storelens_mqtt_reconnects", "Connections after the first one (broker came back)",
                       max(0, st.connects - 1))
        yield _counter("storelens_mqtt_disconnects", "Lost broker connections", st.disconnects)
        yield _gauge("storelens_mqtt_inflight", "Messages handed to the broker and not yet acknowledged", st.inflight)
        yield _counter("storelens_mqtt_rejected", "Messages the broker refused (MQTT 5 reason code)", st.rejected)
        yield _counter("storelens_mqtt_oversized", "Messages dropped: over their topic's byte limit", st.oversized)

    def _ocr(self) -> Iterator[Metric]:
        if self.view.reranker is None:
            return
        s = self.view.reranker.worker.stats()
        yield _gauge("storelens_ocr_queue_depth", "Region views waiting for a label-text read", s.pending)
        yield SummaryMetricFamily("storelens_ocr_read_seconds", "Label-text (OCR) read time (count and sum)",
                                  count_value=s.reads, sum_value=s.mean_ms * s.reads / 1000)
        yield _gauge("storelens_ocr_read_max_seconds", "Longest label-text read so far", s.max_ms / 1000)
        yield _counter("storelens_ocr_errors", "Failed label-text reads", s.errors)


class _QuietHandler(WSGIRequestHandler):
    """No access log; the request line and headers must arrive within :data:`HEADER_TIMEOUT_S` (slowloris)."""

    timeout = HEADER_TIMEOUT_S  # every read and write on the connection (socketserver sets it on the socket)

    def setup(self) -> None:
        super().setup()
        self._deadline = threading.Timer(HEADER_TIMEOUT_S, self._expire)
        self._deadline.daemon = True
        self._deadline.start()

    def _expire(self) -> None:
        self.server.timed_out += 1  # type: ignore[attr-defined]
        with contextlib.suppress(OSError):  # the blocked read returns: the handler ends, its thread too
            self.connection.shutdown(socket.SHUT_RDWR)

    def parse_request(self) -> bool:
        ok = super().parse_request()  # reads the headers
        self._deadline.cancel()
        return ok

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _CappedServer(ThreadingWSGIServer):
    """At most :data:`MAX_CONNECTIONS` connections served at once; more are closed on arrival (counted)."""

    daemon_threads = True

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0
        self.timed_out = 0
        super().__init__(*args, **kw)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def _only_metrics(app: Callable[..., Any]) -> Callable[..., Any]:
    """Serve the exposition at ``/metrics``; ``/`` points there; anything else is 404."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return app(environ, start_response)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"StoreLens metrics: /metrics\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found; metrics are at /metrics\n"]

    return wsgi


class MetricsServer:
    """A small threaded HTTP server for one registry (``port`` 0 picks a free port: see :attr:`port`)."""

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._server: _CappedServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        class Server(_CappedServer):
            address_family = family

        try:
            server = make_server(self.host, self.port, _only_metrics(make_wsgi_app(self._registry)), Server,
                                 handler_class=_QuietHandler)
        except OSError as e:
            raise ConfigError(f"metrics: cannot listen on {self.host}:{self.port}: {e}",
                              hint="pick a free [metrics] port, or set metrics.enabled = false") from e
        self._server = server
        self.port = int(server.server_port)
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics served", extra={"url": f"http://{self.host}:{self.port}/metrics"})
        return self.port

    def guard_stats(self) -> dict[str, int]:
        """Connections closed by the caps: refused (too many open), timed out (no headers in time)."""
        srv = self._server
        return {"refused": srv.refused, "timed_out": srv.timed_out} if srv else {"refused": 0, "timed_out": 0}

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(2.0)
