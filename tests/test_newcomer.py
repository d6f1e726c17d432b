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
    rt = assemble_runtime(settings=settings, encoder=enc, matcher=NumpyMatcher(write_catalog(catalog, enc, SKUS), enc),
                          out=out)
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
    assert all((reads[0] == r).all() for r in reads[1:3]) and not (reads[0] == reads[3]).all()
    one = open_source(load_settings(None, device={"store": "s", "id": "d"},
                                    cameras=[{**cam, "source": str(frames / "00000.png")}]).cameras[0])
    assert isinstance(one, ImageFolderSource) and one.paths == [frames / "00000.png"]


def test_photo_folder_kiosk_decides_with_hold_frames_and_says_why_without(tmp_path: Path, tiny_onnx: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    frames = write_frames(tmp_path / "frames", SKUS, per_sku=1)  # one photo a product, as a user's folder is
    summary, out = run_folder(folder_camera_settings(tmp_path, frames, hold_frames=8), tiny_onnx, tmp_path / "c.json")
    assert [ln.split()[3] for ln in out.splitlines()] == SKUS
    from edge.cli.run import never_steady_hint

    settings = folder_camera_settings(tmp_path / "one", frames)
    summary, out = run_folder(settings, tiny_onnx, tmp_path / "c1.json")
    assert summary["decisions"] == 0 and summary["frames"] == 3
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
    assert rt.reranker is None and rt.stats()["ocr"] == {"enabled": False}  # no weight fitted at start
    save_weights(store.catalog, FusionWeights(ocr=0.3, fitted_on="test"))  # what calibrate --fusion does
    reply = rt.router.handle("reload", json.dumps({"id": "r1"}).encode())
    try:
        assert reply["ok"], reply
        assert rt.reranker is not None and rt.reranker.weights.ocr == 0.3
        assert "enabled" not in rt.stats()["ocr"]  # the OCR worker's counters now
        save_weights(store.catalog, FusionWeights(ocr=0.5, fitted_on="refit"))
        assert rt.router.handle("reload", b"{}")["ok"] and rt.reranker.weights.ocr == 0.5
    finally:
        rt.reranker.worker.close()
        store.close()
