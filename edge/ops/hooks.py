"""The frame loop's one door to operations: metrics, Home Assistant discovery, health heartbeat, systemd.

The loop makes one call per event and knows nothing of what is behind it:

* ``starting(rt)`` / ``started(rt)`` / ``stopping()`` / ``stopped(rt)`` around the run;
* ``frame(frame)`` for each frame taken from a camera (counts, decode time);
* ``with hooks.stage("embed"):`` around each timed stage (a no-op context without metrics);
* ``decision(d)`` for each published decision;
* ``tick(rt)`` once per loop round: heartbeat file, systemd watchdog, discovery republish,
  fps window. Each of those is rate-limited inside, so a tick costs a clock read when nothing is due.

Without any ``[metrics]``, ``[homeassistant]`` or systemd, the hooks still write the health
heartbeat (one small file a second) and everything else is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from edge.ops.health import STATUS_FILE, HeartbeatWriter, Thresholds
from edge.ops.metrics import MetricsServer, RuntimeMetrics, RuntimeView
from edge.ops.systemd import SdNotifier
from edge.pipeline.capture import Frame
from edge.pipeline.vote import Decision

if TYPE_CHECKING:
    from edge.comms.mqtt import MqttLink
    from edge.core.config import Settings
    from edge.ops.discovery import HomeAssistantDiscovery

log = logging.getLogger("storelens.ops")

_NULL: AbstractContextManager[object] = contextlib.nullcontext()


class RuntimeHooks:
    """What the runtime reports to operations; every part is optional."""

    def __init__(self, *, metrics: RuntimeMetrics | None = None, server: MetricsServer | None = None,
                 discovery: HomeAssistantDiscovery | None = None, heartbeat: HeartbeatWriter | None = None,
                 notifier: SdNotifier | None = None, thresholds: Thresholds | None = None) -> None:
        self.metrics = metrics
        self.server = server
        self.discovery = discovery
        self.heartbeat = heartbeat
        self.notifier = notifier
        self.thresholds = thresholds or Thresholds()
        self._stages = metrics.stages if metrics else None

    @classmethod
    def from_settings(cls, settings: Settings, link: MqttLink | None) -> RuntimeHooks:
        """The parts the config turns on (``[metrics]``, ``[homeassistant]``, ``[health]``) plus sd_notify."""
        metrics = server = discovery = None
        if settings.metrics.enabled:
            metrics = RuntimeMetrics(c.name for c in settings.cameras)
            server = MetricsServer(metrics.registry, host=settings.metrics.host, port=settings.metrics.port)
        if settings.homeassistant.enabled:
            if link is None:
                log.warning("homeassistant.enabled needs MQTT (mqtt.enabled = true and a broker); discovery is off")
            else:
                from edge.ops.discovery import DeviceInfo, HomeAssistantDiscovery

                ha = settings.homeassistant
                info = DeviceInfo(store=settings.device.store, device_id=settings.device.id,
                                  prefix=settings.topic_prefix, discovery_prefix=ha.discovery_prefix,
                                  name=ha.device_name)
                discovery = HomeAssistantDiscovery(link=link, info=info, cameras=settings.cameras)
        h = settings.health
        path = h.status_file or settings.catalog.data_dir / STATUS_FILE
        return cls(metrics=metrics, server=server, discovery=discovery,
                   heartbeat=HeartbeatWriter(path, interval_s=h.heartbeat_s), notifier=SdNotifier(),
                   thresholds=Thresholds.from_settings(h))

    # -- lifecycle -----------------------------------------------------------------------------------

    def starting(self, rt: RuntimeView) -> None:
        """Before anything opens: serve metrics (a taken port fails the start before the cameras open)
        and register discovery's topic handlers on the link before it starts."""
        if self.metrics is not None and self.server is not None:
            self.metrics.attach(rt)
            self.server.start()
        if self.discovery is not None:  # its subscriptions are made on the link's first connect
            self.discovery.attach()

    def started(self, rt: RuntimeView) -> None:
        """After the cameras opened and the link started: READY=1 to systemd, then the first heartbeat."""
        if self.notifier is not None and self.notifier.ready(self._status_line(rt)):
            log.info("systemd notified: ready")
        self.tick(rt, force=True)

    def stopping(self) -> None:
        if self.notifier is not None:
            self.notifier.stopping()

    def stopped(self, rt: RuntimeView) -> None:
        """After the final flush: a last heartbeat (health then reports the process as gone), metrics off."""
        if self.heartbeat is not None:
            self.heartbeat.tick(cameras=rt.cameras, link=rt.link, outbox=rt.outbox, force=True)
        if self.server is not None:
            self.server.stop()
        if self.notifier is not None:
            self.notifier.close()

    # -- the frame path ------------------------------------------------------------------------------

    def frame(self, frame: Frame) -> None:
        if self.metrics is not None:
            self.metrics.rate.add(frame.camera)
            self.metrics.stages["decode"].observe(frame.decode_s)

    def stage(self, name: str) -> AbstractContextManager[object]:
        """Time the ``with`` block as stage ``name`` (one of :data:`edge.ops.metrics.STAGES`)."""
        return self._stages[name].time() if self._stages is not None else _NULL

    def decision(self, d: Decision) -> None:
        if self.metrics is not None:
            self.metrics.observe_decision(d.camera, d.decision, heartbeat=d.heartbeat, planogram=d.planogram,
                                          planogram_changed=d.planogram_changed, age_s=time.time() - d.ts)
        if self.discovery is not None:
            self.discovery.decision(d)

    def tick(self, rt: RuntimeView, *, force: bool = False) -> None:
        if self.heartbeat is not None:
            self.heartbeat.tick(cameras=rt.cameras, link=rt.link, outbox=rt.outbox, force=force)
        if self.notifier is not None:
            self.notifier.watchdog(lambda: self._status_line(rt))
        if self.discovery is not None:
            self.discovery.tick()
        if self.metrics is not None:
            self.metrics.rate.update(time.monotonic())

    @staticmethod
    def _status_line(rt: RuntimeView) -> str:
        """One line for ``systemctl status``: cameras up, broker, outbox."""
        ok = sum(1 for c in rt.cameras if c.stats.state == "ok")
        mqtt = "off" if rt.link is None else ("connected" if rt.link.connected else "disconnected")
        return f"cameras {ok}/{len(rt.cameras)} ok, mqtt {mqtt}, outbox {rt.outbox.stats().depth}"
