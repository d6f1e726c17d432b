"""Foundation: config parsing and errors, the broker fixture, CLI exit codes."""

from __future__ import annotations

import threading
from pathlib import Path

import onnxruntime as ort
import paho.mqtt.client as mqtt
import pytest

from edge.cli.main import main
from edge.core.config import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_shipped_configs_are_valid() -> None:
    for name in ("kiosk.toml", "shelf-camera.toml"):
        s = load_settings(REPO / "configs" / name)
        assert s.device.store


def test_unknown_key_negative_port_missing_field_all_named(tmp_path: Path) -> None:
    p = write(tmp_path, '[device]\nid = "k1"\ncolour = "red"\n[mqtt]\nport = -5\n')
    with pytest.raises(SettingsError) as ei:
        load_settings(p)
    assert sorted(k for k, _, _ in ei.value.problems) == ["device.colour", "device.store", "mqtt.port"]
    by_key = {k: (v, m) for k, v, m in ei.value.problems}
    assert by_key["device.store"] == ("<missing>", "Field required")
    assert by_key["device.colour"][1] == "unknown key (not a StoreLens setting)"
    assert by_key["mqtt.port"] == ("-5", "Input should be greater than or equal to 1")


def test_env_overrides_file_with_nesting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, '[device]\nid = "k1"\nstore = "s1"\n[mqtt]\nport = 1884\nhost = "a"\n')
    monkeypatch.setenv("STORELENS_MQTT__PORT", "8883")
    s = load_settings(p)
    assert (s.mqtt.port, s.mqtt.host) == (8883, "a")


def test_secret_is_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, '[device]\nid = "k1"\nstore = "s1"\n[mqtt]\nusername = "kiosk"\npassword = "hunter2"\n')
    assert main(["validate-config", str(p), "--show"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "**********" in out


def test_validate_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-config", str(REPO / "configs" / "kiosk.toml")]) == 0
    bad = write(tmp_path, '[device]\nid = "k1"\ncolour = "red"\n[mqtt]\nport = -5\n')
    assert main(["validate-config", str(bad)]) == 2
    out = capsys.readouterr().out
    assert "mqtt.port -> -5 ->" in out and "device.colour ->" in out and "device.store -> <missing>" in out


def test_missing_file_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-config", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("storelens: error: config file not found")


def test_bad_toml_syntax(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-config", str(write(tmp_path, "[device\n"))]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_broker_fixture_retained_message(broker) -> None:  # type: ignore[no-untyped-def]
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    pub.publish("t/retained", b"hello", qos=1, retain=True).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()

    got = threading.Event()
    seen: list[tuple[bytes, bool]] = []

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        seen.append((bytes(msg.payload), bool(msg.retain)))
        got.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = on_message
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("t/#", qos=1)
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    assert got.wait(5)
    sub.loop_stop()
    sub.disconnect()
    assert seen[0] == (b"hello", True)


def test_tiny_onnx_runs(tiny_onnx: Path) -> None:
    import numpy as np

    sess = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": np.ones((2, 3, 32, 32), np.float32)})[0]
    assert y.shape == (2, 16)
    assert np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)


def test_export_help_reaches_the_export_tools(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["export", "--help"])
    assert ei.value.code == 0
    assert "train | bundle | text" in capsys.readouterr().out


def test_unknown_option_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as ei:
        main(["validate-config", "--bogus", "x.toml"])
    assert ei.value.code == 2


def test_readme_config_reference_matches_the_code() -> None:
    from edge.cli.validate_config import reference_markdown

    assert reference_markdown() in (REPO / "README.md").read_text()
