"""The broker link: paho-mqtt 2.x with the outbox underneath, so no result is lost.

Flow of a durable message (``match``, ``planogram``): :meth:`MqttLink.send` writes it to the
:class:`~edge.comms.outbox.Outbox` and wakes the link's worker thread, which hands outbox rows to
paho in write order (at most ``mqtt.max_inflight`` un-acknowledged at a time, so a long outage
never piles messages up in RAM — they wait on disk). paho queues what it cannot send yet and
re-sends un-acknowledged messages itself after a reconnect; each PUBACK deletes its row. After
a process restart nothing has been handed to paho yet, so every row left is replayed in order.

paho calls ``on_publish`` while holding its own lock, so the callbacks only post events to the
worker's queue; all outbox and publish work happens on the one worker thread (no lock-order
deadlocks, no busy loops: the worker sleeps on its queue). Reconnects use paho's exponential
backoff (``reconnect_min_s`` .. ``reconnect_max_s``).

Topics: ``<prefix>/available`` (retained online/offline, Last Will offline),
``<prefix>/status`` (retained), ``<prefix>/stats``, ``<prefix>/<camera>/match|planogram``,
``<prefix>/cmd/<verb>`` in and ``<prefix>/cmd/<verb>/reply`` out.

Size limits (issue 28): every topic handler has a byte limit (``max_bytes``, at most
``mqtt.command_max_bytes``). Over MQTT 5 the link announces ``Maximum Packet Size`` on CONNECT
(``mqtt.command_max_bytes`` plus :data:`PACKET_OVERHEAD`), so the broker never sends a larger
packet and paho never buffers one; a message over its handler's (smaller) limit is dropped
before the handler sees it and counted in ``stats.oversized``. MQTT 3.1.1 has no such property:
there the broker's own ``max_packet_size`` (configs/mosquitto/) is the bound.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.comms.outbox import Outbox
from edge.core.config import MqttSettings

log = logging.getLogger("storelens.mqtt")

IDLE_WAKE_S = 5.0  # the outbox worker looks at the outbox this often even without events
PRUNE_EVERY_S = 60.0  # how often messages older than outbox_max_age_s are dropped
FLUSH_POLL_S = 0.05  # shutdown: how often the flush checks that the outbox drained
OFFLINE_WAIT_MIN_S = 0.2  # shutdown: least time given to the retained `offline` to reach the broker
WORKER_JOIN_S = 2.0
PACKET_OVERHEAD = 70_000  # fixed header, a topic of up to 65535 bytes and a few properties above the payload

TopicHandler = Callable[[str, bytes, Any], None]
"""``handler(topic, payload, properties)``: called on paho's network thread; must return quickly."""


@dataclass(slots=True)
class LinkStats:
    connects: int = 0
    disconnects: int = 0
    connected: bool = False
    last_error: str | None = None
    rejected: int = 0  # PUBACKs with a failure reason code (MQTT 5): the broker refused the message
    inflight: int = 0
    replies: int = 0
    worker_errors: int = 0  # outbox worker rounds that failed (logged; the worker goes on)
    oversized: int = 0  # messages dropped because they were over their topic handler's byte limit
    extra: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"connected": self.connected, "connects": self.connects, "disconnects": self.disconnects,
                "last_error": self.last_error, "rejected": self.rejected, "inflight": self.inflight,
                "worker_errors": self.worker_errors, "oversized": self.oversized}


class MqttLink:
    """One MQTT connection for the device: durable results, retained presence/status, commands."""

    def __init__(self, *, settings: MqttSettings, prefix: str, outbox: Outbox, client_id: str) -> None:
        self.settings = settings
        self.prefix = prefix.rstrip("/")
        self.outbox = outbox
        self.stats = LinkStats()
        self._handlers: list[tuple[str, TopicHandler, int]] = []  # (filter, handler, max payload bytes)
        self._status: bytes | None = None
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._mid_to_seq: dict[int, int] = {}
        self._handed_seq = 0  # highest outbox seq handed to paho in this process
        self._worker: threading.Thread | None = None
        self._idle = threading.Event()  # set while the outbox has nothing un-acknowledged
        self._suback_due: set[int] = set()  # SUBSCRIBE packets of this connection not yet acknowledged
        self._sub_lock = threading.Lock()  # add_topic_handler may subscribe from another thread
        self._subscribed = threading.Event()  # set once the broker acknowledged every topic handler's filter
        self._stopping = False
        self._client = self._make_client(client_id)

    # -- topics ------------------------------------------------------------------------------------

    def topic(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix}"

    @property
    def available_topic(self) -> str:
        return self.topic("available")

    @property
    def connected(self) -> bool:
        return self.stats.connected

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def max_packet_bytes(self) -> int:
        """The MQTT 5 ``Maximum Packet Size`` this link announces: no larger packet is ever sent to it."""
        return self.settings.command_max_bytes + PACKET_OVERHEAD

    def add_topic_handler(self, topic_filter: str, handler: TopicHandler, *, max_bytes: int | None = None) -> None:
        """Subscribe ``topic_filter`` (absolute, wildcards allowed) now and on every reconnect.

        ``max_bytes``: the largest payload the handler is given (default and ceiling:
        ``mqtt.command_max_bytes``); a larger one is dropped and counted in ``stats.oversized``.
        """
        ceiling = self.settings.command_max_bytes
        limit = ceiling if max_bytes is None else min(max_bytes, ceiling)
        self._handlers.append((topic_filter, handler, limit))
        if self.stats.connected:
            self._subscribe([topic_filter])

    def wait_subscribed(self, timeout: float) -> bool:
        """Block until the broker acknowledged (SUBACK) every topic handler's subscription on this connection;
        a message published after that reaches its handler. False on timeout."""
        return self._subscribed.wait(timeout)

    def start(self) -> None:
        """Connect in the background (retrying with backoff until the broker answers)."""
        self._worker = threading.Thread(target=self._work, name="mqtt-outbox", daemon=True)
        self._worker.start()
        self._warn_if_open()
        props = None
        if self.settings.protocol == "5":  # the broker must not send (and paho never buffers) anything larger
            props = Properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = self.max_packet_bytes
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s,
                                   properties=props)
        self._client.loop_start()
        self._events.put(("kick", None))

    def _warn_if_open(self) -> None:
        s = self.settings
        if s.command_token is None and not s.tls.enabled:
            log.warning("mqtt: no command_token and no TLS: anyone who can reach the broker at %s:%s can send this "
                        "device commands, baskets and scans, and read every result in clear; set "
                        "mqtt.command_token and [mqtt.tls] (docs/security.md)", s.host, s.port)
        elif s.command_token is not None and not s.tls.enabled:
            log.warning("mqtt: command_token is set but TLS is not: the token travels in clear in every command; "
                        "set [mqtt.tls] (docs/security.md)")
        if s.protocol != "5":
            log.warning("mqtt: protocol 3.1.1 cannot announce a maximum packet size: large messages are received "
                        "whole before the size limits apply; use protocol 5 or the broker's max_packet_size")

    def stop(self, *, flush_timeout_s: float | None = None) -> int:
        """Flush the outbox (bounded), publish ``offline``, disconnect. Returns messages left in the outbox."""
        wait = self.settings.flush_timeout_s if flush_timeout_s is None else flush_timeout_s
        deadline = time.monotonic() + wait
        self._events.put(("kick", None))
        while self.stats.connected and time.monotonic() < deadline and self.outbox.stats().depth > 0:
            self._idle.wait(FLUSH_POLL_S)
        left = self.outbox.stats().depth
        if self.stats.connected:
            info = self._client.publish(self.available_topic, b"offline", qos=1, retain=True)
            try:
                info.wait_for_publish(max(OFFLINE_WAIT_MIN_S, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as e:
                log.warning("could not publish offline: %s", e)
        self._stopping = True
        self._events.put(("stop", None))
        if self._worker:
            self._worker.join(WORKER_JOIN_S)
        self._client.disconnect()
        self._client.loop_stop()
        if left:
            log.warning("outbox not empty at shutdown; kept on disk for the next start", extra={"left": left})
        return left

    # -- publishing --------------------------------------------------------------------------------

    def send(self, topic: str, payload: bytes, *, msg_id: str, retain: bool = False) -> int:
        """Durable publish: written to the outbox first, delivered (in order) when the broker is up."""
        seq = self.outbox.put(msg_id=msg_id, topic=topic, payload=payload, qos=self.settings.qos, retain=retain)
        self._events.put(("kick", None))
        return seq

    def publish_now(self, topic: str, payload: bytes | str, *, qos: int = 0, retain: bool = False) -> None:
        """Best-effort publish (stats, command replies): not stored; dropped while disconnected."""
        if self.stats.connected:
            self._client.publish(topic, payload, qos=qos, retain=retain)

    def set_status(self, status: dict[str, Any]) -> None:
        """Retained ``status``; re-published on every (re)connect."""
        self._status = json.dumps(status, separators=(",", ":")).encode()
        if self.stats.connected:
            self._client.publish(self.topic("status"), self._status, qos=1, retain=True)

    # -- paho ---------------------------------------------------------------------------------------

    def _make_client(self, client_id: str) -> paho.Client:
        s = self.settings
        v5 = s.protocol == "5"
        if v5:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                 protocol=MQTTProtocolVersion.MQTTv5)
        else:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                 protocol=MQTTProtocolVersion.MQTTv311, clean_session=True)
        if s.username:
            client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
        if s.tls.enabled:
            client.tls_set(ca_certs=str(s.tls.ca_file) if s.tls.ca_file else None,
                           certfile=str(s.tls.cert_file) if s.tls.cert_file else None,
                           keyfile=str(s.tls.key_file) if s.tls.key_file else None,
                           cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(s.tls.insecure)
        client.will_set(self.available_topic, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=max(1, round(s.reconnect_min_s)), max_delay=round(s.reconnect_max_s))
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(0)  # unbounded: the outbox already bounds what is handed over
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: paho.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.stats.last_error = f"connect refused: {reason}"
            log.error("broker refused the connection: %s (check mqtt.username/password/tls)", reason)
            return
        self.stats.connected = True
        self.stats.connects += 1
        log.info("connected to broker", extra={"host": self.settings.host, "port": self.settings.port})
        client.publish(self.available_topic, b"online", qos=1, retain=True)
        if self._status is not None:
            client.publish(self.topic("status"), self._status, qos=1, retain=True)
        self._subscribe([f for f, _, _ in self._handlers])
        self._events.put(("kick", None))

    def _subscribe(self, filters: list[str]) -> None:
        with self._sub_lock:
            self._subscribed.clear()
            for topic_filter in filters:
                rc, mid = self._client.subscribe(topic_filter, qos=1)
                if rc == paho.MQTT_ERR_SUCCESS and mid is not None:
                    self._suback_due.add(mid)
            if not self._suback_due:
                self._subscribed.set()

    def _on_subscribe(self, _c: paho.Client, _ud: Any, mid: int, reasons: Any, _props: Any) -> None:
        failed = [r for r in reasons if getattr(r, "is_failure", False)]
        if failed:
            log.error("broker refused a subscription: %s (check its access rules)", failed)
        with self._sub_lock:
            self._suback_due.discard(mid)
            if not self._suback_due:
                self._subscribed.set()

    def _on_disconnect(self, _c: paho.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self.stats.connected and not self._stopping:
            self.stats.disconnects += 1
            log.warning("disconnected from broker; reconnecting with backoff", extra={"reason": str(reason)})
        if self.stats.connected:  # keep a refused connect's reason (it is followed by a disconnect)
            self.stats.last_error = f"disconnected: {reason}"
        self.stats.connected = False
        with self._sub_lock:
            self._subscribed.clear()
            self._suback_due.clear()

    def _on_connect_fail(self, _c: paho.Client, _ud: Any) -> None:
        if self.stats.last_error != "broker unreachable":
            log.warning("broker unreachable; retrying with backoff (results wait in the outbox)",
                        extra={"host": self.settings.host, "port": self.settings.port})
        self.stats.last_error = "broker unreachable"

    def _on_publish(self, _c: paho.Client, _ud: Any, mid: int, reason: Any, _props: Any) -> None:
        self._events.put(("ack", (mid, bool(getattr(reason, "is_failure", False)))))

    def _on_message(self, _c: paho.Client, _ud: Any, msg: paho.MQTTMessage) -> None:
        for topic_filter, handler, limit in self._handlers:
            if paho.topic_matches_sub(topic_filter, msg.topic):
                if len(msg.payload) > limit:
                    self.stats.oversized += 1
                    log.warning("message over its topic's size limit dropped",
                                extra={"topic": msg.topic, "bytes": len(msg.payload), "limit": limit})
                    return
                try:
                    handler(msg.topic, bytes(msg.payload), msg.properties)
                except Exception:  # a handler bug must never take the network thread down
                    log.exception("topic handler failed", extra={"topic": msg.topic})
                return

    # -- the outbox worker -------------------------------------------------------------------------

    def _work(self) -> None:
        last_prune = 0.0
        while True:
            try:
                kind, arg = self._events.get(timeout=IDLE_WAKE_S)
            except queue.Empty:
                kind, arg = "kick", None
            if kind == "stop":
                return
            try:  # the one thread that delivers: an error costs this round, never the thread (issue 28)
                if kind == "ack":
                    self._acked(*arg)
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    if (n := self.outbox.prune()) > 0:
                        log.warning("outbox dropped messages older than outbox_max_age_s", extra={"dropped": n})
                self._pump()
            except Exception:
                self.stats.worker_errors += 1
                log.exception("outbox worker: a round failed; retrying on the next event")

    def _acked(self, mid: int, failed: bool) -> None:
        seq = self._mid_to_seq.pop(mid, None)
        if seq is not None:
            if failed:
                self.stats.rejected += 1
                log.error("broker rejected a message; dropped from the outbox", extra={"seq": seq})
            self.outbox.ack(seq)

    def _pump(self) -> None:
        """Hand outbox rows to paho in order, keeping at most ``max_inflight`` un-acknowledged."""
        room = self.settings.max_inflight - len(self._mid_to_seq)
        if room > 0:
            for m in self.outbox.pending(after_seq=self._handed_seq, limit=room):
                info = self._client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
                if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                    log.error("paho refused a publish", extra={"rc": info.rc})
                    break
                self._handed_seq = m.seq
                if m.qos == 0:
                    self.outbox.ack(m.seq)  # QoS 0 has no PUBACK: handing it over is all there is
                else:
                    self._mid_to_seq[info.mid] = m.seq
        self.stats.inflight = len(self._mid_to_seq)
        if self._mid_to_seq or self.outbox.stats().depth:
            self._idle.clear()
        else:
            self._idle.set()
