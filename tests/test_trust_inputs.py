"""Authenticated inputs over a real Mosquitto (issue 28, findings 7 and 8).

Forged baskets (no token, skus the catalog lacks, floods) are refused before they cost a row;
the device never receives an MQTT 5 packet over its announced maximum; a per-topic limit drops
a message before its handler; a command's response topic cannot point the device at its own
match topic; tokens are compared in constant time; a device with neither token nor TLS says so.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchmarks._broker import Broker
from edge.comms.commands import CommandRouter
from edge.comms.mqtt import MqttLink
from edge.comms.outbox import Outbox
from edge.core.config import MqttSettings, RecommendSettings
from edge.pipeline.factory import attach_recommender
from edge.recommend.baskets import BasketStore
from edge.recommend.service import open_recommender
from tests.runtime_helpers import Collector

PREFIX = "storelens/s1/d1"
TOKEN = "pos-secret-0123456789"
CATALOG = {"MILK", "BREAD", "EGGS"}


def make_link(broker: Broker, tmp_path: Path, **mqtt: Any) -> MqttLink:
    s = MqttSettings(host=broker.host, port=broker.port, keepalive_s=5, **mqtt)
    return MqttLink(settings=s, prefix=PREFIX, outbox=Outbox(path=tmp_path / "outbox.db"), client_id="dev")


@pytest.fixture
def pos(broker: Broker) -> Iterator[paho.Client]:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="pos", protocol=MQTTProtocolVersion.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    yield c
    c.loop_stop()
    c.disconnect()


def until(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_forged_baskets_need_the_token_and_catalog_skus(broker: Broker, tmp_path: Path, pos: paho.Client) -> None:
    """Finding 7: a basket without the token, or of skus the catalog lacks, is refused and costs no row."""
    rec = open_recommender(RecommendSettings(), data_dir=tmp_path)
    link = make_link(broker, tmp_path)
    router = CommandRouter(prefix=PREFIX, reply=lambda t, b: None, token=TOKEN)
    attach_recommender(rec, link=link, router=router, known=CATALOG.__contains__)
    link.start()
    try:
        assert link.wait_subscribed(10)
        forged = {"id": "f1", "skus": [f"FAKE-{i:05d}-{'x' * 100}" for i in range(200)]}  # ~26 KB, 40k pairs
        sends = [
            ({"id": "a", "skus": ["MILK", "BREAD"]}, "unauthorised"),  # no token
            ({"id": "b", "skus": ["MILK", "BREAD"], "token": "guess"}, "unauthorised"),
            ({**forged, "token": TOKEN}, "unknown_sku"),  # even with the token: nothing the catalog holds
            ({"id": "c", "skus": ["MILK", "EGGS", "NOT-SOLD-HERE"], "token": TOKEN}, "accepted"),
        ]
        for n, (doc, _) in enumerate(sends, 1):
            pos.publish(f"{PREFIX}/events/basket", json.dumps(doc), qos=1).wait_for_publish(5)
            assert until(lambda n=n: sum(rec.store.counters().values()) == n)
        counts = rec.store.counters()
        assert (counts["unauthorised"], counts["unknown_sku"], counts["accepted"]) == (2, 1, 1)
        assert sorted(rec.store.snapshot().skus) == ["EGGS", "MILK"]  # the unknown sku never became a row
    finally:
        link.stop(flush_timeout_s=0)
        rec.store.close()


def test_baskets_are_bounded_per_minute(tmp_path: Path) -> None:
    """Finding 7: a flood of (even authorised) baskets is cut at max_per_minute and writes nothing more."""
    now = [1000.0]
    store = BasketStore(path=tmp_path / "b.db", half_life_s=None, dedup_window_s=86400, max_items=10,
                        max_per_minute=3, monotonic=lambda: now[0], clock=lambda: 1.7e9)
    got = [store.handle_message(json.dumps({"id": i, "skus": ["A", "B"]})).reason for i in range(5)]
    assert got == [None, None, None, "rate", "rate"]
    now[0] += 60.0
    assert store.handle_message(json.dumps({"id": 9, "skus": ["A"]})).accepted
    assert store.counters()["rate"] == 2 and store.counters()["accepted"] == 4
    store.close()


def test_the_device_announces_a_maximum_packet_size_and_per_topic_limits(broker: Broker, tmp_path: Path,
                                                                         pos: paho.Client) -> None:
    """Finding 8: a command far over mqtt.command_max_bytes never reaches the device (the broker drops it, so
    paho never buffers it); a scan over its topic's limit is dropped before its handler."""
    link = make_link(broker, tmp_path, command_max_bytes=2048)
    replies: list[bytes] = []
    router = CommandRouter(prefix=PREFIX, reply=lambda t, b: replies.append(b), max_bytes=2048)
    router.register("echo", lambda args: {"echo": args.get("x")})
    router.start()
    scans: list[bytes] = []
    link.add_topic_handler(router.topic_filter, router.on_message)
    link.add_topic_handler(f"{PREFIX}/events/scan", lambda _t, p, _props: scans.append(p), max_bytes=64)
    link.start()
    try:
        assert link.wait_subscribed(10)
        assert link.max_packet_bytes < 200_000
        big = json.dumps({"id": "big", "x": "a" * 200_000}).encode()
        pos.publish(f"{PREFIX}/cmd/echo", big, qos=1).wait_for_publish(5)
        pos.publish(f"{PREFIX}/events/scan", b'{"barcode": "' + b"1" * 100 + b'"}', qos=1).wait_for_publish(5)
        pos.publish(f"{PREFIX}/events/scan", b'{"barcode": "1"}', qos=1).wait_for_publish(5)
        pos.publish(f"{PREFIX}/cmd/echo", b'{"id": "small", "x": 1}', qos=1).wait_for_publish(5)
        assert until(lambda: len(replies) >= 1 and scans)
        assert [json.loads(r)["id"] for r in replies] == ["small"]  # the big one never arrived: no reply at all
        assert scans == [b'{"barcode": "1"}'] and link.stats.oversized == 1
    finally:
        router.stop()
        link.stop(flush_timeout_s=0)


def test_a_response_topic_cannot_point_outside_the_reply_topic(broker: Broker, tmp_path: Path,
                                                               pos: paho.Client) -> None:
    """Finding 8: a refused command with ResponseTopic = the device's match topic must not publish there."""
    link = make_link(broker, tmp_path)
    router = CommandRouter(prefix=PREFIX, reply=lambda t, b: link.publish_now(t, b, qos=1), token=TOKEN)
    router.register("echo", lambda args: {"echo": args.get("x")})
    link.add_topic_handler(router.topic_filter, router.on_message)
    router.start()
    link.start()
    collector = Collector(broker.port, f"{PREFIX}/#", client_id="watch")
    try:
        assert link.wait_subscribed(10)
        for target, body in ((f"{PREFIX}/cam/match", {"id": "forged", "decision": "known"}),
                             (f"{PREFIX}/cmd/echo/reply/pos-1", {"id": "fine", "token": TOKEN, "x": 1})):
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = target
            pos.publish(f"{PREFIX}/cmd/echo", json.dumps(body), qos=1, properties=props).wait_for_publish(5)
        assert collector.wait(lambda: len(collector.of("/reply")) + len(collector.of("/reply/pos-1")) >= 2)
        assert collector.of("/cam/match") == []
        assert json.loads(collector.of("/cmd/echo/reply")[0])["id"] == "forged"  # answered where it belongs
        assert json.loads(collector.of("/cmd/echo/reply/pos-1")[0])["result"] == {"echo": 1}
        assert router.bad_response_topics == 1
    finally:
        collector.stop()
        router.stop()
        link.stop(flush_timeout_s=0)


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 8: the command router compares with hmac.compare_digest, never ``!=``."""
    import edge.core.auth as auth

    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    router = CommandRouter(prefix=PREFIX, reply=lambda t, b: None, token=TOKEN)
    router.register("echo", lambda args: {})
    assert router.handle("echo", json.dumps({"token": "x" * len(TOKEN)}).encode())["ok"] is False
    assert router.handle("echo", json.dumps({"token": TOKEN}).encode())["ok"] is True
    assert router.handle("echo", json.dumps({"token": 12}).encode())["ok"] is False  # not a string: no compare
    assert len(calls) == 2


def test_no_token_and_no_tls_is_said_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Finding 8: by default (no token, no TLS) the device warns; with both set it does not."""
    def start_stop(**mqtt: Any) -> list[str]:
        caplog.clear()
        s = MqttSettings(host="127.0.0.1", port=1, **mqtt)
        link = MqttLink(settings=s, prefix=PREFIX, outbox=Outbox(path=tmp_path / f"o{len(mqtt)}.db"), client_id="d")
        with caplog.at_level(logging.WARNING, logger="storelens.mqtt"):
            link.start()
            link.stop(flush_timeout_s=0)
        return [r.getMessage() for r in caplog.records if "TLS" in r.getMessage()]

    assert any("no command_token and no TLS" in m for m in start_stop())
    assert any("token travels in clear" in m for m in start_stop(command_token=TOKEN))
    ca = tmp_path / "ca.pem"  # a real CA certificate: nothing connects here, the TLS context only has to load it
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=t",
                    "-keyout", str(tmp_path / "ca.key"), "-out", str(ca)], check=True, capture_output=True)
    assert start_stop(command_token=TOKEN, tls={"enabled": True, "ca_file": ca}) == []


def test_scan_events_need_the_token() -> None:
    """Finding 7: events/scan goes through the command checks: without the token a scan is refused unread."""
    from edge.core.learning_settings import LearningSettings
    from edge.pipeline.confirm import ConfirmIntake, ViewLog

    intake = ConfirmIntake(store=lambda: None, settings=LearningSettings(), views=ViewLog(empty_sku="EMPTY"),
                           token=TOKEN)
    try:
        for body in (b'{"barcode": "123", "ts": 1}', b'{"barcode": "123", "ts": 1, "token": "guess"}'):
            reply = intake.events.handle("scan", body)
            assert reply["ok"] is False and "unauthorised" in reply["error"]
    finally:
        intake.close()


def test_the_runtime_checks_baskets_against_its_catalog(broker: Broker, tmp_path: Path, tiny_onnx: Path,
                                                        pos: paho.Client) -> None:
    """Finding 7 through the real wiring: a runtime over a catalog store drops skus its catalog lacks."""
    import io

    from edge.catalog.store import Store
    from edge.core.config import load_settings
    from edge.pipeline.factory import assemble_runtime
    from edge.recommend.service import recommender_for
    from tests.encoders_for_tests import TinyImageEncoder, product_image

    enc = TinyImageEncoder(tiny_onnx)
    store = Store(data_dir=tmp_path / "data", image_encoder=enc, dtype="f32")
    for i, sku in enumerate(("MILK", "BREAD")):
        store.enroll(sku, name=sku, images=[product_image(i)])
    settings = load_settings(None, device={"store": "s1", "id": "d1"}, catalog={"data_dir": str(tmp_path / "data")},
                             mqtt={"host": broker.host, "port": broker.port, "command_token": TOKEN})
    rec = recommender_for(settings, store=store)
    rt = assemble_runtime(settings=settings, encoder=enc, matcher=store, out=io.StringIO(), recommender=rec)
    rt.start()
    try:
        assert rt.link is not None and rt.link.wait_subscribed(10)
        for doc in ({"id": 1, "skus": ["MILK", "CAVIAR"], "token": TOKEN},
                    {"id": 2, "skus": ["CAVIAR"], "token": TOKEN}, {"id": 3, "skus": ["MILK", "BREAD"]}):
            pos.publish("storelens/s1/d1/events/basket", json.dumps(doc), qos=1).wait_for_publish(5)
        assert until(lambda: sum(rec.store.counters().values()) == 3)
        counts = rec.store.counters()
        assert (counts["accepted"], counts["unknown_sku"], counts["unauthorised"]) == (1, 1, 1)
        assert rec.store.snapshot().skus == ("MILK",)
    finally:
        rt.shutdown()
        store.close()
