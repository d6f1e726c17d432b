"""Recommendations: basket ingestion (real SQLite, real Mosquitto), association models, similar, serving."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from benchmarks._subscriber import BasketSubscriber, recommend_replier
from edge.cli.main import main
from edge.core.config import RecommendSettings
from edge.core.errors import CommandError, ConfigError, InputError
from edge.pipeline.handlers import recommend_handler
from edge.recommend.associations import AssociationModel, _pmi
from edge.recommend.baskets import BasketRejected, BasketStore, Cooccurrence, parse_basket
from edge.recommend.service import Recommender
from edge.recommend.similar import Filters, ProductVectors, similar

DAY = 86400.0
NOW = 1_800_000_000.0


class Clock:
    """A settable wall clock (decay and staleness are functions of time)."""

    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def store_at(tmp_path: Path, clock: Clock, *, half_life_days: float | None = None, window_days: float = 30.0,
             name: str = "baskets.db") -> BasketStore:
    return BasketStore(path=tmp_path / name, half_life_s=None if half_life_days is None else half_life_days * DAY,
                       dedup_window_s=window_days * DAY, max_items=5, clock=clock)


def msg(bid: object, skus: object, ts: object = None) -> bytes:
    doc: dict[str, object] = {"id": bid, "skus": skus}
    if ts is not None:
        doc["ts"] = ts
    return json.dumps(doc).encode()


# -- parsing ---------------------------------------------------------------------------------------

def test_parse_basket_cleans_skus_and_reads_timestamps() -> None:
    b = parse_basket(msg(7, [" milk", "bread", "milk ", "  "], "2027-01-15T08:00:00Z"), now=NOW, max_items=5)
    assert (b.id, b.skus, b.ts) == ("7", ("milk", "bread"), datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp())
    assert parse_basket(msg("a", ["x"], "2027-01-15T09:00:00+01:00"), now=NOW, max_items=5).ts == b.ts
    assert parse_basket(msg("a", ["x"]), now=NOW, max_items=5).ts == NOW
    assert parse_basket(msg("a", ["x"], 1234.5), now=NOW, max_items=5).ts == 1234.5


@pytest.mark.parametrize(("payload", "reason"), [
    (b"not json", "malformed"),
    (b"[1, 2]", "malformed"),
    (msg("", ["x"]), "malformed"),
    (msg(True, ["x"]), "malformed"),
    (msg("a", "x"), "malformed"),
    (msg("a", ["x", 3]), "malformed"),
    (msg("a", ["x"], "yesterday"), "malformed"),
    (msg("a", ["x"], "2027-01-15T08:00:00"), "malformed"),  # no zone: ambiguous
    (json.dumps({"id": "a", "skus": ["x"], "extra": 1}).encode(), "malformed"),
    (msg("a", []), "empty"),
    (msg("a", [" ", ""]), "empty"),
    (msg("a", ["a", "b", "c", "d", "e", "f"]), "too_many_items"),
    (msg("a", ["x" * 100] * 3000), "malformed"),  # over MAX_PAYLOAD_BYTES
])
def test_parse_basket_rejects_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(BasketRejected) as e:
        parse_basket(payload, now=NOW, max_items=5)
    assert e.value.reason == reason


# -- the store -------------------------------------------------------------------------------------

BASKETS = [["milk", "bread"], ["milk", "pasta", "sauce"], ["milk"], ["pasta", "sauce", "cheese"], ["bread", "jam"]]


def test_store_counts_match_in_memory_counts_and_survive_reopen(tmp_path: Path) -> None:
    clock = Clock()
    with store_at(tmp_path, clock) as store:
        for i, b in enumerate(BASKETS):
            assert store.handle_message(msg(f"b{i}", b)).accepted
        snap = store.snapshot()
    expected = Cooccurrence.from_baskets(BASKETS)
    with store_at(tmp_path, clock) as store:
        again = store.snapshot()
        assert store.version == 5
    for s in (snap, again):
        assert s.skus == ("bread", "cheese", "jam", "milk", "pasta", "sauce")
        assert s.total == 5.0
        np.testing.assert_array_equal(s.dense(), expected.dense())
    g = expected.dense()
    assert g[3, 3] == 3.0 and g[4, 5] == 2.0 and g[5, 4] == 2.0 and g[0, 3] == 1.0 and g[1, 3] == 0.0


def test_duplicates_are_counted_once_and_rejections_counted_persistently(tmp_path: Path) -> None:
    clock = Clock()
    with store_at(tmp_path, clock) as store:
        assert store.handle_message(msg("b1", ["milk", "bread"])).accepted
        dup = store.handle_message(msg("b1", ["milk", "bread"]))
        assert (dup.accepted, dup.reason, dup.basket_id) == (False, "duplicate", "b1")
        assert store.handle_message(b"{").reason == "malformed"
        assert store.handle_message(msg("b2", [])).reason == "empty"
        assert store.handle_message(msg("b3", ["x"], NOW - 31 * DAY)).reason == "stale"
        assert store.handle_message(msg("b4", ["x"], NOW + 3600)).reason == "future"
        assert store.handle_message(msg("b5", list("abcdef"))).reason == "too_many_items"
    with store_at(tmp_path, clock) as store:  # the seen ids and the counters are on disk
        assert store.handle_message(msg("b1", ["milk", "bread"])).reason == "duplicate"
        assert store.counters() == {"accepted": 1, "malformed": 1, "empty": 1, "too_many_items": 1, "stale": 1,
                                    "future": 1, "duplicate": 2, "storage": 0, "unauthorised": 0, "unknown_sku": 0,
                                    "rate": 0}
        assert store.snapshot().item_weight.tolist() == [1.0, 1.0]


def test_a_failing_database_is_counted_not_fatal(tmp_path: Path) -> None:
    import sqlite3

    clock = Clock()
    store = BasketStore(path=tmp_path / "baskets.db", half_life_s=None, dedup_window_s=30 * DAY, max_items=5,
                        clock=clock, busy_timeout_s=0.0)
    blocker = sqlite3.connect(tmp_path / "baskets.db", timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        r = store.handle_message(msg("b1", ["milk"]))
        assert (r.accepted, r.reason) == (False, "storage")
    finally:
        blocker.rollback(); blocker.close()
    assert store.handle_message(msg("b1", ["milk"])).accepted  # the same basket goes in once the file is free
    assert store.counters()["storage"] == 1 and store.counters()["accepted"] == 1
    store.close()


def test_decay_halves_evidence_every_half_life_and_handles_out_of_order(tmp_path: Path) -> None:
    clock = Clock()
    with store_at(tmp_path, clock, half_life_days=10) as store:
        store.handle_message(msg("old", ["milk", "bread"], NOW - 20 * DAY))
        store.handle_message(msg("new", ["milk", "jam"]))
        store.handle_message(msg("mid", ["milk", "bread"], NOW - 10 * DAY))  # arrives late
        s = store.snapshot()
        w = dict(zip(s.skus, s.item_weight.tolist(), strict=True))
        assert w == pytest.approx({"bread": 0.25 + 0.5, "jam": 1.0, "milk": 1.75}, rel=1e-12)
        assert s.total == pytest.approx(1.75, rel=1e-12)
        clock.t += 10 * DAY
        w2 = dict(zip(store.snapshot().skus, store.snapshot().item_weight.tolist(), strict=True))
        assert w2 == pytest.approx({"bread": 0.375, "jam": 0.5, "milk": 0.875}, rel=1e-12)


def test_decay_rebases_stored_weights_without_changing_them(tmp_path: Path) -> None:
    clock = Clock()
    with store_at(tmp_path, clock, half_life_days=0.01, window_days=3650) as store:
        store.handle_message(msg("a", ["x", "y"]))
        clock.t += 1.0 * DAY  # 100 half-lives: the stored exponent would pass 2**64, so rows are rescaled
        store.handle_message(msg("b", ["x"]))
        s = store.snapshot()
        w = dict(zip(s.skus, s.item_weight.tolist(), strict=True))
        assert w["x"] == pytest.approx(1.0 + 2.0 ** -100, rel=1e-12)
        assert w.get("y", 0.0) == pytest.approx(2.0 ** -100, abs=1e-12)


def test_changing_half_life_on_an_existing_file_is_a_config_error(tmp_path: Path) -> None:
    store_at(tmp_path, Clock(), half_life_days=10).close()
    with pytest.raises(ConfigError, match="half-life"):
        store_at(tmp_path, Clock(), half_life_days=20)


# -- association models ----------------------------------------------------------------------------

def staple_baskets(n_staple: int = 60) -> list[list[str]]:
    """Milk is in nearly every basket; pasta and sauce are rarely bought, mostly together."""
    out = [["milk", f"other{i % 6}"] for i in range(n_staple)]
    out += [["milk", "pasta", "sauce"], ["pasta", "sauce"], ["milk", "pasta"], ["milk", "sauce"], ["pasta", "sauce"]]
    return out


def test_models_rank_the_complement_and_never_the_context() -> None:
    co = Cooccurrence.from_baskets(staple_baskets())
    raw = AssociationModel.fit(co, method="cooccurrence")
    assert raw.together(["pasta"], 2) == [("sauce", 3.0), ("milk", 2.0)]
    for method in ("ease", "pmi"):
        model = AssociationModel.fit(co, method=method, ease_lambda=5.0)  # type: ignore[arg-type]
        ranked = [s for s, _ in model.together(["pasta"], 10)]
        assert ranked[0] == "sauce" and "pasta" not in ranked, method
    assert raw.popular(3, exclude=["other0"]) == [("milk", 63.0), ("other1", 10.0), ("other2", 10.0)]


def test_ease_matches_the_closed_form() -> None:
    co = Cooccurrence.from_baskets(staple_baskets())
    model = AssociationModel.fit(co, method="ease", ease_lambda=5.0, neighbours=100)
    g = co.dense()
    p = np.linalg.inv(g + 5.0 * np.eye(len(g)))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0)
    i = model.index["pasta"]
    got = dict(model.together(["pasta"], 100))
    want = {co.skus[j]: b[i, j] for j in range(len(g)) if b[i, j] > 0}
    assert got.keys() == want.keys()
    assert [got[s] for s in want] == pytest.approx(list(want.values()), rel=1e-5)


def test_pmi_shrinks_rare_pairs() -> None:
    co = Cooccurrence.from_baskets([["a", "b"]] + [["c", "d"]] * 10 + [["c"], ["d"]] + [["e"]] * 20)
    scores = {(co.skus[i], co.skus[j]): v for i, j, v in zip(co.pair_i, co.pair_j, _pmi(co, 5.0), strict=True)}
    n = 33.0
    assert scores[("a", "b")] == pytest.approx(np.log(n) * 1 / 6)
    assert scores[("c", "d")] == pytest.approx(np.log(10 * n / 121) * 10 / 15)
    model = AssociationModel.fit(co, method="pmi", shrinkage=5.0)
    assert model.together(["c"], 1)[0][0] == "d"


def test_auto_uses_pmi_above_the_ease_size_limit_and_ease_refuses() -> None:
    co = Cooccurrence.from_baskets(staple_baskets())
    assert AssociationModel.fit(co, method="auto", ease_max_items=len(co.skus)).method == "ease"
    assert AssociationModel.fit(co, method="auto", ease_max_items=len(co.skus) - 1).method == "pmi"
    with pytest.raises(InputError, match="pmi"):
        AssociationModel.fit(co, method="ease", ease_max_items=3)


# -- similar ---------------------------------------------------------------------------------------

def catalog_vectors() -> ProductVectors:
    rng = np.random.default_rng(7)
    base = rng.normal(size=(6, 8)).astype(np.float32)
    img = base.copy()
    img[1] = base[0] + 0.001  # near-duplicate of p0 (same product photographed twice)
    img[2] = base[0] + 0.6 * rng.normal(size=8)  # close alternative
    img[3] = base[0] + 0.9 * rng.normal(size=8)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = img.copy()
    return ProductVectors.build(skus=[f"p{i}" for i in range(6)], image=img, text=txt,
                                names=[f"Product {i}" for i in range(6)],
                                categories=["dairy", "dairy", "dairy", "bakery", "dairy", None],
                                prices=[2.0, 2.0, 9.0, 2.5, None, 1.5], in_stock=[True, True, True, True, False, True])


def test_similar_excludes_self_and_near_duplicates_and_applies_filters() -> None:
    pv = catalog_vectors()
    cos = pv.vectors @ pv.vectors[0]
    ranked = [pv.skus[j] for j in np.argsort(-cos) if j not in (0, 1)]
    got = [s for s, _ in similar(pv, ["p0"], 5, near_duplicate=0.98)]
    assert got == ranked and "p1" not in got and cos[1] >= 0.98
    assert "p4" not in [s for s, _ in similar(pv, ["p0"], 5, near_duplicate=0.98, filters=Filters(in_stock_only=True))]
    same_cat = [s for s, _ in similar(pv, ["p0"], 5, near_duplicate=0.98, filters=Filters(same_category=True))]
    assert sorted(same_cat) == ["p2", "p4"]
    band = [s for s, _ in similar(pv, ["p0"], 5, near_duplicate=0.98, filters=Filters(price_band=1.5))]
    assert sorted(band) == ["p3", "p5"]  # 2.5 and 1.5 are within x1.5 of 2.0; 9.0 and unknown are not
    with pytest.raises(InputError):
        Filters(price_band=0.5)


def test_fused_cosine_is_the_weighted_mean_of_modalities() -> None:
    rng = np.random.default_rng(3)
    img = rng.normal(size=(3, 4)); img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = rng.normal(size=(3, 5)); txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    pv = ProductVectors.build(skus=["a", "b", "c"], image=img, text=txt, image_weight=0.7)
    assert float(pv.vectors[0] @ pv.vectors[1]) == pytest.approx(0.7 * img[0] @ img[1] + 0.3 * txt[0] @ txt[1],
                                                                   rel=1e-5)


def test_product_vectors_from_a_real_catalog(tmp_path: Path) -> None:
    from edge.catalog.db import Catalog, Product

    rng = np.random.default_rng(5)
    cat = Catalog(tmp_path / "catalog.db")
    rows: list[tuple[str, dict[str, object], float | None]] = [
        ("a", {"category": "dairy", "in_stock": True}, 2.0), ("b", {"category": "dairy", "stock": 0}, 3.0),
        ("c", {}, None), ("d", {"category": "bakery"}, 1.0)]
    img = {s: v / np.linalg.norm(v) for s, v in zip("abc", rng.normal(size=(3, 4)), strict=True)}
    with cat.transaction() as db:
        for sku, attrs, price in rows:
            key = cat.upsert_product(db, Product(key=0, sku=sku, name=f"N{sku}", price=price, attributes=attrs))
            if sku in img:  # d has no vectors: left out of "similar"
                cat.add_vector(db, key, modality="image", fingerprint="fp1", vector=img[sku])
                cat.add_vector(db, key, modality="image", fingerprint="old", vector=-img[sku])
    pv = ProductVectors.from_catalog(cat, image_fingerprint="fp1", text_fingerprint=None)
    cat.close()
    assert pv.skus == ("a", "b", "c") and pv.names == ("Na", "Nb", "Nc")
    assert pv.categories == ("dairy", "dairy", None)
    assert pv.in_stock.tolist() == [True, False, True]
    assert pv.prices[:2].tolist() == [2.0, 3.0] and np.isnan(pv.prices[2])
    np.testing.assert_allclose(pv.vectors, np.stack([img[s] for s in "abc"]), rtol=1e-6)


# -- serving ---------------------------------------------------------------------------------------

def make_recommender(tmp_path: Path, *, products: ProductVectors | None = None, refresh_s: float = 0.0,
                     background_refresh: bool = False, **kw: object) -> tuple[Recommender, Clock]:
    clock = Clock()
    settings = RecommendSettings(refresh_s=refresh_s, ease_lambda=5.0, k=3, **kw)  # type: ignore[arg-type]
    store = store_at(tmp_path, clock, half_life_days=settings.half_life_days)
    return Recommender(store=store, settings=settings, products=products, monotonic=clock,
                       background_refresh=background_refresh), clock


def test_cold_start_falls_back_to_similar_then_popular_then_together(tmp_path: Path) -> None:
    rec, _ = make_recommender(tmp_path, products=catalog_vectors())
    first = rec.recommend("p0")  # no baskets at all: similar products
    assert [r.source for r in first] == ["similar"] * 3
    assert [r.sku for r in first] == [s for s, _ in similar(rec.products, ["p0"], 3, near_duplicate=0.98)]  # type: ignore[arg-type]
    for i in range(4):
        rec.handle_basket_message(msg(f"x{i}", ["p5", "p3"]))
    rec.handle_basket_message(msg("y", ["p2"]))
    popular = rec.recommend("p0")  # baskets exist, none with p0: popular products
    assert [(r.sku, r.source) for r in popular] == [("p3", "popular"), ("p5", "popular"), ("p2", "popular")]
    rec.handle_basket_message(msg("z", ["p0", "p2"]))
    now = rec.recommend("p0")  # evidence arrived: p2 is bought with p0
    assert (now[0].sku, now[0].source) == ("p2", "together")
    assert now[0].name == "Product 2"
    assert [r.source for r in now[1:]] == ["popular", "popular"]


def test_recommendations_change_as_evidence_arrives_and_respect_refresh(tmp_path: Path) -> None:
    rec, clock = make_recommender(tmp_path, refresh_s=60.0)
    for i, b in enumerate(staple_baskets()):
        rec.handle_basket_message(msg(f"s{i}", b))
    assert rec.recommend("pasta", k=1)[0].sku == "sauce"
    for i in range(30):
        rec.handle_basket_message(msg(f"c{i}", ["pasta", "cheese"]))
    assert rec.recommend("pasta", k=1)[0].sku == "sauce"  # within refresh_s: the cached model still serves
    assert rec.cache_hits == 1
    clock.t += 60.0
    top = rec.recommend("pasta", k=1)[0]
    assert (top.sku, top.source) == ("cheese", "together")
    assert rec.stats()["model_version"] == len(staple_baskets()) + 30


def test_background_refresh_keeps_serving_the_old_model_until_the_new_one_is_ready(tmp_path: Path) -> None:
    rec, clock = make_recommender(tmp_path, refresh_s=10.0, background_refresh=True)
    for i, b in enumerate(staple_baskets()):
        rec.handle_basket_message(msg(f"s{i}", b))
    assert rec.recommend("pasta", k=1)[0].sku == "sauce"  # first model: built on the request
    for i in range(30):
        rec.handle_basket_message(msg(f"c{i}", ["pasta", "cheese"]))
    clock.t += 10.0
    assert rec.recommend("pasta", k=1)[0].sku == "sauce"  # rebuild started; this answer came from the old one
    rec.wait_refreshed()
    assert rec.recommend("pasta", k=1)[0].sku == "cheese"
    assert rec.stats()["model_version"] == len(staple_baskets()) + 30


def test_decayed_evidence_loses_to_fresh_evidence(tmp_path: Path) -> None:
    rec, _ = make_recommender(tmp_path, half_life_days=5.0)
    for i in range(6):  # an old habit: pasta with cheese, 20 days ago (weight 1/16 each)
        rec.handle_basket_message(msg(f"old{i}", ["pasta", "cheese"], NOW - 20 * DAY))
    for i in range(2):  # recently: pasta with sauce
        rec.handle_basket_message(msg(f"new{i}", ["pasta", "sauce"], NOW - DAY))
    for i in range(20):
        rec.handle_basket_message(msg(f"f{i}", [f"filler{i % 4}"], NOW - DAY))
    assert rec.recommend("pasta", k=1)[0].sku == "sauce"
    undecayed, _ = make_recommender(tmp_path / "nodecay", half_life_days=None)
    for i in range(6):
        undecayed.handle_basket_message(msg(f"old{i}", ["pasta", "cheese"], NOW - 20 * DAY))
    for i in range(2):
        undecayed.handle_basket_message(msg(f"new{i}", ["pasta", "sauce"], NOW - DAY))
    for i in range(20):
        undecayed.handle_basket_message(msg(f"f{i}", [f"filler{i % 4}"], NOW - DAY))
    assert undecayed.recommend("pasta", k=1)[0].sku == "cheese"


def test_blend_alternates_and_in_stock_filter_applies_to_all_kinds(tmp_path: Path) -> None:
    rec, _ = make_recommender(tmp_path, products=catalog_vectors())
    for i in range(3):
        rec.handle_basket_message(msg(f"b{i}", ["p0", "p4", "p5"]))
    blend = rec.recommend("p0", kind="blend", k=4)
    assert [r.source for r in blend[:2]] == ["together", "similar"]
    assert len({r.sku for r in blend}) == 4 and "p0" not in {r.sku for r in blend}
    stocked = rec.recommend("p0", kind="together", k=5, filters=Filters(in_stock_only=True))
    assert "p4" not in [r.sku for r in stocked]
    assert "p4" in [r.sku for r in rec.recommend("p0", kind="together", k=5)]


def test_recommend_command_replies_and_refuses_bad_requests(tmp_path: Path) -> None:
    rec, _ = make_recommender(tmp_path)
    for i, b in enumerate(staple_baskets()):
        rec.handle_basket_message(msg(f"s{i}", b))
    reply_to = recommend_replier(rec)
    ok = reply_to(json.dumps({"id": "q1", "sku": "pasta", "k": 2}).encode())
    assert ok["ok"] is True and ok["id"] == "q1"
    assert ok["result"]["recommendations"][0]["sku"] == "sauce"
    assert len(ok["result"]["recommendations"]) == 2
    for bad in (b"{", b"[]", b'{"k": 2}', b'{"sku": "a", "k": "2"}', b'{"sku": "a", "kind": "other"}',
                b'{"sku": "a", "color": 1}', b'{"sku": "a", "kind": "similar"}'):
        reply = reply_to(bad)
        assert reply["ok"] is False and reply["error"], bad
    with pytest.raises(CommandError, match="unknown keys"):
        recommend_handler(rec)({"sku": "a", "color": 1})


def test_match_messages_get_recommendations_only_when_switched_on(tmp_path: Path) -> None:
    off, _ = make_recommender(tmp_path / "off")
    assert off.for_match("pasta") is None
    on, _ = make_recommender(tmp_path / "on", in_match_messages=True)
    on.handle_basket_message(msg("a", ["pasta", "sauce"]))
    assert on.for_match("pasta") == [{"sku": "sauce", "name": "sauce", "score": pytest.approx(
        on.recommend("pasta")[0].score, abs=1e-4), "source": "together"}]


# -- over a real broker ----------------------------------------------------------------------------

def publisher(port: int) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="pos", protocol=MQTTProtocolVersion.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def test_baskets_over_mqtt_duplicates_ignored_malformed_counted(tmp_path: Path, broker: object) -> None:
    rec, _ = make_recommender(tmp_path)
    port = broker.port  # type: ignore[attr-defined]
    sub = BasketSubscriber(host="127.0.0.1", port=port, prefix="storelens/s1/k1", on_basket=rec.handle_basket_message,
                           on_command=recommend_replier(rec), client_id="sl-test")
    sub.start()
    pub = publisher(port)
    try:
        payloads = [msg(f"s{i}", b) for i, b in enumerate(staple_baskets())]
        payloads += [payloads[0], payloads[1], b"garbage", msg("e", [])]
        for p in payloads:
            pub.publish("storelens/s1/k1/events/basket", p, qos=1).wait_for_publish(5)
        assert sub.wait_for(len(payloads), 10.0)
        n = len(staple_baskets())
        assert sub.counts == {"accepted": n, "malformed": 1, "empty": 1, "too_many_items": 0, "stale": 0,
                              "future": 0, "duplicate": 2, "storage": 0, "unauthorised": 0, "unknown_sku": 0,
                              "rate": 0, "commands": 0}
        assert rec.store.counters()["accepted"] == n and rec.store.version == n

        replies: list[dict[str, object]] = []
        got = threading.Event()

        def on_reply(_c: object, _u: object, m: paho.MQTTMessage) -> None:
            replies.append(json.loads(m.payload))
            got.set()

        pub.on_message = on_reply
        pub.subscribe("storelens/s1/k1/cmd/recommend/reply", qos=1)
        pub.publish("storelens/s1/k1/cmd/recommend", json.dumps({"id": "r1", "sku": "pasta", "k": 1}), qos=1)
        assert got.wait(10.0)
        assert replies[0]["id"] == "r1" and replies[0]["ok"] is True
        assert replies[0]["result"]["recommendations"][0]["sku"] == "sauce"  # type: ignore[index]
    finally:
        pub.loop_stop(); pub.disconnect()
        sub.stop()


def test_baskets_sent_while_the_subscriber_is_away_are_delivered_later(tmp_path: Path, broker: object) -> None:
    rec, _ = make_recommender(tmp_path)
    port = broker.port  # type: ignore[attr-defined]

    def subscriber() -> BasketSubscriber:
        return BasketSubscriber(host="127.0.0.1", port=port, prefix="p", on_basket=rec.handle_basket_message,
                                client_id="sl-persist")

    first = subscriber()
    first.start()
    first.stop()
    pub = publisher(port)
    try:
        for i in range(5):
            pub.publish("p/events/basket", msg(f"away{i}", ["a", "b"]), qos=1).wait_for_publish(5)
        second = subscriber()
        second.start()
        assert second.wait_for(5, 10.0)
        second.stop()
        assert rec.store.counters()["accepted"] == 5
    finally:
        pub.loop_stop(); pub.disconnect()


def test_attached_to_the_runtime_link_and_command_router(tmp_path: Path, broker: object) -> None:
    from edge.comms.commands import CommandRouter
    from edge.comms.mqtt import MqttLink
    from edge.comms.outbox import Outbox
    from edge.core.config import MqttSettings
    from edge.pipeline.factory import attach_recommender

    rec, _ = make_recommender(tmp_path)
    port = broker.port  # type: ignore[attr-defined]
    link = MqttLink(settings=MqttSettings(host="127.0.0.1", port=port), prefix="sl/s/d",
                    outbox=Outbox(path=tmp_path / "outbox.db"), client_id="dev")
    router = CommandRouter(prefix="sl/s/d", reply=lambda t, b: link.publish_now(t, b, qos=1))
    attach_recommender(rec, link=link, router=router)
    link.add_topic_handler(router.topic_filter, router.on_message)
    router.start()
    link.start()
    pub = publisher(port)
    replies: list[dict[str, object]] = []
    got = threading.Event()

    def on_reply(_c: object, _u: object, m: paho.MQTTMessage) -> None:
        replies.append(json.loads(m.payload))
        got.set()

    pub.on_message = on_reply
    pub.subscribe("sl/s/d/cmd/recommend/reply", qos=1)
    try:
        deadline = time.monotonic() + 10
        while not link.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        for i, b in enumerate(staple_baskets()):  # s0 re-sent until the link's subscription is in place
            pub.publish("sl/s/d/events/basket", msg(f"s{i}", b), qos=1).wait_for_publish(5)
            while i == 0 and rec.store.version == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
                pub.publish("sl/s/d/events/basket", msg("s0", b), qos=1).wait_for_publish(5)
        dups = rec.store.counters()["duplicate"]
        pub.publish("sl/s/d/events/basket", msg("s1", ["x"]), qos=1).wait_for_publish(5)
        while rec.store.counters()["duplicate"] == dups and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rec.store.counters()["accepted"] == len(staple_baskets())
        assert rec.store.counters()["duplicate"] == dups + 1
        pub.publish("sl/s/d/cmd/recommend", json.dumps({"id": "q", "sku": "pasta", "k": 2}), qos=1)
        assert got.wait(10.0)
        assert replies[0]["ok"] is True and replies[0]["id"] == "q"
        recs = replies[0]["result"]["recommendations"]  # type: ignore[index]
        assert len(recs) == 2 and recs[0]["sku"] == "sauce"
    finally:
        pub.loop_stop(); pub.disconnect()
        router.stop()
        link.stop(flush_timeout_s=1.0)


def test_subscriber_says_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    from benchmarks._broker import free_port

    rec, _ = make_recommender(tmp_path)
    sub = BasketSubscriber(host="127.0.0.1", port=free_port(), prefix="p", on_basket=rec.handle_basket_message)
    with pytest.raises(ConfigError, match="cannot reach the MQTT broker"):
        sub.start(timeout_s=1.0)


# -- CLI -------------------------------------------------------------------------------------------

def test_cli_recommend_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time as _time

    with BasketStore(path=tmp_path / "baskets.db", half_life_s=30 * DAY, dedup_window_s=30 * DAY, max_items=50,
                     clock=_time.time) as store:
        for i, b in enumerate(staple_baskets()):
            assert store.handle_message(msg(f"s{i}", b)).accepted
    assert main(["recommend", "--sku", "pasta", "-k", "2", "--json", "--data-dir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "ease" and out["baskets"]["accepted"] == len(staple_baskets())
    assert len(out["recommendations"]) == 2
    assert main(["recommend", "--sku", "pasta", "--data-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("for pasta (ease model v65, 65 baskets counted)")
    assert main(["recommend", "--sku", "pasta", "--kind", "similar", "--data-dir", str(tmp_path)]) == 3
    assert "need product vectors" in capsys.readouterr().err


def test_cli_similar_reads_the_catalog_and_index_sidecar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.catalog.db import Catalog, Product
    from edge.catalog.index import IndexMeta, sidecar_path

    rng = np.random.default_rng(11)
    vecs = rng.normal(size=(5, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    cat = Catalog(tmp_path / "catalog.db")
    with cat.transaction() as db:
        for i, v in enumerate(vecs):
            key = cat.upsert_product(db, Product(key=0, sku=f"p{i}", name=f"Product {i}",
                                                 attributes={"in_stock": i != 2}))
            cat.add_vector(db, key, modality="image", fingerprint="enc-A", vector=v)
    cat.close()
    meta = IndexMeta(modality="image", ndim=8, dtype="f32", fingerprint="enc-A", catalog_version=1, vectors=5,
                     products=5, file="image.1.usearch")
    sidecar_path(tmp_path, "image").write_text(json.dumps(meta.to_dict()))
    cos = vecs @ vecs[0]
    want = [f"p{j}" for j in np.argsort(-cos) if j != 0]
    argv = ["recommend", "--sku", "p0", "--kind", "similar", "-k", "4", "--json", "--data-dir", str(tmp_path)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["sku"] for r in out["recommendations"]] == want
    assert {r["source"] for r in out["recommendations"]} == {"similar"}
    assert main(["recommend", "--sku", "p0", "--kind", "similar", "--in-stock-only", "--json",
                 "--data-dir", str(tmp_path)]) == 0
    assert "p2" not in [r["sku"] for r in json.loads(capsys.readouterr().out)["recommendations"]]


def test_runtime_adds_recommendations_to_match_messages_and_ingests_baskets(
        tmp_path: Path, broker: object, tiny_onnx: Path) -> None:
    import io

    from edge.core.config import load_settings
    from edge.pipeline.factory import assemble_runtime
    from edge.recommend.service import recommender_for
    from tests.runtime_helpers import Collector, NumpyMatcher, TinyOnnxEncoder, write_catalog, write_frames

    port = broker.port  # type: ignore[attr-defined]
    enc = TinyOnnxEncoder(tiny_onnx)
    matcher = NumpyMatcher(write_catalog(tmp_path / "catalog.json", enc, ["RED", "GREEN", "BLUE"]), enc)
    frames = write_frames(tmp_path / "frames", ["RED"], per_sku=8)
    settings = load_settings(None, device={"store": "s1", "id": "d1"}, catalog={"data_dir": str(tmp_path / "data")},
                             cameras=[{"name": "cam", "source": str(frames), "fps": 30, "loop": True}],
                             gate={"steady_frames": 1}, decision={"window": 3, "min_frames": 2, "heartbeat_s": 3600},
                             mqtt={"host": "127.0.0.1", "port": port},
                             recommend={"in_match_messages": True, "refresh_s": 0})
    rec = recommender_for(settings)
    rt = assemble_runtime(settings=settings, encoder=enc, matcher=matcher, out=io.StringIO(), recommender=rec)
    collector = Collector(port, "storelens/s1/d1/#", client_id="rec-collector")
    pub = publisher(port)
    try:
        rt.start()
        deadline = time.monotonic() + 15
        i = 0
        while rec.store.version < 3 and time.monotonic() < deadline:  # until the link's subscription is in place
            pub.publish("storelens/s1/d1/events/basket", msg(f"b{i % 3}", ["RED", "GREEN"]), qos=1).wait_for_publish(5)
            i += 1
            time.sleep(0.05)
        assert rec.store.version == 3  # b0, b1, b2 counted once each however often they were re-sent
        stop = threading.Event()
        runner = threading.Thread(target=rt.run, args=(stop,), kwargs={"max_seconds": 15})
        runner.start()
        while not collector.of("/cam/match") and time.monotonic() < deadline + 15:
            time.sleep(0.02)
        stop.set()
        runner.join()
    finally:
        rt.shutdown()
        pub.loop_stop(); pub.disconnect()
        collector.stop()
    m = json.loads(collector.of("/cam/match")[0])
    assert m["candidates"][0]["sku"] == "RED"
    assert m["recommendations"][0]["sku"] == "GREEN" and m["recommendations"][0]["source"] == "together"


def test_recommender_reads_similar_products_from_a_real_store(tmp_path: Path, tiny_onnx: Path) -> None:
    from edge.catalog.store import Store
    from edge.core.config import load_settings
    from edge.recommend.service import recommender_for
    from tests.runtime_helpers import TinyOnnxEncoder, product_image

    enc = TinyOnnxEncoder(tiny_onnx)
    store = Store(data_dir=tmp_path / "data", image_encoder=enc, dtype="f32")
    for sku in ("RED", "GREEN", "BLUE", "YELLOW"):
        store.enroll(sku, name=sku.title(), images=[product_image(sku)], attributes={"in_stock": sku != "BLUE"})
    settings = load_settings(None, device={"store": "s", "id": "d"}, catalog={"data_dir": str(tmp_path / "data")})
    rec = recommender_for(settings, store=store)
    assert rec.products is not None and sorted(rec.products.skus) == ["BLUE", "GREEN", "RED", "YELLOW"]
    got = rec.recommend("RED", kind="similar", k=3)
    vecs = store.catalog.product_vectors("image", enc.fingerprint)
    want = sorted((s for s in vecs if s != "RED"), key=lambda s: -float(vecs[s] @ vecs["RED"]))
    assert [r.sku for r in got] == want and got[0].name == want[0].title()
    assert "BLUE" not in [r.sku for r in rec.recommend("RED", kind="similar", k=3, filters=Filters(in_stock_only=True))]
    store.remove("GREEN")
    rec.reload_products(store)
    assert "GREEN" not in [r.sku for r in rec.recommend("RED", kind="similar", k=3)]
