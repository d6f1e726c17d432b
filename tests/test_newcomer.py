"""The first hour with StoreLens (issue 29): each step a newcomer takes does what they expect.

Real parts: image-folder cameras, the tiny ONNX encoder in onnxruntime, the real SQLite/USearch
catalog and the real CLI; only cameras are stood in for (by folders of images).
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.core.config import load_settings
from edge.pipeline.capture import ImageFolderSource, open_source
from edge.pipeline.factory import assemble_runtime
from edge.pipeline.gate import RegionGate
from tests.runtime_helpers import NumpyMatcher, TinyOnnxEncoder, product_image, write_catalog, write_frames

SKUS = ["RED", "GREEN", "BLUE"]


def folder_camera_settings(tmp_path: Path, frames: Path, **camera: Any) -> Any:
    return load_settings(None, device={"store": "s1", "id": "d1"}, catalog={"data_dir": str(tmp_path / "data")},
                         cameras=[{"name": "cam", "source": str(frames), "fps": 30, **camera}],
                         gate={"steady_frames": 2}, decision={"window": 3, "min_frames": 2, "heartbeat_s": 3600},
                         mqtt={"enabled": False})


def run_folder(settings: Any, tiny_onnx: Path, catalog: Path) -> tuple[dict[str, Any], str]:
    enc = TinyOnnxEncoder(tiny_onnx)
    out = io.StringIO()
    matcher = NumpyMatcher(write_catalog(catalog, enc, [*SKUS, "EMPTY"]), enc)  # the kiosk's empty-tray entry too
    rt = assemble_runtime(settings=settings, encoder=enc, matcher=matcher, out=out)
    rt.start()
    stop = threading.Event()
    rt.run(stop, max_seconds=20)  # returns when the folder has ended
    return rt.shutdown(), out.getvalue()


# -- item 1: a folder of photos as the camera ---------------------------------------------------------------


def test_folder_source_holds_each_image_and_a_single_photo_is_a_source(tmp_path: Path) -> None:
    frames = write_frames(tmp_path / "f", ["RED", "BLUE"], per_sku=1)
    cam = {"name": "c", "source": str(frames), "hold_frames": 3}
    src = open_source(load_settings(None, device={"store": "s", "id": "d"}, cameras=[cam]).cameras[0])
    reads = [src.read() for _ in range(7)]
    assert [r is not None for r in reads] == [True] * 6 + [False]
    first, *rest = [r for r in reads if r is not None]
    assert all(np.array_equal(first, r) for r in rest[:2]) and not np.array_equal(first, rest[2])
    one = open_source(load_settings(None, device={"store": "s", "id": "d"},
                                    cameras=[{**cam, "source": str(frames / "00000.png")}]).cameras[0])
    assert isinstance(one, ImageFolderSource) and one.paths == [frames / "00000.png"]


def test_photo_folder_kiosk_decides_with_hold_frames_and_says_why_without(tmp_path: Path, tiny_onnx: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    # one photo a product and one of the empty tray between them, as a user's folder for a kiosk is
    frames = write_frames(tmp_path / "frames", ["RED", "EMPTY", "GREEN", "EMPTY", "BLUE"], per_sku=1)
    summary, out = run_folder(folder_camera_settings(tmp_path, frames, hold_frames=8), tiny_onnx, tmp_path / "c.json")
    assert [ln.split()[3] for ln in out.splitlines() if "final" not in ln and "EMPTY" not in ln] == SKUS
    from edge.cli.run import never_steady_hint

    settings = folder_camera_settings(tmp_path / "one", frames)
    summary, out = run_folder(settings, tiny_onnx, tmp_path / "c1.json")
    assert summary["decisions"] == 0 and summary["frames"] == 5
    assert "hold_frames" in (never_steady_hint(summary, settings) or "")


def test_gate_warns_once_when_no_view_ever_holds_still(caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np

    gate = RegionGate(change_threshold=0.02, steady_frames=2, frames_per_view=3)
    gate.watch_never_steady("cam/tray", after=10)
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING, logger="storelens.gate"):
        for i in range(25):  # every frame a different product: never still
            gate.check(product_image(SKUS[i % 3], size=64, rng=rng))
    warned = [r for r in caplog.records if "never held still" in r.getMessage()]
    assert len(warned) == 1 and "cam/tray" in warned[0].getMessage() and "hold_frames" in warned[0].getMessage()
    caplog.clear()
    steady = RegionGate(change_threshold=0.02, steady_frames=2, frames_per_view=3)
    steady.watch_never_steady("cam/tray", after=10)
    img = product_image("RED", size=64, rng=rng)
    with caplog.at_level(logging.WARNING, logger="storelens.gate"):
        for _ in range(25):
            steady.check(img)
    assert not caplog.records


def test_shipped_kiosk_config_shows_loop_and_hold_frames() -> None:
    text = (Path(__file__).resolve().parents[1] / "configs" / "kiosk.toml").read_text()
    cam = load_settings(Path(__file__).resolve().parents[1] / "configs" / "kiosk.toml").cameras[0]
    assert "\nloop = " in text and "\nhold_frames = " in text and cam.hold_frames > 1



# -- item 2: updating a product keeps its photos; item 8: the catalog lives where the config says ----------------


def test_catalog_add_without_image_updates_fields_and_keeps_photos(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from edge.cli.main import main
    from tests.encoders_for_tests import product_image as photo
    from tests.encoders_for_tests import write_jpeg

    data = ["--data-dir", str(tmp_path / "data")]
    imgs = [str(write_jpeg(tmp_path / f"p{i}.jpg", photo(1, size=96))) for i in range(2)]
    assert main(["catalog", "add", "OAT", "--name", "Oat milk", "--description", "creamy oat drink",
                 "--location", "aisle 2", "--image", imgs[0], "--image", imgs[1], *data]) == 0
    capsys.readouterr()
    assert main(["catalog", "add", "OAT", "--price", "12.5", *data]) == 0  # a new price, nothing else
    assert "kept its 2 photos" in capsys.readouterr().out
    assert main(["catalog", "list", "--json", *data]) == 0
    (row,) = json.loads(capsys.readouterr().out)["products"]
    assert (row["images"], row["name"], row["description"], row["location"], row["price"]) == (
        2, "Oat milk", "creamy oat drink", "aisle 2", 12.5)
    assert main(["search", "--image", imgs[0], "--json", *data]) == 0  # still recognised by its photos
    assert json.loads(capsys.readouterr().out)["results"][0]["sku"] == "OAT"
    assert main(["catalog", "add", "OAT", "--image", imgs[0], *data]) == 0
    assert "replaced the 2 photos of OAT with 1" in capsys.readouterr().out
    assert main(["catalog", "add", "NEW", *data]) == 3  # a new sku needs a name
    assert "--name is required" in capsys.readouterr().err


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli.main import main

    cfg = tmp_path / "etc" / "my.toml"
    cfg.parent.mkdir()
    cfg.write_text('[device]\nstore = "s1"\nid = "d1"\n[catalog]\ndata_dir = "var/catalog"\n')
    assert load_settings(cfg).catalog.data_dir == tmp_path / "etc" / "var" / "catalog"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["catalog", "list", "--config", str(cfg)]) == 0
    assert f"catalog in {tmp_path / 'etc' / 'var' / 'catalog'}" in capsys.readouterr().out
    assert not (elsewhere / "var").exists()
    monkeypatch.setenv("STORELENS_CATALOG__DATA_DIR", "from-env")  # the environment stays relative to the shell
    assert load_settings(cfg).catalog.data_dir == Path("from-env")


# -- item 4: cmd/reload turns label text on once calibrate --fusion stored a weight --------------------------------


def test_reload_starts_label_text_after_a_fusion_weight_is_stored(tmp_path: Path, tiny_onnx: Path) -> None:
    import json

    from edge.catalog.store import Store
    from edge.text.fusion import FusionWeights, save_weights
    from tests.encoders_for_tests import TinyImageEncoder
    from tests.encoders_for_tests import product_image as photo

    s = load_settings(None, device={"store": "s1", "id": "d1"}, catalog={"data_dir": str(tmp_path / "data")},
                      mqtt={"enabled": False})
    enc = TinyImageEncoder(tiny_onnx)
    store = Store.from_settings(s, image_encoder=enc, text_encoder=None)
    store.enroll("OAT", name="Oat milk", images=[photo(1)])
    rt = assemble_runtime(settings=s, encoder=enc, matcher=store, out=io.StringIO())
    assert rt.reranker is None and rt.stats()["ocr"]["enabled"] is False  # no weight fitted at start
    save_weights(store.catalog, FusionWeights(ocr=0.3, fitted_on="test"))  # what calibrate --fusion does
    reply = rt.router.handle("reload", json.dumps({"id": "r1"}).encode())
    try:
        assert reply["ok"], reply
        assert rt.reranker is not None and rt.reranker.weights.ocr == 0.3
        assert rt.stats()["ocr"]["enabled"] is True  # the OCR worker's counters now
        save_weights(store.catalog, FusionWeights(ocr=0.5, fitted_on="refit"))
        assert rt.router.handle("reload", b"{}")["ok"] and rt.reranker.weights.ocr == 0.5
    finally:
        if rt.reranker is not None:
            rt.reranker.worker.close()
        store.close()


# -- items 3 and 18: calibrate says what it chose, in words, and never keeps a fusion weight that loses ----------


def test_fusion_weight_that_loses_on_held_out_photos_is_not_used() -> None:
    import numpy as np

    from edge.text.calibration import checked_weights, split_for_check

    labels = np.array([0, 1] * 10)
    image = np.where(np.eye(2, dtype=bool)[labels], 0.62, 0.60).astype(np.float32)  # vision right, narrowly
    fit, check = split_for_check(labels)
    assert check.sum() == 10 and not (fit & check).any()
    right = np.eye(2, dtype=np.float32)[labels]
    misleading = np.where(check[:, None], 1 - right, right)  # the label text helps where fitted, misleads after
    w = checked_weights(image, labels, ocr=misleading, fitted_on="t")
    assert w.ocr == 0.0 and "not used" in w.fitted_on
    assert (w.metrics["check_image_r1"], w.metrics["check_fused_r1"], w.metrics["check_queries"]) == (1.0, 0.0, 10)
    kept = checked_weights(image, labels, ocr=right, fitted_on="t")
    assert kept.ocr > 0 and kept.metrics["check_fused_r1"] == 1.0 and "not used" not in kept.fitted_on


def test_calibration_report_is_rounded_interpreted_and_says_what_it_replaced() -> None:
    from edge.cli.calibrate_report import fusion_lines, report_lines
    from edge.core.types import Calibration
    from edge.text.fusion import FusionWeights

    cal = Calibration(score=0.81234567, margin=0.0005, target=0.95, known_queries=30, unknown_queries=15,
                      known_accept_rate=0.9667, known_top1_accuracy=0.9, accepted_precision=0.931,
                      false_accept_rate=0.5333, held_out=("A", "B"), catalog_version=7, fingerprint="f")
    old = Calibration(**{**cal.__dict__, "score": 0.7, "margin": 0.04, "catalog_version": 5})
    text = "\n".join(report_lines(cal, previous=old, stored=True))
    assert "at least 0.812" in text and "0.8123" not in text and "no margin test" in text
    assert "8 of 15 (53%) were wrongly named" in text and "29 of 30 (97%) named" in text
    assert "warning: few photos" in text and "look-alike" in text
    assert "replaced the previous calibration: score 0.700, margin 0.040 (catalog version 5" in text
    assert "replaced" not in "\n".join(report_lines(cal, previous=None, stored=True))
    lost = FusionWeights(fitted_on="x; not used: ...", metrics={"check_image_r1": 0.8, "check_fused_r1": 0.771,
                                                                "check_queries": 12})
    lines = "\n".join(fusion_lines(lost, FusionWeights(ocr=0.2, fitted_on="before"), photos=24, dry_run=False))
    assert "0.800 -> with label text 0.771" in lines and "not used" in lines and "only 12 held-out" in lines
    assert "replaced the previous OCR weight 0.2" in lines


def test_calibrate_cli_never_replaces_silently(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli.main import main
    from tests.encoders_for_tests import product_image as photo
    from tests.encoders_for_tests import write_jpeg

    for p in range(5):
        for i in range(2):
            write_jpeg(tmp_path / "catalog" / f"P{p}" / f"{i}.jpg", photo(p, size=96))
            write_jpeg(tmp_path / "labelled" / f"P{p}" / f"{i}.jpg", photo(p, size=96, noise=0.05))
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["catalog", "import", str(tmp_path / "catalog"), *data]) == 0
    capsys.readouterr()
    assert main(["calibrate", str(tmp_path / "labelled"), *data]) == 0
    first = capsys.readouterr().out
    assert "warning: few photos" in first and "replaced" not in first
    assert main(["calibrate", str(tmp_path / "labelled"), "--target", "0.8", *data]) == 0
    assert "replaced the previous calibration: score" in capsys.readouterr().out


# -- item 7: the first fleet snapshot keeps the device's own catalog as the rollback point -----------------------


def test_first_snapshot_keeps_the_local_catalog_to_roll_back_to(tmp_path: Path, tiny_onnx: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from edge.catalog.snapshot import write_snapshot
    from edge.catalog.store import Store
    from edge.fleet.publish import publish_snapshot
    from edge.fleet.updates import CatalogUpdater
    from tests.encoders_for_tests import TinyImageEncoder
    from tests.encoders_for_tests import product_image as photo
    from tests.fleet_helpers import TEST_KEY, TEST_PUBLIC

    enc = TinyImageEncoder(tiny_onnx)

    def store_at(name: str, products: int) -> Store:
        s = load_settings(None, device={"store": "s1", "id": "d1"}, catalog={"data_dir": str(tmp_path / name)})
        store = Store.from_settings(s, image_encoder=enc, text_encoder=None)
        for p in range(products):
            store.enroll(f"{name}-{p}", name=f"{name} {p}", images=[photo(p), photo(p, noise=0.05)])
        return store

    chain = store_at("chain", 2)  # the chain's catalog: versions 2 and 3, below the device's own
    announced = []
    for n in (1, 2):
        if n == 2:
            chain.enroll("chain-new", name="new", images=[photo(9)])  # the chain's next version
        folder, _ = write_snapshot(chain.data_dir, tmp_path / f"built{n}", bundle=enc.fingerprint, text_bundle=None,
                                   dtype=chain.dtype, counts={"products": 2 + n - 1}, assortment=None)
        announced.append(publish_snapshot(folder, to=str(tmp_path / "pub"), key=TEST_KEY))
    chain.close()
    local = store_at("local", 5)  # loaded by hand before joining the fleet: 5 enrolls, version 5
    version = local.catalog_version
    fleet = load_settings(None, device={"store": "s1", "id": "d1"},
                          fleet={"snapshot_dir": str(tmp_path / "pub"), "trusted_keys": [TEST_PUBLIC]}).fleet
    updater = CatalogUpdater(local, fleet=fleet, store_id="s1")
    with caplog.at_level(logging.WARNING, logger="storelens.snapshot"):
        assert updater.handle(announced[0].to_payload())["result"] == "installed"
    assert local.catalog.count() == 2
    assert any("replaces this device's own catalog (5 products" in r.getMessage() for r in caplog.records)
    result = updater.rollback()
    assert result["result"] == "rolled-back" and result["catalog_version"] == version
    assert sorted(p.sku for p in local.catalog.products()) == [f"local-{p}" for p in range(5)]
    # the device's own version is no chain version: the chain's next snapshot still installs
    assert updater.handle(announced[1].to_payload())["result"] == "installed"
    local.close()


# -- item 12: publishing to a folder says what the devices need ---------------------------------------------------


def test_publish_to_a_folder_says_devices_need_snapshot_dir(tmp_path: Path, tiny_onnx: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from edge.catalog.snapshot import write_snapshot
    from edge.catalog.store import Store
    from edge.cli.catalog_fleet import file_url_note
    from edge.cli.main import main
    from tests.encoders_for_tests import TinyImageEncoder
    from tests.encoders_for_tests import product_image as photo

    enc = TinyImageEncoder(tiny_onnx)
    s = load_settings(None, device={"store": "s1", "id": "d1"}, catalog={"data_dir": str(tmp_path / "chain")})
    store = Store.from_settings(s, image_encoder=enc, text_encoder=None)
    store.enroll("A", name="A", images=[photo(1)])
    folder, _ = write_snapshot(store.data_dir, tmp_path / "built", bundle=enc.fingerprint, text_bundle=None,
                               dtype=store.dtype, counts={"products": 1}, assortment=None)
    store.close()
    assert main(["catalog", "publish", str(folder), "--to", str(tmp_path / "share"), "--no-announce"]) == 0
    err = capsys.readouterr().err
    assert f'snapshot_dir = "{tmp_path / "share"}"' in err
    assert file_url_note("https://cdn.example/s/abc.tar") is None
    shipped = (Path(__file__).resolve().parents[1] / "configs" / "kiosk.toml").read_text()
    assert "# snapshot_dir = " in shipped and "file://" in shipped


# -- item 13: a successful catalog build prints no alarming Ray noise --------------------------------------------


@pytest.mark.slow
def test_catalog_build_on_ray_is_quiet_and_leaves_home_alone(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    pytest.importorskip("ray")
    from tests.fleet_helpers import write_table

    table = write_table(tmp_path / "t", classes=2, per_class=1, broken=False)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-m", "edge.cli.main", "catalog", "build", str(table), "--out",
                           str(tmp_path / "out"), "--data-dir", str(tmp_path / "d"), "--workers", "1",
                           "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 products" in done.stdout
    noise = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert noise == [], noise  # no token notice, no error-level actor line, no Ray Data plan/progress lines
    assert not (home / ".ray" / "auth_token").exists()


# -- item 14: the demo does not promise to deliver what it deletes ------------------------------------------------


def test_demo_without_workdir_does_not_promise_later_delivery(capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli.demo import outbox_note
    from edge.cli.main import main

    assert main(["demo"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("no broker:") and "later delivery" not in last and "--workdir" in last
    kept = outbox_note(3, Path("/srv/demo"))
    assert "/srv/demo/data/outbox.db" in kept and "later delivery" in kept


# -- item 15: validate-config checks camera files and says OK -----------------------------------------------------


def test_validate_config_checks_camera_paths_and_says_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli.main import main

    photos = write_frames(tmp_path / "photos", ["RED"], per_sku=1)
    (tmp_path / "empty").mkdir()
    cfg = tmp_path / "k.toml"
    cams = [("door", str(tmp_path / "nope")), ("tray", str(photos)), ("usb", "0"), ("shelf", str(tmp_path / "empty"))]
    cfg.write_text('[device]\nstore = "s1"\nid = "k1"\n' + "".join(
        f'[[cameras]]\nname = "{n}"\nsource = "{src}"\n' for n, src in cams))
    assert main(["validate-config", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert f"cameras[0].source -> '{tmp_path / 'nope'}' -> no such file or folder" in out
    assert "cameras[3].source" in out and "cameras[1]" not in out and "cameras[2]" not in out
    cfg.write_text('[device]\nstore = "s1"\nid = "k1"\n' + "".join(
        f'[[cameras]]\nname = "{n}"\nsource = "{src}"\n' for n, src in cams[1:3]))
    assert main(["validate-config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: {cfg} is a valid StoreLens config") and len(out.splitlines()) < 10


# -- item 16: service install checks the user, keeps /tmp visible, and says where the unit must go ----------------


def test_service_install_checks_user_tmp_and_unit_dir(tmp_path: Path) -> None:
    from edge.ops.systemd import under_tmp
    from tests.ops_helpers import storelens, write_config

    config = tmp_path / "kiosk.toml"
    write_config(config, {"device": {"store": "s1", "id": "d1"}, "catalog": {"data_dir": str(tmp_path / "data")}})
    base = ["service", "install", "--config", str(config), "--unit-dir", str(tmp_path / "units"),
            "--env-file", str(tmp_path / "s.env")]
    bad = storelens(*base, "--run-as", "no-such-user-29a")
    assert bad.returncode == 3 and "no such user" in bad.stderr and "useradd" in bad.stderr
    assert not (tmp_path / "units").exists()
    ok = storelens(*base, "--run-as", "daemon")
    assert ok.returncode == 0, ok.stderr
    unit = (tmp_path / "units" / "storelens.service").read_text()
    assert "PrivateTmp=yes" not in unit and "no PrivateTmp" in unit  # the config and catalog are under /tmp
    assert "under /tmp" in ok.stderr
    assert f"systemd does not read {tmp_path / 'units'}: copy the unit to /etc/systemd/system/" in ok.stdout
    assert under_tmp(Path("/etc/storelens/kiosk.toml"), Path("/opt/venv/bin/python")) == []
    assert under_tmp(Path("/var/tmp/x")) == [Path("/var/tmp/x")]


# -- item 19: commands that change the device are logged; refusals name verb and id; unknown skus are refused -------


def test_command_log_lines_and_recommend_for_an_unknown_sku(tmp_path: Path, tiny_onnx: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    import base64
    import json

    import cv2

    from edge.catalog.store import Store
    from edge.pipeline.handlers import recommend_handler
    from edge.recommend.service import recommender_for
    from tests.encoders_for_tests import TinyImageEncoder
    from tests.encoders_for_tests import product_image as photo

    s = load_settings(None, device={"store": "s1", "id": "d1"}, catalog={"data_dir": str(tmp_path / "data")},
                      mqtt={"enabled": False})
    enc = TinyImageEncoder(tiny_onnx)
    store = Store.from_settings(s, image_encoder=enc, text_encoder=None)
    rt = assemble_runtime(settings=s, encoder=enc, matcher=store, out=io.StringIO())
    jpeg = base64.b64encode(cv2.imencode(".jpg", photo(1))[1].tobytes()).decode()
    with caplog.at_level(logging.INFO, logger="storelens.commands"):
        assert rt.router.handle("enroll", json.dumps({"id": "e1", "sku": "OAT", "images": [{"b64": jpeg}]}).encode())[
            "ok"]
        assert not rt.router.handle("remove", json.dumps({"id": "r9", "sku": "NOPE"}).encode())["ok"]
        assert rt.router.handle("remove", json.dumps({"id": "r1", "sku": "OAT"}).encode())["ok"]
    done = [r for r in caplog.records if r.getMessage() == "command done"]
    assert [(r.verb, r.id, r.sku) for r in done] == [("enroll", "e1", "OAT"), ("remove", "r1", "OAT")]  # type: ignore[attr-defined]
    (refused,) = [r for r in caplog.records if r.getMessage() == "command refused"]
    assert (refused.verb, refused.id) == ("remove", "r9")  # type: ignore[attr-defined]
    store.enroll("OAT", name="Oat milk", images=[photo(1)])
    store.enroll("RYE", name="Rye bread", images=[photo(2)])
    rec = recommender_for(s, store=store)
    handle = recommend_handler(rec)
    assert [r["sku"] for r in handle({"sku": "OAT", "kind": "similar"})["recommendations"]] == ["RYE"]
    from edge.core.errors import CommandError

    with pytest.raises(CommandError, match="'Tomato' is not in the catalog"):
        handle({"sku": "Tomato"})
    store.close()


# -- item 20: the kiosk page's search and cmd/search take the same key --------------------------------------------


def test_kiosk_api_search_takes_text_like_cmd_search(tmp_path: Path) -> None:
    import json

    from edge.catalog.db import Catalog, Product
    from edge.kiosk.actions import KioskActions
    from edge.kiosk.cards import ProductCards
    from edge.kiosk.confirmations import ConfirmationStore
    from edge.kiosk.hub import KioskHub

    cat = Catalog(tmp_path / "catalog.db")
    with cat.transaction() as db:
        for sku, name in (("OATS", "Morning Oats"), ("TEA", "Mint Tea")):
            cat.upsert_product(db, Product(key=0, sku=sku, name=name))
    cards = ProductCards(cat, hidden=frozenset())
    actions = KioskActions(hub=KioskHub(cards, camera="cam", empty_sku="EMPTY", candidates=3), cards=cards,
                           confirmations=ConfirmationStore(tmp_path / "c", max_items=3), publish=lambda t, m: None,
                           device="d1", search=lambda q, k: [p for p in cat.products() if q in p.name.lower()][:k])
    for body in ({"text": "oats"}, {"q": "oats"}):  # the documented key, and the page's old one
        status, reply = actions.handle("search", json.dumps(body).encode())
        assert status == 200 and [c["sku"] for c in reply["result"]["results"]] == ["OATS"], body
    status, reply = actions.handle("search", b"{}")
    assert status == 400 and "'text'" in reply["error"]
    cat.close()


# -- item 21: held crops can be approved or discarded -------------------------------------------------------------


def test_held_crops_can_be_approved_or_discarded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from edge.catalog.learning import Learner
    from edge.catalog.store import Store
    from edge.cli.main import main
    from edge.core.learning_settings import LearningSettings
    from edge.models.encoders import load_image_encoder
    from tests.encoders_for_tests import product_image as photo
    from tests.encoders_for_tests import write_jpeg

    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["catalog", "add", "OAT", "--name", "Oat milk", "--image",
                 str(write_jpeg(tmp_path / "oat.jpg", photo(1, size=96))), *data]) == 0
    s = load_settings(None, device={"store": "s1", "id": "d1"}, catalog={"data_dir": str(tmp_path / "data")})
    store = Store.from_settings(s, image_encoder=load_image_encoder(s.model), text_encoder=None)
    lrn = Learner(store, LearningSettings(hold_below=0.999))  # every confirmation held for review
    from edge.models.preprocess import read_image
    from tests.fleet_helpers import gsd_photos

    for real in next(iter(gsd_photos(2, 1).values())):  # real shop photos: nothing like the drawn carton
        assert lrn.learn("OAT", read_image(real), source="kiosk").outcome == "held"
    lrn.close()
    store.close()
    capsys.readouterr()
    assert main(["catalog", "learned", "--held", "--json", *data]) == 0
    first, second = (h["id"] for h in json.loads(capsys.readouterr().out)["held"])
    assert main(["catalog", "learned", "--approve", first, "--discard", second, *data]) == 0
    out = capsys.readouterr().out
    assert f"{first}: approved: learned as a photo of OAT" in out and f"{second}: discarded" in out
    assert main(["catalog", "learned", "--json", *data]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed["learned"]) == 1 and listed["stats"]["review"] == 0
    assert main(["catalog", "learned", "--discard", second, *data]) == 3  # no longer held
    assert "no held crop" in capsys.readouterr().err


# -- house-keeping: no import cycle outside edge/ either, and export/ modules of a readable size ------------------


@pytest.mark.parametrize("package", ["benchmarks", "export"])
def test_no_import_cycle_and_readable_modules_outside_edge(package: str) -> None:
    from tests.test_layout import MAX_MODULE_LINES, find_cycle, imported_names

    root = Path(__file__).resolve().parents[1]
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for p in sorted((root / package).rglob("*.py"))}
    graph = {name: {t for t in imported_names(path) if t in modules and t != name} for name, path in modules.items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])
    if package == "export":
        long = {n: p.read_text().count("\n") for n, p in modules.items()}
        assert max(long.values()) <= MAX_MODULE_LINES, {n: c for n, c in long.items() if c > MAX_MODULE_LINES}


def test_import_replace_of_a_row_without_images_keeps_the_photos(tmp_path: Path, tiny_onnx: Path) -> None:
    from edge.catalog.importers.tables import ProductRecord
    from edge.catalog.store import Store
    from tests.encoders_for_tests import TinyImageEncoder
    from tests.encoders_for_tests import product_image as photo

    enc = TinyImageEncoder(tiny_onnx)
    store = Store(data_dir=tmp_path / "data", image_encoder=enc, text_encoder=None, dtype="f32")
    store.enroll("OAT", name="Oat milk", images=[photo(1), photo(2)])
    report = store.import_records([ProductRecord(sku="OAT", name="Oat milk", price=9.5)], replace=True,
                                  progress=False)
    assert report.products_replaced == 1 and store.catalog.get("OAT").price == 9.5  # type: ignore[union-attr]
    assert len(store.catalog.images("OAT")) == 2
    assert store.search_image([photo(1)], k=1)[0][0].sku == "OAT"  # its image vectors are still indexed
    assert store.catalog.vector_counts("image", enc.fingerprint) == (2, 1)
    store.close()
    again = Store(data_dir=tmp_path / "data", image_encoder=enc, text_encoder=None, dtype="f32")
    assert again.repairs.rebuilds == 0  # the indexes agree with the catalog: nothing to repair on open
    again.close()
