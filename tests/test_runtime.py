"""The loop end to end with real parts: image-folder cameras, the tiny ONNX encoder in onnxruntime,
a numpy matcher, a real Mosquitto; decisions, retained state, stats, commands, reload, no broker."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from benchmarks._broker import Broker
from edge.core.config import Settings, load_settings
from edge.pipeline.factory import assemble_runtime
from edge.pipeline.loop import Runtime, crop
from edge.pipeline.messages import MATCH_SCHEMA
from tests.runtime_helpers import (
    Collector,
    NumpyMatcher,
    TinyOnnxEncoder,
    demo_device,
    product_image,
    write_catalog,
    write_frames,
)

SKUS = ["RED", "GREEN", "BLUE", "YELLOW", "EMPTY"]
PREFIX = "storelens/s1/d1"


def settings(tmp_path: Path, frames: Path, *, broker: Broker | None = None, **over: Any) -> Settings:
    base: dict[str, Any] = {
        "device": {"store": "s1", "id": "d1"},
        "catalog": {"data_dir": str(tmp_path / "data")},
        "cameras": [{"name": "cam", "source": str(frames), "fps": 30}],
        "gate": {"steady_frames": 1},
        "decision": {"window": 3, "min_frames": 2, "heartbeat_s": 3600},
        "mqtt": {"enabled": broker is not None, "host": "127.0.0.1", "port": broker.port if broker else 1,
                 "stats_interval_s": 0.3, "enroll_dir": str(tmp_path / "enroll")},
    }
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return load_settings(None, **base)


@pytest.fixture
def parts(tmp_path: Path, tiny_onnx: Path) -> tuple[TinyOnnxEncoder, NumpyMatcher]:
    enc = TinyOnnxEncoder(tiny_onnx)
    return enc, NumpyMatcher(write_catalog(tmp_path / "catalog.json", enc, SKUS), enc)


@pytest.fixture
def collector(broker: Broker) -> Iterator[Collector]:
    c = Collector(broker.port, f"{PREFIX}/#")  # returns once subscribed (SUBACK)
    yield c
    c.stop()


def run_until(rt: Runtime, cond: Any, timeout: float = 15.0) -> threading.Thread:
    stop = threading.Event()
    t = threading.Thread(target=rt.run, args=(stop,), kwargs={"max_seconds": timeout})
    t.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and t.is_alive() and not cond():
        time.sleep(0.02)
    stop.set()
    t.join()
    return t


def test_crop_normalised_rect() -> None:
    img = np.arange(100 * 200 * 3, dtype=np.uint8).reshape(100, 200, 3)
    assert crop(img, (0.5, 0.0, 0.5, 0.5)).shape == (50, 100, 3)
    assert crop(img, (0.999, 0.999, 0.001, 0.001)).shape == (1, 1, 3)


def test_decisions_published_with_all_fields(tmp_path: Path, broker: Broker, collector: Collector,
                                             parts: tuple[TinyOnnxEncoder, NumpyMatcher]) -> None:
    frames = write_frames(tmp_path / "frames", ["RED", "EMPTY", "GREEN", "EMPTY", "BLUE"], per_sku=8)
    out = io.StringIO()
    rt = assemble_runtime(settings=settings(tmp_path, frames, broker=broker), encoder=parts[0], matcher=parts[1],
                          out=out)
    rt.start()
    run_until(rt, lambda: len(collector.of("/cam/match")) >= 7 and collector.of("/stats"))
    summary = rt.shutdown()
    msgs = [m for m in collector.json_of("/cam/match") if m["item_id"] and not m["final"]]  # each item's answer
    assert [(m["decision"], m["candidates"][0]["sku"]) for m in msgs] == [("known", "RED"), ("known", "GREEN"),
                                                                          ("known", "BLUE")]
    assert len({m["item_id"] for m in msgs}) == 3
    m = msgs[0]
    assert set(m) >= {"schema", "id", "ts", "camera", "roi", "decision", "candidates", "frames", "latency_ms", "bundle",
                      "catalog_version"}
    assert (m["schema"], m["camera"], m["roi"], m["bundle"], m["catalog_version"]) == (
        MATCH_SCHEMA, "cam", "full", parts[0].fingerprint, "v1")
    assert m["frames"] >= 2 and m["candidates"][0]["score"] > 0.9
    assert [c["sku"] for c in m["candidates"]] == ["RED", "YELLOW", "BLUE", "GREEN"]  # never the empty tray
    assert len({x["id"] for x in msgs}) == 3
    assert 0 <= m["latency_ms"] < 5000
    assert summary["outbox"]["depth"] == 0 and summary["outbox_left"] == 0
    status = json.loads(collector.of("/status")[-1])
    assert status["cameras"]["cam"]["state"] in ("ok", "ended") and status["catalog_version"] == "v1"
    stats = json.loads(collector.of("/stats")[-1])
    assert stats["gate"]["seen"] > 0 and "outbox" in stats and "latency_ms" in stats
    assert stats["schema"] == "storelens.stats/1"  # issue 29 item 11: every message names its schema
    assert stats["ocr"] == {**{k: 0 for k in stats["ocr"] if k != "enabled"}, "enabled": False}
    assert set(stats["ocr"]) >= {"enabled", "requests", "reads", "errors", "mean_ms", "fused"}  # the same keys on
    assert collector.of("/available")[-1] == b"offline"
    assert [ln.split()[3] for ln in out.getvalue().splitlines() if "final" not in ln] == [
        "RED", "EMPTY", "GREEN", "EMPTY", "BLUE"]


def test_gate_skips_static_frames(tmp_path: Path, parts: tuple[TinyOnnxEncoder, NumpyMatcher]) -> None:
    frames = write_frames(tmp_path / "frames", ["RED"], per_sku=30)
    s = settings(tmp_path, frames, cameras=[{"name": "cam", "source": str(frames), "fps": 20}])
    rt = assemble_runtime(settings=s, encoder=parts[0], matcher=parts[1], out=io.StringIO())
    rt.start()
    run_until(rt, lambda: False, timeout=15)  # ends when the folder is done
    g = rt.shutdown()["gate"]
    # The first frame waits for steadiness, the next window=3 are embedded, every later one is skipped.
    # (How many frames the loop sees depends on the machine's load: a camera keeps only its newest frame.)
    assert (g["skipped_unsteady"], g["embedded"]) == (1, 3)
    assert g["skipped_unchanged"] == g["seen"] - 4
    assert g["seen"] >= 10


def test_no_broker_prints_writes_jsonl_and_keeps_outbox(tmp_path: Path,
                                                         parts: tuple[TinyOnnxEncoder, NumpyMatcher]) -> None:
    frames = write_frames(tmp_path / "frames", ["RED", "EMPTY", "BLUE"], per_sku=8)
    jsonl = tmp_path / "decisions.jsonl"
    out = io.StringIO()
    rt = assemble_runtime(settings=settings(tmp_path, frames, jsonl_out=str(jsonl)), encoder=parts[0], matcher=parts[1],
                 out=out)
    rt.start()
    run_until(rt, lambda: False, timeout=10)
    summary = rt.shutdown()
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    # RED's item, its final update when the tray empties, the empty tray, BLUE's item
    assert [(x["candidates"][0]["sku"], x["final"]) for x in lines] == [("RED", False), ("RED", True),
                                                                        ("EMPTY", False), ("BLUE", False)]
    assert lines[0]["topic"] == f"{PREFIX}/cam/match"
    assert summary["outbox"]["depth"] == 4 and summary["outbox_left"] == 4  # kept for later delivery
    assert len(out.getvalue().splitlines()) == 4


def test_unreachable_broker_keeps_running(tmp_path: Path, parts: tuple[TinyOnnxEncoder, NumpyMatcher]) -> None:
    frames = write_frames(tmp_path / "frames", ["GREEN", "EMPTY", "YELLOW"], per_sku=8)
    s = settings(tmp_path, frames, mqtt={"enabled": True, "port": 1, "flush_timeout_s": 0.2})
    rt = assemble_runtime(settings=s, encoder=parts[0], matcher=parts[1], out=io.StringIO())
    rt.start()
    run_until(rt, lambda: False, timeout=10)
    summary = rt.shutdown()
    assert summary["decisions"] == 4 and summary["outbox_left"] == 4  # two items, the first one's final, the tray


def test_shelf_planogram_events(tmp_path: Path, broker: Broker, collector: Collector,
                                parts: tuple[TinyOnnxEncoder, NumpyMatcher]) -> None:
    frames = tmp_path / "shelf"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i, right in enumerate(["BLUE"] * 6 + ["EMPTY"] * 6):  # left slot always RED; right slot BLUE, then empty
        img = np.concatenate([product_image("RED", rng=rng), product_image(right, rng=rng)], axis=1)
        cv2.imwrite(str(frames / f"{i:03d}.png"), img)
    cams = [{"name": "shelf", "source": str(frames), "fps": 60, "mode": "shelf", "rois": [
        {"name": "left", "rect": [0, 0, 0.5, 1], "expected_sku": "RED"},
        {"name": "right", "rect": [0.5, 0, 0.5, 1], "expected_sku": "GREEN"}]}]
    rt = assemble_runtime(settings=settings(tmp_path, frames, broker=broker, cameras=cams), encoder=parts[0],
                 matcher=parts[1], out=io.StringIO())
    rt.start()
    run_until(rt, lambda: len(collector.of("/planogram")) >= 3)
    rt.shutdown()
    events = [(e["roi"], e["event"], e["observed_sku"]) for e in collector.json_of("/shelf/planogram")]
    assert sorted(events[:2]) == [("left", "ok", "RED"), ("right", "misplaced", "BLUE")]
    assert events[2:] == [("right", "empty", "EMPTY")]


def test_commands_reload_enroll_search_remove_snapshot(tmp_path: Path, broker: Broker, collector: Collector,
                                                       parts: tuple[TinyOnnxEncoder, NumpyMatcher],
                                                       tiny_onnx: Path) -> None:
    enc, matcher = parts
    frames = write_frames(tmp_path / "frames", ["RED", "EMPTY", "GREEN", "EMPTY"], per_sku=4)
    s = settings(tmp_path, frames, broker=broker,
                 cameras=[{"name": "cam", "source": str(frames), "fps": 20, "loop": True}])
    rt = assemble_runtime(settings=s, encoder=enc, matcher=matcher, out=io.StringIO(), encoder_loader=lambda: enc)
    rt.start()
    stop = threading.Event()
    loop = threading.Thread(target=rt.run, args=(stop,), kwargs={"max_seconds": 30})
    loop.start()
    try:
        assert rt.link is not None and rt.link.wait_subscribed(10)  # cmd/# acknowledged: commands reach the router

        def cmd(verb: str, body: dict[str, Any]) -> dict[str, Any]:
            n = len(collector.of(f"/cmd/{verb}/reply"))
            collector.publish(f"{PREFIX}/cmd/{verb}", json.dumps(body))
            assert collector.wait(lambda: len(collector.of(f"/cmd/{verb}/reply")) > n)
            return json.loads(collector.of(f"/cmd/{verb}/reply")[-1])

        assert collector.wait(lambda: len(collector.of("/cam/match")) >= 1)
        # reload during the run: a new catalog version is picked up without a restart
        write_catalog(tmp_path / "catalog.json", enc, SKUS, version="v2")
        r = cmd("reload", {"id": "r1"})
        assert r == {"id": "r1", "ok": True, "result": {"catalog_version": "v2", "bundle": enc.fingerprint}}
        assert collector.wait(lambda: any(m["catalog_version"] == "v2" for m in collector.json_of("/cam/match")))
        assert json.loads(collector.of("/status")[-1])["catalog_version"] == "v2"

        purple = np.full((64, 64, 3), (200, 0, 200), np.uint8)
        b64 = base64.b64encode(cv2.imencode(".png", purple)[1].tobytes()).decode()
        r = cmd("enroll", {"sku": "PURPLE", "name": "Purple", "images": [{"b64": b64}]})
        assert r["ok"] and r["result"]["sku"] == "PURPLE" and r["result"]["images"] == 1
        (tmp_path / "enroll").mkdir()
        cv2.imwrite(str(tmp_path / "enroll" / "p2.png"), purple)
        assert cmd("enroll", {"sku": "PURPLE", "images": [{"path": "p2.png"}]})["ok"]
        bad = cmd("enroll", {"sku": "PURPLE", "images": [{"path": "../catalog.json"}]})
        assert not bad["ok"] and "outside the allowed folder" in bad["error"]
        assert "must be a non-empty string" in cmd("enroll", {"images": [{"b64": b64}]})["error"]
        assert "not valid base64" in cmd("enroll", {"sku": "X", "images": [{"b64": "%%%"}]})["error"]
        assert "not a readable image" in cmd("enroll", {"sku": "X", "images": [{"b64": "aGVsbG8="}]})["error"]

        r = cmd("search", {"images": [{"b64": b64}], "k": 2})
        assert r["ok"] and r["result"]["candidates"][0]["sku"] == "PURPLE"
        assert "does not support 'search_text'" in cmd("search", {"text": "milk"})["error"]
        assert cmd("remove", {"sku": "PURPLE"})["result"]["removed"] is True
        assert "not in the catalog" in cmd("remove", {"sku": "PURPLE"})["error"]
        r = cmd("search", {"images": [{"b64": b64}], "k": 2})
        assert r["result"]["candidates"][0]["sku"] != "PURPLE"

        snap = cmd("snapshot", {"camera": "cam"})["result"]
        img = cv2.imdecode(np.frombuffer(base64.b64decode(snap["jpeg_b64"]), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (64, 64, 3)
        assert "no frame from camera 'nope'" in cmd("snapshot", {"camera": "nope"})["error"]
        assert loop.is_alive()  # none of the bad commands stopped the loop
        n = len(collector.of("/cam/match"))
        assert collector.wait(lambda: len(collector.of("/cam/match")) > n)  # still deciding
    finally:
        stop.set()
        loop.join()
        rt.shutdown()


def test_cli_run_without_broker_on_the_real_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`storelens run` end to end: embedded bundle, a Store enrolled through its API, an image-folder camera."""
    from edge.cli.main import main
    from edge.pipeline.demo import DEMO_PRODUCTS

    data, frames = demo_device(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[device]\nstore = "s1"\nid = "d1"\n[catalog]\ndata_dir = "{data}"\n'
                   f'[[cameras]]\nname = "cam"\nsource = "{frames}"\nfps = 30\n'
                   '[decision]\nthreshold = 0.93\nmargin = 0.1\n[mqtt]\nhost = "127.0.0.1"\nport = 1\n')
    assert main(["run", "--config", str(cfg), "--no-mqtt", "--jsonl", str(tmp_path / "d.jsonl"), "--json"]) == 0
    out = capsys.readouterr().out
    decided = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [d["candidates"][0]["sku"] for d in decided] == [p.sku for p in DEMO_PRODUCTS[:2]]
    assert "DEMO-COLA" in out and json.loads(out[out.index("{"):])["outbox_left"] == 2


def test_cli_run_missing_source_names_camera(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli.main import main

    cfg = tmp_path / "c.toml"
    cfg.write_text('[device]\nstore = "s1"\nid = "d1"\n[[cameras]]\nname = "door-cam"\nsource = "/nope/x.mp4"\n')
    assert main(["run", "--config", str(cfg)]) == 8
    assert "camera 'door-cam'" in capsys.readouterr().err


def test_demo_recognises_every_product(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli.main import main

    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.rindex("\n{") + 1:])
    assert (result["products_shown"], result["recognised"], result["wrong"], result["extra_known"]) == (6, 6, [], 0)
    assert 0 < result["threshold"] < 1 and 0 < result["margin"] <= 0.1
    assert result["outbox_left"] == result["decisions"]  # no broker: every decision kept for later delivery


class _DroppingSource:
    """Frames of one product, then a failure: a camera that drops."""

    def __init__(self, sku: str, fail_after: int | None, *, empty_first: int = 0) -> None:
        self.sku, self.fail_after, self.n, self.empty_first = sku, fail_after, 0, empty_first
        self.rng = np.random.default_rng(0)

    def read(self) -> np.ndarray | None:
        self.n += 1
        if self.fail_after is not None and self.n > self.fail_after:
            from edge.core.errors import CaptureError

            raise CaptureError("stream read failed")
        return product_image("EMPTY" if self.n <= self.empty_first else self.sku, rng=self.rng)

    def close(self) -> None:
        pass


def test_camera_drop_and_return_is_reported_and_recognition_resumes(
        tmp_path: Path, broker: Broker, collector: Collector, parts: tuple[TinyOnnxEncoder, NumpyMatcher]) -> None:
    opens: list[int] = []

    def factory() -> _DroppingSource:
        opens.append(1)
        if len(opens) == 2:
            raise OSError("camera still away")
        # back with the tray emptied, then the next item (a kiosk item ends when the tray empties)
        return _DroppingSource("RED", 10) if len(opens) == 1 else _DroppingSource("BLUE", None, empty_first=6)

    rt = assemble_runtime(settings=settings(tmp_path, tmp_path, broker=broker), encoder=parts[0], matcher=parts[1],
                 sources={"cam": factory}, out=io.StringIO())
    rt.cameras[0]._backoff = (0.2, 0.4)  # a short outage for the test (production: 0.5 s doubling to 30 s)
    rt.start()
    items = lambda: [m["candidates"][0]["sku"] for m in collector.json_of("/cam/match")  # noqa: E731
                     if m["item_id"] and not m["final"]]
    run_until(rt, lambda: items() == ["RED", "BLUE"]
              and any(json.loads(s)["cameras"]["cam"]["outages"] == 1 for s in collector.of("/stats")))
    rt.shutdown()
    assert items() == ["RED", "BLUE"]
    cam = rt.cameras[0].stats
    assert (cam.outages, cam.state, cam.reopen_attempts) == (1, "ok", 2)
    assert cam.outage_s >= 0.6  # 0.2 s failed attempt + 0.4 s successful one
    statuses = [json.loads(s)["cameras"]["cam"] for s in collector.of("/status")]
    assert any(s["state"] == "down" for s in statuses)  # the outage was in the retained status...
    assert (statuses[-1]["state"], statuses[-1]["outages"]) == ("ok", 1)  # ...and so was the return


def test_failing_matcher_is_counted_and_the_loop_keeps_going(tmp_path: Path,
                                                              parts: tuple[TinyOnnxEncoder, NumpyMatcher]) -> None:
    class FlakyMatcher(NumpyMatcher):
        calls = 0

        def match_vectors(self, embs: np.ndarray, k: int) -> list[list[Any]]:
            self.calls += 1
            if self.calls <= 2:
                raise RuntimeError("index file vanished")
            return super().match_vectors(embs, k)

    frames = write_frames(tmp_path / "frames", ["RED"], per_sku=8)
    matcher = FlakyMatcher(tmp_path / "catalog.json", parts[0])
    out = io.StringIO()
    rt = assemble_runtime(settings=settings(tmp_path, frames, gate={"enabled": False}), encoder=parts[0],
                          matcher=matcher,
                 out=out)
    rt.start()
    run_until(rt, lambda: False, timeout=10)
    summary = rt.shutdown()
    assert (summary["errors"], summary["crops_failed"]) == (2, 2)
    assert summary["decisions"] == 1 and "RED" in out.getvalue()
