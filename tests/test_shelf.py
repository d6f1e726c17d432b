"""Shelf availability: alerts that hold and clear once, the history, the report (exact), planogram setup."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli.main import main as cli
from edge.core.errors import InputError
from edge.core.types import Candidate
from edge.pipeline.vote import PlanogramPrior, RegionVoter, VoteParams, planned_label
from edge.shelf.alerts import AlertTracker, FacingTracker
from edge.shelf.history import ShelfHistory, StateRow, history_path
from edge.shelf.report import build_report, parse_duration, to_csv, to_html
from edge.shelf.setup import Grid, grid_rois, read_planogram


def tracker(hold: float = 30.0) -> FacingTracker:
    return FacingTracker(camera="cam", facing="a1", expected_sku="MILK", alert_after_s=hold)


def test_a_state_alerts_only_after_it_held_and_clears_once() -> None:
    f = tracker()
    f.observe("ok", 0.0)
    assert f.tick(30.0) == [] and f.confirmed == "ok"
    f.observe("empty", 100.0)
    assert f.tick(129.9) == []
    [opened] = f.tick(130.0)
    assert (opened.kind, opened.alert.state, opened.alert.since, opened.alert.opened) == ("open", "empty", 100, 130)
    f.observe("ok", 200.0)  # restocked, then a flicker back to empty and ok again
    f.observe("empty", 205.0)
    f.observe("ok", 210.0)
    assert f.tick(239.0) == []
    [cleared] = f.tick(240.0)
    assert (cleared.kind, cleared.alert.id, cleared.alert.cleared) == ("clear", opened.alert.id, 240.0)
    assert f.tick(1000.0) == [] and f.alert is None


def test_an_occlusion_shorter_than_the_hold_never_alerts() -> None:
    f = tracker()
    f.observe("ok", 0.0)
    f.tick(30.0)
    for t in range(100, 400, 20):  # a shopper in front: misplaced / unknown for 10 s at a time
        f.observe("misplaced", t, observed_sku="JACKET")
        f.observe("unknown", t + 5)
        f.observe("ok", t + 10)
        assert f.tick(t + 19) == []
    assert f.alert is None and f.confirmed == "ok"


def test_unknown_is_not_empty_and_keeps_an_open_alert() -> None:
    f = tracker(10)
    f.observe("unknown", 0.0)
    assert f.tick(100.0) == [] and f.confirmed == "unknown"  # unknown does not alert by default
    f.observe("empty", 100.0)
    [e] = f.tick(110.0)
    f.observe("unknown", 120.0)  # the facing cannot be read: the empty alert stays open
    assert f.tick(200.0) == [] and f.alert is not None and f.alert.id == e.alert.id
    f.observe("misplaced", 200.0, observed_sku="OAT")  # refilled with the wrong product: cleared, a new alert
    clear, new = f.tick(210.0)
    assert (clear.kind, clear.alert.state, new.kind, new.alert.state, new.alert.observed_sku) == \
        ("clear", "empty", "open", "misplaced", "OAT")
    u = FacingTracker(camera="c", facing="f", expected_sku="X", alert_after_s=5, alert_states=("unknown",))
    u.observe("unknown", 0.0)
    assert [e.alert.state for e in u.tick(5.0)] == ["unknown"]


def test_ack_is_once_and_the_alert_still_clears_once() -> None:
    t = AlertTracker(alert_after_s=10)
    f = t.facing("cam", "a1", "MILK")
    f.observe("empty", 0.0, crop_id="c1")
    [opened] = t.tick(10.0)
    assert opened.alert.crop_id == "c1" and t.open_alerts() == [opened.alert]
    ack = t.ack(opened.alert.id, 12.0)
    assert ack is not None and ack.kind == "ack" and ack.alert.acked == 12.0
    assert t.ack(opened.alert.id, 13.0) is None and t.ack("nope", 13.0) is None
    f.observe("ok", 20.0)
    [cleared] = t.tick(30.0)
    assert cleared.kind == "clear" and cleared.alert.acked == 12.0 and t.open_alerts() == []


def test_planned_label_prefers_the_planned_product_within_the_gap() -> None:
    cands = [Candidate("LOOKALIKE", "l", 0.80), Candidate("MILK", "m", 0.77), Candidate("EMPTY", "e", 0.2)]
    assert planned_label(cands, "MILK", 0.5, 0.01, PlanogramPrior(gap=0.05)) == "MILK"
    assert planned_label(cands, "MILK", 0.5, 0.01, PlanogramPrior(gap=0.02)) == "LOOKALIKE"
    assert planned_label(cands, "MILK", 0.78, 0.01, PlanogramPrior(gap=0.05)) == "LOOKALIKE"  # below the threshold
    assert planned_label(cands, "MILK", 0.78, 0.01, PlanogramPrior(gap=0.05, below=0.02)) == "MILK"
    assert planned_label(cands, "MILK", 0.85, 0.01, PlanogramPrior(gap=0.01)) is None  # nothing clears 0.85
    assert planned_label(cands, "MILK", 0.85, 0.01, PlanogramPrior(gap=0.01, other_below=0.1)) == "LOOKALIKE"
    bare = [Candidate("EMPTY", "e", 0.80), Candidate("MILK", "m", 0.77)]  # the prior never hides a sold-out facing
    assert planned_label(bare, "MILK", 0.5, 0.01, PlanogramPrior(gap=0.05), empty_sku="EMPTY") == "EMPTY"
    assert planned_label(bare, "MILK", 0.5, 0.01, PlanogramPrior(gap=0.05)) == "MILK"
    v = RegionVoter(camera="c", roi="a1", params=VoteParams(threshold=0.5, margin=0.01, window=3, min_frames=2),
                    expected_sku="MILK", prior=PlanogramPrior(gap=0.05))
    v.add(cands, ts=0, now=0)
    d = v.add(cands, ts=1, now=1)
    assert d is not None and d.planogram == "ok"


def scripted_history(path: Path, t0: float) -> ShelfHistory:
    """Two facings of MILK and one of OAT over the 10 000 s after t0, with a state before the window."""
    h = ShelfHistory(path)
    rows = [(t0 - 500, "a1", "MILK", "ok"), (t0 + 1000, "a1", "MILK", "empty"), (t0 + 4000, "a1", "MILK", "ok"),
            (t0 + 2000, "a2", "MILK", "misplaced"), (t0 + 2500, "a2", "MILK", "unknown"),
            (t0 + 3000, "a2", "MILK", "ok"), (t0 + 5000, "b1", "OAT", "empty"), (t0 + 9000, "b1", "OAT", "ok")]
    for ts, facing, sku, state in rows:
        h.record_state(StateRow(ts, "cam", facing, sku, state, None))
    from edge.shelf.alerts import Alert

    for aid, facing, sku, state, since, opened, cleared in (
            ("x1", "a1", "MILK", "empty", t0 + 1000, t0 + 1030, t0 + 4030),
            ("x2", "a2", "MILK", "misplaced", t0 + 2000, t0 + 2030, t0 + 3030),
            ("x3", "b1", "OAT", "empty", t0 + 5000, t0 + 5030, t0 + 9030)):
        h.record_alert(Alert(id=aid, camera="cam", facing=facing, state=state, expected_sku=sku, observed_sku=None,
                             since=since, opened=opened, cleared=cleared))
    return h


def test_report_on_a_scripted_history_is_exact(tmp_path: Path) -> None:
    t0 = 1_800_000_000.0
    h = scripted_history(tmp_path / "h.db", t0)
    rep = build_report(h, t0, t0 + 10_000)
    h.close()
    f = {r["key"]: r for r in rep["facings"]}
    assert f["cam/a1"] | {} == {"key": "cam/a1", "expected_sku": "MILK", "on_shelf": 0.7, "empty": 0.3,
                                 "misplaced": 0.0, "unknown": 0.0, "no_data": 0.0, "empty_s": 3000.0, "alerts": 1,
                                 "restock_median_s": 3000.0}
    assert (f["cam/a2"]["no_data"], f["cam/a2"]["misplaced"], f["cam/a2"]["unknown"], f["cam/a2"]["on_shelf"]) == \
        (0.2, 0.05, 0.05, 0.7)
    assert (f["cam/b1"]["no_data"], f["cam/b1"]["empty"], f["cam/b1"]["on_shelf"], f["cam/b1"]["restock_median_s"]) \
        == (0.5, 0.4, 0.1, 4000.0)
    p = {r["key"]: r for r in rep["products"]}
    assert (p["MILK"]["on_shelf"], p["MILK"]["empty"], p["MILK"]["alerts"], p["MILK"]["restock_median_s"]) == \
        (0.7, 0.15, 2, 3000.0)
    rows = list(csv.DictReader(io.StringIO(to_csv(rep))))
    assert [(r["level"], r["key"]) for r in rows] == [("facing", "cam/a1"), ("facing", "cam/a2"),
                                                      ("facing", "cam/b1"), ("product", "MILK"), ("product", "OAT")]
    assert "cam/b1" in to_html(rep) and "<script" not in to_html(rep)


def test_report_cli_reads_the_devices_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "shelf.toml"
    cfg.write_text(f'[device]\nstore = "s"\nid = "d"\n[catalog]\ndata_dir = "{tmp_path / "data"}"\n')
    now = time.time()
    scripted_history(history_path(tmp_path / "data"), now - 10_000).close()
    assert cli(["shelf", "report", "-c", str(cfg), "--since", "10000", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    a1 = next(r for r in rep["facings"] if r["key"] == "cam/a1")
    assert abs(a1["empty"] - 0.3) < 0.001 and a1["alerts"] == 1
    assert cli(["shelf", "report", "-c", str(cfg), "--since", "3h", "--html", str(tmp_path / "r.html")]) == 0
    assert "on shelf" in capsys.readouterr().out and (tmp_path / "r.html").is_file()
    missing = tmp_path / "other.toml"
    missing.write_text(f'[device]\nstore = "s"\nid = "d"\n[catalog]\ndata_dir = "{tmp_path / "none"}"\n')
    assert cli(["shelf", "report", "-c", str(missing)]) != 0
    assert "no shelf history" in capsys.readouterr().err


def test_history_is_bounded(tmp_path: Path) -> None:
    h = ShelfHistory(tmp_path / "h.db", max_rows=100)
    for i in range(450):
        h.record_state(StateRow(float(i), "cam", "a1", "MILK", "ok" if i % 2 else "empty", None))
    rows = list(h.states(-1, 1e9))
    h.close()
    assert len(rows) <= 200 and rows[-1].ts == 449.0


def test_parse_duration() -> None:
    assert [parse_duration(s) for s in ("24h", "30m", "7d", "90", "45s")] == [86400, 1800, 604800, 90, 45]
    with pytest.raises(InputError):
        parse_duration("yesterday")


def test_setup_grid_writes_regions_and_an_overlay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "planogram.csv"
    table.write_text("facing,sku,row,col\na1,MILK,1,1\na2,OAT,1,2\nb2,JUICE,2,2\n")
    rois = grid_rois(Grid(2, 2, (0.1, 0.1, 0.1, 0.1), (0.0, 0.0)), read_planogram(table))
    assert [(r.name, r.rect, r.expected_sku) for r in rois] == [
        ("a1", (0.1, 0.1, 0.4, 0.4), "MILK"), ("a2", (0.5, 0.1, 0.4, 0.4), "OAT"),
        ("b2", (0.5, 0.5, 0.4, 0.4), "JUICE")]
    snap = tmp_path / "snap.png"
    cv2.imwrite(str(snap), np.full((240, 320, 3), 90, np.uint8))
    cfg = tmp_path / "shelf.toml"
    cfg.write_text('[device]\nstore = "s"\nid = "d"\n[[cameras]]\nname = "left"\nsource = "0"\nmode = "shelf"\n')
    out, overlay = tmp_path / "rois.toml", tmp_path / "overlay.png"
    assert cli(["shelf", "setup", "-c", str(cfg), "--camera", "left", "--planogram", str(table), "--rows", "2",
                "--cols", "2", "--margins", "0.1,0.1,0.1,0.1", "--image", str(snap), "--out", str(out),
                "--overlay", str(overlay)]) == 0
    drawn = cv2.imread(str(overlay))
    assert drawn is not None and drawn.shape == (240, 320, 3) and not np.all(drawn == 90)  # the regions are drawn
    import tomllib

    parsed = tomllib.loads("[[cameras]]\n" + out.read_text())
    assert parsed["cameras"][0]["rois"][2] == {"name": "b2", "rect": [0.5, 0.5, 0.4, 0.4], "expected_sku": "JUICE"}
    table.write_text("facing,sku\na1,MILK\na2,OAT\na3,X\na4,Y\na5,Z\n")
    assert cli(["shelf", "setup", "-c", str(cfg), "--camera", "left", "--planogram", str(table), "--rows", "2",
                "--cols", "2", "--image", str(snap)]) != 0
    assert "only 4 cells" in capsys.readouterr().err


def test_the_monitor_publishes_one_message_per_alert_event_and_keeps_the_history(tmp_path: Path) -> None:
    from edge.core.config import load_settings
    from edge.shelf.monitor import ALERT_SCHEMA, ShelfMonitor

    settings = load_settings(
        None, device={"store": "s", "id": "shelf-1"}, catalog={"data_dir": str(tmp_path)},
        cameras=[{"name": "cam", "source": "x", "mode": "shelf",
                  "rois": [{"name": "a1", "rect": [0, 0, 0.5, 1], "expected_sku": "MILK"}]},
                 {"name": "kiosk", "source": "y"}],
        shelf={"alert_after_s": 10})
    sent: list[tuple[str, dict]] = []
    now = [0.0]
    m = ShelfMonitor(settings, publish=lambda suffix, msg: sent.append((suffix, msg)), clock=lambda: now[0])

    def match(ts: float, sku: str | None, camera: str = "cam", roi: str = "a1") -> None:
        cands = [{"sku": sku or "X", "name": "", "score": 0.9}]
        m.on_match({"camera": camera, "roi": roi, "ts": ts, "decision": "known" if sku else "unknown",
                    "candidates": cands}, np.full((8, 8, 3), 50, np.uint8))

    match(0.0, "MILK")
    match(1.0, "EMPTY")
    match(2.0, "EMPTY")  # the same state again (a heartbeat): no new history row
    match(3.0, "OTHER", camera="kiosk", roi="full")  # not a shelf facing: ignored
    now[0] = 10.9
    m.tick()
    assert sent == []
    now[0] = 11.0
    m.tick()
    [(topic, opened)] = sent
    assert topic == "cam/alert" and opened["schema"] == ALERT_SCHEMA and opened["event"] == "open"
    assert (opened["facing"], opened["state"], opened["since"], opened["expected_sku"]) == ("a1", "empty", 1.0, "MILK")
    assert m.crops.load(opened["crop_id"]) is not None  # the snapshot crop is kept
    assert [a.id for a in m.open_alerts()] == [opened["alert_id"]]
    assert m.ack(opened["alert_id"]) is not None and m.open_alerts() == [] and sent[-1][1]["event"] == "ack"
    assert m.ack(opened["alert_id"]) is None
    match(20.0, "MILK")
    now[0] = 30.0
    m.tick()
    assert [msg["event"] for _, msg in sent] == ["open", "ack", "clear"]
    rows = list(m.history.states(-1, 100))
    [alert] = m.history.alerts(-1, 100)
    m.close()
    assert [(r.state, r.ts) for r in rows] == [("ok", 0.0), ("empty", 1.0), ("ok", 20.0)]
    assert (alert.acked, alert.cleared) == (11.0, 30.0)


def test_the_staff_page_refuses_to_be_open_to_the_network_without_a_token(tmp_path: Path) -> None:
    from edge.core.config import load_settings
    from edge.core.errors import ConfigError
    from edge.shelf.monitor import ShelfMonitor
    from edge.shelf.page import ShelfPage

    def page(**shelf: object) -> ShelfPage:
        s = load_settings(None, device={"store": "s", "id": "d"}, catalog={"data_dir": str(tmp_path)},
                          kiosk_screen={"host": "0.0.0.0"}, shelf=shelf)
        m = ShelfMonitor(s, publish=lambda *_: None)
        try:
            return ShelfPage(settings=s, monitor=m, last_frame=lambda _c: None, photo=lambda _s: None)
        finally:
            m.close()

    with pytest.raises(ConfigError, match=r"shelf\.token"):
        page()
    assert page(token="a-long-staff-secret").token == "a-long-staff-secret"


def test_setup_enroll_adds_each_facings_crop_as_a_photo_of_its_planned_product(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.catalog.learning import Learner
    from edge.catalog.store import Store
    from edge.core.config import load_settings
    from edge.models.encoders import load_image_encoder
    from tests.runtime_helpers import product_image

    cfg = tmp_path / "shelf.toml"
    cfg.write_text(f'[device]\nstore = "s"\nid = "d"\n[catalog]\ndata_dir = "{tmp_path / "data"}"\n'
                   '[[cameras]]\nname = "left"\nsource = "0"\nmode = "shelf"\n')
    settings = load_settings(cfg)
    store = Store.from_settings(settings, image_encoder=load_image_encoder(settings.model), text_encoder=None)
    for sku in ("RED", "GREEN"):
        store.enroll(sku, name=sku, images=[product_image(sku)])
    store.close()
    snap = tmp_path / "snap.png"  # the stocked shelf: RED on the left, GREEN on the right
    cv2.imwrite(str(snap), np.hstack([product_image("RED", shift=40), product_image("GREEN", shift=40)]))
    table = tmp_path / "planogram.csv"
    table.write_text("facing,sku\na1,RED\na2,GREEN\n")
    args = ["shelf", "setup", "-c", str(cfg), "--camera", "left", "--planogram", str(table), "--rows", "1",
            "--cols", "2", "--image", str(snap), "--out", str(tmp_path / "rois.toml"),
            "--overlay", str(tmp_path / "o.png")]
    assert cli([*args, "--enroll"]) == 0
    assert "{'learned': 2}" in capsys.readouterr().err
    store = Store.from_settings(settings, image_encoder=load_image_encoder(settings.model), text_encoder=None)
    try:
        got = sorted((p.sku, p.source, p.ref) for p in Learner(store).learned())
        assert got == [("GREEN", "shelf-setup", "left/a2"), ("RED", "shelf-setup", "left/a1")]
    finally:
        store.close()
    table.write_text("facing,sku\na1,RED\na2,BLUE\n")  # a planned product the catalog lacks
    assert cli([*args, "--enroll"]) != 0
    assert "planned products not in the catalog: ['BLUE']" in capsys.readouterr().err
