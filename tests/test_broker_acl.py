"""The shipped broker config (configs/mosquitto/) with a real Mosquitto: TLS, client certificates, ACLs.

The broker runs from ``configs/mosquitto/mosquitto.conf`` itself, only its paths and port substituted;
certificates come from the shipped ``make-certs.sh`` (throwaway, made here with openssl). Each client
connects with its own certificate (its CN is its ACL user): the allowed flows work, and a POS cannot
command ``cmd/enroll`` nor can a device announce a catalog snapshot (issue 28).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from benchmarks._broker import free_port, mosquitto_binary, wait_port
from edge.comms.mqtt import MqttLink
from edge.comms.outbox import Outbox
from edge.core.config import MqttSettings

SHIPPED = Path(__file__).resolve().parents[1] / "configs" / "mosquitto"
PREFIX = "storelens/store-001/kiosk-1"
DEVICE, POS, CHAIN, ADMIN = "device.store-001.kiosk-1", "pos.store-001", "chain-publisher", "admin.store-001"
NOT_AUTHORISED = 135  # MQTT 5 reason code 0x87


@pytest.fixture
def shipped_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    certs = tmp_path / "certs"
    subprocess.run(["sh", str(SHIPPED / "make-certs.sh"), str(certs), "127.0.0.1", DEVICE, POS, CHAIN, ADMIN],
                   check=True, capture_output=True, env={"PATH": "/usr/bin:/bin", "DAYS": "2"})
    (certs / "acl").write_text((SHIPPED / "acl").read_text())
    port = free_port()
    conf = (SHIPPED / "mosquitto.conf").read_text()
    assert "listener 8883\n" in conf and "/etc/mosquitto/storelens/" in conf  # what is substituted, and only that
    conf = (conf.replace("listener 8883\n", f"listener {port} 127.0.0.1\n")
            .replace("/etc/mosquitto/storelens/", f"{certs}/")
            .replace("/var/lib/mosquitto/", f"{tmp_path}/")
            .replace("log_dest syslog", f"log_dest file {tmp_path}/mosquitto.log")) + "user root\n"
    (tmp_path / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(tmp_path / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port, certs
    finally:
        proc.terminate()
        proc.wait(5)


class Client:
    """A paho MQTT 5 client with its own certificate; records messages and each publish's PUBACK reason."""

    def __init__(self, port: int, certs: Path, cn: str, subscribe: str | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, int] = {}
        self._cv = threading.Condition()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cn, protocol=MQTTProtocolVersion.MQTTv5)
        self.c.tls_set(ca_certs=str(certs / "ca.pem"), certfile=str(certs / f"{cn}.pem"),
                       keyfile=str(certs / f"{cn}.key"))
        ready = threading.Event()

        def on_connect(c: paho.Client, *_: Any) -> None:
            if subscribe is None:
                ready.set()
            else:
                c.subscribe(subscribe, qos=1)

        self.c.on_connect = on_connect
        self.c.on_subscribe = lambda *_: ready.set()
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(10), f"{cn} did not connect"

    def _on_message(self, _c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        with self._cv:
            self.messages.append((m.topic, bytes(m.payload)))
            self._cv.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._cv:
            self.acks[mid] = int(reason.value)
            self._cv.notify_all()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish QoS 1 and wait for the PUBACK; its reason code (0 = accepted)."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        with self._cv:
            assert self._cv.wait_for(lambda: info.mid in self.acks, 10)
            return self.acks[info.mid]

    def wait(self, pred: Any, timeout: float = 10.0) -> bool:
        with self._cv:
            return bool(self._cv.wait_for(pred, timeout))

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def until(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def device_link(port: int, certs: Path, tmp_path: Path) -> MqttLink:
    tls = {"enabled": True, "ca_file": certs / "ca.pem", "cert_file": certs / f"{DEVICE}.pem",
           "key_file": certs / f"{DEVICE}.key"}
    s = MqttSettings(host="127.0.0.1", port=port, tls=tls, keepalive_s=5)  # type: ignore[arg-type]
    return MqttLink(settings=s, prefix=PREFIX, outbox=Outbox(path=tmp_path / "outbox.db"), client_id=DEVICE)


def test_shipped_acl_lets_each_client_do_exactly_its_part(shipped_broker: tuple[int, Path], tmp_path: Path) -> None:
    port, certs = shipped_broker
    link = device_link(port, certs, tmp_path)
    seen: list[tuple[str, bytes]] = []
    got = threading.Condition()

    def record(topic: str, payload: bytes, _props: Any) -> None:
        with got:
            seen.append((topic, payload))
            got.notify_all()

    for suffix in ("cmd/+", "events/basket"):
        link.add_topic_handler(f"{PREFIX}/{suffix}", record)
    link.add_topic_handler("storelens/store-001/catalog/available", record)
    link.start()
    admin = Client(port, certs, ADMIN, subscribe="storelens/store-001/#")
    pos = Client(port, certs, POS)
    chain = Client(port, certs, CHAIN)
    try:
        assert link.wait_subscribed(10)
        # the point of sale: a basket goes through, cmd/enroll is refused by the broker and never arrives
        assert pos.publish(f"{PREFIX}/cmd/enroll", b'{"sku": "X", "images": []}') == NOT_AUTHORISED
        assert pos.publish(f"{PREFIX}/events/basket", b'{"id": "1", "skus": ["A"]}') == 0
        with got:  # delivered in publish order: once the basket is in, the enroll would have been too
            assert got.wait_for(lambda: any(t.endswith("/events/basket") for t, _ in seen), 10)
        assert not any("/cmd/" in t for t, _ in seen)
        # the chain publisher announces a snapshot; the device reads it
        announcement = json.dumps({"snapshot": "v2"}).encode()
        assert chain.publish("storelens/store-001/catalog/available", announcement, retain=True) == 0
        with got:
            assert got.wait_for(lambda: ("storelens/store-001/catalog/available", announcement) in seen, 10)
        # the device: its match is delivered, its forged announcement refused (PUBACK failure, dropped)
        link.send("storelens/store-001/catalog/available", b'{"snapshot": "evil"}', msg_id="forged", retain=True)
        link.send(f"{PREFIX}/kiosk/match", b'{"id": "m1"}', msg_id="m1")
        assert admin.wait(lambda: any(t.endswith("/kiosk/match") for t, _ in admin.messages))
        assert until(lambda: link.outbox.stats().depth == 0) and link.stats.rejected == 1
        assert not any(p == b'{"snapshot": "evil"}' for _, p in admin.messages)
        # the retained announcement a device finds when it connects is still the chain's
        fresh = Client(port, certs, ADMIN, subscribe="storelens/store-001/catalog/available")
        assert fresh.wait(lambda: fresh.messages == [("storelens/store-001/catalog/available", announcement)])
        fresh.stop()
        # nor may the point of sale announce one
        assert pos.publish("storelens/store-001/catalog/available", b"{}") == NOT_AUTHORISED
    finally:
        for c in (admin, pos, chain):
            c.stop()
        link.stop(flush_timeout_s=0)


def test_a_client_without_a_certificate_of_the_store_is_refused(shipped_broker: tuple[int, Path],
                                                                tmp_path: Path) -> None:
    port, certs = shipped_broker
    other = tmp_path / "other"  # a CA the broker does not trust
    subprocess.run(["sh", str(SHIPPED / "make-certs.sh"), str(other), "127.0.0.1", POS], check=True,
                   capture_output=True, env={"PATH": "/usr/bin:/bin", "DAYS": "2"})
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="intruder", protocol=MQTTProtocolVersion.MQTTv5)
    c.tls_set(ca_certs=str(certs / "ca.pem"), certfile=str(other / f"{POS}.pem"), keyfile=str(other / f"{POS}.key"))
    connected, failed = threading.Event(), threading.Event()
    c.on_connect = lambda _c, _u, _f, reason, _p: (failed if reason.is_failure else connected).set()
    c.on_disconnect = lambda *_: failed.set()
    c.on_connect_fail = lambda *_: failed.set()
    c.connect_async("127.0.0.1", port)
    c.loop_start()  # TLS 1.3: the broker checks the client certificate after the handshake, then hangs up
    try:
        assert failed.wait(10) and not connected.is_set()
    finally:
        c.loop_stop()
