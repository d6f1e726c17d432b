"""A standalone basket subscriber for tests and benchmarks: ``events/basket`` in, ``cmd/recommend`` answered.

It feeds a :class:`~edge.recommend.service.Recommender` without the full runtime, through a
real broker. Never imported by edge/.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from edge.comms.commands import CommandRouter
from edge.core.errors import ConfigError
from edge.pipeline.handlers import recommend_handler
from edge.recommend.baskets import REJECT_REASONS, IngestResult
from edge.recommend.service import Recommender

log = logging.getLogger("storelens.baskets")


def recommend_replier(recommender: Recommender) -> Callable[[bytes], dict[str, Any]]:
    """``cmd/recommend`` payload -> reply object, checked and answered as the runtime's router does."""
    router = CommandRouter(prefix="", reply=lambda _topic, _body: None)
    router.register("recommend", recommend_handler(recommender))
    return lambda payload: router.handle("recommend", payload)


class BasketSubscriber:
    """A small standalone MQTT (paho 2.x, v5) subscriber: ``<prefix>/events/basket`` -> ``on_basket``.

    For the recommendation benchmark and tests; the runtime itself registers
    :meth:`edge.recommend.service.Recommender.handle_basket_message` on its
    :class:`edge.comms.mqtt.MqttLink` instead. With ``session_expiry_s`` > 0 the broker keeps the
    subscription and queues QoS 1 baskets while this subscriber is away (same ``client_id``),
    so a restart loses no sale. ``on_command`` optionally answers ``<prefix>/cmd/recommend``
    on ``<prefix>/cmd/recommend/reply`` (or the MQTT 5 response topic).
    """

    def __init__(self, *, host: str, port: int, prefix: str, on_basket: Callable[[bytes], IngestResult],
                 on_command: Callable[[bytes], dict[str, object]] | None = None,
                 client_id: str = "storelens-baskets", session_expiry_s: int = 86400,
                 username: str | None = None, password: str | None = None) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.host, self.port = host, port
        self.basket_topic = f"{prefix.rstrip('/')}/events/basket"
        self.command_topic = f"{prefix.rstrip('/')}/cmd/recommend"
        self.on_basket, self.on_command = on_basket, on_command
        self.session_expiry_s = session_expiry_s
        self.counts: dict[str, int] = {"accepted": 0, **{r: 0 for r in REJECT_REASONS}, "commands": 0}
        self._processed = threading.Condition()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=MQTTProtocolVersion.MQTTv5)
        if username:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._on_message

    @property
    def processed(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "commands")

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and wait until subscribed; raise :class:`ConfigError` when the broker does not answer."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        try:
            self._client.connect(self.host, self.port, keepalive=30, clean_start=self.session_expiry_s == 0,
                                 properties=props)
        except OSError as e:
            raise ConfigError(f"cannot reach the MQTT broker at {self.host}:{self.port}: {e}",
                              hint="start the broker or fix mqtt.host / mqtt.port") from e
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise ConfigError(f"the broker at {self.host}:{self.port} did not confirm the subscription "
                              f"within {timeout_s:.0f} s", hint="check the broker's log and access rules")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self._subscribed.clear()

    def wait_for(self, processed: int, timeout_s: float) -> bool:
        """Block until ``processed`` basket events were handled (accepted or rejected) or time runs out."""
        with self._processed:
            return self._processed.wait_for(lambda: self.processed >= processed, timeout_s)

    def _on_connect(self, client: Any, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the basket subscriber: %s", reason)
            return
        topics = [(self.basket_topic, 1)] + ([(self.command_topic, 1)] if self.on_command else [])
        client.subscribe(topics)

    def _on_message(self, client: Any, _ud: Any, msg: Any) -> None:
        if msg.topic == self.command_topic and self.on_command is not None:
            reply = self.on_command(msg.payload)
            resp = getattr(msg.properties, "ResponseTopic", None) if msg.properties is not None else None
            client.publish(resp or f"{self.command_topic}/reply", json.dumps(reply).encode(), qos=1)
            self.counts["commands"] += 1
            return
        try:
            result = self.on_basket(msg.payload)
        except Exception:  # a bug must not kill paho's network thread; counted as malformed
            log.exception("basket handler failed")
            result = IngestResult(accepted=False, reason="malformed", message="handler failed")
        with self._processed:
            self.counts["accepted" if result.accepted else str(result.reason)] += 1
            self._processed.notify_all()
