"""Prometheus metrics with real parts: the runtime's /metrics scraped by a real Prometheus server
(Debian's `prometheus` package), queried over its HTTP API while a looping image-folder camera plays."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks._broker import Broker, free_port
from edge.core.errors import ConfigError
from edge.ops.metrics import STAGES
from tests.ops_helpers import SKUS, base_config, make_runtime, merged, running, wait_for, write_config
from tests.requires import missing
from tests.runtime_helpers import TinyOnnxEncoder, write_catalog, write_frames

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def catalog(tmp_path: Path, tiny_onnx: Path) -> Path:
    return write_catalog(tmp_path / "catalog.json", TinyOnnxEncoder(tiny_onnx), SKUS)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError) as e:  # not listening (yet, or any more)
        return 0, str(e)


def served_port(rt: Any) -> int:
    """The port the runtime's metrics server bound (configured as 0: the listener owns its port)."""
    server = rt.hooks.server
    assert server is not None and server.port > 0
    return int(server.port)


def every_stage_counted(url: str) -> tuple[int, str] | None:
    """(status, text) of a scrape in which every pipeline stage has been timed at least once, else None."""
    code, text = get(url)
    if code != 200:
        return None
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {x.labels["stage"]: x.value for x in fams["storelens_stage_seconds"].samples
              if x.name.endswith("_count")}
    return (code, text) if set(counts) == set(STAGES) and all(counts[st] > 0 for st in STAGES) else None


class Prometheus:
    """A real Prometheus server scraping ``target`` every second, with its TSDB under ``workdir``."""

    def __init__(self, workdir: Path, target: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "prometheus.yml"
        conf.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                        "scrape_configs:\n  - job_name: storelens\n    metrics_path: /metrics\n"
                        f"    static_configs:\n      - targets: ['{target}']\n")
        self.log_path = workdir / "prometheus.log"
        self.log = self.log_path.open("wb")
        assert PROMETHEUS is not None
        for _ in range(5):  # a free port is free until someone binds it: on "address already in use", another
            self.port = free_port()
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=self.log, stderr=subprocess.STDOUT)
            # it listens before its storage is open; the API answers 503 until /-/ready says 200. Ready is
            # only believed while our process lives (a port taken by someone else ends it).
            if wait_for(lambda: self.proc.poll() is not None or get(f"http://127.0.0.1:{self.port}/-/ready")[0] == 200,
                        timeout=60, interval=0.2) and self.proc.poll() is None:
                return
            said = self.log_path.read_text(errors="replace")
            assert self.proc.poll() is not None and "address already in use" in said, said[-2000:]
        raise AssertionError(f"prometheus found no free port: {self.log_path.read_text()[-2000:]}")

    def query(self, promql: str) -> list[dict]:
        status, body = get(f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        data = json.loads(body)
        assert status == 200 and data["status"] == "success", body
        return list(data["data"]["result"])

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def names(self) -> set[str]:
        _, body = get(f"http://127.0.0.1:{self.port}/api/v1/label/__name__/values")
        return set(json.loads(body)["data"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[type[Prometheus]]:
    if PROMETHEUS is None:
        missing("the prometheus binary is not installed (apt-get install -y prometheus; .ci/run installs it)")
    started: list[Prometheus] = []

    class Started(Prometheus):
        def __init__(self, workdir: Path, target: str) -> None:
            super().__init__(workdir, target)
            started.append(self)

    yield Started
    for p in started:
        p.stop()


def test_real_prometheus_scrapes_counters_that_grow(tmp_path: Path, broker: Broker, tiny_onnx: Path, catalog: Path,
                                                   prometheus_factory: type[Prometheus]) -> None:
    frames = write_frames(tmp_path / "frames", ["RED", "GREEN", "BLUE"], per_sku=6)
    s = write_config(tmp_path / "device.toml", merged(base_config(tmp_path, frames, broker_port=broker.port),
                                                      metrics={"enabled": True, "port": 0}))
    assert s.metrics.host == "127.0.0.1"  # localhost unless configured
    rt = make_runtime(s, tiny_onnx, catalog)
    with running(rt):
        port = served_port(rt)
        prom = prometheus_factory(tmp_path / "prom", f"127.0.0.1:{port}")
        assert wait_for(lambda: prom.value('up{job="storelens"}') == 1.0, timeout=30), prom.query("up")
        first = wait_for(lambda: prom.value('storelens_frames_total{camera="cam"}'), timeout=20)
        assert first is not None and first > 0
        later = wait_for(lambda: (v := prom.value('storelens_frames_total{camera="cam"}')) and v > first and v,
                         timeout=20)
        assert later and later > first, (first, later)  # the counter grew while the camera played
        assert wait_for(lambda: (prom.value('sum(storelens_decisions_total{kind="known"})') or 0) >= 1, timeout=20)
        assert prom.value("storelens_mqtt_connected") == 1.0
        assert wait_for(lambda: (prom.value('increase(storelens_stage_seconds_count{stage="embed"}[5s])') or 0) > 0,
                        timeout=20)
        names = prom.names()
    expected = {"storelens_build_info", "storelens_catalog_info", "storelens_bundle_info", "storelens_frames_total",
                "storelens_camera_frames_total", "storelens_camera_fps", "storelens_camera_up",
                "storelens_decisions_total", "storelens_time_to_decision_seconds_bucket",
                "storelens_stage_seconds_bucket", "storelens_gate_skip_ratio", "storelens_gate_crops_total",
                "storelens_outbox_depth", "storelens_outbox_written_total", "storelens_outbox_delivered_total",
                "storelens_outbox_dropped_total", "storelens_mqtt_connected", "storelens_mqtt_reconnects_total",
                "process_cpu_seconds_total"}
    assert expected <= names, sorted(expected - names)


def test_metrics_endpoint(tmp_path: Path, tiny_onnx: Path, catalog: Path) -> None:
    frames = write_frames(tmp_path / "frames", ["RED", "GREEN"], per_sku=6)
    s = write_config(tmp_path / "device.toml", merged(base_config(tmp_path, frames),
                                                      metrics={"enabled": True, "port": 0}))
    rt = make_runtime(s, tiny_onnx, catalog)
    with running(rt):
        port = served_port(rt)
        assert wait_for(lambda: rt.counts["decisions"] >= 2)
        scraped = wait_for(lambda: every_stage_counted(f"http://127.0.0.1:{port}/metrics"))
        assert scraped, get(f"http://127.0.0.1:{port}/metrics")
        code, text = scraped
        assert get(f"http://127.0.0.1:{port}/other")[0] == 404
        taken = write_config(tmp_path / "clash.toml", merged(base_config(tmp_path, frames),
                                                             metrics={"enabled": True, "port": port}))
        clash = make_runtime(taken, tiny_onnx, catalog)
        with pytest.raises(ConfigError, match="cannot listen"):
            clash.start()  # the port is taken: a clear error, not a traceback
        clash.shutdown()
    assert code == 200
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    stage_counts = {s.labels["stage"]: s.value for s in fams["storelens_stage_seconds"].samples
                    if s.name.endswith("_count")}
    assert set(stage_counts) == set(STAGES) and all(stage_counts[st] > 0 for st in STAGES), stage_counts
    assert fams["storelens_decisions"].type == "counter"
    info = fams["storelens_catalog_info"]  # an info metric: a gauge of 1 with the version as a label
    assert [(x.labels, x.value) for x in info.samples] == [({"catalog_version": "v1"}, 1.0)]
    assert "storelens_mqtt_connected" not in fams  # MQTT off: no link metrics
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)  # stopped with the runtime


def test_metrics_off_by_default(tmp_path: Path) -> None:
    s = write_config(tmp_path / "d.toml", {"device": {"store": "s", "id": "d"}})
    assert (s.metrics.enabled, s.metrics.host, s.homeassistant.enabled) == (False, "127.0.0.1", False)
